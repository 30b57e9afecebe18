"""The container every loader returns, and checks shared by all loaders."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nrc_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class RegressionData:
    """A regression data set held in host memory.

    Attributes:
      name: the registry name it was loaded by.
      x_train: (M, ...) float32 inputs (tabular (M, p); images (M, H, W, C)).
      y_train: (M, n) float32 targets, already passed through `transform.forward`.
      x_test, y_test: the test split, same layout.
      transform: the fitted target transform (`forward`/`inverse`), identity by default.
      info: free-form provenance (source path, generator seed, expert returns, ...).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    transform: Any = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def target_dim(self) -> int:
        return int(self.y_train.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[1:])


def check_arrays(name: str, source: str, x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split and returns it as float32 with 2-D targets.

    Raises DataError naming the data set, the source path and what is wrong: row-count mismatch
    (message says "rows"), non-finite values (count and first index, message says "nan"/"inf").
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise DataError(f"data set {name!r} ({source}): {split} targets must be (rows, n), got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"data set {name!r} ({source}): {split} inputs have {x.shape[0]} rows but targets have "
            f"{y.shape[0]} rows; x and y need the same number of rows")
    if x.shape[0] == 0:
        raise DataError(f"data set {name!r} ({source}): {split} split has 0 rows")
    for label, arr in (("inputs", x), ("targets", y)):
        if np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1))
                kinds = "nan" if np.isnan(arr).any() else "inf"
                raise DataError(
                    f"data set {name!r} ({source}): {split} {label} contain {int(bad.sum())} non-finite "
                    f"values ({kinds}/inf check), first at row {int(rows[0])}")
    x = x.astype(np.float32) if x.dtype != np.uint8 else x
    return x, y.astype(np.float32)
