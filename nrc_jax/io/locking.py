"""One run per workdir: an exclusive lock file, `<workdir>/.nrc_jax.lock`, held for the run's life.

The lock is `fcntl.flock` on that file, so the kernel releases it when the holder exits in any way
(kill -9 included); the file itself carries the holder's pid, host and start time, for the error a
second run prints. A file left by a dead holder (its lock already released by the kernel) is a
stale lock: it is taken over with a warning naming the old holder. A multi-process run locks once,
on process 0, and every process learns the outcome through the JAX coordination service, so a
refused run ends on every process with the same message.

A second run on a locked workdir raises `WorkdirBusyError` before it reads or writes anything there.

A workdir on an object store (gs://, s3://) is not locked, with one warning: a store has no lock
the kernel releases when its holder dies, and a lock object would need a lease renewed while the
run lives and a takeover rule for an expired one, which two processes could each believe they won.
There one process (0) writes the run's files and Orbax coordinates the checkpoint saves of one run;
starting two runs on one bucket workdir is the user's responsibility.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import itertools
import json
import logging
import os
import socket
import sys
import time
from typing import Any

from nrc_jax.errors import ConfigError, UserError
from nrc_jax.io import distributed, run_files

LOCK_FILE = ".nrc_jax.lock"
_KV_KEY = "nrc_jax_workdir_lock"
_kv_count = itertools.count()  # one key per run of this process (a key is set once)
_KV_TIMEOUT_S = 300  # how long processes != 0 wait for process 0's outcome (the init timeout)

log = logging.getLogger(__name__)


class WorkdirBusyError(UserError, RuntimeError):
    """Another live run holds the workdir's lock; the message names its pid, host and start time."""


def check_workdir(workdir: str) -> str:
    """Creates `workdir` if missing and returns its absolute path.

    Raises:
      ConfigError: the path (or one of its parents) is a file, or it cannot be created (the cause).
    """
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--workdir {workdir}: is a file, not a directory; give a directory (new or a run's)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        cause = "a parent is a file" if e.errno in (errno.ENOTDIR, errno.EEXIST) else (e.strerror or str(e))
        raise ConfigError(f"--workdir {workdir}: cannot create the directory: {cause}") from None
    return path


def _holder_text(info: dict) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, running since "
            f"{info.get('since', '?')}")


def _read_info(fd: int) -> dict | None:
    try:
        text = os.pread(fd, 65536, 0).decode("utf-8", "replace")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


class WorkdirLock:
    """The exclusive lock of one workdir (see the module docstring). Use as a context manager or
    call `acquire()` / `release()`; `release()` is idempotent."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self._fd: int | None = None
        self._created = False  # the workdir did not exist: removed again on release if still empty

    def acquire(self) -> "WorkdirLock":
        """Takes the lock or raises WorkdirBusyError naming the holder (ConfigError for a bad workdir)."""
        self._created = not os.path.exists(self.workdir)
        check_workdir(self.workdir)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a read-only or foreign workdir
                raise ConfigError(f"--workdir {self.workdir}: cannot create the lock file {self.path}: "
                                  f"{e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise ConfigError(f"--workdir {self.workdir}: cannot lock {self.path}: {e.strerror}") from None
                info = self._wait_for_info(fd)
                os.close(fd)
                raise WorkdirBusyError(
                    f"workdir {self.workdir} is in use by another run ({_holder_text(info or {})}; lock file "
                    f"{self.path}); wait for it to end or use another --workdir") from None
            if self._same_file(fd):
                break
            os.close(fd)  # the holder removed the file between our open and lock: try the new one
        stale = _read_info(fd)
        if stale:
            log.warning("workdir %s: taking over the lock of a run that ended without releasing it (%s)",
                        self.workdir, _holder_text(stale))
        self._write_info(fd)
        self._fd = fd
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    @staticmethod
    def _wait_for_info(fd: int, wait_s: float = 2.0) -> dict | None:
        """The holder's info; it may be writing it right now (between its lock and its write)."""
        deadline = time.monotonic() + wait_s
        while True:
            info = _read_info(fd)
            if info or time.monotonic() > deadline:
                return info
            time.sleep(0.05)

    @staticmethod
    def _write_info(fd: int) -> None:
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "argv": sys.argv}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        """Removes the lock file, then unlocks (in this order: a run waiting on the old file's lock
        sees it was removed and locks the new one)."""
        if self._fd is None:
            return
        try:
            if self._same_file(self._fd):
                os.unlink(self.path)
        finally:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None
        if self._created:
            try:
                os.rmdir(os.path.dirname(self.path))  # a run refused before writing anything
            except OSError:
                pass  # not empty: the run's outputs

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RunLock:
    """The workdir lock of a possibly multi-process run: process 0 takes it, the others wait for
    its outcome through the coordination service and raise the same error when it failed."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._lock: WorkdirLock | None = None

    def __enter__(self) -> "RunLock":
        import jax

        if run_files.is_url(self.workdir):
            if jax.process_index() == 0:
                log.warning("workdir %s is on an object store, which has no file locks: not locked; make sure "
                            "no other run uses it", self.workdir)
            return self
        if jax.process_count() == 1:
            self._lock = WorkdirLock(self.workdir).acquire()
            return self
        from jax._src import distributed as jax_distributed

        client = jax_distributed.global_state.client
        key = f"{_KV_KEY}_{next(_kv_count)}"
        if jax.process_index() == 0:
            try:
                self._lock = WorkdirLock(self.workdir).acquire()
            except UserError as e:
                distributed.ending_with_own_error()  # the others stop on this key; the cause is ours
                client.key_value_set(key, f"{type(e).__name__}:{e}")
                raise
            client.key_value_set(key, "ok")
            return self
        outcome = client.blocking_key_value_get(key, _KV_TIMEOUT_S * 1000)
        if outcome != "ok":
            kind, _, message = outcome.partition(":")
            raise (WorkdirBusyError if kind == WorkdirBusyError.__name__ else ConfigError)(message)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


__all__ = ["WorkdirLock", "RunLock", "WorkdirBusyError", "check_workdir", "LOCK_FILE"]
