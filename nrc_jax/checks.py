"""Argument checks shared by the pure-math modules (`metrics`, `deep`, `ufm`).

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


__all__ = ["is_concrete", "array_arg", "finite_arg", "count_arg", "nonnegative_scalar_arg"]
