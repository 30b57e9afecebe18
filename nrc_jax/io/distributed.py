"""Multi-process start-up: one code path for 1 to N processes.

Every process runs the same program. `maybe_initialize()` joins the processes into one JAX runtime
(or does nothing for a single process); afterwards `jax.devices()` lists every process's devices
and a `Mesh(jax.devices(), ('data',))` spans them all. Every process loads a tabular data set
whole; streamed (image) data is read per process, each its rows of every global batch
(`nrc_jax.data.batches`). `compile_together` compiles a program on every process before any of
them runs it.

Faults. A multi-process run also starts a `PeerWatch`: every process keeps a TCP connection to
process 0 with a heartbeat every `HEARTBEAT_S` seconds. A process that dies (kill -9, a crash, a
lost host) closes its connection or stops beating; the survivors then print one `error:` line
naming it and exit with status 2: at once when the connection closes, after `PEER_TIMEOUT_S`
seconds of silence otherwise (a hung or unreachable host), so every survivor ends within
`PEER_TIMEOUT_S` + a few seconds (<= 60 s), with or without launch/local_multihost.sh. A process
that stops with an error (`exit_process`) tells the others, which stop too. JAX's own coordination
service heartbeat (`JAX_HEARTBEAT_TIMEOUT_S`) is the slower backstop.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

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
HEARTBEAT_S = 2.0         # PeerWatch: each process beats this often ...
# ... and a peer silent this long is lost: under gloo's fixed 30 s collective deadline, which
# otherwise aborts a process waiting on a hung peer with a C++ dump and no message.
PEER_TIMEOUT_S = 20.0
# A process that raised its own error (e.g. a locked workdir) is given this long to print it and
# exit before a peer's resulting exit is reported in its place.
OWN_ERROR_GRACE_S = 10.0
JAX_HEARTBEAT_TIMEOUT_S = 50  # the coordination service's own detection (JAX's default is 100 s)
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
    kwargs: dict[str, Any] = {"initialization_timeout": settings.initialization_timeout,
                              "heartbeat_timeout_seconds": JAX_HEARTBEAT_TIMEOUT_S}
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
    if jax.process_count() > 1:
        start_peer_watch(settings.coordinator_address, settings.initialization_timeout)
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
    if _WATCH is not None:
        _WATCH.leave(code)
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1:
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


class PeerWatch:
    """Liveness of the other processes (see the module docstring): a star of TCP connections to
    process 0, each way a heartbeat byte every HEARTBEAT_S, and one line per event:
    `bye` (this process ended normally), `exit <status>` (it stopped with an error) and, from process
    0 to the others, `lost <index> <why>` and `stopped <index> <status>` (about another process)."""

    def __init__(self, index: int, count: int):
        self.index, self.count = index, count
        self.peers: dict[socket.socket, dict] = {}  # connection -> {"index", "seen", "buffer"}
        self.selector = selectors.DefaultSelector()
        self._left: int | None = None  # the status `leave` told the others (it tells them once)
        self._own_error = False  # set by `ending_with_own_error`
        self._lock = threading.Lock()

    # --------------------------------------------------------------- set-up
    def listen(self, host: str) -> str:
        """Process 0: listens for the others; returns the host:port they connect to."""
        server = socket.create_server(("", 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        server.setblocking(False)
        self.selector.register(server, selectors.EVENT_READ, "accept")
        return f"{host}:{server.getsockname()[1]}"

    def connect(self, address: str) -> None:
        """Processes 1..N-1: connects to process 0 and says which process this is."""
        host, _, port = address.rpartition(":")
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=PEER_TIMEOUT_S)
        conn.sendall(self._hello())
        self._add(conn, index=0)

    def _hello(self) -> bytes:
        return f"hello {self.index} {os.getpid()} {socket.gethostname()}\n".encode()

    def _add(self, conn: socket.socket, index: int | None) -> None:
        conn.setblocking(False)
        self.peers[conn] = {"index": index, "seen": time.monotonic(), "buffer": b"", "ended": False}
        self.selector.register(conn, selectors.EVENT_READ, "peer")

    def start(self) -> None:
        threading.Thread(target=self._run, name="nrc_jax_peer_watch", daemon=True).start()
        excepthook = sys.excepthook

        def uncaught(kind, value, traceback):  # an uncaught exception ends the process with status 1
            excepthook(kind, value, traceback)
            self.leave(1)

        sys.excepthook = uncaught
        atexit.register(self.leave, 0)

    # --------------------------------------------------------------- the loop
    def _run(self) -> None:
        next_beat = 0.0
        while True:
            for key, _ in self.selector.select(timeout=HEARTBEAT_S / 2):
                if key.data == "accept":
                    conn, _ = key.fileobj.accept()
                    conn.sendall(self._hello())
                    self._add(conn, index=None)  # its hello names it
                else:
                    self._read(key.fileobj)
            now = time.monotonic()
            if now >= next_beat:
                self._send_all(b".")
                next_beat = now + HEARTBEAT_S
            for peer in list(self.peers.values()):
                if not peer["ended"] and now - peer["seen"] > PEER_TIMEOUT_S:
                    self._lost(peer, f"no heartbeat for {PEER_TIMEOUT_S:g} s (hung, or its host unreachable)")

    def _read(self, conn: socket.socket) -> None:
        peer = self.peers[conn]
        try:
            data = conn.recv(4096)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.selector.unregister(conn)
            conn.close()
            if not peer["ended"]:
                self._lost(peer, "its connection closed (killed, crashed or its host went down)")
            return
        peer["seen"] = time.monotonic()
        peer["buffer"] += data.replace(b".", b"")
        while b"\n" in peer["buffer"]:
            line, peer["buffer"] = peer["buffer"].split(b"\n", 1)
            self._message(peer, line.decode(errors="replace").split())

    def _message(self, peer: dict, words: list[str]) -> None:
        if not words:
            return
        if words[0] == "hello":
            peer.update(index=int(words[1]), pid=words[2], host=words[3])
        elif words[0] == "bye":
            peer["ended"] = True
        elif words[0] in ("exit", "stopped"):
            peer["ended"] = words[0] == "exit"
            index, status = (peer["index"], words[1]) if words[0] == "exit" else (words[1], words[2])
            self._stop(f"process {index} stopped with exit status {status} (its own output says why); "
                       "stopping this process too", int(status) or 2, tell=f"stopped {index} {status}")
        elif words[0] == "lost":
            self._stop(f"process {words[1]} of the run was lost ({' '.join(words[2:])}; reported by "
                       "process 0); stopping this process too", 2)

    def _lost(self, peer: dict, why: str) -> None:
        where = f" (pid {peer['pid']} on {peer['host']})" if "pid" in peer else ""
        index = peer["index"] if peer["index"] is not None else "?"
        self._stop(f"process {index}{where} of the run was lost: {why}; stopping this process too", 2,
                   tell=f"lost {index}{where} {why}")

    def _stop(self, message: str, status: int, tell: str | None = None) -> None:
        """Ends this process now: tells the others (process 0 relays), prints one error line."""
        if self._left is not None:  # this process is ending already, with its own message and status
            os._exit(self._left)
        if self._own_error:  # the main thread is about to print this process's own error and exit
            time.sleep(OWN_ERROR_GRACE_S)
        if tell is not None and self.index == 0:
            self._send_all(f"{tell}\n".encode())
        print(f"error: {message}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(status)

    def _send_all(self, data: bytes) -> None:
        with self._lock:
            for conn in list(self.peers):
                try:
                    conn.send(data)
                except (BlockingIOError, OSError):
                    pass  # a full buffer skips a beat; a dead peer shows up as a closed connection

    def ending_with_own_error(self) -> None:
        """The main thread raised an error it will print: a peer stopping because of it is not
        reported instead (the main thread's `exit_process` ends this process first)."""
        self._own_error = True

    def leave(self, status: int) -> None:
        """Tells the others this process ends: normally (`bye`) or with an error status."""
        if self._left is not None:
            return
        self._left = status
        self._send_all(b"bye\n" if status == 0 else f"exit {status}\n".encode())
        time.sleep(0.05 if status == 0 else 0.2)  # let the line leave before the process does


_WATCH: PeerWatch | None = None
_WATCH_KEY = "nrc_jax_peer_watch"


def start_peer_watch(coordinator_address: str | None, timeout_s: int = DEFAULT_INIT_TIMEOUT_S) -> None:
    """Starts this process's PeerWatch (no-op for one process); process 0 publishes its address
    through the coordination service's key-value store."""
    global _WATCH
    import jax
    from jax._src import distributed as jax_distributed

    if jax.process_count() == 1 or _WATCH is not None:
        return
    watch = PeerWatch(jax.process_index(), jax.process_count())
    client = jax_distributed.global_state.client
    if watch.index == 0:
        address = coordinator_address or jax_distributed.global_state.coordinator_address or ""
        host = address.rpartition(":")[0].strip("[]") or socket.gethostname()
        client.key_value_set(_WATCH_KEY, watch.listen(host))
    else:
        watch.connect(client.blocking_key_value_get(_WATCH_KEY, int(timeout_s * 1000)))
    watch.start()
    _WATCH = watch


def ending_with_own_error() -> None:
    """Call before telling the other processes about an error this process raises and will print
    (they stop because of it; their stopping must not be reported in place of the cause)."""
    if _WATCH is not None:
        _WATCH.ending_with_own_error()


def wait_for_peer_watch(seconds: float = 2 * HEARTBEAT_S) -> None:
    """In a multi-process run, gives the PeerWatch time to end this process when an exception in
    the main thread came from a lost peer (a collective failing as its peer vanished)."""
    if _WATCH is not None:
        time.sleep(seconds)


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
    print(f"nrc_jax.io.distributed: process {settings.process_id}/{settings.num_processes} joining the "
          f"coordinator at {settings.coordinator_address} (timeout {settings.initialization_timeout} s)",
          file=sys.stderr, flush=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
