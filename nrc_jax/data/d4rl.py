"""D4RL offline-RL data as imitation regression: inputs are observations, targets are actions.

Two layouts:
  d4rl       the D4RL HDF5 file (`data.path` = e.g. hopper_expert-v2.hdf5) with datasets
             `observations` (T, obs), `actions` (T, act), `terminals` (T,), `timeouts` (T,)
             (optional in old v0 files) and optionally `rewards` (T,).
  d4rl_tfds  the TFDS catalog set `d4rl_mujoco_hopper` (RLDS layout: every episode holds a `steps`
             dataset with `observation`, `action`, `is_first`, `is_last`, `is_terminal`, ...).
             `data.path` is the TFDS data_dir (with `data.dataset_id`, default
             'd4rl_mujoco_hopper/v2-expert') or a prepared dataset folder holding dataset_info.json.
             Its files are TFRecord, so it needs TensorFlow: `pip install '.[tf]'`.
Both are split by whole episodes (an episode ends at a terminal or a timeout): see
`base.split_by_episodes`; the paper's Hopper uses train_size=10000, test_size=2000.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from nrc_jax.data.base import RegressionData, check_arrays, data_path, episode_ends, setting, split_by_episodes
from nrc_jax.errors import DataError

HDF5_REQUIRED = ("observations", "actions", "terminals")
TFDS_DEFAULT_ID = "d4rl_mujoco_hopper/v2-expert"


def _require_path(name: str, path: str, what: str) -> str:
    if not path:
        raise DataError(f"data set {name!r}: data.path is empty; expected {what}")
    if not os.path.exists(path):
        raise DataError(f"data set {name!r}: no such file or folder: {path} (data.path); expected {what}")
    return path


def read_d4rl_hdf5(path: str, name: str = "d4rl") -> dict[str, np.ndarray]:
    """Reads the step arrays of a D4RL HDF5 file; raises DataError for a wrong layout."""
    import h5py  # pylint: disable=import-outside-toplevel

    expected = "a D4RL .hdf5 file with datasets observations (T, obs), actions (T, act), terminals (T,), timeouts (T,)"
    _require_path(name, path, expected)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in HDF5_REQUIRED if k not in f]
            if missing:
                raise DataError(f"data set {name!r}: {path} lacks {missing}; expected {expected}; found {sorted(f.keys())}")
            arrays = {k: np.asarray(f[k]) for k in (*HDF5_REQUIRED, "timeouts", "rewards") if k in f}
    except OSError as e:
        raise DataError(f"data set {name!r}: cannot read {path} as HDF5 ({e}); expected {expected}") from e
    steps = arrays["observations"].shape[0]
    for key, arr in arrays.items():
        if arr.shape[:1] != (steps,):
            raise DataError(f"data set {name!r}: {path}: {key} has shape {arr.shape} but observations has {steps} "
                            f"rows; every dataset needs one row per step")
    return arrays


def load_d4rl_hdf5(cfg: Any) -> RegressionData:
    """`data.name='d4rl'`: observations -> actions from a D4RL HDF5 file, split by episodes."""
    name, path = "d4rl", data_path(cfg)
    arrays = read_d4rl_hdf5(path, name)
    ends = episode_ends(arrays["terminals"], arrays.get("timeouts"))
    return _episode_split(name, path, arrays["observations"], arrays["actions"], ends, cfg,
                          {"timeouts": "timeouts" in arrays})


def _episode_split(name: str, path: str, obs: np.ndarray, actions: np.ndarray, ends: np.ndarray, cfg: Any,
                   extra: dict) -> RegressionData:
    obs, actions = check_arrays(name, path, obs.reshape(obs.shape[0], -1), actions, "all")
    x_train, y_train, x_test, y_test, info = split_by_episodes(
        name, path, obs, actions, ends, int(setting(cfg, "train_size", 0)), int(setting(cfg, "test_size", 0)))
    return RegressionData(name, x_train, y_train, x_test, y_test,
                          info={"path": os.path.abspath(path), **info, **extra})


def rlds_episodes_to_steps(name: str, source: str, episodes: Iterable[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RLDS episodes (each a dict of per-step numpy arrays: `observation` (T, obs), `action` (T, act))
    -> concatenated observations, actions and the exclusive end index of every episode."""
    observations, actions, lengths = [], [], []
    for i, steps in enumerate(episodes):
        missing = [k for k in ("observation", "action") if k not in steps]
        if missing:
            raise DataError(f"data set {name!r} ({source}): episode {i} steps lack {missing}; expected RLDS steps "
                            f"with observation and action, found {sorted(steps)}")
        obs, act = np.asarray(steps["observation"]), np.asarray(steps["action"])
        if obs.ndim < 1 or obs.shape[0] != act.shape[0]:
            raise DataError(f"data set {name!r} ({source}): episode {i} has {obs.shape[:1]} observations and "
                            f"{act.shape[:1]} actions; expected one action per step")
        observations.append(obs.reshape(obs.shape[0], -1))
        actions.append(act.reshape(act.shape[0], -1))
        lengths.append(obs.shape[0])
    if not lengths:
        raise DataError(f"data set {name!r} ({source}): no episodes found")
    return np.concatenate(observations), np.concatenate(actions), np.cumsum(lengths)


def import_tensorflow(name: str) -> Any:
    """TensorFlow for reading TFRecord, with GPUs hidden from it (JAX owns the accelerators)."""
    try:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise DataError(f"data set {name!r} is stored as TFRecord and reading it needs TensorFlow, which is not "
                        f"installed: pip install '.[tf]'") from e
    tf.config.set_visible_devices([], "GPU")
    return tf


def _tfds_builder(name: str, path: str, dataset_id: str) -> Any:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
        if os.path.isfile(os.path.join(path, "dataset_info.json")):
            return tfds.builder_from_directory(path)
        return tfds.builder(dataset_id, data_dir=path, try_gcs=False)
    except Exception as e:  # tfds raises several unrelated types for a missing/unprepared set
        raise DataError(f"data set {name!r}: cannot open TFDS set {dataset_id!r} under {path} ({type(e).__name__}: {e}); "
                        f"expected a prepared TFDS data_dir (data.path) holding it, or the dataset's version folder "
                        f"with dataset_info.json") from e


def load_d4rl_tfds(cfg: Any) -> RegressionData:
    """`data.name='d4rl_tfds'`: the TFDS RLDS episodes of d4rl_mujoco_hopper (or any RLDS set)."""
    name, path = "d4rl_tfds", data_path(cfg)
    dataset_id = setting(cfg, "dataset_id", "") or TFDS_DEFAULT_ID
    _require_path(name, path, f"a TFDS data_dir holding {dataset_id} (or its prepared version folder)")
    tf = import_tensorflow(name)
    builder = _tfds_builder(name, path, dataset_id)
    if not builder.info.splits:
        raise DataError(f"data set {name!r}: TFDS set {dataset_id!r} under {path} has no prepared splits")
    split = "train" if "train" in builder.info.splits else next(iter(builder.info.splits))
    dataset = builder.as_dataset(split=split, shuffle_files=False)

    def episodes():
        for episode in dataset:
            steps = next(iter(episode["steps"].batch(1 << 30)))  # one episode's steps as one batch
            yield tf.nest.map_structure(lambda t: t.numpy(), dict(steps))

    obs, actions, ends = rlds_episodes_to_steps(name, path, episodes())
    return _episode_split(name, path, obs, actions, ends, cfg, {"dataset_id": dataset_id, "split": split})
