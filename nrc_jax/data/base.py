"""The container every loader returns, and checks and splits shared by all loaders.

Inputs are either numpy arrays (tabular sets and small image sets, loaded whole) or an
`ArraySource`: a lazily indexed stand-in for a large image array that `nrc_jax.data.batches`
streams batch by batch. Targets are always numpy arrays in host memory (they are small).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nrc_jax.errors import DataError

# The largest |value| accepted in inputs and targets. Training squares them (MSE, covariances, the
# feature statistics) in float32, whose largest value is 3.4e38: (1e12)^2 summed over 1e7 rows is
# 1e31, still far from overflow. Larger values are refused with a hint to rescale the data.
MAX_MAGNITUDE = 1e12


@runtime_checkable
class ArraySource(Protocol):
    """A read-only, lazily indexed array of samples (e.g. images decoded and resized on demand).

    `source[indices]` with a 1-D integer array (any order, repeats allowed) returns the rows as a
    numpy array of shape (len(indices), *shape[1:]) and dtype `dtype`, exactly what
    `np.asarray(full_array)[indices]` would give. `shape[0] == len(source)`. Implementations must be
    safe to call from one background thread (the prefetcher) while the main thread waits.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


def is_streamed(x: Any) -> bool:
    """True for an `ArraySource` that is not an in-memory numpy array."""
    return not isinstance(x, np.ndarray)


@dataclasses.dataclass(frozen=True)
class RegressionData:
    """A regression data set held in host memory.

    Attributes:
      name: the registry name it was loaded by.
      x_train: (M, ...) float32 inputs (tabular (M, p); images (M, H, W, C)): a numpy array, or for
        large image sets an `ArraySource` to stream with `nrc_jax.data.batches.iterate_batches`.
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

    @property
    def train_size(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.y_test.shape[0])

    @property
    def streamed(self) -> bool:
        """True when the inputs are `ArraySource`s (stream them in batches, do not materialize)."""
        return is_streamed(self.x_train) or is_streamed(self.x_test)


def check_arrays(name: str, source: str, x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split and returns it as float32 with 2-D targets.

    Raises DataError naming the data set, the source path and what is wrong: row-count mismatch
    (message says "rows"), targets of dimension 0, complex or non-numeric dtypes, non-finite values
    (count and first index, message says "nan"/"inf"), values beyond `MAX_MAGNITUDE` (float32's
    range included: float64 values that would overflow on conversion).
    """
    x = x if is_streamed(x) else np.asarray(x)
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise DataError(f"data set {name!r} ({source}): {split} targets must be (rows, n), got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"data set {name!r} ({source}): {split} inputs have {x.shape[0]} rows but targets have "
            f"{y.shape[0]} rows; x and y need the same number of rows")
    if y.shape[1] == 0:
        raise DataError(f"data set {name!r} ({source}): {split} targets have shape {y.shape}: target "
                        "dimension 0; need at least one target column")
    for label, dtype in (("inputs", x.dtype), ("targets", y.dtype)):
        if np.issubdtype(dtype, np.complexfloating):
            raise DataError(f"data set {name!r} ({source}): {split} {label} have complex dtype {dtype}; "
                            "expected real numbers (split real and imaginary parts into columns)")
        if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
            raise DataError(f"data set {name!r} ({source}): {split} {label} have dtype {dtype}; expected numbers")
    if x.shape[0] == 0:
        raise DataError(f"data set {name!r} ({source}): {split} split has 0 rows")
    checked = (("targets", y),) if is_streamed(x) else (("inputs", x), ("targets", y))
    for label, arr in checked:
        if np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1))
                kinds = "nan" if np.isnan(arr).any() else "inf"
                raise DataError(
                    f"data set {name!r} ({source}): {split} {label} contain {int(bad.sum())} non-finite "
                    f"values ({kinds}/inf check), first at row {int(rows[0])}")
        check_magnitude(name, source, arr, f"{split} {label}")
    if not is_streamed(x) and x.dtype != np.uint8:
        x = x.astype(np.float32)
    return x, y.astype(np.float32)


