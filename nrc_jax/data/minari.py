"""Minari datasets on disk (no `minari` package needed): observations -> actions, split by episodes.

Layout (`data.path` = the Minari root, e.g. ~/.minari/datasets; `data.dataset_id` = e.g.
'mujoco/hopper/expert-v0'):
  <root>/<id>/data/metadata.json
  <root>/<id>/data/main_data.hdf5 with groups `episode_<i>`, each holding
      observations (T+1, obs)   (the final observation after the last action is dropped)
      actions      (T, act)
      terminations (T,), truncations (T,), rewards (T,)
Episodes are read in the order of <i>; see `base.split_by_episodes` for the split.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from nrc_jax.data.base import RegressionData, check_arrays, data_path, setting, split_by_episodes
from nrc_jax.errors import DataError

EPISODE_GROUP = re.compile(r"^episode_(\d+)$")


def minari_files(name: str, root: str, dataset_id: str) -> tuple[str, str]:
    """(main_data.hdf5, metadata.json) paths, or DataError saying what is missing."""
    expected = "<data.path>/<data.dataset_id>/data/main_data.hdf5 and metadata.json (a Minari dataset folder)"
    if not root:
        raise DataError(f"data set {name!r}: data.path is empty; expected {expected}")
    if not dataset_id:
        raise DataError(f"data set {name!r}: data.dataset_id is empty; expected {expected}")
    data_dir = os.path.join(root, dataset_id, "data")
    files = (os.path.join(data_dir, "main_data.hdf5"), os.path.join(data_dir, "metadata.json"))
    for f in files:
        if not os.path.isfile(f):
            raise DataError(f"data set {name!r}: no such file: {f}; expected {expected}")
    return files


def read_metadata(name: str, path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"data set {name!r}: cannot read {path} as JSON ({e})") from e


def read_minari_episodes(name: str, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """main_data.hdf5 -> (observations (T_total, obs), actions (T_total, act), episode ends)."""
    import h5py  # pylint: disable=import-outside-toplevel

    observations, actions, lengths = [], [], []
    try:
        with h5py.File(path, "r") as f:
            groups = sorted((int(m.group(1)), key) for key in f if (m := EPISODE_GROUP.match(key)))
            if not groups:
                raise DataError(f"data set {name!r}: {path} has no episode_<i> groups; found {sorted(f.keys())[:10]}")
            for _, key in groups:
                obs, act = _episode_arrays(name, path, f[key], key)
                observations.append(obs)
                actions.append(act)
                lengths.append(act.shape[0])
    except OSError as e:
        raise DataError(f"data set {name!r}: cannot read {path} as HDF5 ({e})") from e
    return np.concatenate(observations), np.concatenate(actions), np.cumsum(lengths)


def _episode_arrays(name: str, path: str, group: Any, key: str) -> tuple[np.ndarray, np.ndarray]:
    import h5py  # pylint: disable=import-outside-toplevel

    for field in ("observations", "actions"):
        if field not in group:
            raise DataError(f"data set {name!r}: {path}: {key} lacks {field!r}; found {sorted(group.keys())}")
        if not isinstance(group[field], h5py.Dataset):
            raise DataError(f"data set {name!r}: {path}: {key}/{field} is a group (a dict space); only array "
                            f"observation and action spaces are supported")
    obs, act = np.asarray(group["observations"]), np.asarray(group["actions"])
    if obs.shape[0] != act.shape[0] + 1:
        raise DataError(f"data set {name!r}: {path}: {key} has {obs.shape[0]} observations and {act.shape[0]} "
                        f"actions; Minari stores T+1 observations for T actions")
    return obs[:-1].reshape(act.shape[0], -1), act.reshape(act.shape[0], -1)


def load_minari(cfg: Any) -> RegressionData:
    """`data.name='minari'`: a Minari dataset read straight from its HDF5 file."""
    name, root, dataset_id = "minari", data_path(cfg), setting(cfg, "dataset_id", "")
    data_file, metadata_file = minari_files(name, root, dataset_id)
    metadata = read_metadata(name, metadata_file)
    obs, actions, ends = read_minari_episodes(name, data_file)
    obs, actions = check_arrays(name, data_file, obs, actions, "all")
    x_train, y_train, x_test, y_test, info = split_by_episodes(
        name, data_file, obs, actions, ends, int(setting(cfg, "train_size", 0)), int(setting(cfg, "test_size", 0)))
    info.update(path=os.path.abspath(data_file), dataset_id=metadata.get("dataset_id", dataset_id),
                total_steps=int(ends[-1]))
    return RegressionData(name, x_train, y_train, x_test, y_test, info=info)
