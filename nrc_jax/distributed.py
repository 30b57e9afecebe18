"""Multi-process start-up and the per-process view of the data: one code path for 1 to N processes.

Every process runs the same program. `maybe_initialize()` joins the processes into one JAX runtime
(or does nothing for a single process); afterwards `jax.devices()` lists every process's devices
and a `Mesh(jax.devices(), ('data',))` spans them all. Data a process cannot (or should not) hold
whole is split by rows (samples): process p loads the contiguous global rows
`process_rows(M).start : .stop`, pads them to `.size` rows (`pad_rows`, mask 0 on the padding) and
`shard_host_array` assembles the global row-sharded array from every process's block.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from nrc_jax.errors import ConfigError, UserError

# Our own variables for loopback runs (launch/local_multihost.sh sets them).
ENV_COORDINATOR = "NRC_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "NRC_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "NRC_JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "NRC_JAX_LOCAL_DEVICE_IDS"
ENV_INIT_TIMEOUT = "NRC_JAX_INIT_TIMEOUT"
# "auto": call jax.distributed.initialize() and let JAX detect the cluster (TPU pods, Kubernetes);
# "off": stay single-process even inside a SLURM/Open MPI allocation.
ENV_MODE = "NRC_JAX_DISTRIBUTED"

DEFAULT_INIT_TIMEOUT_S = 300
DATA_AXIS = "data"

# Cluster environments `jax.distributed.initialize()` recognizes from plain environment variables
# (the same variables JAX's own SLURM and Open MPI detectors require).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OPEN_MPI_VAR = "OMPI_MCA_orte_hnp_uri"

log = logging.getLogger(__name__)


class DistributedError(UserError, RuntimeError):
    """The processes could not join (coordinator unreachable, peers missing); says which and why."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where the arguments of `jax.distributed.initialize()` come from.

    `source` is "explicit", "env", "cluster" or "none". For "cluster" the other fields stay None and
    JAX detects them; for "none" the run is a single process and nothing is initialized.
    """

    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    initialization_timeout: int = DEFAULT_INIT_TIMEOUT_S


def resolve_settings(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Decides how (and whether) to initialize, without touching JAX.

    Precedence, first match wins:
      1. explicit arguments (main's absl flags): coordinator_address, num_processes, process_id;
      2. our loopback variables NRC_JAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID
         (+ optional NRC_JAX_LOCAL_DEVICE_IDS);
      3. the cluster's environment: SLURM (under srun), Open MPI, or NRC_JAX_DISTRIBUTED=auto
         (TPU pods, Kubernetes): `jax.distributed.initialize()` reads it itself;
      4. nothing: a single process, no initialization.
    NRC_JAX_DISTRIBUTED=off skips 3. The timeout is the argument, else NRC_JAX_INIT_TIMEOUT, else
    300 s.

    Raises:
      ConfigError: a partial or malformed setting; the message names the flag or variable.
    """
    env = os.environ if environ is None else environ
    timeout = _resolve_timeout(initialization_timeout, env)
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    if any(v is not None for v in explicit.values()):
        return _complete_settings("explicit", explicit, local_device_ids, timeout, names={
            "coordinator_address": "--coordinator_address", "num_processes": "--num_processes",
            "process_id": "--process_id"})
    from_env = {"coordinator_address": env.get(ENV_COORDINATOR), "num_processes": env.get(ENV_NUM_PROCESSES),
                "process_id": env.get(ENV_PROCESS_ID)}
    if any(v for v in from_env.values()):
        ids = env.get(ENV_LOCAL_DEVICE_IDS)
        parsed_ids = _parse_int_list(ids, ENV_LOCAL_DEVICE_IDS) if ids else None
        return _complete_settings("env", from_env, parsed_ids, timeout, names={
            "coordinator_address": ENV_COORDINATOR, "num_processes": ENV_NUM_PROCESSES,
            "process_id": ENV_PROCESS_ID})
    mode = env.get(ENV_MODE, "").strip().lower()
    if mode not in ("", "auto", "off"):
        raise ConfigError(f"{ENV_MODE}={env[ENV_MODE]!r}: allowed values are 'auto' and 'off'")
    if mode == "auto" or (mode != "off" and cluster_detected(env)):
        return Settings("cluster", initialization_timeout=timeout)
    return Settings("none", initialization_timeout=timeout)


