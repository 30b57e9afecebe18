"""Host-side batch streaming with prefetch threads, for image sets too large for device memory.

Tabular sets are small: put them on the devices whole (`jax.device_put(x, sharding)`). Image sets
(`RegressionData.streamed`, inputs are an `ArraySource`) are read batch by batch:

    for x, y in iterate_batches(data.x_train, data.y_train, batch_size=512, seed=0, epoch=e,
                                to_device=lambda b: jax.device_put(b, sharding)):
        state, metrics = train_step(state, x, y)

Background threads (`num_workers`) read (decode, resize, normalize) and optionally place the next
`prefetch` batches while the accelerator works on the current one. Multi-host: every process walks the same
seeded permutation and keeps its own contiguous `batch_size // process_count` rows of each global
batch (use `jax.make_array_from_process_local_data` in `to_device`).
"""
from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Callable, Iterator

import numpy as np

from nrc_jax.data.base import check_finite_batch, is_streamed
from nrc_jax.errors import ConfigError

def num_batches(num_samples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches per epoch over `num_samples` rows."""
    return num_samples // batch_size if drop_remainder else -(-num_samples // batch_size)


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """(num_samples,) the row order of one epoch: a permutation seeded by (seed, epoch), or identity."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng((seed, epoch)).permutation(num_samples)


def batch_indices(num_samples: int, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                  drop_remainder: bool = True, process_index: int = 0, process_count: int = 1) -> list[np.ndarray]:
    """Row indices of this process's part of every global batch of one epoch."""
    if batch_size < 1 or batch_size % process_count:
        raise ConfigError(f"batch size {batch_size} must be >= 1 and divisible by the process count {process_count}")
    order = epoch_order(num_samples, seed, epoch, shuffle)
    per_process = batch_size // process_count
    batches = []
    for b in range(num_batches(num_samples, batch_size, drop_remainder)):
        global_batch = order[b * batch_size:(b + 1) * batch_size]
        local = len(global_batch) // process_count if len(global_batch) < batch_size else per_process
        batches.append(global_batch[process_index * local:(process_index + 1) * local])
    return batches


def _read(x: Any, y: np.ndarray, idx: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    xb = x[idx]
    if is_streamed(x):  # lazily read data was never checked as a whole
        xb = check_finite_batch(name, "streamed batch", np.asarray(xb))
    return xb, y[idx]


def iterate_batches(x: Any, y: np.ndarray, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                    drop_remainder: bool = True, prefetch: int = 2, num_workers: int = 1, process_index: int = 0,
                    process_count: int = 1, to_device: Callable[[Any], Any] | None = None,
                    name: str = "data") -> Iterator[tuple[Any, Any]]:
    """Yields (x_batch (B, ...), y_batch (B, n)) for one epoch, read ahead on background threads.

    Args:
      x: (M, ...) numpy array or `ArraySource`; y: (M, n) numpy targets.
      batch_size: the global batch size (each process yields batch_size // process_count rows).
      prefetch: batches read ahead (0 reads in the calling thread, no thread).
      num_workers: threads reading batches in parallel (decoding and resizing release the GIL);
        batches are still yielded in order.
      to_device: applied to each (x_batch, y_batch) pair on the reader thread, e.g. a sharded
        `jax.device_put`, so host-to-device copies overlap compute too.
      name: the data set name used in error messages.
    Errors raised while reading are re-raised in the caller, in batch order. Closing the generator
    early cancels the batches not yet started and waits for the running ones.
    """
    if len(x) != y.shape[0]:
        raise ConfigError(f"data set {name!r}: inputs have {len(x)} rows, targets {y.shape[0]}")
    if num_workers < 1 or prefetch < 0:
        raise ConfigError(f"num_workers must be >= 1 and prefetch >= 0, got {num_workers} and {prefetch}")
    indices = batch_indices(len(x), batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                            drop_remainder=drop_remainder, process_index=process_index, process_count=process_count)

    def load(idx: np.ndarray) -> Any:
        batch = _read(x, y, idx, name)
        return to_device(batch) if to_device else batch

    if prefetch == 0:
        for idx in indices:
            yield load(idx)
        return
    in_flight_limit = max(prefetch, num_workers)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="nrc-prefetch")
    pending: collections.deque = collections.deque()
    try:
        for idx in indices:
            pending.append(pool.submit(load, idx))
            if len(pending) > in_flight_limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
