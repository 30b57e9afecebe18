"""Orbax checkpoints of a run: the train state plus, beside it, the config and a data fingerprint.

Each checkpoint step is the number of epochs completed. An item `state` (the `TrainState` pytree,
StandardSave), an item `meta` (JSON: config, data fingerprint, shapes, sweep members, epoch) and an
item `history` (JSON: every metrics row logged up to that epoch, see `writers.RunWriter`) are
written together, asynchronously; every process takes part in a save (Orbax coordinates them).
Orbax writes each step into a temporary folder and renames it when complete, so a kill leaves no
half-written step visible (leftover temporary folders are deleted at start); a step that still fails
to read is skipped with a warning naming it and moved to `checkpoints_unreadable/`.

A workdir on an object store (gs://, s3://) is handed to Orbax as the URL (tensorstore writes
there natively); there is no free-space check before a save, nor a disk-full diagnosis.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from nrc_jax.data import RegressionData
from nrc_jax.engine import optim
from nrc_jax.errors import ConfigError, DiskFullError
from nrc_jax.io import run_files

log = logging.getLogger(__name__)

# Room kept free beyond a checkpoint's array bytes (Orbax's metadata files, the JSON items).
SAVE_MARGIN_BYTES = 1 << 20
# Config fields that may change between a run and its resumption (they do not change the math).
# train.eval_every only picks the epochs evaluated (the PCA warm start it carries is for metrics).
RESUME_MUTABLE = ("mesh.num_devices", "mesh.member_devices", "train.progress_bar", "train.max_to_keep",
                  "train.checkpoint_every", "train.eval_chunk", "train.eval_every")


def data_fingerprint(data: RegressionData) -> str:
    """sha256 of the four arrays' dtypes, shapes and bytes (hex)."""
    digest = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        a = np.ascontiguousarray(getattr(data, name))
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def config_json(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def run_meta(config: ml_collections.ConfigDict, data: RegressionData, members: list[dict]) -> dict:
    """What is saved beside the state and checked on resume."""
    return {"config": config_json(config), "fingerprint": data_fingerprint(data),
            "data_name": data.name, "input_shape": list(data.input_shape), "out_dim": data.target_dim,
            "members": members}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_compatible(saved: dict, current: dict, where: str, step: int | None = None) -> None:
    """Raises ConfigError naming the first differing config field, or a data fingerprint change.

    A larger train.epochs extends the run saved at epoch `step` when the learning rate of the epochs
    already trained stays the same (any constant schedule); see `check_extension`.
    """
    old, new = _flatten(saved["config"]), _flatten(current["config"])
    for key in sorted(set(old) | set(new)):
        if key == "train.epochs" and step is not None and old.get(key) != new.get(key):
            check_extension(saved["config"], current["config"], where, step)
        elif key not in RESUME_MUTABLE and old.get(key) != new.get(key):
            raise ConfigError(
                f"cannot resume from {where}: config field {key} was {old.get(key)!r} there and is "
                f"{new.get(key)!r} now; use a new --workdir (or the old value) to continue")
    if saved["fingerprint"] != current["fingerprint"]:
        raise ConfigError(
            f"cannot resume from {where}: the data differ (data fingerprint {saved['fingerprint'][:12]}... "
            f"there, {current['fingerprint'][:12]}... now, data.name={current['config']['data']['name']!r}); "
            "use a new --workdir")


def check_extension(saved_config: dict, config: dict, where: str, step: int) -> None:
    """Raises ConfigError unless changing train.epochs keeps the `step` epochs already trained as
    they were: the new total must reach `step`, and the learning-rate schedule of epochs < step
    must not move (a "step" schedule's milestones are fractions of train.epochs)."""
    old, new = saved_config["train"]["epochs"], config["train"]["epochs"]
    if new < step:
        raise ConfigError(f"cannot resume from {where}: it holds epoch {step}, past train.epochs={new}; "
                          f"to extend the run set train.epochs above {step} (it was {old})")
    schedule = ml_collections.ConfigDict(config["optim"])
    if not optim.schedule_kept(schedule, old, new, step):
        raise ConfigError(
            f"cannot extend the run in {where} from train.epochs={old} to {new}: optim.schedule="
            f"{schedule.schedule!r} puts its milestones {tuple(schedule.milestones)} at fractions of "
            f"train.epochs, which would change the learning rate of the {step} epochs already trained; "
            "use a new --workdir")
    log.warning("extending the run in %s from %d to %d epochs", where, old, new)


class Checkpoints:
    """`workdir/checkpoints` managed by an Orbax CheckpointManager (async, keeps the last N)."""

    def __init__(self, workdir: str, meta: dict, max_to_keep: int = 3, read_only: bool = False):
        self.directory = checkpoint_directory(workdir)
        self.meta = meta
        self.read_only = read_only
        # cleanup_tmp_directories: a kill during an async save leaves a `<step>.orbax-checkpoint-tmp-*` folder.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True,
                                               create=not read_only, read_only=read_only,
                                               cleanup_tmp_directories=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, epoch: int, state: Any, history: list[dict] | None = None) -> None:
        """Starts an async save of `state` at step `epoch` (returns once arrays are copied off device).

        `history`: the metrics rows logged so far, strict JSON (`run_files.rows_to_json`; not mutated later).
        Raises DiskFullError, before writing anything, when the disk lacks room for the checkpoint.
        """
        self.needed_bytes = checkpoint_bytes(state, history)
        check_free_space(self.directory, self.needed_bytes, f"the checkpoint of epoch {epoch}")
        items = {"state": ocp.args.StandardSave(state),
                 "meta": ocp.args.JsonSave({**self.meta, "epoch": int(epoch)})}
        if history is not None:
            items["history"] = ocp.args.JsonSave({"rows": history})
        self.manager.save(int(epoch), args=ocp.args.Composite(**items), force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[Any | None, int]:
        """(state, epoch) of the newest readable checkpoint whose meta matches; (None, 0) if none.

        Raises ConfigError when the newest readable checkpoint was made with another config or data.
        """
        for step in reversed(self.all_steps()):
            where = os.path.join(self.directory, str(step))
            try:
                saved = self.restore_meta(step)
            except Exception as e:  # noqa: BLE001 - any unreadable step is skipped, loudly
                self._skip_unreadable(step, e)
                continue
            check_compatible(saved, self.meta, where, step)
            try:
                state = self.restore_state(step, abstract_state)
            except Exception as e:  # noqa: BLE001
                self._skip_unreadable(step, e)
                continue
            return state, step
        return None, 0

    def _skip_unreadable(self, step: int, error: Exception) -> None:
        """Warns naming the step, then moves it to `checkpoints_unreadable/` (kept for inspection) so
        the resumed run can save that step number again."""
        where = os.path.join(self.directory, str(step))
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
        if self.read_only:
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", where, reason)
            return
        base = aside = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable", str(step))
        copies = 0
        while run_files.workdir_path(aside).exists():  # a step found unreadable again in a later run
            copies += 1
            aside = f"{base}.{copies}"
        log.warning("checkpoint %s is unreadable (%s); moved to %s, trying the previous one", where, reason, aside)
        if jax.process_index() == 0:
            _move_aside(where, aside)
        ocp.multihost.sync_global_processes(f"nrc_jax_skip_unreadable_{step}")
        self.manager.reload()

    def restore_meta(self, step: int) -> dict:
        """The JSON saved beside the state at `step`."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_history(self, step: int) -> list[dict] | None:
        """The metrics rows saved with `step` (strict JSON), or None for a checkpoint without them
        (made before the history was saved) or whose history item is unreadable (with a warning)."""
        if not (run_files.workdir_path(self.directory) / str(step) / "history").is_dir():
            return None
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(history=ocp.args.JsonRestore()))
            return list(saved["history"]["rows"])
        except Exception as e:  # noqa: BLE001 - the state is fine; metrics.jsonl is the fall-back
            log.warning("the metrics history of checkpoint %s is unreadable (%s: %s); keeping metrics.jsonl's rows",
                        os.path.join(self.directory, str(step)), type(e).__name__, str(e)[:200])
            return None

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """The state at `step`, laid out as `abstract_state` (shapes, dtypes, shardings) says."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        return self.manager.restore(step, args=args)["state"]

    def close(self) -> None:
        """Waits for pending async saves, then releases the manager (also when a save failed)."""
        try:
            self.manager.wait_until_finished()
        finally:
            self.manager.close()


def _move_aside(step_dir: str, aside: str) -> None:
    """Moves a step's folder to `aside` (whose parent may not exist yet)."""
    if not run_files.is_url(step_dir):
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(step_dir, aside)
        return
    # On an object store a folder exists once an object is named under it, and epath's rename (a
    # recursive copy and delete) wants the destination's folder to exist.
    note = run_files.workdir_path(aside).parent / "README"
    note.write_text("checkpoint steps that failed to read, moved aside by nrc_jax\n")
    run_files.workdir_path(step_dir).rename(aside)


def checkpoint_directory(workdir: str) -> str:
    """workdir/checkpoints: an absolute local path, or the URL on an object store."""
    if run_files.is_url(workdir):
        return workdir.rstrip("/") + "/checkpoints"
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def checkpoint_bytes(state: Any, history: list[dict] | None = None) -> int:
    """Bytes a checkpoint of `state` (its global arrays) and `history` needs on disk, margin included."""
    arrays = sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(state))
    return arrays + (len(json.dumps(history)) if history else 0) + SAVE_MARGIN_BYTES