def cluster_detected(environ: Mapping[str, str] | None = None) -> bool:
    """True inside an `srun` step of SLURM or an Open MPI launch (where JAX auto-detects)."""
    env = os.environ if environ is None else environ
    return all(v in env for v in _SLURM_VARS) or _OPEN_MPI_VAR in env


def maybe_initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int | None = None,
) -> Settings:
    """Joins this process to the others (see `resolve_settings` for where settings come from).

    Call once, before any JAX computation (even `jax.devices()`). A single process does nothing.
    Selects gloo for cross-process collectives on CPU (no effect on GPU/TPU computations).

    Raises:
      ConfigError: partial or malformed settings.
      DistributedError: the coordinator was not reached (or peers did not join) within the timeout;
        the message names the coordinator address and the timeout.
    """
    settings = resolve_settings(coordinator_address, num_processes, process_id, local_device_ids,
                                initialization_timeout)
    if settings.source == "none":
        return settings
    if settings.source != "cluster":
        _announce(settings)
        if settings.process_id != 0:  # probe before importing JAX: fails fast, with a message
            wait_for_coordinator(settings.coordinator_address, settings.initialization_timeout,
                                 settings.process_id)
    import jax

    if jax.distributed.is_initialized():
        return settings
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {"initialization_timeout": settings.initialization_timeout}
    if settings.source != "cluster":
        kwargs.update(coordinator_address=settings.coordinator_address,
                      num_processes=settings.num_processes, process_id=settings.process_id,
                      local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None)
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError, RuntimeError) as e:  # no cluster found, or JAX already started
        raise DistributedError(f"jax.distributed.initialize() from the {settings.source} settings "
                               f"failed: {_first_line(e)}") from e
    log.info("joined %d processes as process %d", jax.process_count(), jax.process_index())
    return settings


def wait_for_coordinator(address: str, timeout_s: float, process_id: int | None = None) -> None:
    """Waits until the coordinator accepts TCP connections, at most `timeout_s` seconds.

    JAX aborts the whole process (no Python exception) when it cannot register with the
    coordinator, so a non-coordinator process probes the address first to fail with a message.

    Raises:
      DistributedError: naming the address and the timeout.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(2.0, timeout_s)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"process {process_id if process_id is not None else '?'} could not reach the "
                    f"coordinator at {address} within initialization_timeout={timeout_s:g} s ({e}); "
                    f"is process 0 running and is the address reachable from this host? Set "
                    f"{ENV_INIT_TIMEOUT} to wait longer.") from None
            time.sleep(0.25)


def exit_process(code: int) -> NoReturn:
    """Ends this process now with `code` (the CLIs call it after printing a UserError).

    In a multi-process run it skips JAX's exit-time shutdown barrier, which would otherwise keep a
    failed process alive (up to the shutdown timeout) waiting for peers that are themselves
    blocked in a collective waiting for it; the launcher (or srun --kill-on-bad-exit) then stops
    the others at once.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1:
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


_barrier_count = itertools.count()


def barrier(name: str, timeout_s: int = DEFAULT_INIT_TIMEOUT_S) -> None:
    """Waits until every process reaches this point (no-op for one process).

    Uses the coordination service (not a device collective), so it works while processes are far
    apart in time; raises after `timeout_s`. Every process must call it the same number of times.
    """
    import jax
    from jax._src import distributed as jax_distributed

    if jax.process_count() == 1:
        return
    # The coordination service's key-value barrier (what Orbax and JAX's own serialization use);
    # orbax.checkpoint.multihost.sync_global_processes would first run a device collective.
    client = jax_distributed.global_state.client
    client.wait_at_barrier(f"nrc_jax_{next(_barrier_count)}_{name}", timeout_in_ms=int(timeout_s * 1000))


