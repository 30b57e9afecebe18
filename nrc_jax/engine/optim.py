"""Losses, optimizers and learning-rate schedules of the NRC study (pure functions).

Loss of one minibatch (rows are samples, `mask` marks real rows, padding rows count nowhere):
  MSE  = (1/B) sum_i ||yhat_i - y_i||^2          mse_reduction "sum": summed over the n target dims
                                                 (the UFM theory's 1/(2M)||HW^T + b - Y||_F^2)
       = (1/(B n)) sum_i ||yhat_i - y_i||^2      mse_reduction "mean": averaged over the target dims
                                                 too (PyTorch's mse_loss, the authors' code)
  With plain SGD, "mean" at (lr, wd) takes the same steps as "sum" at (lr/n, n*wd).
  regularizer "weight_decay", decay_mode "l2" (the paper):  0.5*MSE + 0.5*wd*sum ||theta||^2 over ALL
      parameters, biases included; decay_mode "decoupled": 0.5*MSE, and the update adds wd*theta
      to the optimizer direction before the learning rate scales it (optax.adamw / SGDW form).
  regularizer "ufm" (UFM-regularized networks): 0.5*MSE + 0.5*lambda_h*(1/B) sum_i ||h_i||^2
      + 0.5*lambda_w*||W||_F^2, no decay on the body (nor on the head bias).

The swept hyperparameters (lr, weight_decay, lambda_h, lambda_w) are arrays in an `HParams` pytree,
not Python constants, so `vmap` can train several values in one program. The optimizer is an optax
transformation giving the update direction (SGD momentum trace or Adam scaling, learning rate 1);
`apply_update` scales it by -lr * schedule(epoch).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from nrc_jax.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step")
REGULARIZERS = ("weight_decay", "ufm")
MSE_REDUCTIONS = ("sum", "mean")
DECAY_MODES = ("l2", "decoupled")


class HParams(NamedTuple):
    """Per-model hyperparameters (scalars, or (K,) over a sweep)."""

    lr: jax.Array
    weight_decay: jax.Array
    lambda_h: jax.Array
    lambda_w: jax.Array


def default_optim_config() -> ml_collections.ConfigDict:
    """The paper's MuJoCo setting: SGD, lr 1e-2, no momentum, weight decay 1e-2 in the loss (l2)."""
    return ml_collections.ConfigDict({
        "name": "sgd",                  # sgd | adam
        "lr": 1e-2,
        "momentum": 0.0,                # sgd (PyTorch semantics: buf = m*buf + g)
        "nesterov": False,
        "b1": 0.9, "b2": 0.999, "eps": 1e-8,  # adam
        "mse_reduction": "sum",         # sum: over target dims (the UFM theory) | mean: also over dims (the authors' code)
        "regularizer": "weight_decay",  # weight_decay | ufm
        "weight_decay": 1e-2,           # lambda_WD
        "decay_mode": "l2",             # l2 (in the loss, the paper) | decoupled
        "lambda_h": 0.0,                # ufm: on the features, averaged over samples
        "lambda_w": 0.0,                # ufm: on the head W
        "schedule": "constant",         # constant | step
        "milestones": (0.5, 0.75),      # step: fractions of train.epochs
        "decay_factor": 0.1,            # step: lr multiplier at each milestone
    })


