"""Data sets for the NRC study: a registry of loaders selected by `config.data.name`.

Every loader returns a `RegressionData` (numpy, rows are samples). Loaders register themselves in
`LOADERS` (name -> callable(data_config) -> RegressionData); `load_dataset` applies the target
transform named by `data_config.target_transform` after loading.
"""
from __future__ import annotations

from typing import Callable

import ml_collections

from nrc_jax.data.base import RegressionData, check_arrays
from nrc_jax.data.npz import load_npz
from nrc_jax.errors import DataError

Loader = Callable[[ml_collections.ConfigDict], RegressionData]

LOADERS: dict[str, Loader] = {
    "npz": lambda cfg: load_npz(cfg.path, "npz"),
}


def known_datasets() -> tuple[str, ...]:
    return tuple(sorted(LOADERS))


def default_data_config() -> ml_collections.ConfigDict:
    """Every field the loaders accept; configs copy this into `config.data`."""
    return ml_collections.ConfigDict({
        "name": "swimmer",
        "path": "",
        "seed": 0,
        "target_transform": "none",
    })


def load_dataset(data_config: ml_collections.ConfigDict) -> RegressionData:
    """Loads the data set named by `data_config.name`; unknown names list the known ones."""
    name = data_config.name
    if name not in LOADERS:
        raise DataError(f"unknown data set {name!r} (data.name); known data sets: {', '.join(known_datasets())}")
    return LOADERS[name](data_config)


__all__ = ["RegressionData", "check_arrays", "load_dataset", "default_data_config", "known_datasets", "LOADERS"]
