"""The files of a training workdir: their names, the strict-JSON form of metrics rows, atomic
writes, and the one reader every tool uses (`load`, `read_metrics`, `read_summary`, `read_config`).

    config.json     the run's ml-collections config as JSON
    metrics.jsonl   one strict-JSON object per evaluation and sweep member (non-finite floats null)
    summary.json    written when the run finishes: per member NRC3 against gamma, best gamma, final row

Readers get NaN back where the file holds null (except in a row's `sweep` values). A kill leaves at
most one torn last line in metrics.jsonl, which every reader skips.

Every file goes through `etils.epath.Path`, so a workdir is a local path or an object-store URL
(gs://, s3://; `validate.workdir_location` says which are usable). A replacement is atomic either way:
locally it is written beside the file, fsync'ed and renamed over it; an object store has no rename
(gcsfs/s3fs move by copy and delete), but each object upload is atomic there (readers see the old
object or the new one, never a part), so the file is uploaded whole in place.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from etils import epath
import numpy as np

from nrc_jax.errors import DataError

METRICS_FILE, SUMMARY_FILE, CONFIG_FILE = "metrics.jsonl", "summary.json", "config.json"
PathLike = str | os.PathLike


# --------------------------------------------------------------------- strict JSON
def _nan_to_none(x: Any) -> Any:
    """Non-finite floats become null so every metrics.jsonl line is strict JSON (jq, pandas)."""
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def _none_to_nan(x: Any) -> Any:
    if x is None:
        return float("nan")
    if isinstance(x, dict):
        return {k: v if k == "sweep" else _none_to_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return x


def json_line(row: dict) -> str:
    """One metrics.jsonl line (newline included) of a row."""
    return json.dumps(_nan_to_none(row), allow_nan=False) + "\n"


def rows_to_json(rows: list[dict]) -> list[dict]:
    """Rows as strict-JSON values (non-finite floats null), as the checkpoint's history item holds them."""
    return [_nan_to_none(r) for r in rows]


def rows_from_json(rows: list[dict]) -> list[dict]:
    """The inverse of `rows_to_json` (null back to NaN), as `read_metrics` returns rows."""
    return [_none_to_nan(r) for r in rows]


# --------------------------------------------------------------------- paths
def is_url(path: PathLike) -> bool:
    """True for a URL such as gs://bucket/run (an object store), False for a local path."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", os.fspath(path)) is not None


def workdir_path(workdir: PathLike) -> epath.Path:
    """The workdir (or a file in it) as an `etils.epath.Path`: local, or on an object store."""
    return epath.Path(workdir)


# --------------------------------------------------------------------- atomic writes
def replace_atomic(path: PathLike, text: str) -> None:
    """Replaces the file at `path` by `text`, atomically (see the module docstring).

    Locally: writes path + ".tmp", fsyncs and renames it over `path`; a failed write (a full disk)
    removes the temporary file and leaves `path` as it was. On an object store: one upload.
    """
    path = workdir_path(path)
    if is_url(path):
        path.write_text(text)
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def write_json_atomic(path: PathLike, obj: Any) -> None:
    replace_atomic(path, json.dumps(_nan_to_none(obj), indent=1))


def write_lines_atomic(path: PathLike, rows: list[dict]) -> None:
    """metrics.jsonl holding exactly `rows`."""
    replace_atomic(path, "".join(json_line(r) for r in rows))


# --------------------------------------------------------------------- reading
def read_metrics(workdir: PathLike, *, strict: bool = False) -> list[dict]:
    """The rows of workdir/metrics.jsonl in file order, null read back as NaN; [] without the file.

    A torn last line is skipped. Other lines that are not JSON are skipped too (the run rewrites
    the file from its checkpoint on resume) unless `strict`, where they and rows without an
    "epoch" raise DataError naming the line.
    """
    path = workdir_path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if strict and line.strip() and number < len(lines):
                raise DataError(f"{path}: line {number} is not valid JSON") from None
            continue
        if strict and not (isinstance(row, dict) and "epoch" in row):
            raise DataError(f"{path}: line {number} has no 'epoch' field")
        rows.append(_none_to_nan(row))
    return rows


def _read_json(path: epath.Path) -> Any:
    """The JSON document at `path`, None when there is no such file; DataError when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def read_config(workdir: PathLike) -> dict | None:
    """config.json as a nested dict (tuples are lists there); None when the workdir has none."""
    return _read_json(workdir_path(workdir) / CONFIG_FILE)


def read_summary(workdir: PathLike) -> dict | None:
    """summary.json ({"members": [...], "data": {...}}); None before the run finished."""
    return _read_json(workdir_path(workdir) / SUMMARY_FILE)


def rows_by_member(rows: list[dict]) -> dict[int, list[dict]]:
    """{sweep_index: that member's rows ordered by epoch}, in sweep_index order."""
    grouped: dict[int, list[dict]] = {}
    for row in rows:
        grouped.setdefault(int(row.get("sweep_index", 0) or 0), []).append(row)
    return {k: sorted(grouped[k], key=lambda r: r["epoch"]) for k in sorted(grouped)}


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """What a training workdir holds, read once: config ({} without config.json), the metrics rows
    (NaN restored) and the summary (None while the run is unfinished)."""

    path: epath.Path
    config: dict
    rows: list[dict]
    summary: dict | None

    @property
    def members(self) -> dict[int, list[dict]]:
        """{sweep_index: rows ordered by epoch}."""
        return rows_by_member(self.rows)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def epochs_done(self) -> int:
        return max(r["epoch"] for r in self.rows)

    @property
    def wall_s(self) -> float:
        """Seconds from the start of training to the last logged evaluation."""
        return max(r.get("time_s") or 0.0 for r in self.rows)


def load(workdir: PathLike) -> RunFiles:
    """Reads a training workdir (`read_metrics(strict=True)`); DataError naming the path when the
    folder, its metrics.jsonl or any row is missing, or a file is not JSON."""
    path = workdir_path(workdir)
    if not path.is_dir():
        raise DataError(f"workdir {path} does not exist (or is not a directory)")
    if not (path / METRICS_FILE).is_file():
        raise DataError(f"workdir {path} has no {METRICS_FILE}; is it a training workdir?")
    config = read_config(path)
    summary = read_summary(path)
    rows = read_metrics(path, strict=True)
    if not rows:
        raise DataError(f"{path / METRICS_FILE}: no metric rows; has the run evaluated at least once?")
    return RunFiles(path, config if config is not None else {}, rows, summary)
