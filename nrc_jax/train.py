"""The functional core: state pytrees, the compiled scan over epochs, and the training driver.

Layout. A run trains K >= 1 models at once (a sweep, `vmap` over the leading axis of every state
leaf; K = 1 without a sweep). Devices form a 2-D `Mesh` ('members', 'data'), `mesh.member_devices`
along the first axis (1 by default): the state's member axis K is sharded over 'members', so each
group of devices trains its own K / member_devices members; minibatches and evaluation chunks of
each member are sharded over 'data'. The (tabular) data set is replicated on every device, so each
device gathers its own rows of a minibatch locally.

Epochs. Each epoch shuffles on device with `shuffled_indices(fold_in(member_key, epoch))`, so shuffles
depend only on (seed, epoch) and a resumed run repeats an uninterrupted one bit for bit. Like the
paper's PyTorch DataLoader (drop_last=False), the last, partial minibatch is kept: it is padded
with real rows that carry mask 0, so they count in no loss or statistic (BatchNorm statistics do
see them). `train.drop_last=True` drops it instead.

One compiled call `train_chunk(state, data, num_epochs)` runs `num_epochs` (a traced int, so every
chunk length shares one compilation) epochs in a `fori_loop`, each epoch a `scan` over minibatches,
then evaluates: sufficient statistics of the whole train and test sets (`metrics.FeatureStats`),
turned into metrics in the same program. Only the metrics leave the device, once per evaluation.
"""
from __future__ import annotations

import collections
import json
import math
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nrc_jax import checkpoints, deep, distributed, locking, metrics, models, optim, run_files, sweeps, validate, writers
from nrc_jax.data import RegressionData, load_dataset
from nrc_jax.errors import ConfigError, DivergenceError

MEMBER_AXIS = "members"
DATA_AXIS = "data"
# Python-side trace counts of the compiled functions (tests assert nothing recompiles).
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class TrainState:
    """Every leaf has a leading sweep axis K."""

    epoch: jax.Array        # (K,) int32, epochs completed
    params: Any
    model_state: Any        # {"batch_stats": ...} for BatchNorm models, else {}
    opt_state: Any
    hparams: optim.HParams  # (K,) each
    rng: jax.Array          # (K, 2) uint32, the shuffling key of each member
    pca_basis: jax.Array    # (K, d, max(n, evr_k)): warm start of NRC1's subspace iteration


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