def check_magnitude(name: str, source: str, arr: np.ndarray, what: str) -> None:
    """Raises DataError when a value of `arr` (finite, real; any shape (M, ...)) exceeds MAX_MAGNITUDE."""
    if arr.size == 0 or np.issubdtype(arr.dtype, np.bool_) or (
            np.issubdtype(arr.dtype, np.integer) and np.iinfo(arr.dtype).max <= MAX_MAGNITUDE):
        return
    largest = max(abs(float(arr.max())), abs(float(arr.min())))  # no copy of a large array
    if largest > MAX_MAGNITUDE:
        flat = np.abs(arr.reshape(arr.shape[0], -1).astype(np.float64))
        row = int(np.flatnonzero((flat > MAX_MAGNITUDE).any(axis=1))[0])
        beyond = " (beyond float32's range, 3.4e38)" if largest > float(np.finfo(np.float32).max) else ""
        raise DataError(f"data set {name!r} ({source}): {what} reach |value| = {largest:.3g}{beyond}, first at "
                        f"row {row}; the largest accepted is {MAX_MAGNITUDE:g} (squares must fit float32): "
                        "rescale the data (standardize the inputs; data.target_transform='standardize' for targets)")


def check_finite_batch(name: str, source: str, x: np.ndarray) -> np.ndarray:
    """Non-finite and magnitude check for one streamed batch of inputs (lazy sources are checked as
    they are read)."""
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if bad.any():
        raise DataError(f"data set {name!r} ({source}): inputs contain nan/inf, first in batch row "
                        f"{int(np.flatnonzero(bad)[0])}")
    check_magnitude(name, source, x, "inputs of a streamed batch")
    return x


