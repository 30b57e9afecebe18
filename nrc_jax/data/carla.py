"""CARLA imitation-learning data (Codevilla et al.): front-camera RGB -> speed and/or steering.

Layouts accepted for `data.path` (a folder):
  1. the original HDF5 files `data_XXXXX.h5`, each with `rgb` (200, 88, 200, 3) uint8 and `targets`
     (200, 28) float (any number of frames per file is accepted), either
       - in subfolders `SeqTrain/` and `SeqVal/` (train and test split as published), or
       - all in `data.path`: split by whole files in name order (consecutive frames of one file never
         land in both splits), as in `base.split_by_episodes`;
  2. plain arrays `images.npy` (N, H, W, 3) uint8 and `targets.npy` (N, 28) in the raw column layout,
     or (N, 2) already [speed, steer], or (N, 1); the first rows train, the last rows test.
Targets (`data.targets`): 'speed_steer' (2D: [speed = column 10, steer = column 0], the default),
'steer' or 'speed' (1D). Images are resized to `data.image_size` (default 224, the paper's) and
normalized per `data.image_normalization`. Splits bigger than `data.max_in_memory_mb` come back as
lazily read `ImageSource`s (stream them with `nrc_jax.data.batches`).
"""
from __future__ import annotations

import collections
import glob
import os
import threading
from typing import Any

import numpy as np

from nrc_jax.data.base import (ImageSource, RegressionData, check_arrays, check_image_normalization, data_path,
                               materialize_if_small, resolve_split_sizes, setting, split_by_episodes)
from nrc_jax.errors import DataError

NAME = "carla"
SPEED_COLUMN, STEER_COLUMN = 10, 0
TARGET_COLUMNS = {"speed_steer": (SPEED_COLUMN, STEER_COLUMN), "steer": (STEER_COLUMN,), "speed": (SPEED_COLUMN,)}
# Position of each choice inside an already reduced (N, 2) = [speed, steer] targets array.
REDUCED_COLUMNS = {"speed_steer": (0, 1), "steer": (1,), "speed": (0,)}
DEFAULT_IMAGE_SIZE = 224
EXPECTED = ("a folder of data_XXXXX.h5 files (rgb (200, 88, 200, 3) uint8, targets (200, 28)), optionally in "
            "SeqTrain/ and SeqVal/, or images.npy (N, H, W, 3) uint8 with targets.npy (N, 28)")
MAX_OPEN_FILES = 128


class H5Frames:
    """Reads frames by global index from a list of CARLA HDF5 files (keeps up to MAX_OPEN_FILES open)."""

    def __init__(self, files: list[str], counts: np.ndarray):
        self.files = files
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self._open: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def _handle(self, file_index: int) -> Any:
        import h5py  # pylint: disable=import-outside-toplevel

        if file_index in self._open:
            self._open.move_to_end(file_index)
        else:
            if len(self._open) >= MAX_OPEN_FILES:
                self._open.popitem(last=False)[1].close()
            self._open[file_index] = h5py.File(self.files[file_index], "r")
        return self._open[file_index]

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        file_of = np.searchsorted(self.offsets, indices, side="right") - 1
        out = None
        with self._lock:
            for file_index in np.unique(file_of):
                rows = np.flatnonzero(file_of == file_index)
                local = indices[rows] - self.offsets[file_index]
                unique_local, inverse = np.unique(local, return_inverse=True)  # h5py wants increasing indices
                frames = self._handle(int(file_index))["rgb"][unique_local][inverse]
                if out is None:
                    out = np.empty((len(indices), *frames.shape[1:]), np.uint8)
                out[rows] = frames
        return out if out is not None else np.empty((0, 1, 1, 3), np.uint8)


def _select_targets(raw: np.ndarray, choice: str, source: str) -> np.ndarray:
    raw = raw.reshape(raw.shape[0], -1)
    if raw.shape[1] > SPEED_COLUMN:
        return raw[:, TARGET_COLUMNS[choice]]
    if raw.shape[1] == 2:
        return raw[:, REDUCED_COLUMNS[choice]]
    if raw.shape[1] == 1 and choice != "speed_steer":
        return raw
    raise DataError(f"data set {NAME!r}: {source}: targets have {raw.shape[1]} columns; expected 28 (raw CARLA, "
                    f"speed = column 10, steer = column 0), 2 ([speed, steer]) or 1 (for data.targets='speed'/'steer')")


def _h5_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.h5")) + glob.glob(os.path.join(folder, "*.hdf5")))


def read_h5_targets(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Checks each file's layout and returns (targets (N, 28) of all files, frames per file)."""
    import h5py  # pylint: disable=import-outside-toplevel

    targets, counts = [], []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("rgb", "targets") if k not in f]
                if missing:
                    raise DataError(f"data set {NAME!r}: {path} lacks {missing}; expected {EXPECTED}")
                rgb, tgt = f["rgb"], np.asarray(f["targets"])
                if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
                    raise DataError(f"data set {NAME!r}: {path}: rgb is {rgb.shape} {rgb.dtype}; expected (N, H, W, 3) uint8")
                if tgt.shape[0] != rgb.shape[0]:
                    raise DataError(f"data set {NAME!r}: {path}: rgb has {rgb.shape[0]} rows but targets has "
                                    f"{tgt.shape[0]} rows; x and y need the same number of rows")
        except OSError as e:
            raise DataError(f"data set {NAME!r}: cannot read {path} as HDF5 ({e}); expected {EXPECTED}") from e
        targets.append(tgt.reshape(tgt.shape[0], -1))
        counts.append(tgt.shape[0])
    return np.concatenate(targets), np.asarray(counts)