def make_mesh(num_devices: int = -1, member_devices: int = 1) -> Mesh:
    """A 2-D mesh ('members', 'data') of shape (member_devices, num_devices // member_devices) over
    the first `num_devices` of `jax.devices()` (-1: all processes')."""
    devices = jax.devices()
    if num_devices == -1:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ConfigError(f"mesh.num_devices={num_devices}: allowed -1 (all) or 1..{len(devices)}")
    if member_devices < 1 or num_devices % member_devices:
        raise ConfigError(f"mesh.member_devices={member_devices}: allowed a divisor of the mesh's "
                          f"{num_devices} devices (mesh.num_devices)")
    grid = np.asarray(devices[:num_devices]).reshape(member_devices, num_devices // member_devices)
    return Mesh(grid, (MEMBER_AXIS, DATA_AXIS))


def config_mesh(config: ml_collections.ConfigDict) -> Mesh:
    """`make_mesh` of the config's `mesh.num_devices` and `mesh.member_devices` (default 1)."""
    return make_mesh(config.mesh.num_devices, config.mesh.get("member_devices", 1))


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


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
        return _round_up(-(-rows // num_chunks), mesh.shape[DATA_AXIS])

    def padded(x: np.ndarray, y: np.ndarray, chunk: int):
        pad = _round_up(len(x), chunk) - len(x)
        mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
        return (put(np.concatenate([x, np.repeat(x[:1], pad, 0)])),
                put(np.concatenate([y, np.repeat(y[:1], pad, 0)])), put(mask))

    sigma = np.asarray(metrics.target_stats(data.y_train)["sigma"], np.float32)
    train_chunk, test_chunk = chunk_rows(len(data.x_train)), chunk_rows(len(data.x_test))
    return DeviceData(*padded(data.x_train, data.y_train, train_chunk),
                      *padded(data.x_test, data.y_test, test_chunk), sigma=put(sigma),
                      num_train=len(data.x_train), eval_chunk=train_chunk, test_chunk=test_chunk)


def shuffled_indices(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of 0..n-1, (n,) int32: `jax.random.permutation`, or on the CPU
    (`models.cpu_rewrites()`) the same method packed into one array per sort (`packed_shuffle`).

    Both give a uniform permutation fixed by (key, n), but not the same one: a run's shuffles
    depend on the backend it trains on.
    """
    if models.cpu_rewrites() and n <= PACKED_SHUFFLE_MAX_ROWS:
        return packed_shuffle(key, n)
    return jax.random.permutation(key, n).astype(jnp.int32)


# Up to 2**20 rows the index leaves >= 12 random bits per uint32 key (few sort rounds).
PACKED_SHUFFLE_MAX_ROWS = 2**20


def packed_shuffle(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of 0..n (<= 2**20), (n,) int32, by the method of `jax.random.permutation`.

    Like it, successive stable sorts by fresh random keys, with enough random bits in all (>= 3 log2
    n) that ties are negligible. The index rides in the low bits of each uint32 key, so each round
    sorts one array: XLA:CPU sorts a single array about 6x faster than the key-value pairs
    `jax.random.permutation` sorts (results/bench.md, change 11).
    """
    index_bits = max(1, (n - 1).bit_length())
    random_bits = 32 - index_bits
    rounds = max(1, math.ceil(3 * math.log2(max(n, 2)) / random_bits))
    low = jnp.uint32((1 << index_bits) - 1)
    position = jnp.arange(n, dtype=jnp.uint32)
    perm = position
    for round_key in jax.random.split(key, rounds):
        keys = (jax.random.bits(round_key, (n,), jnp.uint32) & ~low) | position  # ties: keep the order
        perm = perm[jnp.sort(keys) & low]
    return perm.astype(jnp.int32)


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
    """The compiled functions of one run (model, optimizer and mesh fixed by the config)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, input_shape: tuple[int, ...],
                 out_dim: int):
        self.config, self.mesh = config, mesh
        self.input_shape, self.out_dim = tuple(input_shape), out_dim
        self.model = models.get_model(config.model, out_dim)
        self.tx = optim.direction(config.optim)
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
        self.member_sharding = NamedSharding(mesh, P(MEMBER_AXIS))  # state leaves: (K, ...)
        self.member_axis = MEMBER_AXIS if mesh.shape[MEMBER_AXIS] > 1 else None
        self.init = jax.jit(self._init, out_shardings=self.member_sharding)
        # Metrics come out replicated: with members sharded over the devices of several processes,
        # each process still holds every member's rows (a small all-gather).
        self.train_chunk = jax.jit(self._train_chunk, donate_argnums=0,
                                   out_shardings=(self.member_sharding, self.replicated))
        self.evaluate = jax.jit(self._evaluate_call, out_shardings=self.replicated)

    # ----------------------------------------------------------------- model application
    def _forward(self, params, model_state, x, train: bool):
        """(predictions (B, n), features (B, d), hidden list, new model_state)."""
        variables = {"params": params, **model_state}
        x = x.astype(jnp.float32)
        if train and model_state:
            (pred, h, hidden), new_state = self.model.apply(variables, x, train=True, mutable=list(model_state))
            return pred, h, hidden, new_state
        pred, h, hidden = self.model.apply(variables, x, train=train)
        return pred, h, hidden, model_state

    def _shard(self, x: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, self.batch_sharding)

    # ----------------------------------------------------------------- init
    def _init(self, seeds: jax.Array, hparams: optim.HParams) -> TrainState:
        def member(seed, hp):
            init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
            variables = self.model.init(init_key, jnp.zeros((1,) + self.input_shape), train=False)
            params = variables.pop("params")
            model_state = dict(variables)
            _, h, _, _ = self._forward(params, model_state, jnp.zeros((1,) + self.input_shape), False)
            basis = metrics.pca_basis_init(h.shape[-1], self.out_dim, evr_k=self.config.metrics.evr_k)
            return TrainState(epoch=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                              opt_state=self.tx.init(params), hparams=hp, rng=shuffle_key, pca_basis=basis)
        return jax.vmap(member)(seeds, hparams)

    def create_state(self, members: list[dict]) -> TrainState:
        """The initial state of the K members (member axis sharded over the mesh's 'members')."""
        seeds = jnp.asarray([m["seed"] for m in members], jnp.int32)
        hp = optim.HParams(*(jnp.asarray([m[f] for m in members], jnp.float32) for f in optim.HParams._fields))
        return self.init(seeds, hp)

    def abstract_state(self, members: list[dict]) -> TrainState:
        """Shapes, dtypes and shardings of `create_state(members)`, without computing it."""
        seeds = jax.ShapeDtypeStruct((len(members),), jnp.int32)
        hp = optim.HParams(*([jax.ShapeDtypeStruct((len(members),), jnp.float32)] * 4))
        shapes = jax.eval_shape(self._init, seeds, hp)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.member_sharding), shapes)

    # ----------------------------------------------------------------- training
    def _epoch_batches(self, key: jax.Array, num_train: int) -> tuple[jax.Array, jax.Array]:
        """Row indices (num_batches, B) and mask (num_batches, B) of one shuffled epoch."""
        batch = self.config.train.batch_size
        perm = shuffled_indices(key, num_train)
        if self.config.train.drop_last:
            num_batches = max(num_train // batch, 1)
            return perm[:num_batches * batch].reshape(num_batches, batch), jnp.ones((num_batches, batch))
        num_batches = -(-num_train // batch)
        idx = jnp.resize(perm, num_batches * batch)  # repeats rows cyclically, even when batch > rows
        mask = (jnp.arange(num_batches * batch) < num_train).astype(jnp.float32)
        return idx.reshape(num_batches, batch), mask.reshape(num_batches, batch)

    def _batch_loss(self, params, model_state, x, y, mask, hp):
        pred, h, _, new_model_state = self._forward(params, model_state, x, True)
        mse = optim.data_term(jnp.sum(jnp.square(pred - y), axis=-1), mask, self.out_dim, self.config.optim)
        h_norm_sq = optim.masked_mean(jnp.sum(jnp.square(h), axis=-1), mask)
        w, _ = models.head_params(params)
        return 0.5 * mse + optim.regularization(params, w, h_norm_sq, hp, self.config.optim), new_model_state

    def _member_epoch(self, state: TrainState, data: DeviceData) -> TrainState:
        idx, mask = self._epoch_batches(jax.random.fold_in(state.rng, state.epoch), data.num_train)
        factor = optim.lr_factor(state.epoch, self.config.optim, self.config.train.epochs)
        grad_fn = jax.grad(self._batch_loss, has_aux=True)

        def step(carry, batch):
            params, model_state, opt_state = carry
            rows, m = batch
            x, y, m = self._shard(data.x_train[rows]), self._shard(data.y_train[rows]), self._shard(m)
            grads, model_state = grad_fn(params, model_state, x, y, m, state.hparams)
            params, opt_state = optim.apply_update(self.tx, grads, opt_state, params, state.hparams,
                                                   factor, self.config.optim)
            return (params, model_state, opt_state), None

        carry = (state.params, state.model_state, state.opt_state)
        (params, model_state, opt_state), _ = jax.lax.scan(step, carry, (idx, mask))
        return state.replace(params=params, model_state=model_state, opt_state=opt_state, epoch=state.epoch + 1)

    def _train_chunk(self, state: TrainState, data: DeviceData, num_epochs: jax.Array):
        """`num_epochs` epochs of every member, then an evaluation: (new state, metrics (K, ...))."""
        TRACE_COUNTS["train_chunk"] += 1
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
            pred, h, hidden, _ = self._forward(params, model_state, self._shard(xc), False)
            return pred, h, hidden
        chunks = x.reshape((-1, chunk) + x.shape[1:])
        pred, h, hidden = jax.lax.map(apply, chunks)
        flat = lambda a: a.reshape((-1,) + a.shape[2:])
        return flat(pred), flat(h), [flat(a) for a in hidden]

    def _member_metrics(self, state: TrainState, data: DeviceData) -> dict[str, jax.Array]:
        c = self.config
        w, _ = models.head_params(state.params)
        hp = state.hparams
        pred, h, hidden = self._features(state.params, state.model_state, data.x_train, data.eval_chunk)
        gamma = hp.lambda_h * hp.lambda_w if c.optim.regularizer == "ufm" else None
        pca_init = state.pca_basis if c.metrics.pca_iters else None
        out = metrics.metrics_from_features(h, data.y_train, pred, w, mask=data.mask_train, sigma=data.sigma,
                                            gamma=gamma, evr_k=c.metrics.evr_k, pca_init=pca_init,
                                            pca_iters=max(c.metrics.pca_iters, 1))
        out = {("train_" + k if k in ("mse", "mse_per_dim", "r2", "r2_per_dim") else k): v for k, v in out.items()}
        if c.metrics.per_layer:
            out["layers"] = deep.per_layer_metrics(hidden, data.y_train, pred,
                                                   deep.layer_weights(state.params, c.model), data.mask_train)
        out["loss"] = (optim.loss_from_mse(out["train_mse"], self.out_dim, c.optim)
                       + optim.regularization(state.params, w, out["h_norm_sq"], hp, c.optim))
        pred, _, _ = self._features(state.params, state.model_state, data.x_test, data.test_chunk)
        test = metrics.regression_metrics(data.y_test, pred, data.mask_test)
        out.update({f"test_{k}": v for k, v in test.items()})
        out["epoch"] = state.epoch
        return out

    def _evaluate_call(self, state: TrainState, data: DeviceData) -> dict[str, jax.Array]:
        TRACE_COUNTS["evaluate"] += 1
        return self._evaluate(state, data)

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


_TRAINERS: dict = {}


def get_trainer(config: ml_collections.ConfigDict, mesh: Mesh, input_shape: tuple[int, ...],
                out_dim: int) -> Trainer:
    """A Trainer, reused for configs that compile the same program (runs in one process, e.g. a
    resumed run, tests and benchmarks, skip recompilation)."""
    c = config
    hyper = ("lr", "weight_decay", "lambda_h", "lambda_w")  # traced HParams, not compiled in
    program = {"model": c.model.to_dict(), "metrics": c.metrics.to_dict(),
               "optim": {k: v for k, v in c.optim.to_dict().items() if k not in hyper},
               "train": [c.train.batch_size, c.train.drop_last, c.train.epochs if c.optim.schedule != "constant" else 0]}
    key = (json.dumps(program, sort_keys=True, default=str), tuple(d.id for d in mesh.devices.flat),
           mesh.devices.shape, tuple(input_shape), out_dim)
    if key not in _TRAINERS:
        _TRAINERS[key] = Trainer(config, mesh, input_shape, out_dim)
    return _TRAINERS[key]


# --------------------------------------------------------------------- the driver
def eval_epochs(start: int, config: ml_collections.ConfigDict) -> list[int]:
    """The epochs after `start` at which the run evaluates: every eval_every, the last, and (with
    train.eval_log_points = N > 0) N log-spaced epochs in [1, epochs], which resolve the early
    epochs on the log-scaled axes collapse is plotted on."""
    total, every = config.train.epochs, config.train.eval_every
    epochs = set(range(every, total + 1, every)) | {total}
    if config.train.eval_log_points:
        epochs |= {int(e) for e in np.unique(np.round(np.geomspace(1, total, config.train.eval_log_points)))}
    return sorted(e for e in epochs if e > start)


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


def open_run(config: ml_collections.ConfigDict, workdir: str, members: list[dict], trainer: Trainer,
             meta: dict) -> tuple[checkpoints.Checkpoints, TrainState, int, writers.RunWriter]:
    """Opens the workdir's checkpoints and metrics writer and returns (ckpt, state, start_epoch, log).

    Resume precedence: the latest complete checkpoint in workdir/checkpoints (if its config and
    data fingerprint `meta` match; otherwise ConfigError) > a fresh start from config.seed / sweep seeds.
    """
    ckpt = checkpoints.Checkpoints(workdir, meta, max_to_keep=config.train.max_to_keep)
    state, start = ckpt.restore_latest(trainer.abstract_state(members))
    if state is None:
        state, start = trainer.create_state(members), 0
    history = ckpt.restore_history(start) if start else None
    log = writers.RunWriter(workdir, config, members, resume_epoch=start, enabled=jax.process_index() == 0,
                            history=history)
    return ckpt, state, start, log


def head_weights(state: TrainState) -> np.ndarray:
    """(K, n, d) head weights W of every sweep member, on the host (every process calls it together
    when the members are sharded over several processes' devices: it gathers them)."""
    w = jax.vmap(lambda p: models.head_params(p)[0])(state.params)
    if not (w.is_fully_addressable or w.is_fully_replicated):
        w = jax.jit(lambda a: a, out_shardings=NamedSharding(w.sharding.mesh, P()))(w)
    return np.asarray(w)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the configured run (resuming from `workdir` if it holds checkpoints) and returns the
    final metrics row of each sweep member as {"members": [row, ...]} (plus the summary).

    Holds the workdir's lock (`locking.RunLock`) for the whole run: a second run on the same workdir
    raises `locking.WorkdirBusyError` before touching anything there.
    """
    validate.validate_config(config, num_devices=jax.device_count())  # before any loading or compiling
    workdir = validate.local_workdir(workdir)
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
    if data.streamed:  # larger than data.max_in_memory_mb: minibatches streamed from the host
        from nrc_jax import train_streaming  # pylint: disable=import-outside-toplevel (it imports this module)
        return train_streaming.train_and_evaluate_streamed(config, workdir, data, members)
    mesh = config_mesh(config)
    if config.train.batch_size % mesh.shape[DATA_AXIS]:
        raise ConfigError(f"train.batch_size={config.train.batch_size} must be a multiple of the "
                          f"{mesh.shape[DATA_AXIS]} devices of the mesh's data axis")
    if len(members) % mesh.shape[MEMBER_AXIS]:
        raise ConfigError(f"mesh.member_devices={mesh.shape[MEMBER_AXIS]} must divide the sweep's "
                          f"{len(members)} members")
    trainer = get_trainer(config, mesh, data.input_shape, data.target_dim)
    device_data = put_data(data, mesh, config.train.eval_chunk)
    ckpt, state, start, log = open_run(config, workdir, members, trainer,
                                       checkpoints.run_meta(config, data, members))
    lambda_min = float(metrics.target_stats(data.y_train)["lambda_min"])
    t0 = time.time()
    train_chunk = trainer.train_chunk
    if jax.process_count() > 1:
        # gloo (CPU) connects each new set of collective peers with a fixed 30 s deadline: every
        # process compiles first, then all start the program together.
        train_chunk = distributed.compile_together("train_chunk", trainer.train_chunk, state, device_data,
                                                   jnp.asarray(0, jnp.int32))

    def dispatch(state: TrainState, num_epochs: int) -> tuple[TrainState, dict]:
        """Starts a chunk and returns at once (JAX dispatches asynchronously): the device trains
        while the host writes the previous chunk's rows."""
        return train_chunk(state, device_data, jnp.asarray(num_epochs, jnp.int32))

    def collect(out: dict, previous: int, write: bool = True) -> list[dict]:
        """Waits for a dispatched chunk; writes its rows after checking them for divergence."""
        rows = writers.metric_rows(jax.device_get(out), members, lambda_min, time.time() - t0,
                                   gamma_searched=config.optim.regularizer != "ufm")
        check_finite(rows, previous, ckpt)
        if write:
            log.write(rows)
        return rows

    rows, pending = None, None  # pending: (metrics, previous epoch) of the chunk whose rows are unwritten
    try:
        if start == 0:  # the initial evaluation: a chunk of 0 epochs (the same compiled program)
            state, out = dispatch(state, 0)
            pending = (out, 0)
        previous = start
        with checkpoints.StopOnSignal() as stop:
            for epoch in eval_epochs(start, config):
                state, out = dispatch(state, epoch - previous)
                if pending is not None:
                    rows = collect(*pending)
                pending, previous = (out, previous), epoch
                if epoch % config.train.checkpoint_every == 0 or epoch == config.train.epochs or stop.requested:
                    rows, pending = collect(*pending), None  # a state is saved only once its rows are checked
                    ckpt.save(epoch, state, run_files.rows_to_json(log.history))
                if stop.requested:
                    raise KeyboardInterrupt(f"stopped by signal after epoch {epoch}; checkpoint saved")
        if pending is not None:
            rows = collect(*pending)
        if rows is None:  # resumed a finished run: nothing left to train, only the final metrics
            state, out = dispatch(state, 0)
            rows = collect(out, start, write=False)
        summary = log.finish(head_weights(state), np.asarray(device_data.sigma), lambda_min,
                             ufm=config.optim.regularizer == "ufm")
        if summary:  # the rows as written, with the final gamma's NRC3
            rows = [m["final"] or row for m, row in zip(summary["members"], rows)]
    finally:
        ckpt.close()
        log.close()
    return {"members": rows, "summary": summary}


__all__ = ["TrainState", "DeviceData", "Trainer", "get_trainer", "make_mesh", "config_mesh", "put_data", "eval_epochs",
           "open_run", "head_weights", "check_finite",
           "train_and_evaluate", "TRACE_COUNTS", "load_dataset"]
