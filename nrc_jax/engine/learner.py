"""What both training engines share: the state, the mesh, the shuffles, the loss and the metric rows.

A run trains K >= 1 models at once (a sweep, `vmap` over the leading axis of every state leaf;
K = 1 without a sweep). Devices form a 2-D `Mesh` ('members', 'data'): the state's member axis K is
sharded over 'members', minibatches and evaluation chunks over 'data'.

Two engines implement `Engine`, the narrow interface the driver (`train.py`) uses:
`memory.MemoryEngine` (the data set on the devices, many epochs per compiled call) and
`streamed.StreamedEngine` (image sets larger than `data.max_in_memory_mb`, minibatches
streamed from the host). Both take every compiled piece below from one `Learner`: the batch loss
(data term + regularization), the optimizer step, the per-member shuffles
(`epoch_batches(fold_in(member_key, epoch))`, so shuffles depend only on (seed, epoch) and a resumed
run repeats an uninterrupted one bit for bit) and the assembly of a member's metric row.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nrc_jax.core import metrics
from nrc_jax.engine import models, optim
from nrc_jax.errors import ConfigError

MEMBER_AXIS = "members"
DATA_AXIS = "data"
# Metric keys measured on both splits: the train ones are renamed train_*, the test ones test_*.
SPLIT_KEYS = ("mse", "mse_per_dim", "r2", "r2_per_dim")


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


class Engine(Protocol):
    """One run's training engine, as the driver (`train.train_and_evaluate`) uses it.

    `train_epochs(state, n)` trains every member n >= 0 epochs and evaluates: (new state, metrics
    dict of (K, ...) device arrays, as `writers.metric_rows` reads them). It may return before the
    device finished (`asynchronous`): the driver then writes the previous rows meanwhile. `stop` is
    polled between epochs by engines that can end a chunk early (their metrics name the epoch).
    """

    asynchronous: bool
    meta: dict           # the config / data fingerprint saved with checkpoints
    sigma: np.ndarray    # (n, n) covariance of the train targets (NRC3)

    def abstract_state(self, members: list[dict]) -> TrainState: ...
    def create_state(self, members: list[dict]) -> TrainState: ...
    def train_epochs(self, state: TrainState, num_epochs: int,
                     stop: Callable[[], bool] = lambda: False) -> tuple[TrainState, dict]: ...


# --------------------------------------------------------------------- mesh
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


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


# --------------------------------------------------------------------- shuffles
# Up to 2**20 rows the index leaves >= 12 random bits per uint32 key (few sort rounds).
PACKED_SHUFFLE_MAX_ROWS = 2**20


def shuffled_indices(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of 0..n-1, (n,) int32: `jax.random.permutation`, or on the CPU
    (`models.cpu_rewrites()`) the same method packed into one array per sort (`packed_shuffle`).

    Both give a uniform permutation fixed by (key, n), but not the same one: a run's shuffles
    depend on the backend it trains on.
    """
    if models.cpu_rewrites() and n <= PACKED_SHUFFLE_MAX_ROWS:
        return packed_shuffle(key, n)
    return jax.random.permutation(key, n).astype(jnp.int32)


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


