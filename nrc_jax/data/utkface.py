"""UTKFace: face crops -> age (1D regression).

`data.path` is a folder (searched recursively) of `<age>_<gender>_<race>_<date&time>.jpg` files (the
aligned-and-cropped release names them `....jpg.chip.jpg`). Files whose name does not follow that
pattern (the release has a few with a missing field) are skipped and counted in
`info['skipped_malformed']`. The split is a seeded permutation (`data.seed`); sizes follow
`base.resolve_split_sizes`. Images are decoded with PIL, resized to `data.image_size` (default 224)
and normalized per `data.image_normalization`; splits bigger than `data.max_in_memory_mb` stream.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from nrc_jax.data.base import (ImageSource, RegressionData, check_arrays, check_image_normalization, data_path,
                               materialize_if_small, resize_image, resolve_split_sizes, setting)
from nrc_jax.errors import DataError

NAME = "utkface"
DEFAULT_IMAGE_SIZE = 224
# age (0-116), gender (0/1), race (0-4), date&time (17 digits in the release; any digits accepted).
FILE_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg(\.chip\.jpg)?$", re.IGNORECASE)
EXPECTED = "a folder of UTKFace images named age_gender_race_date.jpg (or .jpg.chip.jpg)"


def parse_age(file_name: str) -> int | None:
    """Age from a UTKFace file name, or None when the name is malformed."""
    match = FILE_NAME.match(file_name)
    return int(match.group(1)) if match else None


def scan_folder(folder: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(image paths, ages (N,), malformed jpg names) for every .jpg under `folder`, sorted by path."""
    paths, ages, malformed = [], [], []
    for root, _, files in sorted(os.walk(folder)):
        for file_name in sorted(files):
            if not file_name.lower().endswith(".jpg"):
                continue
            age = parse_age(file_name)
            if age is None:
                malformed.append(file_name)
            else:
                paths.append(os.path.join(root, file_name))
                ages.append(age)
    return paths, np.asarray(ages, np.float32), malformed


class JpegReader:
    """Decodes images by index into a list of files: (B,) indices -> (B, H, W, 3) uint8 (one size)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def _decode(self, path: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel

        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"data set {NAME!r}: cannot decode {path} as an image ({e})") from e

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        images = [self._decode(self.paths[i]) for i in indices]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:  # the release is all 200x200; resize odd ones to the first size
            side = images[0].shape[0]
            images = [im if im.shape[:2] == (side, side) else resize_image(im, side) for im in images]
        return np.stack(images) if images else np.empty((0, 1, 1, 3), np.uint8)


def load_utkface(cfg: Any) -> RegressionData:
    """`data.name='utkface'`: the UTKFace folder at `data.path`, target = age in years."""
    folder = data_path(cfg)
    if not folder:
        raise DataError(f"data set {NAME!r}: data.path is empty; expected {EXPECTED}")
    if not os.path.isdir(folder):
        problem = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise DataError(f"data set {NAME!r}: {folder} (data.path) {problem}; expected {EXPECTED}")
    paths, ages, malformed = scan_folder(folder)
    if not paths:
        raise DataError(f"data set {NAME!r}: {folder} holds no well-named .jpg files ({len(malformed)} malformed "
                        f"names skipped); expected {EXPECTED}")
    train_size, test_size = resolve_split_sizes(NAME, folder, len(paths), int(setting(cfg, "train_size", 0)),
                                                int(setting(cfg, "test_size", 0)))
    order = np.random.default_rng(int(setting(cfg, "seed", 0))).permutation(len(paths))
    idx_train, idx_test = order[:train_size], order[train_size:train_size + test_size]
    size = int(setting(cfg, "image_size", 0)) or DEFAULT_IMAGE_SIZE
    normalization = check_image_normalization(NAME, setting(cfg, "image_normalization", "imagenet"))
    max_mb = float(setting(cfg, "max_in_memory_mb", 2048))
    reader = JpegReader(paths)
    x_train = materialize_if_small(ImageSource(reader, idx_train, size, normalization), max_mb)
    x_test = materialize_if_small(ImageSource(reader, idx_test, size, normalization), max_mb)
    x_train, y_train = check_arrays(NAME, folder, x_train, ages[idx_train], "train")
    x_test, y_test = check_arrays(NAME, folder, x_test, ages[idx_test], "test")
    info = {"path": os.path.abspath(folder), "images_found": len(paths), "skipped_malformed": len(malformed),
            "malformed_examples": malformed[:5]}
    return RegressionData(NAME, x_train, y_train, x_test, y_test, info=info)
