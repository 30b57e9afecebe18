"""Committed evidence of long runs: compact copies of workdirs and the table of their final numbers.

    python -m nrc_jax.evidence --collect=/runs/fig2_swimmer_tenth --out=results/paper/fig2_swimmer_tenth
    python -m nrc_jax.evidence --table=results/paper            # writes results/paper/claims.md

`--collect` copies `config.json`, `summary.json` and `metrics.jsonl` of a workdir (finished or not),
the metrics thinned to at most `--max_rows` rows (1,000 by default) (the same evaluation epochs for every sweep member:
the first and last, then log-spaced and evenly spaced ones), plus `run.json` (where it came from, the
epochs done and the run's wall time). A collected folder is itself a workdir for `nrc_jax.plot`.

`--table` reads every collected folder under a directory and writes `claims.md`: per run and sweep
member the final values of every NRC definition, the MSEs, the best gamma, how far NRC1 fell
(decades between its first and last logged values) and its range over the run's second half. The
results README quotes these numbers and a test (tests/test_evidence.py) recomputes the table from
the committed files.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from nrc_jax.engine.sweeps import member_label
from nrc_jax.errors import DataError, UserError
from nrc_jax.io import run_files

MAX_ROWS = 1000
RUN_FILE = "run.json"
CLAIMS_FILE = "claims.md"
# (column title, key in a metrics.jsonl row) of the claims table; evr is the sum of the top n.
COLUMNS = (("train MSE", "train_mse"), ("test MSE", "test_mse"), ("NRC1", "nrc1"),
           ("NRC1 centered", "nrc1_centered"), ("NRC1 unnorm. /M", "nrc1_unnormalized"),
           ("NRC1 unnorm. /(Md)", "nrc1_unnormalized_md"), ("NRC2", "nrc2"), ("NRC2 centered", "nrc2_centered"),
           ("‖W − W P_pca‖_F", "nrc2_w_pca"), ("NRC3", "nrc3"), ("EVR top n", "evr_top_n"),
           ("‖h‖²", "h_norm_sq"))
DECADE_KEYS = ("nrc1", "nrc1_centered", "nrc1_unnormalized")


def kept_epochs(epochs: Sequence[int], max_epochs: int) -> list[int]:
    """At most `max_epochs` of the sorted distinct `epochs`: first, last, log- and evenly spaced."""
    epochs = sorted(set(epochs))
    if len(epochs) <= max_epochs:
        return epochs
    half = max(max_epochs // 2 - 1, 1)
    picks = {0, len(epochs) - 1}
    positive = np.asarray([max(e, 1) for e in epochs], float)
    for target in np.geomspace(positive[0], positive[-1], half):
        picks.add(int(np.searchsorted(positive, target)))
    picks |= {int(i) for i in np.linspace(0, len(epochs) - 1, max_epochs - len(picks))}
    return [epochs[i] for i in sorted(i for i in picks if i < len(epochs))][:max_epochs]


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from None


def collect(workdir: str, out: str, max_rows: int = MAX_ROWS) -> dict:
    """Copies the compact evidence of `workdir` into `out`; returns the run.json dict."""
    src, dst = run_files.workdir_path(workdir), pathlib.Path(out)
    files = run_files.load(src)
    if not (src / run_files.CONFIG_FILE).is_file():
        raise DataError(f"no {run_files.CONFIG_FILE} in {src} (--collect must name a training workdir)")
    rows = files.rows
    keep = set(kept_epochs([r["epoch"] for r in rows], max(max_rows // max(len(files.members), 1), 2)))
    dst.mkdir(parents=True, exist_ok=True)
    thinned = [r for r in rows if r["epoch"] in keep]
    (dst / run_files.METRICS_FILE).write_text("".join(run_files.json_line(r) for r in thinned))
    (dst / run_files.CONFIG_FILE).write_bytes((src / run_files.CONFIG_FILE).read_bytes())
    if files.finished:
        summary = files.summary
        for member in summary.get("members", []):
            pairs = [(e, v) for e, v in zip(member.get("epochs", []), member.get("nrc3_over_epochs", [])) if e in keep]
            member["epochs"], member["nrc3_over_epochs"] = [p[0] for p in pairs], [p[1] for p in pairs]
        (dst / run_files.SUMMARY_FILE).write_text(json.dumps(summary))
    elif (dst / run_files.SUMMARY_FILE).exists():
        (dst / run_files.SUMMARY_FILE).unlink()  # a stale summary of an earlier collection
    run = {"source": str(src), "epochs_done": files.epochs_done,
           "epochs_planned": files.config.get("train", {}).get("epochs"), "finished": files.finished,
           "wall_s": files.wall_s, "rows": len(rows), "rows_kept": len(thinned)}
    (dst / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")
    return run


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.3g}"


def _final_values(rows: list[dict], n: int) -> dict:
    last = rows[-1]
    out = {key: last.get(key) for _, key in COLUMNS}
    if out["nrc3"] is None:
        out["nrc3"] = last.get("nrc3_epoch_best")  # an unfinished run: its own epoch's best gamma
    evr = last.get("evr")
    out["evr_top_n"] = float(sum(evr[:n])) if evr else None
    return out


def _decades(rows: list[dict], key: str) -> float | None:
    values = [r.get(key) for r in rows if r.get(key)]
    if len(values) < 2 or values[0] <= 0 or values[-1] <= 0:
        return None
    return math.log10(values[0] / values[-1])


def _late_range(rows: list[dict], key: str) -> str:
    """"min – max" of `key` over the evaluations in the second half of the epochs logged: a value
    that has stopped falling (e.g. at float32's rounding floor) shows as a band, not a trend."""
    half = rows[-1]["epoch"] / 2
    values = [r[key] for r in rows if r["epoch"] >= half and r.get(key) is not None]
    return f"{_fmt(min(values))} – {_fmt(max(values))}" if values else "–"


def run_table(folder: pathlib.Path) -> list[str]:
    """The claims-table lines of one collected folder (a row per sweep member)."""
    run = _read_json(folder / RUN_FILE)
    lines = []
    for mine in run_files.load(folder).members.values():
        n = len(mine[-1].get("wwt") or [[0]])
        final = _final_values(mine, n)
        label = member_label(mine[-1])
        done = f"{run['epochs_done']:,}/{run['epochs_planned']:,}" + ("" if run["finished"] else " (running)")
        decades = " / ".join(_fmt(_decades(mine, key)) for key in DECADE_KEYS)
        gamma = mine[-1].get("nrc3_gamma") or mine[-1].get("nrc3_epoch_best_gamma")
        cells = ([folder.name, label, done, decades, _fmt(gamma)] + [_fmt(final[key]) for _, key in COLUMNS]
                 + [_late_range(mine, "nrc1")])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def claims_table(directory: str) -> str:
    """claims.md for every collected folder (holding run.json) under `directory`, sorted by name."""
    root = pathlib.Path(directory)
    folders = sorted(p.parent for p in root.glob(f"*/{RUN_FILE}"))
    if not folders:
        raise DataError(f"no collected runs (folders with {RUN_FILE}) under {root}")
    header = (["run", "member", "epochs", "decades fallen: NRC1 / centered / unnorm.", "γ (final best)"]
              + [t for t, _ in COLUMNS] + ["NRC1 min – max, 2nd half"])
    lines = ["# Final values of every collected run", "",
             "Generated by `python -m nrc_jax.evidence --table=DIR` from the committed "
             "`metrics.jsonl` of each folder (last logged evaluation, train split unless 'test'). "
             "'Decades fallen' is log10(first / last logged value) of the published, centered and un-normalized NRC1. For a run still going, NRC3 is "
             "at that evaluation's own best γ. 'NRC1 min – max, 2nd half' spans the published NRC1 over the "
             "evaluations at or after half the last logged epoch.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for folder in folders:
        lines += run_table(folder)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    from absl import app, flags

    flags.DEFINE_string("collect", None, "training workdir to copy compactly")
    flags.DEFINE_string("out", None, "destination folder of --collect")
    flags.DEFINE_integer("max_rows", MAX_ROWS, "most metrics.jsonl rows kept by --collect")
    flags.DEFINE_string("table", None, f"folder of collected runs: writes its {CLAIMS_FILE}")
    FLAGS = flags.FLAGS

    def run(args: list[str]) -> None:
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        try:
            if FLAGS.collect:
                if not FLAGS.out:
                    raise DataError("--collect needs --out (the destination folder)")
                info = collect(FLAGS.collect, FLAGS.out, FLAGS.max_rows)
                print(f"collected {info['rows_kept']} of {info['rows']} rows, epoch {info['epochs_done']:,} of "
                      f"{info['epochs_planned']:,} -> {FLAGS.out}")
            if FLAGS.table:
                path = os.path.join(FLAGS.table, CLAIMS_FILE)
                pathlib.Path(path).write_text(claims_table(FLAGS.table))
                print(f"wrote {path}")
            if not (FLAGS.collect or FLAGS.table):
                raise DataError("give --collect=WORKDIR --out=DIR and/or --table=DIR")
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    app.run(run, argv=[sys.argv[0], *argv] if argv is not None else None)


if __name__ == "__main__":
    main()