def batch_layout(order: jax.Array, batch_size: int, drop_last: bool) -> tuple[jax.Array, jax.Array]:
    """Row indices (num_batches, B) and mask (num_batches, B) of one pass over `order` (M,).

    Like PyTorch's DataLoader (drop_last=False) the last, partial batch is kept, filled up cyclically
    with rows that carry mask 0 (they count in no loss or statistic; BatchNorm statistics do see
    them); `drop_last` keeps only the full batches.
    """
    count = order.shape[0]
    if drop_last:
        num_batches = max(count // batch_size, 1)
        return order[:num_batches * batch_size].reshape(num_batches, batch_size), jnp.ones((num_batches, batch_size))
    num_batches = -(-count // batch_size)
    idx = jnp.resize(order, num_batches * batch_size)  # repeats rows cyclically, even when batch > rows
    mask = (jnp.arange(num_batches * batch_size) < count).astype(jnp.float32)
    return idx.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def epoch_batches(member_key: jax.Array, epoch: jax.Array, num_train: int, batch_size: int,
                  drop_last: bool) -> tuple[jax.Array, jax.Array]:
    """One member's shuffled epoch: `batch_layout` of `shuffled_indices(fold_in(member_key, epoch))`."""
    return batch_layout(shuffled_indices(jax.random.fold_in(member_key, epoch), num_train), batch_size, drop_last)


# --------------------------------------------------------------------- the model, loss and metric rows
# The fields of a config that the compiled programs read: a Learner sees only these, so a program
# reused for an equal projection (`compiled_fields`) cannot miss a field that changes it. The swept
# hyperparameters (optim.HParams) are traced arrays of the state instead.
COMPILED_TRAIN_FIELDS = ("batch_size", "drop_last", "epochs")


def compiled_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The locked part of `config` that compiled programs depend on: model, metrics, optim (without
    the traced `optim.HParams` fields) and `COMPILED_TRAIN_FIELDS` of train."""
    optim_fields = {k: v for k, v in config.optim.to_dict().items() if k not in optim.HParams._fields}
    projection = ml_collections.ConfigDict({
        "model": config.model.to_dict(), "metrics": config.metrics.to_dict(), "optim": optim_fields,
        "train": {k: config.train[k] for k in COMPILED_TRAIN_FIELDS}})
    projection.lock()
    return projection


_PROGRAMS: dict = {}


def cached_program(build: Callable[..., Any], config: ml_collections.ConfigDict, mesh: Mesh,
                   input_shape: tuple[int, ...], out_dim: int) -> Any:
    """`build(config, mesh, input_shape, out_dim)`, reused while `compiled_fields(config)`, the mesh
    and the shapes are equal, so a resumed run, a study's runs or a test in the same process skip
    retracing and recompiling `build`'s jitted functions."""
    key = (build.__module__, build.__qualname__, json.dumps(compiled_fields(config).to_dict(), sort_keys=True,
                                                            default=str),
           tuple(d.id for d in mesh.devices.flat), mesh.devices.shape, tuple(input_shape), out_dim)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = build(config, mesh, input_shape, out_dim)
    return _PROGRAMS[key]


class Learner:
    """The model, optimizer and loss of one run, and a member's metric row: the traced functions both
    engines compile (one member at a time; the engines vmap them over K)."""

    def __init__(self, config: ml_collections.ConfigDict, input_shape: tuple[int, ...], out_dim: int):
        self.config = compiled_fields(config)
        self.input_shape, self.out_dim = tuple(input_shape), out_dim
        self.model = models.get_model(self.config.model, out_dim)
        self.tx = optim.direction(self.config.optim)

    def forward(self, params, model_state, x, train: bool):
        """(predictions (B, n), features (B, d), hidden list, new model_state) of inputs x (B, ...)."""
        variables = {"params": params, **model_state}
        x = x.astype(jnp.float32)
        if train and model_state:
            (pred, h, hidden), new_state = self.model.apply(variables, x, train=True, mutable=list(model_state))
            return pred, h, hidden, new_state
        pred, h, hidden = self.model.apply(variables, x, train=train)
        return pred, h, hidden, model_state

    def init(self, seeds: jax.Array, hparams: optim.HParams) -> TrainState:
        """The state of K members from their seeds (K,) and hyperparameters (K,) each."""
        def member(seed, hp):
            init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
            variables = self.model.init(init_key, jnp.zeros((1,) + self.input_shape), train=False)
            params = variables.pop("params")
            model_state = dict(variables)
            _, h, _, _ = self.forward(params, model_state, jnp.zeros((1,) + self.input_shape), False)
            basis = metrics.pca_basis_init(h.shape[-1], self.out_dim, evr_k=self.config.metrics.evr_k)
            return TrainState(epoch=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                              opt_state=self.tx.init(params), hparams=hp, rng=shuffle_key, pca_basis=basis)
        return jax.vmap(member)(seeds, hparams)

    @staticmethod
    def init_args(members: list[dict]) -> tuple[jax.Array, optim.HParams]:
        """(seeds (K,), HParams of (K,) arrays) of the sweep members."""
        seeds = jnp.asarray([m["seed"] for m in members], jnp.int32)
        return seeds, optim.HParams(*(jnp.asarray([m[f] for m in members], jnp.float32) for f in optim.HParams._fields))

    def abstract_state(self, members: list[dict], sharding: NamedSharding) -> TrainState:
        """Shapes, dtypes and `sharding` of the initial state of `members`, without computing it."""
        seeds = jax.ShapeDtypeStruct((len(members),), jnp.int32)
        hp = optim.HParams(*([jax.ShapeDtypeStruct((len(members),), jnp.float32)] * 4))
        shapes = jax.eval_shape(self.init, seeds, hp)
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)

    def epoch_batches(self, member_key: jax.Array, epoch: jax.Array, num_train: int) -> tuple[jax.Array, jax.Array]:
        """Row indices and mask (num_batches, B) of one member's epoch (`epoch_batches`)."""
        return epoch_batches(member_key, epoch, num_train, self.config.train.batch_size, self.config.train.drop_last)

    def lr_factor(self, epoch: jax.Array) -> jax.Array:
        return optim.lr_factor(epoch, self.config.optim, self.config.train.epochs)

    def batch_loss(self, params, model_state, x, y, mask, hp: optim.HParams):
        """(0.5 * data term + regularization, new model_state) of one member on x (B, ...), y (B, n), mask (B,)."""
        pred, h, _, new_model_state = self.forward(params, model_state, x, True)
        mse = optim.data_term(jnp.sum(jnp.square(pred - y), axis=-1), mask, self.out_dim, self.config.optim)
        h_norm_sq = optim.masked_mean(jnp.sum(jnp.square(h), axis=-1), mask)
        w, _ = models.head_params(params)
        return 0.5 * mse + optim.regularization(params, w, h_norm_sq, hp, self.config.optim), new_model_state

    def step(self, params, model_state, opt_state, x, y, mask, hp: optim.HParams, factor: jax.Array):
        """One optimizer step of one member on a batch: (params, model_state, opt_state)."""
        grads, model_state = jax.grad(self.batch_loss, has_aux=True)(params, model_state, x, y, mask, hp)
        params, opt_state = optim.apply_update(self.tx, grads, opt_state, params, hp, factor, self.config.optim)
        return params, model_state, opt_state

    def metric_options(self, state: TrainState) -> dict:
        """Keyword arguments of `metrics.metrics_from_features` / `metrics_from_stats` for one member."""
        c, hp = self.config, state.hparams
        return {"gamma": hp.lambda_h * hp.lambda_w if c.optim.regularizer == "ufm" else None,
                "evr_k": c.metrics.evr_k, "pca_init": state.pca_basis if c.metrics.pca_iters else None,
                "pca_iters": max(c.metrics.pca_iters, 1)}

    def member_metrics(self, state: TrainState, w: jax.Array, train: dict, test: dict,
                       layers: dict | None = None) -> dict:
        """One member's metric row, given its head weights `w` (n, d): the train-set metrics
        (`SPLIT_KEYS` renamed train_*), the per-layer metrics if given, the loss, the test set's
        `SPLIT_KEYS` as test_* and the epoch."""
        out = {("train_" + k if k in SPLIT_KEYS else k): v for k, v in train.items()}
        if layers is not None:
            out["layers"] = layers
        out["loss"] = (optim.loss_from_mse(out["train_mse"], self.out_dim, self.config.optim)
                       + optim.regularization(state.params, w, out["h_norm_sq"], state.hparams, self.config.optim))
        out.update({f"test_{k}": test[k] for k in SPLIT_KEYS})
        out["epoch"] = state.epoch
        return out


def head_weights(state: TrainState) -> np.ndarray:
    """(K, n, d) head weights W of every sweep member, on the host (every process calls it together
    when the members are sharded over several processes' devices: it gathers them)."""
    w = jax.vmap(lambda p: models.head_params(p)[0])(state.params)
    if not (w.is_fully_addressable or w.is_fully_replicated):
        w = jax.jit(lambda a: a, out_shardings=NamedSharding(w.sharding.mesh, P()))(w)
    return np.asarray(w)


__all__ = ["TrainState", "Engine", "Learner", "MEMBER_AXIS", "DATA_AXIS", "SPLIT_KEYS", "make_mesh", "config_mesh",
           "shuffled_indices", "packed_shuffle", "batch_layout", "epoch_batches", "compiled_fields", "cached_program",
           "head_weights"]
