"""The in-memory engine: the data set on the devices, many epochs per compiled call.

The (tabular or small image) data set is replicated on every device, so each device gathers its
own rows of a minibatch locally. One compiled call `Trainer.train_chunk(state, data, num_epochs)`
runs `num_epochs` (a traced int, so every chunk length shares one compilation) epochs in a
`fori_loop`, each epoch a `scan` over one member's shuffled minibatches (`Learner.epoch_batches`),
then evaluates: the whole train and test sets' features turned into metrics
(`metrics.metrics_from_features`, assembled by `Learner.member_metrics`) in the same program. Only
the metrics leave the device, once per evaluation.
"""
from __future__ import annotations

from typing import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nrc_jax.core import deep, metrics
from nrc_jax.data import RegressionData
from nrc_jax.engine import models
from nrc_jax.engine.learner import (DATA_AXIS, MEMBER_AXIS, Learner, TrainState, cached_program, config_mesh, round_up)
from nrc_jax.errors import ConfigError
from nrc_jax.io import checkpoints, distributed


@flax.struct.dataclass
class DeviceData:
    """The data set on device, each split padded to a multiple of its chunk size (padding has mask 0)."""

    x_train: jax.Array
    y_train: jax.Array
    mask_train: jax.Array   # (M_pad,) float32
    x_test: jax.Array
    y_test: jax.Array
    mask_test: jax.Array
    sigma: jax.Array        # (n, n) covariance of the train targets (NRC3)
    num_train: int = flax.struct.field(pytree_node=False)
    eval_chunk: int = flax.struct.field(pytree_node=False)  # rows per evaluation chunk, train split
    test_chunk: int = flax.struct.field(pytree_node=False)  # ... and test split


