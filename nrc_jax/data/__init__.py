"""Data sets for the NRC study: a registry of loaders selected by `config.data.name`.

Every loader returns a `RegressionData` (numpy, rows are samples). Loaders register themselves in
`LOADERS` (name -> callable(data_config) -> RegressionData); `load_dataset` applies the target
transform named by `data_config.target_transform` after loading. Large image sets come back with
`ArraySource` inputs: stream them with `nrc_jax.data.batches.iterate_batches`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import ml_collections

from nrc_jax.data import carla, d4rl, minari, mujoco, sgemm, synthetic_images, utkface
from nrc_jax.data.base import ArraySource, RegressionData, check_arrays, data_path
from nrc_jax.data.npz import load_npz
from nrc_jax.data.transforms import TRANSFORMS, TargetTransform, apply_forward, fit_transform
from nrc_jax.errors import ConfigError, DataError

Loader = Callable[[ml_collections.ConfigDict], RegressionData]

LOADERS: dict[str, Loader] = {
    "npz": lambda cfg: load_npz(data_path(cfg), "npz"),
    "d4rl": d4rl.load_d4rl_hdf5,
    "d4rl_tfds": d4rl.load_d4rl_tfds,
    "minari": minari.load_minari,
    "carla": carla.load_carla,
    "utkface": utkface.load_utkface,
    "sgemm": sgemm.load_sgemm,
    "synthetic_images": synthetic_images.load_synthetic_images,
    **{name: functools.partial(mujoco.load, name) for name in mujoco.EXPERT_DATASETS},
}

# Sets that read files named by data.path (everything else is made locally, e.g. for `table`).
PATH_DATASETS = ("npz", "d4rl", "d4rl_tfds", "minari", "carla", "utkface", "sgemm")


def known_datasets() -> tuple[str, ...]:
    return tuple(sorted(LOADERS))


def default_data_config() -> ml_collections.ConfigDict:
    """Every field the loaders accept; configs copy this into `config.data`."""
    return ml_collections.ConfigDict({
        "name": "swimmer",
        "path": "",
        "seed": 0,
        "target_transform": "none",  # one of transforms.TRANSFORMS, fitted on the training targets
        "train_size": 0,  # samples; 0 = the set's default (paper sizes; else 5/6 of the data)
        "test_size": 0,  # samples; 0 = 20% of train_size (the paper's rule)
        "targets": "",  # which targets: carla 'speed_steer'|'steer'|'speed'; synthetic_images 'x_y_size'|'x_y'; sgemm 'runs'|'log_runs'
        "dataset_id": "",  # minari: '<id>' under data.path; d4rl_tfds: e.g. 'd4rl_mujoco_hopper/v2-expert'
        "image_size": 0,  # square side images are resized to; 0 = the set's default (224 real, 32 synthetic)
        "image_normalization": "imagenet",  # 'imagenet' (mean/std) | 'unit' ([0, 1])
        "max_in_memory_mb": 2048.0,  # image sets larger than this (as float32) are streamed, not loaded
        "action_noise": 0.1,  # swimmer/reacher/hopper: Gaussian std added to the expert's actions (0.1: like a stochastic agent's data)
        "cache_dir": "",  # swimmer/reacher/hopper TFDS data_dir; "" = $NRC_JAX_DATA_DIR or ~/.cache/nrc_jax/tfds
    })


def load_dataset(data_config: ml_collections.ConfigDict) -> RegressionData:
    """Loads the data set named by `data_config.name`; unknown names list the known ones."""
    name = data_config.name
    if name not in LOADERS:
        raise DataError(f"unknown data set {name!r} (data.name); known data sets: {', '.join(known_datasets())}")
    kind = data_config.get("target_transform", "none") or "none"
    if kind not in TRANSFORMS:
        raise ConfigError(f"data.target_transform={kind!r} is not one of {', '.join(TRANSFORMS)}")
    return apply_target_transform(LOADERS[name](data_config), kind)


def apply_target_transform(data: RegressionData, kind: str) -> RegressionData:
    """Fits `kind` on `data.y_train` and returns a copy with both target splits transformed."""
    transform = fit_transform(kind, data.y_train, data.name)
    return dataclasses.replace(
        data, y_train=apply_forward(transform, data.y_train), y_test=apply_forward(transform, data.y_test),
        transform=transform, info={**data.info, "target_transform": kind})


__all__ = ["RegressionData", "ArraySource", "TargetTransform", "check_arrays", "load_dataset",
           "apply_target_transform", "default_data_config", "known_datasets", "LOADERS", "PATH_DATASETS",
           "KNOWN_DATASETS"]

# Computed last, after every registration in this file.
KNOWN_DATASETS: tuple[str, ...] = known_datasets()

# Registers nrc_swimmer_expert, nrc_reacher_expert and nrc_hopper_expert with TFDS, so that
# `tfds.data_source("nrc_swimmer_expert")` works after `import nrc_jax.data` (README, "TFDS").
from nrc_jax.data.mujoco import tfds_builders  # noqa: E402,F401  pylint: disable=wrong-import-position
