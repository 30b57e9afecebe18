"""Training on image sets too large for memory: batches streamed from the host with prefetch.

`train.train_and_evaluate` hands a data set here when its inputs are `ArraySource`s (larger than
`data.max_in_memory_mb`). The model, loss, optimizer, `TrainState`, sweep axis K (vmap), checkpoints
and metric rows are the in-memory engine's (`train.Trainer`); what differs is the loop:

  * training: one jitted, donated `train_step(state, x, y, mask)` per minibatch. Minibatches come
    from `data.batches.iterate_batches` (background threads decode and place the next batches while
    the devices compute), sharded over the mesh axis 'data', parameters replicated. Each epoch's
    row order is `batches.epoch_order(M, config.seed, epoch)`, so a resumed run reads the same
    batches as an uninterrupted one. Every sweep member sees the same order (one stream feeds all
    K members; the in-memory engine shuffles each member with its own key).
  * evaluation: a jitted `stats_step(state, x, y, mask) -> FeatureStats` per chunk, summed with
    `metrics.merge` over the whole train and test sets, then one `metrics_from_stats` call: the
    same metric rows as the in-memory engine. The "centered" variants need the feature mean first,
    so the train features of the evaluation are kept on the device when they fit
    (`CACHED_FEATURES_MB`), else the train set is read a second time.

Multi-host: every process builds the same padded row order and reads only its contiguous slice of
each global batch; `jax.make_array_from_process_local_data` assembles the global, sharded batch.
The last partial batch of an epoch (and of each evaluation pass) is filled up with real rows that
carry mask 0, so every batch has the same shape (one compilation) and no row is lost.

Not supported with streamed data: `metrics.per_layer` (needs every hidden layer of the whole set).
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from nrc_jax import checkpoints, metrics, models, optim, run_files, sweeps, train, writers
from nrc_jax.data import RegressionData
from nrc_jax.data.base import setting
from nrc_jax.data.batches import epoch_order, iterate_batches
from nrc_jax.errors import ConfigError

DEFAULT_PREFETCH = 2      # batches read ahead (data.prefetch when the config has it)
DEFAULT_NUM_WORKERS = 2   # reader threads (data.num_workers when the config has it)
CACHED_FEATURES_MB = 2048.0  # train features (K, M, d) kept on device for the centered pass if below


class RowView:
    """An `ArraySource` of `source[rows[i]]`: a fixed row order (shuffled, padded) over a source."""

    def __init__(self, source: Any, rows: np.ndarray):
        self.source, self.rows = source, np.asarray(rows, np.int64)
        self.shape = (len(self.rows),) + tuple(source.shape[1:])
        self.dtype = np.dtype(source.dtype)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return np.asarray(self.source[self.rows[np.asarray(idx, np.int64).reshape(-1)]])


def padded_order(order: np.ndarray, batch_size: int, drop_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows (B * num_batches,) and mask of one pass over `order` in batches of `batch_size`.

    drop_last keeps only full batches (at least one: a shorter set repeats rows cyclically); else the
    last partial batch is completed cyclically with rows that carry mask 0.
    """
    count = len(order)
    if drop_last and count >= batch_size:
        keep = count // batch_size * batch_size
        return order[:keep], np.ones(keep, np.float32)
    total = max(-(-count // batch_size), 1) * batch_size
    mask = (np.arange(total) < count).astype(np.float32) if not drop_last else np.ones(total, np.float32)
    return np.resize(order, total), mask


def streamed_fingerprint(data: RegressionData, sample_rows: int = 8) -> str:
    """sha256 of the targets, the input shapes/dtypes, the loader's info and the first and last
    `sample_rows` input rows of each split (hashing every streamed image would read the whole set)."""
    digest = hashlib.sha256()
    digest.update(repr(sorted((k, repr(v)) for k, v in data.info.items())).encode())
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), np.ascontiguousarray(getattr(data, f"y_{split}"))
        digest.update(f"{split}:{np.dtype(x.dtype).str}:{tuple(x.shape)}:{y.dtype.str}:{y.shape};".encode())
        digest.update(memoryview(y).cast("B"))
        ends = np.unique(np.r_[np.arange(min(sample_rows, len(x))), np.arange(max(len(x) - sample_rows, 0), len(x))])
        digest.update(np.ascontiguousarray(np.asarray(x[ends], np.float32)).tobytes())
    return digest.hexdigest()


def streamed_run_meta(config: ml_collections.ConfigDict, data: RegressionData, members: list[dict]) -> dict:
    """`checkpoints.run_meta` with `streamed_fingerprint` (its `data_fingerprint` reads every row)."""
    return {"config": checkpoints.config_json(config), "fingerprint": streamed_fingerprint(data),
            "data_name": data.name, "input_shape": list(data.input_shape), "out_dim": data.target_dim,
            "members": members}


class StreamingSteps:
    """The compiled per-batch functions, built on a `train.Trainer` (same model, loss, optimizer)."""

    def __init__(self, trainer: train.Trainer):
        self.trainer = trainer
        self.config = trainer.config
        self.train_step = jax.jit(self._train_step, donate_argnums=0)
        self.stats_step = jax.jit(self._stats_step)
        self.centered_step = jax.jit(self._centered_step)
        self.centered_from_features = jax.jit(self._centered_from_features)
        self.finish = jax.jit(self._finish)
        self.merge = jax.jit(metrics.merge)
        self.next_epoch = jax.jit(lambda s: s.replace(epoch=s.epoch + 1), donate_argnums=0)

    def _train_step(self, state: train.TrainState, x: jax.Array, y: jax.Array, mask: jax.Array) -> train.TrainState:
        """One optimizer step of every member on the batch x (B, ...), y (B, n), mask (B,)."""
        train.TRACE_COUNTS["stream_train_step"] += 1
        t, c = self.trainer, self.config
        grad_fn = jax.grad(t._batch_loss, has_aux=True)  # pylint: disable=protected-access

        def member(s: train.TrainState) -> train.TrainState:
            factor = optim.lr_factor(s.epoch, c.optim, c.train.epochs)
            grads, model_state = grad_fn(s.params, s.model_state, x, y, mask, s.hparams)
            params, opt_state = optim.apply_update(t.tx, grads, s.opt_state, s.params, s.hparams, factor, c.optim)
            return s.replace(params=params, model_state=model_state, opt_state=opt_state)
        return jax.vmap(member)(state)

    def _member_forward(self, s: train.TrainState, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        pred, h, _, _ = self.trainer._forward(s.params, s.model_state, x, False)  # pylint: disable=protected-access
        return pred, h

    def _stats_step(self, state: train.TrainState, x: jax.Array, y: jax.Array, mask: jax.Array):
        """(FeatureStats with leading K, features (K, B, d)) of one evaluation batch."""
        train.TRACE_COUNTS["stream_stats_step"] += 1

        def member(s):
            pred, h = self._member_forward(s, x)
            return metrics.feature_stats(h, y, pred, mask), h
        return jax.vmap(member)(state)

    def _centered_step(self, state: train.TrainState, x: jax.Array, mask: jax.Array, mean: jax.Array):
        """CenteredStats (leading K) of one batch, given each member's feature mean (K, d)."""
        return jax.vmap(lambda s, mu: metrics.centered_feature_stats(self._member_forward(s, x)[1], mu, mask))(state, mean)

    def _centered_from_features(self, h: jax.Array, mask: jax.Array, mean: jax.Array):
        """CenteredStats (leading K) from cached features h (K, B, d)."""
        return jax.vmap(lambda hk, mu: metrics.centered_feature_stats(hk, mu, mask))(h, mean)

    def _finish(self, state: train.TrainState, stats, centered, test_stats, sigma: jax.Array) -> dict:
        """The metrics dict (K, ...) of `Trainer.evaluate`, from whole-set statistics."""
        c = self.config

        def member(s, st, cs, ts):
            w, _ = models.head_params(s.params)
            hp = s.hparams
            gamma = hp.lambda_h * hp.lambda_w if c.optim.regularizer == "ufm" else None
            pca_init = s.pca_basis if c.metrics.pca_iters else None
            out = metrics.metrics_from_stats(st, w, sigma=sigma, gamma=gamma, evr_k=c.metrics.evr_k, centered=cs,
                                             pca_init=pca_init, pca_iters=max(c.metrics.pca_iters, 1))
            out = {("train_" + k if k in ("mse", "mse_per_dim", "r2", "r2_per_dim") else k): v for k, v in out.items()}
            out["loss"] = (optim.loss_from_mse(out["train_mse"], w.shape[0], c.optim)
                           + optim.regularization(s.params, w, out["h_norm_sq"], hp, c.optim))
            test = metrics.metrics_from_stats(ts, w, sigma=sigma, gamma=jnp.zeros((), st.sum_h.dtype), evr_k=1)
            out.update({f"test_{k}": test[k] for k in ("mse", "mse_per_dim", "r2", "r2_per_dim")})
            out["epoch"] = s.epoch
            return out
        return jax.vmap(member)(state, stats, centered, test_stats)


_STEPS: dict = {}


def streaming_steps(trainer: train.Trainer) -> StreamingSteps:
    """The `StreamingSteps` of a (cached, see `train.get_trainer`) Trainer: a resumed run in the same
    process reuses the compiled steps."""
    if id(trainer) not in _STEPS or _STEPS[id(trainer)].trainer is not trainer:
        _STEPS[id(trainer)] = StreamingSteps(trainer)
    return _STEPS[id(trainer)]


class Streamer:
    """Feeds (x, y, mask) global batches of a split to the devices, in a given row order."""

    def __init__(self, config: ml_collections.ConfigDict, trainer: train.Trainer, name: str):
        self.name = name
        self.prefetch = int(setting(config.data, "prefetch", DEFAULT_PREFETCH))
        self.num_workers = int(setting(config.data, "num_workers", DEFAULT_NUM_WORKERS))
        self.sharding = NamedSharding(trainer.mesh, P(train.DATA_AXIS))
        self.process_index, self.process_count = jax.process_index(), jax.process_count()

    def _to_device(self, batch_size: int, n: int) -> Callable:
        def put(batch: tuple[np.ndarray, np.ndarray]) -> tuple[jax.Array, jax.Array, jax.Array]:
            x, y_mask = batch
            return tuple(jax.make_array_from_process_local_data(self.sharding, np.ascontiguousarray(a),
                                                                (batch_size,) + a.shape[1:])
                         for a in (x, y_mask[:, :n], y_mask[:, n]))
        return put

    def batches(self, x: Any, y: np.ndarray, rows: np.ndarray, mask: np.ndarray, batch_size: int):
        """Yields (x (B, ...), y (B, n), mask (B,)) global arrays over `rows` (a multiple of B)."""
        y_mask = np.concatenate([y[rows], mask[:, None]], axis=1).astype(np.float32)  # the mask rides along
        return iterate_batches(RowView(x, rows), y_mask, batch_size, shuffle=False, drop_remainder=True,
                               prefetch=self.prefetch, num_workers=self.num_workers,
                               process_index=self.process_index, process_count=self.process_count,
                               to_device=self._to_device(batch_size, y.shape[1]), name=self.name)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


class StreamedRun:
    """One streamed run: the data, the compiled steps and the epoch / evaluation loops."""

    def __init__(self, config: ml_collections.ConfigDict, data: RegressionData, trainer: train.Trainer):
        self.config, self.data = config, data
        self.steps = streaming_steps(trainer)
        self.streamer = Streamer(config, trainer, data.name)
        granule = trainer.mesh.size * jax.process_count()  # rows divide over devices and processes
        self.batch_size = config.train.batch_size
        if self.batch_size % granule:
            raise ConfigError(f"train.batch_size={self.batch_size} must be a multiple of {granule} "
                              "(devices x processes) for streamed data")
        self.eval_batch = _round_up(min(config.train.eval_chunk, max(data.train_size, data.test_size)), granule)
        self.sigma = jax.make_array_from_process_local_data(
            trainer.replicated, np.asarray(metrics.target_stats(data.y_train)["sigma"], np.float32))

    def train_epoch(self, state: train.TrainState, epoch: int) -> train.TrainState:
        """One epoch (0-based index `epoch`) of every member; returns the state after it."""
        order = epoch_order(self.data.train_size, int(self.config.seed), epoch)
        rows, mask = padded_order(order, self.batch_size, self.config.train.drop_last)
        for x, y, m in self.streamer.batches(self.data.x_train, self.data.y_train, rows, mask, self.batch_size):
            state = self.steps.train_step(state, x, y, m)
        return self.steps.next_epoch(state)

    def _pass(self, state: train.TrainState, split: str, keep_features: bool):
        """Merged FeatureStats (leading K) of a whole split, and the per-batch (features, mask) if kept."""
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        rows, mask = padded_order(np.arange(len(y)), self.eval_batch, drop_last=False)
        total, kept = None, []
        for xb, yb, mb in self.streamer.batches(x, y, rows, mask, self.eval_batch):
            stats, h = self.steps.stats_step(state, xb, yb, mb)
            total = stats if total is None else self.steps.merge(total, stats)
            if keep_features:
                kept.append((h, mb))
        return total, kept

    def _centered(self, state: train.TrainState, stats, kept: list):
        mean = jax.vmap(metrics.feature_mean)(stats)
        if kept:
            parts = [self.steps.centered_from_features(h, m, mean) for h, m in kept]
        else:  # features too large to keep: read the train set again
            rows, mask = padded_order(np.arange(self.data.train_size), self.eval_batch, drop_last=False)
            parts = [self.steps.centered_step(state, xb, mb, mean) for xb, _, mb in
                     self.streamer.batches(self.data.x_train, self.data.y_train, rows, mask, self.eval_batch)]
        total = parts[0]
        for part in parts[1:]:
            total = self.steps.merge(total, part)
        return total

    def evaluate(self, state: train.TrainState) -> tuple[train.TrainState, dict]:
        """Metrics (K, ...) of every member over the whole train and test sets (and the updated
        PCA warm start, as `Trainer.train_chunk` keeps it)."""
        k = int(state.epoch.shape[0])
        feature_mb = k * self.data.train_size * self._feature_dim(state) * 4 / 2**20
        stats, kept = self._pass(state, "train", keep_features=feature_mb <= CACHED_FEATURES_MB)
        centered = self._centered(state, stats, kept)
        del kept
        test_stats, _ = self._pass(state, "test", keep_features=False)
        out = self.steps.finish(state, stats, centered, test_stats, self.sigma)
        if self.config.metrics.pca_iters:
            state = state.replace(pca_basis=out["pca_basis"])
        return state, out

    @staticmethod
    def _feature_dim(state: train.TrainState) -> int:
        return int(state.pca_basis.shape[1])  # (K, d, r)


def train_and_evaluate_streamed(config: ml_collections.ConfigDict, workdir: str, data: RegressionData,
                                members: list[dict] | None = None) -> dict:
    """`train.train_and_evaluate` for a streamed data set (already loaded and validated); same
    outputs: metrics.jsonl rows, checkpoints, summary.json; returns {"members": rows, "summary": ...}."""
    if config.metrics.per_layer:
        raise ConfigError(f"metrics.per_layer=True is not supported for data set {data.name!r}, which is "
                          "streamed from the host (larger than data.max_in_memory_mb); set it False or raise "
                          "data.max_in_memory_mb")
    members = members if members is not None else sweeps.sweep_members(config)
    if config.mesh.get("member_devices", 1) != 1:
        raise ConfigError(f"mesh.member_devices={config.mesh.member_devices} is not supported for data set "
                          f"{data.name!r}, which is streamed from the host; set it 1")
    mesh = train.make_mesh(config.mesh.num_devices)
    trainer = train.get_trainer(config, mesh, data.input_shape, data.target_dim)
    run = StreamedRun(config, data, trainer)
    ckpt, state, start, log = train.open_run(config, workdir, members, trainer,
                                             streamed_run_meta(config, data, members))
    lambda_min = float(metrics.target_stats(data.y_train)["lambda_min"])
    t0 = time.time()

    def evaluate(state: train.TrainState, previous: int) -> tuple[train.TrainState, list[dict]]:
        state, out = run.evaluate(state)
        rows = writers.metric_rows(jax.device_get(out), members, lambda_min, time.time() - t0,
                                   gamma_searched=config.optim.regularizer != "ufm")
        train.check_finite(rows, previous, ckpt)
        return state, rows

    rows = None
    try:
        if start == 0:
            state, rows = evaluate(state, 0)
            log.write(rows)
        previous = start
        with checkpoints.StopOnSignal() as stop:
            for target in train.eval_epochs(start, config):
                for epoch in range(previous, target):
                    state = run.train_epoch(state, epoch)
                    if stop.requested:
                        break
                done = int(state.epoch[0])
                state, rows = evaluate(state, previous)
                log.write(rows)
                previous = done
                if done % config.train.checkpoint_every == 0 or done == config.train.epochs or stop.requested:
                    ckpt.save(done, state, run_files.rows_to_json(log.history))
                if stop.requested:
                    raise KeyboardInterrupt(f"stopped by signal after epoch {done}; checkpoint saved")
        if rows is None:  # resumed a finished run: only the final metrics
            state, rows = evaluate(state, start)
        summary = log.finish(train.head_weights(state), np.asarray(jax.device_get(run.sigma)), lambda_min,
                             ufm=config.optim.regularizer == "ufm")
        if summary:  # the rows as written, with the final gamma's NRC3
            rows = [m["final"] or row for m, row in zip(summary["members"], rows)]
    finally:
        ckpt.close()
        log.close()
    return {"members": rows, "summary": summary}


__all__ = ["train_and_evaluate_streamed", "StreamedRun", "StreamingSteps", "streaming_steps", "Streamer", "RowView",
           "padded_order", "streamed_fingerprint", "streamed_run_meta"]
