"""The streamed engine: image sets too large for the devices, batches streamed from the host.

The driver (`train.train_and_evaluate`) picks this engine when the data set's inputs are
`ArraySource`s (larger than `data.max_in_memory_mb`). Model, loss, optimizer, shuffles and metric
rows are the shared `learner.Learner`'s; what differs from the in-memory engine is the loop:

  * training: one jitted, donated `train_step(state, x, y, mask)` per minibatch. Each member reads
    its own shuffled epoch, `Learner.epoch_batches(fold_in(member_key, epoch))` as in the in-memory
    engine, so both engines train a member on the same batches and a resumed run reads the same
    batches as an uninterrupted one. A global batch holds the B rows of every one of the K members
    (x (B, K, ...): the host reads K times the rows of one model's epoch), sharded over the mesh axis
    'data' and fed to the K vmapped members; batches come from `data.batches.iterate_batches`
    (background threads decode and place the next batches while the devices compute).
  * evaluation: a jitted `stats_step(state, x, y, mask) -> FeatureStats` per chunk, summed with
    `metrics.merge` over the whole train and test sets (every member reads the same chunks), then
    one `metrics_from_stats` call per member: the metric rows of the in-memory engine. The
    "centered" variants need the feature mean first, so the train features of the evaluation are
    kept on the device when they fit (`CACHED_FEATURES_MB`), else the train set is read again.

Multi-host: every process builds the same padded row order and reads only its contiguous slice of
each global batch; `jax.make_array_from_process_local_data` assembles the global, sharded batch.
The last partial batch of an epoch (and of each evaluation pass) is filled up with real rows that
carry mask 0, so every batch has the same shape (one compilation) and no row is lost.

Not supported with streamed data: `metrics.per_layer` (needs every hidden layer of the whole set).
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nrc_jax.core import metrics
from nrc_jax.core.metric_core import regression_from_moments
from nrc_jax.core.stats import moments_of
from nrc_jax.data import RegressionData
from nrc_jax.data.base import setting
from nrc_jax.data.batches import iterate_batches
from nrc_jax.engine import models
from nrc_jax.engine.learner import (DATA_AXIS, MEMBER_AXIS, Learner, TrainState, batch_layout, cached_program,
                                    make_mesh, round_up)
from nrc_jax.errors import ConfigError
from nrc_jax.io import checkpoints

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


class StreamedSteps:
    """The compiled per-batch functions of a streamed run, on a `Learner` (same model, loss, optimizer)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, input_shape: tuple[int, ...], out_dim: int):
        self.learner = Learner(config, input_shape, out_dim)
        self.mesh = mesh
        self.member_sharding = NamedSharding(mesh, P(MEMBER_AXIS))
        self.init = jax.jit(self.learner.init, out_shardings=self.member_sharding)
        self.epoch_batches = jax.jit(self._epoch_batches, static_argnums=2, out_shardings=NamedSharding(mesh, P()))
        self.train_step = jax.jit(self._train_step, donate_argnums=0)
        self.stats_step = jax.jit(self._stats_step)
        self.centered_step = jax.jit(self._centered_step)
        self.centered_from_features = jax.jit(self._centered_from_features)
        self.finish = jax.jit(self._finish)
        self.merge = jax.jit(metrics.merge)
        self.next_epoch = jax.jit(lambda s: s.replace(epoch=s.epoch + 1), donate_argnums=0)

    def _epoch_batches(self, keys: jax.Array, epochs: jax.Array, num_train: int) -> tuple[jax.Array, jax.Array]:
        """Row indices and mask (K, num_batches, B) of each member's epoch, from its key (K, 2) and epoch (K,)."""
        return jax.vmap(lambda key, epoch: self.learner.epoch_batches(key, epoch, num_train))(keys, epochs)

    def _train_step(self, state: TrainState, x: jax.Array, y: jax.Array, mask: jax.Array) -> TrainState:
        """One optimizer step of every member k on its batch x[:, k] (B, ...), y[:, k] (B, n), mask[:, k] (B,)."""
        learner = self.learner

        def member(s: TrainState, x, y, mask) -> TrainState:
            params, model_state, opt_state = learner.step(s.params, s.model_state, s.opt_state, x, y, mask,
                                                          s.hparams, learner.lr_factor(s.epoch))
            return s.replace(params=params, model_state=model_state, opt_state=opt_state)
        return jax.vmap(member, in_axes=(0, 1, 1, 1))(state, x, y, mask)

    def _member_forward(self, s: TrainState, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        pred, h, _, _ = self.learner.forward(s.params, s.model_state, x, False)
        return pred, h

    def _stats_step(self, state: TrainState, x: jax.Array, y: jax.Array, mask: jax.Array):
        """(FeatureStats with leading K, features (K, B, d)) of one evaluation batch."""
        def member(s):
            pred, h = self._member_forward(s, x)
            return metrics.feature_stats(h, y, pred, mask), h
        return jax.vmap(member)(state)

    def _centered_step(self, state: TrainState, x: jax.Array, mask: jax.Array, mean: jax.Array):
        """CenteredStats (leading K) of one batch, given each member's feature mean (K, d)."""
        def member(s, mu):
            return metrics.centered_feature_stats(self._member_forward(s, x)[1], mu, mask)
        return jax.vmap(member)(state, mean)

    def _centered_from_features(self, h: jax.Array, mask: jax.Array, mean: jax.Array):
        """CenteredStats (leading K) from cached features h (K, B, d)."""
        return jax.vmap(lambda hk, mu: metrics.centered_feature_stats(hk, mu, mask))(h, mean)

    def _finish(self, state: TrainState, stats, centered, test_stats, sigma: jax.Array) -> dict:
        """The metrics dict (K, ...) of `memory.Trainer.evaluate`, from whole-set statistics."""
        def member(s, st, cs, ts):
            w, _ = models.head_params(s.params)
            train = metrics.metrics_from_stats(st, w, sigma=sigma, centered=cs, **self.learner.metric_options(s))
            test = regression_from_moments(moments_of(ts))  # the test split needs MSE/R2 only
            return self.learner.member_metrics(s, w, train, test)
        return jax.vmap(member)(state, stats, centered, test_stats)


class Streamer:
    """Feeds (x, y, mask) global batches of a split to the devices, in a given row order."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, name: str):
        self.name = name
        self.prefetch = int(setting(config.data, "prefetch", DEFAULT_PREFETCH))
        self.num_workers = int(setting(config.data, "num_workers", DEFAULT_NUM_WORKERS))
        self.sharding = NamedSharding(mesh, P(DATA_AXIS))
        self.process_index, self.process_count = jax.process_index(), jax.process_count()

    def _to_device(self, batch_size: int, n: int, members: int | None) -> Callable:
        group = () if members is None else (members,)

        def put(batch: tuple[np.ndarray, np.ndarray]) -> tuple[jax.Array, jax.Array, jax.Array]:
            x, y_mask = batch
            return tuple(jax.make_array_from_process_local_data(
                self.sharding, np.ascontiguousarray(a).reshape((-1,) + group + a.shape[1:]),
                (batch_size,) + group + a.shape[1:]) for a in (x, y_mask[:, :n], y_mask[:, n]))
        return put

    def batches(self, x: Any, y: np.ndarray, rows: np.ndarray, mask: np.ndarray, batch_size: int,
                members: int | None = None):
        """Yields (x (B, ...), y (B, n), mask (B,)) global arrays over `rows` (a multiple of B); with
        `members` = K, `rows` and `mask` hold K rows per batch position and the arrays are (B, K, ...)."""
        y_mask = np.concatenate([y[rows], mask[:, None]], axis=1).astype(np.float32)  # the mask rides along
        rows_per_batch = batch_size * (members or 1)
        return iterate_batches(RowView(x, rows), y_mask, rows_per_batch, shuffle=False, drop_remainder=True,
                               prefetch=self.prefetch, num_workers=self.num_workers,
                               process_index=self.process_index, process_count=self.process_count,
                               to_device=self._to_device(batch_size, y.shape[1], members), name=self.name)


class StreamedEngine:
    """`learner.Engine` of a streamed run: the data, the compiled steps and the epoch / evaluation loops."""

    asynchronous = False  # the host reads every batch of a chunk before train_epochs returns

    def __init__(self, config: ml_collections.ConfigDict, data: RegressionData, members: list[dict]):
        if config.metrics.per_layer:
            raise ConfigError(f"metrics.per_layer=True is not supported for data set {data.name!r}, which is "
                              "streamed from the host (larger than data.max_in_memory_mb); set it False or raise "
                              "data.max_in_memory_mb")
        if config.mesh.get("member_devices", 1) != 1:
            raise ConfigError(f"mesh.member_devices={config.mesh.member_devices} is not supported for data set "
                              f"{data.name!r}, which is streamed from the host; set it 1")
        mesh = make_mesh(config.mesh.num_devices)
        granule = mesh.size * jax.process_count()  # rows divide over devices and processes
        self.batch_size = config.train.batch_size
        if self.batch_size % granule:
            raise ConfigError(f"train.batch_size={self.batch_size} must be a multiple of {granule} "
                              "(devices x processes) for streamed data")
        self.data = data
        self.steps = cached_program(StreamedSteps, config, mesh, data.input_shape, data.target_dim)
        self.streamer = Streamer(config, mesh, data.name)
        self.eval_batch = round_up(min(config.train.eval_chunk, max(data.train_size, data.test_size)), granule)
        self.meta = streamed_run_meta(config, data, members)
        self.sigma = np.asarray(metrics.target_stats(data.y_train)["sigma"], np.float32)
        self._sigma = jax.make_array_from_process_local_data(NamedSharding(mesh, P()), self.sigma)

    def abstract_state(self, members: list[dict]) -> TrainState:
        return self.steps.learner.abstract_state(members, self.steps.member_sharding)

    def create_state(self, members: list[dict]) -> TrainState:
        return self.steps.init(*self.steps.learner.init_args(members))

    def train_epochs(self, state: TrainState, num_epochs: int,
                     stop: Callable[[], bool] = lambda: False) -> tuple[TrainState, dict]:
        """Up to `num_epochs` epochs (fewer once `stop()` is true after one), then an evaluation."""
        for _ in range(num_epochs):
            state = self.train_epoch(state)
            if stop():
                break
        return self.evaluate(state)

    def train_epoch(self, state: TrainState) -> TrainState:
        """One epoch of every member (each in its own shuffled order); returns the state after it."""
        idx, mask = jax.device_get(self.steps.epoch_batches(state.rng, state.epoch, self.data.train_size))
        members = idx.shape[0]
        rows, mask = (np.moveaxis(a, 0, -1).reshape(-1) for a in (idx, mask))  # (batch, row, member) order
        for x, y, m in self.streamer.batches(self.data.x_train, self.data.y_train, rows, mask, self.batch_size,
                                             members):
            state = self.steps.train_step(state, x, y, m)
        return self.steps.next_epoch(state)

    def _eval_order(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and mask of one pass over a split in order, in batches of `eval_batch`."""
        rows, mask = batch_layout(np.arange(count, dtype=np.int32), self.eval_batch, drop_last=False)
        return np.asarray(rows).reshape(-1), np.asarray(mask).reshape(-1)

    def _pass(self, state: TrainState, split: str, keep_features: bool):
        """Merged FeatureStats (leading K) of a whole split, and the per-batch (features, mask) if kept."""
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        total, kept = None, []
        for xb, yb, mb in self.streamer.batches(x, y, *self._eval_order(len(y)), self.eval_batch):
            stats, h = self.steps.stats_step(state, xb, yb, mb)
            total = stats if total is None else self.steps.merge(total, stats)
            if keep_features:
                kept.append((h, mb))
        return total, kept

    def _centered(self, state: TrainState, stats, kept: list):
        mean = jax.vmap(metrics.feature_mean)(stats)
        if kept:
            parts = [self.steps.centered_from_features(h, m, mean) for h, m in kept]
        else:  # features too large to keep: read the train set again
            parts = [self.steps.centered_step(state, xb, mb, mean) for xb, _, mb in self.streamer.batches(
                self.data.x_train, self.data.y_train, *self._eval_order(self.data.train_size), self.eval_batch)]
        total = parts[0]
        for part in parts[1:]:
            total = self.steps.merge(total, part)
        return total

    def evaluate(self, state: TrainState) -> tuple[TrainState, dict]:
        """Metrics (K, ...) of every member over the whole train and test sets (and the state with the
        updated PCA warm start, as `Trainer.train_chunk` keeps it)."""
        k, d = int(state.epoch.shape[0]), int(state.pca_basis.shape[1])  # pca_basis: (K, d, r)
        feature_mb = k * self.data.train_size * d * 4 / 2**20
        stats, kept = self._pass(state, "train", keep_features=feature_mb <= CACHED_FEATURES_MB)
        centered = self._centered(state, stats, kept)
        del kept
        test_stats, _ = self._pass(state, "test", keep_features=False)
        out = dict(self.steps.finish(state, stats, centered, test_stats, self._sigma))
        basis = out.pop("pca_basis", None)  # lives in the state only: `out` must outlive the donated state
        if self.steps.learner.config.metrics.pca_iters:
            state = state.replace(pca_basis=basis)
        return state, out


__all__ = ["StreamedEngine", "StreamedSteps", "Streamer", "RowView", "streamed_fingerprint", "streamed_run_meta",
           "CACHED_FEATURES_MB"]