def _free_bytes(directory: str) -> int:
    existing = directory
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return shutil.disk_usage(existing).free


def _human(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""


def check_free_space(directory: str, needed: int, what: str) -> None:
    """Raises DiskFullError naming `directory`, the free and the needed bytes if `needed` do not fit
    (an object store has no free-space figure: not checked there)."""
    if run_files.is_url(directory):
        return
    free = _free_bytes(directory)
    if free < needed:
        raise DiskFullError(f"no space left on the device of {directory} for {what}: {_human(free)} free "
                            f"({free} bytes), about {_human(needed)} needed ({needed} bytes); free some space "
                            "or use another --workdir, then run the same command to resume")


def _disk_full_in_chain(error: BaseException) -> BaseException | None:
    """The first exception in `error`'s chain that is a full disk (DiskFullError, errno 28 or
    tensorstore's RESOURCE_EXHAUSTED 'No space left on device'), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (isinstance(error, DiskFullError) or getattr(error, "errno", None) == errno.ENOSPC
                or "No space left on device" in str(error)):
            return error
        error = error.__cause__ or error.__context__
    return None


def _failed_path(text: str, workdir: str) -> str:
    """The file a failed write names (tensorstore: 'Failed writing: "PATH"'), relative to workdir."""
    match = re.search(r'Failed writing: "([^"]+)"', text) or re.search(r"'([^']+)'", text)
    if match is None:
        return (text.strip().splitlines() or [""])[0][:200]
    return f"writing {os.path.relpath(match.group(1), workdir)}"


def as_disk_full(error: BaseException, workdir: str) -> DiskFullError | None:
    """A DiskFullError for an exception caused by a full disk (naming the free bytes and what a
    checkpoint needs), after deleting the partial checkpoint it left; None for other exceptions."""
    full = _disk_full_in_chain(error)
    if full is None or run_files.is_url(workdir):
        return None
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    partial = glob.glob(os.path.join(glob.escape(directory), "*.orbax-checkpoint-tmp*"))
    if jax.process_index() == 0:
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
    if isinstance(full, DiskFullError):  # the check before a save: it has the exact figures
        return full
    steps = [p for p in glob.glob(os.path.join(glob.escape(directory), "*")) if os.path.basename(p).isdigit()]
    sizes = [sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(step) for f in files) for step in steps]
    free = _free_bytes(workdir)
    needed = f"a checkpoint takes about {_human(max(sizes))}" if sizes else "no checkpoint was complete yet"
    cause = _failed_path(str(full), os.path.abspath(workdir))
    removed = f"; removed the partial checkpoint {', '.join(os.path.basename(p) for p in partial)}" if partial else ""
    return DiskFullError(f"no space left on the device of {workdir} ({cause}): {_human(free)} free ({free} "
                         f"bytes), {needed}{removed}; free some space or use another --workdir, then run the "
                         "same command to resume")


def _is_shutdown_noise(error: BaseException | None) -> bool:
    """Orbax/tensorstore callbacks that fire after an aborted async operation closed its event loop."""
    return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed") or (
        isinstance(error, ImportError) and "Python is likely shutting down" in str(error))


def silence_async_noise() -> None:
    """Drops the 'Event loop is closed' tracebacks tensorstore prints when an Orbax save or restore
    fails part-way (its pending reads and writes complete into a closed loop), and the 'Python is
    likely shutting down' ones of writes still pending at exit. Every other error prints as before.
    For command-line entry points (it replaces sys.excepthook and sys.unraisablehook)."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_excepthook(kind, value, traceback):
        if not _is_shutdown_noise(value):
            excepthook(kind, value, traceback)

    def quiet_unraisablehook(unraisable):
        if not _is_shutdown_noise(unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
    logging.getLogger("absl").addFilter(_drop_orbax_thread_errors)
    logging.getLogger("asyncio").addFilter(_drop_unretrieved_futures)


def _drop_unretrieved_futures(record: logging.LogRecord) -> bool:
    """False for asyncio's 'exception was never retrieved' of an Orbax write abandoned after the
    first failure (nrc_jax itself runs no asyncio code)."""
    return "exception was never retrieved" not in str(record.msg)


def _drop_orbax_thread_errors(record: logging.LogRecord) -> bool:
    """False for Orbax's error logs of a failed save or restore thread (with their tracebacks): the
    same exception is raised to the caller (and printed once, as an `error:` line for a full disk)."""
    return not ("orbax" in record.pathname and record.levelno >= logging.ERROR
                and (record.exc_info or "raised an exception" in str(record.msg)))


class StopOnSignal:
    """Context manager: SIGINT/SIGTERM set `requested` (the loop saves and stops at the next
    evaluation); a second signal raises KeyboardInterrupt at once. No-op outside the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt(f"second signal {signum}")
        log.warning("signal %d: saving a checkpoint after the current chunk of epochs, then stopping", signum)
        self.requested = True

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


__all__ = ["Checkpoints", "StopOnSignal", "data_fingerprint", "run_meta", "check_compatible", "config_json",
           "RESUME_MUTABLE"]
