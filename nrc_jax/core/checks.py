"""Argument checks shared by the pure-math modules (`metrics`, `stats`, `deep`, `ufm`).

Each check runs on the Python side, before anything is compiled, and raises `DataError` (a bad
array) or `ConfigError` (a bad setting) naming the argument. Traced values (inside `jit`/`vmap`)
are checked for what tracing knows (shape, static ints); their values are not read.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nrc_jax.errors import ConfigError, DataError

Array = jax.Array
ArrayLike = Any


def is_concrete(x: ArrayLike) -> bool:
    """False for a tracer (a value inside jit/vmap), True for anything whose value can be read."""
    return not isinstance(x, jax.core.Tracer)


def array_arg(name: str, x: ArrayLike, ndim: int, *, check_finite: bool = True) -> Array:
    """`x` as a floating jax array of rank `ndim`; DataError naming `name` otherwise.

    Integer inputs become the default float dtype, half precision becomes float32 (sums of many
    samples in 16 bits would lose the metric).
    """
    if x is None:
        raise DataError(f"{name} is required, got None")
    if is_concrete(x) and not isinstance(x, jax.Array):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
    if x.ndim != ndim:
        raise DataError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if check_finite:
        finite_arg(name, x)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    elif jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    return x


def finite_arg(name: str, x: ArrayLike, mask: ArrayLike | None = None) -> None:
    """DataError if a concrete `x` has non-finite values in the rows `mask` (M,) keeps (all by default)."""
    if not (is_concrete(x) and is_concrete(mask)):
        return
    xp = np if isinstance(x, np.ndarray) and not isinstance(mask, jax.Array) else jnp
    with jax.ensure_compile_time_eval():  # concrete arrays captured inside a jit stay concrete
        if mask is not None:
            x = xp.where(xp.reshape(mask, (-1,) + (1,) * (x.ndim - 1)), x, 0.0)
        finite = bool(xp.isfinite(x).all())
    if not finite:
        where = "" if mask is None else " in rows the mask keeps"
        raise DataError(f"{name} (shape {tuple(x.shape)}) contains non-finite values{where}")


def count_arg(name: str, value: Any, low: int, high: int | None, context: str) -> int:
    """`value` as a Python int in [low, high] (no upper bound for high=None); ConfigError otherwise.

    Counts decide array shapes, so they must be static: a traced or float value is refused.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a Python int (static), got {value!r}")
    if high is None and value < low:
        raise ConfigError(f"{name} must be >= {low} ({context}), got {value}")
    if high is not None and not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}] ({context}), got {value}")
    return int(value)


def nonnegative_scalar_arg(name: str, value: ArrayLike) -> ArrayLike:
    """`value` unchanged if it is a scalar and, when concrete, finite and >= 0; ConfigError otherwise.

    Traced scalars (a swept gamma or lambda inside vmap) pass with their shape checked only.
    """
    if np.ndim(value) != 0:
        raise ConfigError(f"{name} must be a finite scalar >= 0, got shape {np.shape(value)}")
    if is_concrete(value):
        number = float(np.asarray(value))
        if not np.isfinite(number) or number < 0:
            raise ConfigError(f"{name} must be a finite scalar >= 0, got {value!r}")
    return value


# ----------------------------------------------------------------------------- the metrics' arrays
def features_arg(features: ArrayLike, check_finite: bool = True) -> Array:
    """Features H as a float (M, d) array with M, d >= 1; DataError otherwise."""
    h = array_arg("features", features, 2, check_finite=check_finite)
    if h.shape[0] < 1 or h.shape[1] < 1:
        raise DataError(f"features must be (M, d) with M, d >= 1, got shape {tuple(h.shape)}")
    return h


def weights_arg(weights: ArrayLike, d: int | None = None) -> Array:
    """Head weights W as a float (n, d) array with 1 <= n <= d (and d matching the features' d if given)."""
    w = array_arg("weights", weights, 2)
    n, dw = w.shape
    if d is not None and dw != d:
        raise DataError(f"weights shape {tuple(w.shape)} does not match feature dim d={d} (want (n, {d}))")
    if n < 1 or n > dw:
        raise DataError(f"weights shape {tuple(w.shape)} must be (n, d) with 1 <= n <= d")
    return w


def sigma_arg(sigma: ArrayLike, n: int) -> Array:
    """The target covariance Sigma as a float (n, n) array; DataError otherwise."""
    s = array_arg("sigma", sigma, 2)
    if s.shape != (n, n):
        raise DataError(f"sigma shape {tuple(s.shape)} must be (n, n) = ({n}, {n}) to match weights")
    return s


def as_2d(name: str, x: ArrayLike, check_finite: bool = True) -> Array:
    """Targets or predictions as a float (M, n) array: a (M,) array becomes (M, 1)."""
    if np.ndim(x) == 1:
        return array_arg(name, x, 1, check_finite=check_finite)[:, None]
    return array_arg(name, x, 2, check_finite=check_finite)


def targets_predictions_args(targets: ArrayLike, predictions: ArrayLike, *,
                             check_finite: bool = True) -> tuple[Array, Array]:
    """(y (M, n), p (M, n)) from targets and predictions of the same shape, (M,) or (M, n)."""
    y = as_2d("targets", targets, check_finite)
    p = as_2d("predictions", predictions, check_finite)
    if y.shape != p.shape:
        raise DataError(f"targets shape {tuple(y.shape)} and predictions shape {tuple(p.shape)} differ")
    return y, p


def mask_arg(mask: ArrayLike | None, m: int) -> Array | None:
    """A row mask as a bool (M,) array (None stays None): rows with False are ignored."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != (m,):
        raise DataError(f"mask shape {tuple(mask.shape)} must be (M,) = ({m},) to match the rows")
    return mask.astype(bool)


def check_rows(features: ArrayLike, targets: ArrayLike, predictions: ArrayLike,
               mask: ArrayLike | None = None) -> tuple[Array, Array, Array, Array | None]:
    """Validated (h (M, d), y (M, n), p (M, n), mask (M,) or None) of one set of rows, y and p in h's
    dtype; targets/predictions (M,) become (M, 1). DataError naming the argument; non-finite values
    in kept rows are refused when the inputs are concrete (not traced)."""
    h = features_arg(features, check_finite=False)
    y, p = targets_predictions_args(targets, predictions, check_finite=False)
    if y.shape[0] != h.shape[0]:
        raise DataError(f"features shape {tuple(h.shape)} and targets shape {tuple(y.shape)} "
                        "have different numbers of rows")
    mask = mask_arg(mask, h.shape[0])
    for name, x in (("features", h), ("targets", y), ("predictions", p)):
        finite_arg(name, x, mask)
    return h, y.astype(h.dtype), p.astype(h.dtype), mask


__all__ = ["is_concrete", "array_arg", "finite_arg", "count_arg", "nonnegative_scalar_arg", "features_arg",
           "weights_arg", "sigma_arg", "as_2d", "targets_predictions_args", "mask_arg", "check_rows"]
