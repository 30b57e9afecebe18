"""Bring-your-own data: any .npz with x_train, y_train, x_test, y_test."""
from __future__ import annotations

import os
import zipfile

import numpy as np

from nrc_jax.data.base import RegressionData, check_arrays
from nrc_jax.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str, name: str = "npz") -> RegressionData:
    """Loads `path` (.npz with arrays x_train (M, ...), y_train (M, n), x_test, y_test)."""
    if not path:
        raise DataError(f"data set {name!r}: data.path is empty; give the .npz file with keys {', '.join(NPZ_KEYS)}")
    if not os.path.isfile(path):
        raise DataError(f"data set {name!r}: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(
                    f"data set {name!r}: {path} lacks arrays {missing}; expected keys {list(NPZ_KEYS)}, found {f.files}")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"data set {name!r}: cannot read {path} as .npz: {e}") from e
    x_train, y_train = check_arrays(name, path, arrays["x_train"], arrays["y_train"], "train")
    x_test, y_test = check_arrays(name, path, arrays["x_test"], arrays["y_test"], "test")
    if x_train.shape[1:] != x_test.shape[1:] or y_train.shape[1] != y_test.shape[1]:
        raise DataError(
            f"data set {name!r}: {path}: train and test shapes disagree: x {x_train.shape} vs {x_test.shape}, "
            f"y {y_train.shape} vs {y_test.shape}")
    return RegressionData(name, x_train, y_train, x_test, y_test, info={"path": os.path.abspath(path)})
