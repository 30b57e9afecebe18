"""An embedded image regression set, rendered procedurally (no download), for the ResNet path on a CPU.

Each RGB image shows one shape (a disc or a square, chosen at random as a nuisance factor) in a
random colour on a random two-colour gradient background with mild pixel noise. Targets
(`data.targets`):
  'x_y_size' (default, n = 3): centre x, centre y (fractions of the image side, in [0.2, 0.8]) and the
             half-size (fraction of the side, about [0.06, 0.22]);
  'x_y'      (n = 2): the centre only.
The size grows with y (a perspective-like effect: lower objects look bigger), so the targets are
correlated as in the real sets, not an identity covariance. Everything is a pure function of
`data.seed` and the sample index: the same seed gives the same images at any split size.
Defaults: 32x32x3 (`data.image_size`), 2,000 train / 400 test (`data.train_size`/`test_size`).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from nrc_jax.data.base import (ImageSource, RegressionData, check_arrays, check_image_normalization,
                               materialize_if_small, setting)
from nrc_jax.errors import DataError

NAME = "synthetic_images"
DEFAULT_IMAGE_SIZE = 32
DEFAULT_TRAIN_SIZE, DEFAULT_TEST_SIZE = 2000, 400
TARGET_CHOICES = {"x_y_size": 3, "x_y": 2}
NOISE_STD = 8.0  # pixel noise in uint8 units
SPLIT_STREAMS = {"train": 0, "test": 1}


def sample_scenes(seed: int, split: str, count: int) -> dict[str, np.ndarray]:
    """Scene parameters of `count` images: centre (count, 2), half_size (count,), is_square (count,),
    colours fg (count, 3), bg_a/bg_b (count, 3) in [0, 255], gradient angle (count,)."""
    # One row of uniforms per image, drawn row by row: scene i is the same for every `count` > i.
    u = np.random.default_rng((seed, SPLIT_STREAMS[split])).random((count, 14))
    centre = 0.2 + 0.6 * u[:, 0:2]
    half_size = np.clip(0.10 + 0.12 * (centre[:, 1] - 0.5) + 0.08 * (u[:, 2] - 0.5), 0.06, 0.22)
    return {
        "centre": centre,
        "half_size": half_size,
        "is_square": u[:, 3] < 0.5,
        "fg": 255 * u[:, 4:7],
        "bg_a": 255 * u[:, 7:10],
        "bg_b": 255 * u[:, 10:13],
        "angle": 2 * np.pi * u[:, 13],
    }


def scene_targets(scenes: dict[str, np.ndarray], choice: str) -> np.ndarray:
    """(count, n) targets: [x, y, half_size] or [x, y]."""
    columns = [scenes["centre"][:, 0], scenes["centre"][:, 1], scenes["half_size"]]
    return np.stack(columns[:TARGET_CHOICES[choice]], axis=1).astype(np.float32)


def render(scenes: dict[str, np.ndarray], indices: np.ndarray, size: int, seed: int, split: str) -> np.ndarray:
    """Renders scenes[indices] -> (B, size, size, 3) uint8 with an antialiased shape edge."""
    scenes = {k: v[indices].astype(np.float32) if v.dtype != bool else v[indices] for k, v in scenes.items()}
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres in [0, 1]
    px, py = coords[None, None, :], coords[None, :, None]  # x along width, y along height
    c = scenes["centre"]
    dx, dy = px - c[:, 0, None, None], py - c[:, 1, None, None]
    distance = np.where(scenes["is_square"][:, None, None], np.maximum(np.abs(dx), np.abs(dy)),
                        np.sqrt(dx**2 + dy**2))
    coverage = np.clip((scenes["half_size"][:, None, None] - distance) * size + 0.5, 0.0, 1.0)[..., None]
    angle = scenes["angle"]
    ramp = (np.cos(angle)[:, None, None] * (px - 0.5) + np.sin(angle)[:, None, None] * (py - 0.5) + 0.75) / 1.5
    ramp = ramp[..., None]
    background = (1 - ramp) * scenes["bg_a"][:, None, None, :] + ramp * scenes["bg_b"][:, None, None, :]
    image = (1 - coverage) * background + coverage * scenes["fg"][:, None, None, :]
    noise = np.stack([np.random.default_rng((seed, SPLIT_STREAMS[split], 2, int(i))).normal(0.0, NOISE_STD, image.shape[1:]).astype(np.float32)
                      for i in indices]) if len(indices) else 0.0
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def load_synthetic_images(cfg: Any) -> RegressionData:
    """`data.name='synthetic_images'`: rendered shapes -> position (and size)."""
    choice = setting(cfg, "targets", "") or "x_y_size"
    if choice not in TARGET_CHOICES:
        raise DataError(f"data set {NAME!r}: data.targets={choice!r} is not one of {', '.join(TARGET_CHOICES)}")
    seed = int(setting(cfg, "seed", 0))
    sizes = {"train": int(setting(cfg, "train_size", 0)) or DEFAULT_TRAIN_SIZE,
             "test": int(setting(cfg, "test_size", 0)) or DEFAULT_TEST_SIZE}
    if min(sizes.values()) < 0:
        raise DataError(f"data set {NAME!r}: data.train_size/test_size must be >= 0, got {sizes}")
    size = int(setting(cfg, "image_size", 0)) or DEFAULT_IMAGE_SIZE
    if size < 8:
        raise DataError(f"data set {NAME!r}: data.image_size={size} is too small to draw shapes; use >= 8")
    normalization = check_image_normalization(NAME, setting(cfg, "image_normalization", "imagenet"))
    max_mb = float(setting(cfg, "max_in_memory_mb", 2048))
    splits = {}
    for split, count in sizes.items():
        scenes = sample_scenes(seed, split, count)
        draw = functools.partial(render, scenes, size=size, seed=seed, split=split)
        x = materialize_if_small(ImageSource(draw, np.arange(count), size, normalization), max_mb)
        splits[split] = check_arrays(NAME, "rendered", x, scene_targets(scenes, choice), split)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    info = {"seed": seed, "image_size": size, "targets": choice, "normalization": normalization}
    return RegressionData(NAME, x_train, y_train, x_test, y_test, info=info)