def resolve_split_sizes(name: str, source: str, available: int, train_size: int, test_size: int) -> tuple[int, int]:
    """Train/test sample counts from the config; 0 means "the default".

    The default test size is 20% of the training size (the paper's rule); the default training size
    is as many samples as leave room for that test split (5/6 of what is available). Raises DataError
    when the request does not fit.
    """
    if train_size < 0 or test_size < 0:
        raise DataError(f"data set {name!r}: data.train_size/test_size must be >= 0, got {train_size}/{test_size}")
    if train_size == 0:
        train_size = available - (test_size if test_size else available // 6)
    if test_size == 0:
        test_size = max(1, round(0.2 * train_size))
    if train_size < 1 or train_size + test_size > available:
        raise DataError(
            f"data set {name!r} ({source}): asked for {train_size} train + {test_size} test samples "
            f"(data.train_size, data.test_size) but only {available} are available")
    return train_size, test_size


def episode_ends(terminals: np.ndarray, timeouts: np.ndarray | None = None) -> np.ndarray:
    """(T,) step flags -> exclusive end index of every episode (an episode ends at a terminal or a
    timeout; steps after the last flag form a final, unfinished episode)."""
    done = np.asarray(terminals, bool).reshape(-1)
    if timeouts is not None:
        done = done | np.asarray(timeouts, bool).reshape(-1)
    ends = np.flatnonzero(done) + 1
    if ends.size == 0 or ends[-1] != done.shape[0]:
        ends = np.append(ends, done.shape[0])
    return ends


def split_by_episodes(name: str, source: str, x: np.ndarray, y: np.ndarray, ends: np.ndarray,
                      train_size: int, test_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Splits (T, ...) step arrays into train/test by whole episodes, in file order.

    Training samples come from the first episodes (the last one used is cut to reach exactly
    `train_size`); test samples from the episodes after it, so no episode is in both splits. With
    train_size = 0 the training split is the most whole episodes that leave `test_size` (default:
    20% of the training size) for the test split, and with both 0 the test split is all the rest.
    Returns (x_train, y_train, x_test, y_test, info).
    """
    starts = np.concatenate([[0], ends[:-1]])
    if train_size == 0 and len(ends) > 1:  # default: whole episodes, leaving at least the test size after them
        after = int(ends[-1]) - ends[:-1]
        fits = np.flatnonzero(after >= (test_size if test_size else np.round(0.2 * ends[:-1])))
        if fits.size:
            train_size = int(ends[fits[-1]])
            test_size = test_size or int(after[fits[-1]])
    train_size, test_size = resolve_split_sizes(name, source, int(ends[-1]), train_size, test_size)
    # First episode whose end reaches train_size: the test split starts at the next episode start.
    last_train_episode = int(np.searchsorted(ends, train_size))
    test_start = int(ends[last_train_episode]) if last_train_episode < len(ends) else int(ends[-1])
    available_test = int(ends[-1]) - test_start
    if available_test < test_size:
        raise DataError(
            f"data set {name!r} ({source}): after {train_size} training samples (episodes 0..{last_train_episode}) "
            f"only {available_test} samples of whole later episodes remain, fewer than the {test_size} test samples "
            f"asked for (data.test_size)")
    test_end = test_start + test_size
    info = {"episodes_total": int(len(ends)), "episodes_train": last_train_episode + 1,
            "episodes_test": int(np.searchsorted(starts, test_end, side="left") - last_train_episode - 1)}
    return x[:train_size], y[:train_size], x[test_start:test_end], y[test_start:test_end], info


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_NORMALIZATIONS = ("imagenet", "unit")


def check_image_normalization(name: str, normalization: str) -> str:
    if normalization not in IMAGE_NORMALIZATIONS:
        raise DataError(f"data set {name!r}: data.image_normalization={normalization!r} is not one of "
                        f"{', '.join(IMAGE_NORMALIZATIONS)}")
    return normalization


def normalize_images(images: np.ndarray, normalization: str) -> np.ndarray:
    """(B, H, W, 3) uint8 (or float in [0, 1]) -> float32 in [0, 1] ('unit') or ImageNet-normalized."""
    unit = np.float32(1 / 255) if images.dtype == np.uint8 else np.float32(1)
    if normalization != "imagenet":
        return images.astype(np.float32) * unit
    out = np.empty(images.shape, np.float32)  # one multiply-add in place instead of divide, subtract, divide
    np.multiply(images, unit / IMAGENET_STD, out=out)
    return np.add(out, -IMAGENET_MEAN / IMAGENET_STD, out=out)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) uint8, bilinear (PIL, antialiased when shrinking)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def data_path(cfg: Any) -> str:
    """`data.path` with `~` expanded ('' when unset)."""
    return os.path.expanduser(str(setting(cfg, "path", "")))


def setting(cfg: Any, key: str, default: Any) -> Any:
    """`cfg.key` if the config has it (user configs may predate a field), else `default`."""
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


class ImageSource:
    """An `ArraySource` of images decoded, resized and normalized on demand.

    Args:
      read_raw: maps a 1-D array of *global* indices to (B, H, W, 3) uint8 images (any H, W).
      indices: (N,) the global indices that form this split, in order.
      size: square side of the output images.
      normalization: 'imagenet' or 'unit' (see `normalize_images`).
    `source[i]` returns (len(i), size, size, 3) float32.
    """

    def __init__(self, read_raw: Any, indices: np.ndarray, size: int, normalization: str):
        self._read_raw = read_raw
        self.indices = np.asarray(indices, np.int64)
        self.size = int(size)
        self.normalization = normalization
        self.shape = (int(self.indices.shape[0]), self.size, self.size, 3)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        raw = self._read_raw(self.indices[np.asarray(idx, np.int64).reshape(-1)])
        resized = np.stack([resize_image(img, self.size) for img in raw]) if len(raw) else raw
        return normalize_images(resized.reshape(-1, self.size, self.size, raw.shape[-1]), self.normalization)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def materialize_if_small(source: ImageSource, max_in_memory_mb: float) -> np.ndarray | ImageSource:
    """The whole split as a numpy array when it fits in `max_in_memory_mb` (as float32), else the source."""
    if source.nbytes > max_in_memory_mb * 2**20:
        return source
    out = np.empty(source.shape, source.dtype)
    for start in range(0, len(source), 1024):  # chunks bound the temporary uint8/float copies
        stop = min(len(source), start + 1024)
        out[start:stop] = source[np.arange(start, stop)]
    return out


TABLE1_KEYS = ("name", "train_size", "test_size", "input_shape", "target_dim", "target_correlation",
               "lambda_min", "lambda_max")


def target_correlation(y: np.ndarray) -> float | list[float] | None:
    """Pearson correlation of the (M, n) targets: None for n = 1, a float for n = 2, else the
    upper-triangle pairs (0,1), (0,2), ..., (1,2), ... as a list (the paper's Table 1 form)."""
    n = y.shape[1]
    if n == 1:
        return None
    corr = np.corrcoef(np.asarray(y, np.float64), rowvar=False)
    pairs = [float(corr[i, j]) for i in range(n) for j in range(i + 1, n)]
    return pairs[0] if n == 2 else pairs


def table1_row(data: RegressionData) -> dict:
    """The paper's Table 1 row of `data` from its training targets (Sigma = centered covariance / M)."""
    y = np.asarray(data.y_train, np.float64)
    centered = y - y.mean(axis=0)[None, :]
    eigvals = np.linalg.eigvalsh(centered.T @ centered / y.shape[0])
    return {"name": data.name, "train_size": data.train_size, "test_size": data.test_size,
            "input_shape": list(data.input_shape), "target_dim": data.target_dim,
            "target_correlation": target_correlation(y), "lambda_min": float(eigvals[0]),
            "lambda_max": float(eigvals[-1])}