def put_data(data: RegressionData, mesh: Mesh, eval_chunk: int) -> DeviceData:
    """Copies the data set to every device of `mesh` (each process passes the same full arrays)."""
    if not all(isinstance(a, np.ndarray) for a in (data.x_train, data.x_test)):
        raise ConfigError(f"data set {data.name!r} is streamed from the host (larger than "
                          "data.max_in_memory_mb); the trainer keeps data on the device: raise "
                          "data.max_in_memory_mb or lower data.train_size / data.image_size")
    replicated = NamedSharding(mesh, P())

    def put(x: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(replicated, np.ascontiguousarray(x))

    def chunk_rows(rows: int) -> int:
        """Rows per evaluation chunk: <= eval_chunk (up to device rounding), as even as possible,
        so padding is under one row per chunk and device (e.g. 10,000 rows: 2 x 5,000, not 2 x 8,192)."""
        num_chunks = -(-rows // eval_chunk)
        return round_up(-(-rows // num_chunks), mesh.shape[DATA_AXIS])

    def padded(x: np.ndarray, y: np.ndarray, chunk: int):
        pad = round_up(len(x), chunk) - len(x)
        mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
        return (put(np.concatenate([x, np.repeat(x[:1], pad, 0)])),
                put(np.concatenate([y, np.repeat(y[:1], pad, 0)])), put(mask))

    sigma = np.asarray(metrics.target_stats(data.y_train)["sigma"], np.float32)
    train_chunk, test_chunk = chunk_rows(len(data.x_train)), chunk_rows(len(data.x_test))
    return DeviceData(*padded(data.x_train, data.y_train, train_chunk),
                      *padded(data.x_test, data.y_test, test_chunk), sigma=put(sigma),
                      num_train=len(data.x_train), eval_chunk=train_chunk, test_chunk=test_chunk)


def over_members(fn: Callable, state: TrainState, data: DeviceData, member_axis: str | None = None):
    """`fn(member_state, data)` for each of the K sweep members, outputs stacked on a leading K axis.

    vmapped; with `member_axis` (a mesh axis name) the vmapped axis is sharded over it, also inside
    `fn`'s sharding constraints. A single member is called directly, since a vmap of one member
    measured ~15% slower for a Hopper-size evaluation (results/bench.md).
    """
    if state.epoch.shape[0] == 1:
        return jax.tree.map(lambda a: a[None], fn(jax.tree.map(lambda a: a[0], state), data))
    return jax.vmap(fn, in_axes=(0, None), spmd_axis_name=member_axis)(state, data)


def _after_training(data: DeviceData, state: TrainState) -> DeviceData:
    """`data` whose masks depend on the trained `state` (their values unchanged).

    XLA:CPU runs independent operations of a program concurrently and does not order a collective
    inside a loop before one outside it. An evaluation sum that needs only the data (a mask's row
    count) could then start on one device while another still waits in the epoch loop's gradient
    sum: a deadlock of multi-device CPU meshes (`rendezvous ... only 1 of them arrived`). Every
    evaluation sum over rows goes through a mask, so this dependency orders them all after training.
    (`lax.optimization_barrier` does not: XLA:CPU removes it before scheduling.)
    """
    trained = jnp.all(state.epoch >= 0)  # always true, but only known once the loop has run
    return data.replace(mask_train=jnp.where(trained, data.mask_train, 0.0),
                        mask_test=jnp.where(trained, data.mask_test, 0.0))


class Trainer:
    """The compiled functions of one in-memory run (model, optimizer and mesh fixed by the config)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, input_shape: tuple[int, ...],
                 out_dim: int):
        self.learner = Learner(config, input_shape, out_dim)
        self.config, self.mesh = self.learner.config, mesh
        self.input_shape, self.out_dim = self.learner.input_shape, out_dim
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
        self.member_sharding = NamedSharding(mesh, P(MEMBER_AXIS))  # state leaves: (K, ...)
        self.member_axis = MEMBER_AXIS if mesh.shape[MEMBER_AXIS] > 1 else None
        self.init = jax.jit(self.learner.init, out_shardings=self.member_sharding)
        # Metrics come out replicated: with members sharded over the devices of several processes,
        # each process still holds every member's rows (a small all-gather).
        self.train_chunk = jax.jit(self._train_chunk, donate_argnums=0,
                                   out_shardings=(self.member_sharding, self.replicated))
        self.evaluate = jax.jit(self._evaluate, out_shardings=self.replicated)

    def create_state(self, members: list[dict]) -> TrainState:
        """The initial state of the K members (member axis sharded over the mesh's 'members')."""
        return self.init(*self.learner.init_args(members))

    def abstract_state(self, members: list[dict]) -> TrainState:
        """Shapes, dtypes and shardings of `create_state(members)`, without computing it."""
        return self.learner.abstract_state(members, self.member_sharding)

    def _shard(self, x: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, self.batch_sharding)

    # ----------------------------------------------------------------- training
    def _member_epoch(self, state: TrainState, data: DeviceData) -> TrainState:
        learner = self.learner
        idx, mask = learner.epoch_batches(state.rng, state.epoch, data.num_train)
        factor = learner.lr_factor(state.epoch)

        def step(carry, batch):
            rows, m = batch
            x, y, m = self._shard(data.x_train[rows]), self._shard(data.y_train[rows]), self._shard(m)
            return learner.step(*carry, x, y, m, state.hparams, factor), None

        carry = (state.params, state.model_state, state.opt_state)
        (params, model_state, opt_state), _ = jax.lax.scan(step, carry, (idx, mask))
        return state.replace(params=params, model_state=model_state, opt_state=opt_state, epoch=state.epoch + 1)

    def _train_chunk(self, state: TrainState, data: DeviceData, num_epochs: jax.Array):
        """`num_epochs` epochs of every member, then an evaluation: (new state, metrics (K, ...))."""
        state = jax.lax.fori_loop(0, num_epochs, lambda _, s: over_members(self._member_epoch, s, data,
                                                                           self.member_axis), state)
        out = dict(self._evaluate(state, _after_training(data, state)))
        basis = out.pop("pca_basis", None)  # lives in the state only: `out` must outlive the donated state
        if self.config.metrics.pca_iters:
            state = state.replace(pca_basis=basis)
        return state, out

    # ----------------------------------------------------------------- evaluation
    def _features(self, params, model_state, x: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array, list]:
        """Predictions (M, n), features (M, d), hidden list over all rows of x, `chunk` rows at a time."""
        def apply(xc):
            pred, h, hidden, _ = self.learner.forward(params, model_state, self._shard(xc), False)
            return pred, h, hidden
        chunks = x.reshape((-1, chunk) + x.shape[1:])
        pred, h, hidden = jax.lax.map(apply, chunks)
        flat = lambda a: a.reshape((-1,) + a.shape[2:])
        return flat(pred), flat(h), [flat(a) for a in hidden]

    def _member_metrics(self, state: TrainState, data: DeviceData) -> dict[str, jax.Array]:
        c = self.config
        w, _ = models.head_params(state.params)
        pred, h, hidden = self._features(state.params, state.model_state, data.x_train, data.eval_chunk)
        train = metrics.metrics_from_features(h, data.y_train, pred, w, mask=data.mask_train, sigma=data.sigma,
                                              **self.learner.metric_options(state))
        layers = None
        if c.metrics.per_layer:
            layers = deep.per_layer_metrics(hidden, data.y_train, pred, models.layer_weights(state.params, c.model),
                                            data.mask_train)
        pred, _, _ = self._features(state.params, state.model_state, data.x_test, data.test_chunk)
        test = metrics.regression_metrics(data.y_test, pred, data.mask_test)
        return self.learner.member_metrics(state, w, train, test, layers)

    def _evaluate(self, state: TrainState, data: DeviceData) -> dict[str, jax.Array]:
        """Metrics of every member over the whole train and test sets: dict of (K, ...) arrays."""
        return over_members(self._member_metrics, state, data, self.member_axis)

    def features(self, state: TrainState, data: DeviceData, member: int, split: str = "train"):
        """Host arrays of one member on a split: predictions (M, n), features (M, d), hidden list."""
        one = jax.tree.map(lambda a: a[member], state)
        x, mask, chunk = ((data.x_train, data.mask_train, data.eval_chunk) if split == "train"
                          else (data.x_test, data.mask_test, data.test_chunk))
        pred, h, hidden = jax.jit(self._features, static_argnums=3)(one.params, one.model_state, x, chunk)
        keep = np.asarray(mask) > 0
        return np.asarray(pred)[keep], np.asarray(h)[keep], [np.asarray(a)[keep] for a in hidden]


def get_trainer(config: ml_collections.ConfigDict, mesh: Mesh, input_shape: tuple[int, ...],
                out_dim: int) -> Trainer:
    """A Trainer, reused for configs that compile the same program (`learner.cached_program`)."""
    return cached_program(Trainer, config, mesh, input_shape, out_dim)


class MemoryEngine:
    """`learner.Engine` over a `Trainer` and the data set on the devices."""

    asynchronous = True  # train_epochs returns once the chunk is dispatched

    def __init__(self, config: ml_collections.ConfigDict, data: RegressionData, members: list[dict]):
        mesh = config_mesh(config)
        if config.train.batch_size % mesh.shape[DATA_AXIS]:
            raise ConfigError(f"train.batch_size={config.train.batch_size} must be a multiple of the "
                              f"{mesh.shape[DATA_AXIS]} devices of the mesh's data axis")
        if len(members) % mesh.shape[MEMBER_AXIS]:
            raise ConfigError(f"mesh.member_devices={mesh.shape[MEMBER_AXIS]} must divide the sweep's "
                              f"{len(members)} members")
        self.trainer = get_trainer(config, mesh, data.input_shape, data.target_dim)
        self.data = put_data(data, mesh, config.train.eval_chunk)
        self.meta = checkpoints.run_meta(config, data, members)
        self.sigma = np.asarray(self.data.sigma)
        self._train_chunk = None

    def abstract_state(self, members: list[dict]) -> TrainState:
        return self.trainer.abstract_state(members)

    def create_state(self, members: list[dict]) -> TrainState:
        return self.trainer.create_state(members)

    def train_epochs(self, state: TrainState, num_epochs: int,
                     stop: Callable[[], bool] = lambda: False) -> tuple[TrainState, dict]:
        """Dispatches one compiled chunk (`stop` is not polled: a chunk runs to its end)."""
        del stop
        if self._train_chunk is None:
            self._train_chunk = self.trainer.train_chunk
            if jax.process_count() > 1:
                # gloo (CPU) connects each new set of collective peers with a fixed 30 s deadline:
                # every process compiles first, then all start the program together.
                self._train_chunk = distributed.compile_together("train_chunk", self.trainer.train_chunk, state,
                                                                 self.data, jnp.asarray(0, jnp.int32))
        return self._train_chunk(state, self.data, jnp.asarray(num_epochs, jnp.int32))


__all__ = ["DeviceData", "put_data", "over_members", "Trainer", "get_trainer", "MemoryEngine"]