def check_optim_config(c: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for names this module does not know and contradictory regularizers."""
    for field, value, allowed in (("name", c.name, OPTIMIZERS), ("schedule", c.schedule, SCHEDULES),
                                  ("regularizer", c.regularizer, REGULARIZERS),
                                  ("decay_mode", c.decay_mode, DECAY_MODES),
                                  ("mse_reduction", c.mse_reduction, MSE_REDUCTIONS)):
        if value not in allowed:
            raise ConfigError(f"optim.{field}={value!r}: allowed {allowed}")
    if c.regularizer == "weight_decay" and (c.lambda_h or c.lambda_w):
        raise ConfigError(f"optim.lambda_h={c.lambda_h}, optim.lambda_w={c.lambda_w} are only used with "
                          "optim.regularizer='ufm' (set them to 0 or switch the regularizer)")
    if c.regularizer == "ufm" and c.weight_decay:
        raise ConfigError(f"optim.weight_decay={c.weight_decay} with optim.regularizer='ufm': the UFM-"
                          "regularized networks have no decay on the body; set optim.weight_decay=0")


def sum_of_squares(tree: Any) -> jax.Array:
    """sum ||theta||^2 over every leaf (biases included)."""
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def reduced_mse(mse: jax.Array, target_dim: int, c: ml_collections.ConfigDict) -> jax.Array:
    """The loss's MSE from the spec's MSE (summed over target dims, mean over rows), the one place
    `optim.mse_reduction` is applied: "sum" keeps it, "mean" divides it by the `target_dim` n."""
    return mse / target_dim if c.mse_reduction == "mean" else mse


def data_term(sum_sq_per_row: jax.Array, mask: jax.Array, target_dim: int,
              c: ml_collections.ConfigDict) -> jax.Array:
    """The MSE of the loss from the rows' squared errors summed over target dims (B,), `mask` (B,):
    their mean over the real rows, reduced by `reduced_mse`."""
    return reduced_mse(masked_mean(sum_sq_per_row, mask), target_dim, c)


def loss_from_mse(mse: jax.Array, target_dim: int, c: ml_collections.ConfigDict) -> jax.Array:
    """0.5 * the loss's data term given the spec's MSE (summed over target dims, mean over rows)."""
    return 0.5 * reduced_mse(mse, target_dim, c)


def regularization(params: Any, head_w: jax.Array, feature_norm_sq: jax.Array, hp: HParams,
                   c: ml_collections.ConfigDict) -> jax.Array:
    """The loss terms beyond 0.5*MSE.

    Args:
      params: the model parameters; head_w: W (n, d); feature_norm_sq: mean_i ||h_i||^2 (scalar).
    """
    if c.regularizer == "ufm":
        return 0.5 * hp.lambda_h * feature_norm_sq + 0.5 * hp.lambda_w * jnp.sum(jnp.square(head_w))
    if c.decay_mode == "l2":
        return 0.5 * hp.weight_decay * sum_of_squares(params)
    return jnp.zeros((), head_w.dtype)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of (B,) `values` over the rows where `mask` (B,) is 1."""
    return jnp.sum(jnp.where(mask > 0, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def direction(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The update direction at learning rate 1 (the sign and lr are applied in `apply_update`)."""
    if c.name == "sgd":
        return optax.trace(decay=c.momentum, nesterov=c.nesterov) if c.momentum else optax.identity()
    if c.name == "adam":
        return optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps)
    raise ConfigError(f"optim.name={c.name!r}: allowed {OPTIMIZERS}")


def lr_factor(epoch: jax.Array, c: ml_collections.ConfigDict, total_epochs: int) -> jax.Array:
    """Schedule multiplier of the learning rate during `epoch` (0-based, per-epoch like PyTorch's
    MultiStepLR): decay_factor ** (number of milestones int(f * total_epochs) <= epoch)."""
    if c.schedule == "constant":
        return jnp.ones((), jnp.float32)
    milestones = jnp.asarray([int(f * total_epochs) for f in c.milestones], jnp.int32)
    passed = jnp.sum(epoch >= milestones)
    return jnp.asarray(c.decay_factor, jnp.float32) ** passed


def schedule_kept(c: ml_collections.ConfigDict, old_total: int, new_total: int, trained: int) -> bool:
    """Whether epochs 0..trained-1 keep their `lr_factor` when train.epochs goes from `old_total`
    to `new_total` (a constant schedule always does; "step" only if no milestone among them moves)."""
    if c.schedule == "constant" or c.decay_factor == 1:
        return True
    return all(min(int(f * old_total), trained) == min(int(f * new_total), trained) for f in c.milestones)


def apply_update(tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any, hp: HParams,
                 factor: jax.Array, c: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """One optimizer step: theta <- theta - lr*factor*(direction(g) [+ wd*theta if decoupled])."""
    updates, opt_state = tx.update(grads, opt_state, params)
    if c.regularizer == "weight_decay" and c.decay_mode == "decoupled":
        updates = jax.tree.map(lambda u, p: u + hp.weight_decay * p, updates, params)
    step = hp.lr * factor
    params = jax.tree.map(lambda p, u: p - (step * u).astype(p.dtype), params, updates)
    return params, opt_state


__all__ = ["HParams", "default_optim_config", "check_optim_config", "sum_of_squares", "regularization",
           "reduced_mse", "data_term", "loss_from_mse", "MSE_REDUCTIONS",
           "masked_mean", "direction", "lr_factor", "apply_update", "OPTIMIZERS", "SCHEDULES",
           "REGULARIZERS", "DECAY_MODES"]
