"""Training workdirs as the plots see them: members with their metric series, from the files that
`nrc_jax.io.run_files` reads.

The only place that knows the engine's field names is the set of mappings at the top: when the
engine renames a field, fix one line here. Every reader tolerates missing optional keys.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from nrc_jax.errors import DataError
from nrc_jax.io import run_files

# Logical metric name -> key in a metrics.jsonl row.
ROW_KEYS: dict[str, str] = {
    "epoch": "epoch",
    "sweep_index": "sweep_index",
    "sweep": "sweep",
    "train_mse": "train_mse",
    "test_mse": "test_mse",
    "train_r2": "train_r2",
    "test_r2": "test_r2",
    "nrc1": "nrc1",
    "nrc2": "nrc2",
    "nrc3": "nrc3",
    "nrc3_gamma": "nrc3_gamma",
    "evr": "evr",
    "lambda_min": "lambda_min",
    "layers": "layers",
}

# Logical name -> dotted path in config.json (the ml-collections config as JSON).
CONFIG_KEYS: dict[str, str] = {
    "dataset": "data.name",
    "data_path": "data.path",
    "train_size": "data.train_size",
    "test_size": "data.test_size",
    "weight_decay": "optim.weight_decay",
    "lambda_h": "optim.lambda_h",
    "lambda_w": "optim.lambda_w",
    "regularizer": "optim.regularizer",  # "weight_decay" | "ufm"
    "mse_reduction": "optim.mse_reduction",  # "sum" | "mean"
    "mode": "optim.mode",  # older spelling of the regularizer field
    "lr": "optim.lr",
    "epochs": "train.epochs",
    "seed": "seed",
}

# Logical name -> key of one per-member entry of summary.json.
SUMMARY_KEYS: dict[str, str] = {
    "members": "members",  # summary.json may be {"members": [...]} or a list or {"0": {...}}
    "sweep_index": "sweep_index",
    "sweep": "sweep",
    "gammas": "gammas",
    "nrc3_curve": "nrc3_curve",
    "best_gamma": "best_gamma",
    "best_gamma_over_lambda_min": "best_gamma_over_lambda_min",
    "nrc3_over_epochs": "nrc3_over_epochs",
    "final": "final",
    "data": "data",
}

# Table 1 column -> accepted keys in summary.json["data"] (first present wins), then config fallback.
DATA_BLOCK_KEYS: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "train_size": ("train_size", "num_train"),
    "test_size": ("test_size", "num_test"),
    "input_shape": ("input_shape",),
    "n": ("n", "target_dim"),
    "target_corr": ("target_corr", "target_correlation"),
    "lambda_min": ("lambda_min",),
    "lambda_max": ("lambda_max",),
    "eigenvalues": ("eigenvalues", "target_eigenvalues"),
}

# Swept or configured hyper-parameters that name a sweep value; seeds are averaged over instead.
SEED_KEYS = ("seed",)
UFM_KEYS = ("lambda_h", "lambda_w")


@dataclasses.dataclass
class Member:
    """One sweep member of one workdir: its settings and metric series ordered by epoch."""

    workdir: pathlib.Path
    sweep_index: int
    settings: dict[str, Any]          # effective hyper-parameters: config values overridden by the sweep
    rows: list[dict]                  # metrics.jsonl rows of this member, sorted by epoch
    summary: dict | None              # this member's entry of summary.json, if any

    @property
    def epochs(self) -> np.ndarray:
        return np.asarray([r[ROW_KEYS["epoch"]] for r in self.rows], dtype=np.float64)

    def series(self, name: str) -> np.ndarray | None:
        """(T,) float values of metric `name` over the logged epochs; NaN where absent; None if absent everywhere."""
        if name == "nrc3" and self.summary:
            recomputed = self.summary.get(SUMMARY_KEYS["nrc3_over_epochs"])
            if recomputed is not None and len(recomputed) == len(self.rows):
                return as_float_array(recomputed)
        key = ROW_KEYS.get(name, name)
        values = [r.get(key) for r in self.rows]
        if name == "nrc3" and not np.isfinite(as_float_array(values)).any():
            return self.series("nrc3_epoch_best")  # an unfinished run: NRC3 at each epoch's own best gamma
        if all(v is None for v in values):
            return None
        return as_float_array(values)

    def final(self, name: str) -> float:
        """The metric at the last logged epoch (summary's `final` first), NaN when absent."""
        if name == "nrc3":
            curve = self.series("nrc3")
            return float(curve[-1]) if curve is not None and len(curve) else math.nan
        final = (self.summary or {}).get(SUMMARY_KEYS["final"]) or {}
        key = ROW_KEYS.get(name, name)
        value = final.get(key, self.rows[-1].get(key) if self.rows else None)
        return scalar_or_nan(value)


@dataclasses.dataclass
class Workdir:
    """A loaded workdir: config, members (one per sweep index) and the data block for Table 1."""

    path: pathlib.Path
    config: dict
    members: list[Member]
    data_block: dict

    @property
    def dataset(self) -> str:
        name = self.data_block.get("name") or config_value(self.config, "dataset")
        path = config_value(self.config, "data_path")
        if name == "npz" and path:  # bring-your-own data: the file names the data set
            return pathlib.Path(str(path)).stem
        return str(name) if name else self.path.name

    @property
    def is_ufm(self) -> bool:
        if any(str(config_value(self.config, key) or "").lower() == "ufm" for key in ("regularizer", "mode")):
            return True
        return any(key in m.settings.get("_swept", ()) for m in self.members for key in UFM_KEYS)


def as_float_array(values: Iterable[Any]) -> np.ndarray:
    return np.asarray([scalar_or_nan(v) for v in values], dtype=np.float64)


def scalar_or_nan(value: Any) -> float:
    """A float from a JSON scalar; None, strings like 'nan' and lists map to NaN."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def config_value(config: dict, name: str, default: Any = None) -> Any:
    """Looks up `CONFIG_KEYS[name]` (a dotted path) in the nested config dict."""
    node: Any = config
    for part in CONFIG_KEYS.get(name, name).split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def summary_members(summary: Any) -> dict[int, dict]:
    """summary.json as {sweep_index: entry}; accepts a list, {"members": [...]}, {"<i>": {...}} or one entry."""
    if summary is None:
        return {}
    if isinstance(summary, dict) and isinstance(summary.get(SUMMARY_KEYS["members"]), list):
        summary = summary[SUMMARY_KEYS["members"]]
    if isinstance(summary, list):
        return {int(e.get(SUMMARY_KEYS["sweep_index"], i)): e for i, e in enumerate(summary) if isinstance(e, dict)}
    if isinstance(summary, dict):
        indexed = {k: v for k, v in summary.items() if k.isdigit() and isinstance(v, dict)}
        if indexed:
            return {int(k): v for k, v in indexed.items()}
        if any(key in summary for key in (SUMMARY_KEYS["final"], SUMMARY_KEYS["gammas"])):
            return {int(summary.get(SUMMARY_KEYS["sweep_index"], 0)): summary}
    return {}


def summary_data_block(summary: Any) -> dict:
    """The `data` block (Table 1 fields) from the top of summary.json or from its first member."""
    if isinstance(summary, dict) and isinstance(summary.get(SUMMARY_KEYS["data"]), dict):
        return summary[SUMMARY_KEYS["data"]]
    for entry in summary_members(summary).values():
        if isinstance(entry.get(SUMMARY_KEYS["data"]), dict):
            return entry[SUMMARY_KEYS["data"]]
    return {}


def member_settings(config: dict, sweep: dict) -> dict[str, Any]:
    """Effective hyper-parameters of one member: configured values, overridden by its sweep values."""
    settings: dict[str, Any] = {}
    for name in ("weight_decay", "lambda_h", "lambda_w", "lr", "seed"):
        value = config_value(config, name)
        if value is not None:
            settings[name] = value
    for key, value in sweep.items():
        settings[key.split(".")[-1]] = value  # "optim.weight_decay" and "weight_decay" name the same knob
    settings["_swept"] = tuple(key.split(".")[-1] for key in sweep)
    return settings


def load_workdir(path: str | pathlib.Path) -> Workdir:
    """Loads one workdir (`run_files.load`); raises DataError naming the path when it or its
    metrics.jsonl is missing or malformed."""
    run = run_files.load(path)
    by_index = summary_members(run.summary)
    members = []
    for index, rows in run.members.items():
        sweep = rows[0].get(ROW_KEYS["sweep"]) or (by_index.get(index) or {}).get(SUMMARY_KEYS["sweep"]) or {}
        members.append(Member(run.path, index, member_settings(run.config, sweep), rows, by_index.get(index)))
    return Workdir(run.path, run.config, members, summary_data_block(run.summary))


def load_workdirs(paths: Sequence[str | pathlib.Path]) -> list[Workdir]:
    """Loads every workdir; the first missing or malformed one raises DataError naming its path."""
    if not paths:
        raise DataError("no workdir given; pass at least one training workdir")
    unique = list(dict.fromkeys(run_files.workdir_path(p) if run_files.is_url(p) else pathlib.Path(p).resolve()
                                for p in paths))  # a repeated path would double its seeds
    return [load_workdir(p) for p in unique]
