"""Global row-sharded arrays built from each process's own rows, for the multi-process tests.

Process p takes the contiguous global rows `process_rows(M).start : .stop`, pads them to `.size`
rows (`pad_rows`, mask 0 on the padding) and `shard_host_array` assembles the global row-sharded
array from every process's block. The tests use it to check that statistics reduced across
processes equal the one-device values, padding and mask included.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nrc_jax.io.distributed import DATA_AXIS


@dataclasses.dataclass(frozen=True)
class RowShard:
    """The rows one process contributes to a global array sharded over its first (row) axis.

    Attributes:
      start, stop: this process's real rows are global rows [start, stop) (may be empty).
      size: rows this process hands to `shard_host_array`, padding included (same on every process,
        a multiple of its device count).
      global_size: padded global row count = size * process_count; padding sits after row M - 1.
    """

    start: int
    stop: int
    size: int
    global_size: int

    @property
    def num_real(self) -> int:
        return self.stop - self.start


def process_rows(
    num_rows: int,
    num_devices: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> RowShard:
    """Which contiguous slice of the M global rows this process loads.

    The global row count is padded up to a multiple of `num_devices` (all processes' devices,
    default `jax.device_count()`), and split into `process_count` equal contiguous blocks, so the
    global array is the same for any process/device split with the same total device count, and
    its padding is at the end. Processes beyond the data get empty slices (all padding).
    """
    if process_index is None or process_count is None or num_devices is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        num_devices = jax.device_count() if num_devices is None else num_devices
    if num_rows < 0 or not 0 <= process_index < process_count or num_devices % process_count:
        raise ValueError(f"process_rows(num_rows={num_rows}, num_devices={num_devices}, "
                         f"process_index={process_index}, process_count={process_count}): "
                         "need rows >= 0, 0 <= index < count and devices divisible by processes")
    global_size = -(-num_rows // num_devices) * num_devices
    size = global_size // process_count
    start = min(process_index * size, num_rows)
    stop = min(start + size, num_rows)
    return RowShard(start=start, stop=stop, size=size, global_size=global_size)


def pad_rows(local_rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads (r, ...) rows with zero rows to (size, ...); returns (padded, mask (size,) float32 1/0)."""
    r = local_rows.shape[0]
    if r > size:
        raise ValueError(f"pad_rows: {r} rows do not fit in size {size}")
    pad = np.zeros((size - r,) + local_rows.shape[1:], local_rows.dtype)
    mask = np.concatenate([np.ones(r, np.float32), np.zeros(size - r, np.float32)])
    return np.concatenate([local_rows, pad], axis=0), mask


def shard_host_array(mesh: Any, local_rows: Any) -> Any:
    """Builds global arrays sharded over mesh axis 'data' from this process's rows.

    Args:
      mesh: a `jax.sharding.Mesh` with a 'data' axis spanning all processes' devices.
      local_rows: an array (or pytree of arrays) of shape (r, ...), this process's rows in global
        order (see `process_rows`/`pad_rows`); r must be the same on every process and divisible
        by this process's device count in the mesh.

    Returns:
      The global array(s), shape (r * process_count, ...), row-sharded over 'data'.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    local_devices = len(mesh.local_devices)

    def build(x):
        x = np.asarray(x)
        if x.shape[0] % local_devices:
            raise ValueError(f"shard_host_array: {x.shape[0]} local rows do not divide over this "
                             f"process's {local_devices} devices; pad with process_rows/pad_rows first")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(build, local_rows)
