"""SGEMM GPU kernel performance (UCI): 14 kernel parameters -> 4 run times (the tabular multi-target case).

`data.path` is `sgemm_product.csv` or the folder holding it: a header line
`MWG,NWG,KWG,MDIMC,NDIMC,MDIMA,NDIMB,KWI,VWM,VWN,STRM,STRN,SA,SB,Run1 (ms),Run2 (ms),Run3 (ms),Run4 (ms)`
then one row per kernel configuration (241,600 in the release). Inputs are the 14 parameter columns
as given; targets (`data.targets`) are the 4 run times in ms ('runs', default) or their natural log
('log_runs', common for this skewed set). The split is a seeded permutation (`data.seed`); sizes
follow `base.resolve_split_sizes`.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from nrc_jax.data.base import RegressionData, check_arrays, data_path, resolve_split_sizes, setting
from nrc_jax.errors import DataError

NAME = "sgemm"
FILE_NAME = "sgemm_product.csv"
PARAMETER_COLUMNS = ("MWG", "NWG", "KWG", "MDIMC", "NDIMC", "MDIMA", "NDIMB", "KWI", "VWM", "VWN", "STRM", "STRN",
                     "SA", "SB")
TARGET_COLUMNS = ("Run1 (ms)", "Run2 (ms)", "Run3 (ms)", "Run4 (ms)")
TARGET_CHOICES = ("runs", "log_runs")


def csv_path(path: str) -> str:
    if not path:
        raise DataError(f"data set {NAME!r}: data.path is empty; expected {FILE_NAME} or the folder holding it")
    if os.path.isdir(path):
        path = os.path.join(path, FILE_NAME)
    if not os.path.isfile(path):
        raise DataError(f"data set {NAME!r}: no such file: {path} (data.path); expected {FILE_NAME}")
    return path


def read_sgemm_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (parameters (N, 14), run times (N, 4)) as float64; DataError for a wrong header or cell."""
    expected = ",".join(PARAMETER_COLUMNS + TARGET_COLUMNS)
    with open(path) as f:
        header = [h.strip() for h in f.readline().strip().split(",")]
    if tuple(header) != PARAMETER_COLUMNS + TARGET_COLUMNS:
        raise DataError(f"data set {NAME!r}: {path} has header {','.join(header)!r}; expected {expected!r}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(f"data set {NAME!r}: {path}: not all cells are numbers ({e}); expected 18 numeric columns") from e
    if table.shape[0] == 0:
        raise DataError(f"data set {NAME!r}: {path} has a header but no rows")
    return table[:, :len(PARAMETER_COLUMNS)], table[:, len(PARAMETER_COLUMNS):]


def load_sgemm(cfg: Any) -> RegressionData:
    """`data.name='sgemm'`: the 14 SGEMM kernel parameters -> 4 run times."""
    path = csv_path(data_path(cfg))
    choice = setting(cfg, "targets", "") or "runs"
    if choice not in TARGET_CHOICES:
        raise DataError(f"data set {NAME!r}: data.targets={choice!r} is not one of {', '.join(TARGET_CHOICES)}")
    x, y = read_sgemm_csv(path)
    x, y = check_arrays(NAME, path, x, y, "all")
    if choice == "log_runs":
        if (y <= 0).any():
            raise DataError(f"data set {NAME!r}: {path}: data.targets='log_runs' needs positive run times")
        y = np.log(y)
    train_size, test_size = resolve_split_sizes(NAME, path, x.shape[0], int(setting(cfg, "train_size", 0)),
                                                int(setting(cfg, "test_size", 0)))
    order = np.random.default_rng(int(setting(cfg, "seed", 0))).permutation(x.shape[0])
    train, test = order[:train_size], order[train_size:train_size + test_size]
    return RegressionData(NAME, x[train], y[train], x[test], y[test],
                          info={"path": os.path.abspath(path), "targets": choice, "rows": int(x.shape[0])})