def compile_together(name: str, jitted: Any, *args: Any, **kwargs: Any) -> Any:
    """AOT-compiles `jitted` for these arguments, then waits for every process to have done so.

    Returns the compiled executable: call it instead of `jitted` (same arguments' shapes). Why:
    on CPU, gloo connects the peers of each new collective on first use with a fixed 30 s
    deadline, so a process that compiles a big program more than 30 s after the others (a loaded
    host) fails with "Gloo context initialization failed". Harmless on GPU/TPU.
    """
    compiled = jitted.lower(*args, **kwargs).compile()
    barrier(f"compiled_{name}")
    return compiled


def is_primary() -> bool:
    """True on the one process that writes logs, metrics and summaries (process 0)."""
    import jax

    return jax.process_index() == 0


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


def check_batch_divides(global_batch: int, num_processes: int, num_devices: int) -> int:
    """Checks train.batch_size splits evenly over processes and devices; returns the per-process batch.

    Raises:
      ConfigError: naming train.batch_size, the process count and the device count.
    """
    if global_batch <= 0 or global_batch % num_devices or global_batch % num_processes:
        raise ConfigError(
            f"train.batch_size={global_batch} must be a positive multiple of the device count "
            f"{num_devices} (over {num_processes} processes), so each of the {num_processes} "
            f"processes loads batch_size / {num_processes} rows and each device the same number; "
            f"e.g. use {max(num_devices, global_batch // num_devices * num_devices)}")
    return global_batch // num_processes


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


def _complete_settings(source: str, values: dict, local_device_ids: Sequence[int] | None, timeout: int,
                       names: dict[str, str]) -> Settings:
    missing = [names[k] for k, v in values.items() if v is None or v == ""]
    if missing:
        raise ConfigError(f"multi-process settings from the {source} settings are incomplete: "
                          f"{', '.join(missing)} not set (set all of {', '.join(names.values())})")
    address = str(values["coordinator_address"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{names['coordinator_address']}={address!r}: expected host:port")
    count = _parse_int(values["num_processes"], names["num_processes"])
    index = _parse_int(values["process_id"], names["process_id"])
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"{names['process_id']}={index} with {names['num_processes']}={count}: "
                          "need num_processes >= 1 and 0 <= process_id < num_processes")
    ids = tuple(int(i) for i in local_device_ids) if local_device_ids else None
    return Settings(source, address, count, index, ids, timeout)


def _resolve_timeout(argument: int | None, env: Mapping[str, str]) -> int:
    if argument is not None:
        value, name = argument, "initialization_timeout"
    elif env.get(ENV_INIT_TIMEOUT):
        value, name = _parse_int(env[ENV_INIT_TIMEOUT], ENV_INIT_TIMEOUT), ENV_INIT_TIMEOUT
    else:
        return DEFAULT_INIT_TIMEOUT_S
    if int(value) < 1:
        raise ConfigError(f"{name}={value}: must be a positive number of seconds")
    return int(value)


def _parse_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected an integer") from None


def _parse_int_list(value: str, name: str) -> tuple[int, ...]:
    return tuple(_parse_int(v.strip(), name) for v in value.split(",") if v.strip())


def _announce(settings: Settings) -> None:
    # Printed before joining: if JAX aborts the process later (e.g. process 0 waiting for peers
    # that never come), this line says what it was waiting for.
    print(f"nrc_jax.distributed: process {settings.process_id}/{settings.num_processes} joining the "
          f"coordinator at {settings.coordinator_address} (timeout {settings.initialization_timeout} s)",
          file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
