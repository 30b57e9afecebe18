"""The training driver: resume, the loop over evaluations, divergence checks, checkpoints, rows.

`train_and_evaluate(config, workdir)` runs one configured run (a sweep of K members) on one of two
engines (`learner.Engine`): `memory.MemoryEngine` when the data set fits on the devices,
`streamed.StreamedEngine` when it is streamed from the host (larger than
`data.max_in_memory_mb`). Both return the same metric rows; the driver does the rest the same way.

The driver dispatches chunk i+1 before it fetches, checks and writes the rows of chunk i (JAX
dispatch is asynchronous: host I/O overlaps device work), with an engine that returns at once
(`Engine.asynchronous`); a state is checkpointed only after its own rows passed the divergence check.
"""
from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from nrc_jax.core import metrics
from nrc_jax.data import RegressionData, load_dataset
from nrc_jax.engine import sweeps
from nrc_jax.engine.learner import Engine, TrainState, head_weights
from nrc_jax.engine.memory import MemoryEngine
from nrc_jax.engine.streamed import StreamedEngine
from nrc_jax.errors import DivergenceError
from nrc_jax.io import checkpoints, locking, run_files, validate, writers


def itstime(epoch: int, every: int, total: int, last: bool = True) -> bool:
    """Whether something done every `every` epochs (0: never) happens after `epoch` epochs of
    `total`; with `last`, also after the last epoch (like big_vision's `utils.itstime`)."""
    return (every > 0 and epoch % every == 0) or (last and epoch == total)


def eval_epochs(start: int, config: ml_collections.ConfigDict) -> list[int]:
    """The epochs after `start` at which the run evaluates: every eval_every, the last, and (with
    train.eval_log_points = N > 0) N log-spaced epochs in [1, epochs], which resolve the early
    epochs on the log-scaled axes collapse is plotted on."""
    total = config.train.epochs
    log_spaced = set()
    if config.train.eval_log_points:
        log_spaced = {int(e) for e in np.unique(np.round(np.geomspace(1, total, config.train.eval_log_points)))}
    return [e for e in range(start + 1, total + 1) if itstime(e, config.train.eval_every, total) or e in log_spaced]


# Non-finite values here mean the optimization blew up. (NRC metrics may be nan legitimately, e.g.
# NRC1 when every feature row is 0, R2 for a constant target, so they do not stop a run.)
DIVERGENCE_KEYS = ("loss", "train_mse", "test_mse", "w_norm", "h_norm_sq")


def check_finite(rows: list[dict], previous_epoch: int, ckpt: checkpoints.Checkpoints) -> None:
    """Raises DivergenceError naming the epochs and the last good checkpoint on a non-finite row."""
    for row in rows:
        bad = [k for k in DIVERGENCE_KEYS if not np.isfinite(row[k])]
        if bad and row["epoch"] == 0:
            raise DivergenceError(
                f"non-finite {', '.join(bad[:6])} at the initial evaluation (epoch 0, before any training) for "
                f"sweep member {row['sweep_index']} {row['sweep']}: not a divergence; the untrained model's "
                "outputs overflow float32 on this data set: check the data's scale (inputs and targets) "
                "and model.init; no metrics row was written")
        if bad:
            last = ckpt.latest_step()
            where = f"checkpoint of epoch {last} in {ckpt.directory}" if last is not None else "no checkpoint yet"
            raise DivergenceError(
                f"training diverged between epochs {previous_epoch} and {row['epoch']}: non-finite "
                f"{', '.join(bad[:6])} for sweep member {row['sweep_index']} {row['sweep']}; last good "
                f"state: {where}; metrics up to epoch {previous_epoch} are in metrics.jsonl")


def build_engine(config: ml_collections.ConfigDict, data: RegressionData, members: list[dict]) -> Engine:
    """The streamed engine for a data set larger than data.max_in_memory_mb, else the in-memory one."""
    return (StreamedEngine if data.streamed else MemoryEngine)(config, data, members)