def _image_settings(cfg: Any) -> tuple[int, str, float]:
    size = int(setting(cfg, "image_size", 0)) or DEFAULT_IMAGE_SIZE
    normalization = check_image_normalization(NAME, setting(cfg, "image_normalization", "imagenet"))
    return size, normalization, float(setting(cfg, "max_in_memory_mb", 2048))


def _split_h5(cfg: Any, folder: str, choice: str) -> tuple[Any, np.ndarray, Any, np.ndarray, dict]:
    train_size, test_size = int(setting(cfg, "train_size", 0)), int(setting(cfg, "test_size", 0))
    size, normalization, max_mb = _image_settings(cfg)
    train_dir, val_dir = os.path.join(folder, "SeqTrain"), os.path.join(folder, "SeqVal")
    if os.path.isdir(train_dir) and os.path.isdir(val_dir):
        parts = []
        for sub, requested in ((train_dir, train_size), (val_dir, test_size)):
            files = _h5_files(sub)
            if not files:
                raise DataError(f"data set {NAME!r}: {sub} holds no .h5 files; expected {EXPECTED}")
            raw, counts = read_h5_targets(files)
            if requested > raw.shape[0]:
                raise DataError(f"data set {NAME!r} ({sub}): asked for {requested} samples (data.train_size/"
                                f"test_size) but only {raw.shape[0]} are available")
            keep = np.arange(requested or raw.shape[0])
            y = _select_targets(raw, choice, sub)[keep]
            parts.append((ImageSource(H5Frames(files, counts), keep, size, normalization), y, len(files)))
        (src_train, y_train, n_train_files), (src_test, y_test, n_test_files) = parts
        info = {"layout": "SeqTrain/SeqVal", "files_train": n_train_files, "files_test": n_test_files}
    else:
        files = _h5_files(folder)
        if not files:
            raise DataError(f"data set {NAME!r}: {folder} holds no .h5 files, no SeqTrain/SeqVal and no images.npy; "
                            f"expected {EXPECTED}")
        raw, counts = read_h5_targets(files)
        y_all = _select_targets(raw, choice, folder)
        index = np.arange(y_all.shape[0])
        idx_train, y_train, idx_test, y_test, info = split_by_episodes(
            NAME, folder, index, y_all, np.cumsum(counts), train_size, test_size)
        info = {"layout": "h5 folder", "files_total": info["episodes_total"], "files_train": info["episodes_train"]}
        frames = H5Frames(files, counts)
        src_train = ImageSource(frames, idx_train, size, normalization)
        src_test = ImageSource(frames, idx_test, size, normalization)
    return materialize_if_small(src_train, max_mb), y_train, materialize_if_small(src_test, max_mb), y_test, info


def _split_npy(cfg: Any, folder: str, choice: str) -> tuple[Any, np.ndarray, Any, np.ndarray, dict]:
    images_path, targets_path = os.path.join(folder, "images.npy"), os.path.join(folder, "targets.npy")
    if not os.path.isfile(targets_path):
        raise DataError(f"data set {NAME!r}: {folder} has images.npy but no targets.npy; expected {EXPECTED}")
    try:
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        raw = np.load(targets_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"data set {NAME!r}: cannot read {images_path} / {targets_path} as .npy ({e})") from e
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"data set {NAME!r}: {images_path} is {images.shape} {images.dtype}; expected (N, H, W, 3) uint8")
    if images.shape[0] != raw.shape[0]:
        raise DataError(f"data set {NAME!r}: {images_path} has {images.shape[0]} rows but {targets_path} has "
                        f"{raw.shape[0]} rows; x and y need the same number of rows")
    y_all = _select_targets(raw, choice, targets_path)
    n = y_all.shape[0]
    train_size, test_size = resolve_split_sizes(NAME, folder, n, int(setting(cfg, "train_size", 0)),
                                                int(setting(cfg, "test_size", 0)))
    size, normalization, max_mb = _image_settings(cfg)

    def read_raw(idx: np.ndarray) -> np.ndarray:
        order = np.argsort(idx)  # read the memory map front to back, then restore the requested order
        return np.asarray(images[idx[order]])[np.argsort(order)]

    idx_train, idx_test = np.arange(train_size), np.arange(n - test_size, n)
    src_train = ImageSource(read_raw, idx_train, size, normalization)
    src_test = ImageSource(read_raw, idx_test, size, normalization)
    return (materialize_if_small(src_train, max_mb), y_all[idx_train], materialize_if_small(src_test, max_mb),
            y_all[idx_test], {"layout": "npy"})


def load_carla(cfg: Any) -> RegressionData:
    """`data.name='carla'`: CARLA frames -> [speed, steer] (2D) or one of them (1D)."""
    folder = data_path(cfg)
    choice = setting(cfg, "targets", "") or "speed_steer"
    if choice not in TARGET_COLUMNS:
        raise DataError(f"data set {NAME!r}: data.targets={choice!r} is not one of {', '.join(TARGET_COLUMNS)}")
    if not folder:
        raise DataError(f"data set {NAME!r}: data.path is empty; expected {EXPECTED}")
    if not os.path.isdir(folder):
        problem = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise DataError(f"data set {NAME!r}: {folder} (data.path) {problem}; expected {EXPECTED}")
    if os.path.isfile(os.path.join(folder, "images.npy")):
        x_train, y_train, x_test, y_test, info = _split_npy(cfg, folder, choice)
    else:
        x_train, y_train, x_test, y_test, info = _split_h5(cfg, folder, choice)
    x_train, y_train = check_arrays(NAME, folder, x_train, y_train, "train")
    x_test, y_test = check_arrays(NAME, folder, x_test, y_test, "test")
    info.update(path=os.path.abspath(folder), targets=choice)
    return RegressionData(NAME, x_train, y_train, x_test, y_test, info=info)