def open_run(config: ml_collections.ConfigDict, workdir: str, members: list[dict], engine: Engine
             ) -> tuple[checkpoints.Checkpoints, TrainState, int, writers.RunWriter]:
    """Opens the workdir's checkpoints and metrics writer and returns (ckpt, state, start_epoch, log).

    Resume precedence: the latest complete checkpoint in workdir/checkpoints (if its config and
    data fingerprint `engine.meta` match; otherwise ConfigError) > a fresh start from config.seed /
    sweep seeds.
    """
    ckpt = checkpoints.Checkpoints(workdir, engine.meta, max_to_keep=config.train.max_to_keep)
    state, start = ckpt.restore_latest(engine.abstract_state(members))
    if state is None:
        state, start = engine.create_state(members), 0
    history = ckpt.restore_history(start) if start else None
    log = writers.RunWriter(workdir, config, members, resume_epoch=start, enabled=jax.process_index() == 0,
                            history=history)
    return ckpt, state, start, log


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the configured run (resuming from `workdir` if it holds checkpoints) and returns the
    final metrics row of each sweep member as {"members": [row, ...]} (plus the summary).

    Holds the workdir's lock (`locking.RunLock`) for the whole run, except on an object store (gs://,
    s3://), which has no file locks: a second run on the same local workdir raises
    `locking.WorkdirBusyError` before touching anything there.
    """
    validate.validate_config(config, num_devices=jax.device_count())  # before any loading or compiling
    workdir = validate.workdir_location(workdir)
    with locking.RunLock(workdir):
        try:
            return _train_locked(config, workdir)
        except Exception as e:  # noqa: BLE001 - only a full disk is turned into a user error
            disk_full = checkpoints.as_disk_full(e, workdir)
            if disk_full is None:
                raise
            raise disk_full from None


def _train_locked(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`train_and_evaluate` once the config is valid and the workdir locked."""
    members = sweeps.sweep_members(config)
    data = load_dataset(config.data)
    validate.validate_data(config, data)
    engine = build_engine(config, data, members)
    ckpt, state, start, log = open_run(config, workdir, members, engine)
    lambda_min = float(metrics.target_stats(data.y_train)["lambda_min"])
    total = config.train.epochs
    t0 = time.time()

    def collect(out: dict, previous: int, write: bool = True) -> list[dict]:
        """Waits for a chunk's metrics; writes its rows after checking them for divergence."""
        rows = writers.metric_rows(jax.device_get(out), members, lambda_min, time.time() - t0,
                                   gamma_searched=config.optim.regularizer != "ufm")
        check_finite(rows, previous, ckpt)
        if write:
            log.write(rows)
        return rows

    rows, pending = None, None  # pending: (metrics, previous epoch) of the chunk whose rows are unwritten
    try:
        if start == 0:  # the initial evaluation: a chunk of 0 epochs
            state, out = engine.train_epochs(state, 0)
            pending = (out, 0)
        previous = start
        with checkpoints.StopOnSignal() as stop:
            for epoch in eval_epochs(start, config):
                if pending is not None and not engine.asynchronous:
                    rows, pending = collect(*pending), None
                state, out = engine.train_epochs(state, epoch - previous, stop=lambda: stop.requested)
                if pending is not None:
                    rows = collect(*pending)
                pending, previous = (out, previous), epoch
                if stop.requested or itstime(epoch, config.train.checkpoint_every, total):
                    rows, pending = collect(*pending), None  # a state is saved only once its rows are checked
                    previous = rows[0]["epoch"]  # earlier than planned when a signal ended the chunk
                    ckpt.save(previous, state, run_files.rows_to_json(log.history))
                if stop.requested:
                    raise KeyboardInterrupt(f"stopped by signal after epoch {previous}; checkpoint saved")
        if pending is not None:
            rows = collect(*pending)
        if rows is None:  # resumed a finished run: nothing left to train, only the final metrics
            state, out = engine.train_epochs(state, 0)
            rows = collect(out, start, write=False)
        summary = log.finish(head_weights(state), engine.sigma, lambda_min, ufm=config.optim.regularizer == "ufm")
        if summary:  # the rows as written, with the final gamma's NRC3
            rows = [m["final"] or row for m, row in zip(summary["members"], rows)]
    finally:
        ckpt.close()
        log.close()
    return {"members": rows, "summary": summary}


__all__ = ["train_and_evaluate", "build_engine", "open_run", "eval_epochs", "itstime", "check_finite",
           "DIVERGENCE_KEYS", "load_dataset"]
