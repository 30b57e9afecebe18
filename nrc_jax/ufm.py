"""The regression Unconstrained Feature Model (UFM): loss, closed-form optimum, first-order solver.

Pure `jax.numpy` (no I/O); the sweep, figures and tables live in `nrc_jax.ufm_study`.
Rows are samples: features `H` (M, d), weights `W` (n, d), bias `b` (n,), targets `Y` (M, n),
prediction `H @ W.T + b`. The loss (spec, "The regression UFM") is

    L(H, W, b) = 1/(2M) ||H W^T + b - Y||_F^2 + lam_h/(2M) ||H||_F^2 + lam_w/2 ||W||_F^2,

with `c = lam_h * lam_w` and `Sigma = V diag(lambda_j) V^T` the centered target covariance.

Command line (the study): `python -m nrc_jax.ufm --config=configs/ufm.py`.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nrc_jax import metrics
from nrc_jax.errors import ConfigError, DataError

Array = jax.Array

# ----------------------------------------------------------------------------------------------
# Input validation (runs on concrete inputs, before anything is compiled).


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_targets(targets: Any) -> tuple[int, int]:
    shape = tuple(np.shape(targets))
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise DataError(f"targets must have shape (M, n) with M, n >= 1; got shape {shape}")
    if _is_concrete(targets) and not np.all(np.isfinite(np.asarray(targets))):
        bad = int(np.sum(~np.isfinite(np.asarray(targets))))
        raise DataError(f"targets (shape {shape}) contain {bad} non-finite value(s)")
    return shape


def _check_lambda(name: str, value: Any) -> None:
    if np.ndim(value) != 0:
        raise ConfigError(f"{name} must be a scalar; got shape {np.shape(value)}")
    if _is_concrete(value):
        v = float(value)
        if not np.isfinite(v) or v < 0:
            raise ConfigError(f"{name} must be finite and >= 0; got {v}")


def _check_width(d: Any, n: int) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise ConfigError(f"d (feature width) must be an int; got {d!r}")
    if d < n:
        raise ConfigError(f"d (feature width) must be >= n (target dim); got d={d}, n={n}")
    return int(d)


def _check_positive_lambdas(lam_h: Any, lam_w: Any, what: str) -> None:
    if _is_concrete(lam_h) and _is_concrete(lam_w) and (float(lam_h) <= 0 or float(lam_w) <= 0):
        raise ConfigError(
            f"{what} needs lam_h > 0 and lam_w > 0 (got lam_h={float(lam_h)}, lam_w={float(lam_w)}): "
            "without both penalties the minimizer is not unique or not attained"
        )


# ----------------------------------------------------------------------------------------------
# Loss.


def loss(H: Array, W: Array, b: Array, targets: Array, lam_h: float, lam_w: float) -> Array:
    """UFM loss (scalar). H (M, d), W (n, d), b (n,), targets (M, n); lam_h, lam_w >= 0."""
    M, n = _check_targets(targets)
    shapes = {"H": np.shape(H), "W": np.shape(W), "b": np.shape(b), "targets": (M, n)}
    d = shapes["H"][1] if len(shapes["H"]) == 2 else None
    if (len(shapes["H"]) != 2 or shapes["H"][0] != M or shapes["W"] != (n, d)
            or shapes["b"] != (n,)):
        raise DataError(
            "expected H (M, d), W (n, d), b (n,), targets (M, n); got "
            + ", ".join(f"{k} {v}" for k, v in shapes.items())
        )
    _check_lambda("lam_h", lam_h)
    _check_lambda("lam_w", lam_w)
    return _loss(H, W, b, targets, lam_h, lam_w)


def _loss(H, W, b, targets, lam_h, lam_w):
    M = targets.shape[0]
    residual = H @ W.T + b[None, :] - targets
    return (jnp.sum(residual**2) + lam_h * jnp.sum(H**2)) / (2 * M) + 0.5 * lam_w * jnp.sum(W**2)


# ----------------------------------------------------------------------------------------------
# Closed form.


def _spectrum(targets: Array) -> tuple[Array, Array, Array]:
    """(ybar (n,), eigenvalues (n,) descending and clipped at 0, eigenvectors V (n, n) as columns)."""
    stats = metrics.target_stats(targets)
    values, vectors = jnp.linalg.eigh(stats["sigma"])
    return stats["mean"], jnp.clip(values[::-1], 0.0, None), vectors[:, ::-1]


def optimum(targets: Array, lam_h: float, lam_w: float) -> dict[str, Array]:
    """Closed-form global minimum of the UFM (spec), in every regime.

    targets (M, n). Returns a dict of arrays:
      `wwt` (n, n): W*W*^T = sqrt(lam_h/lam_w) V diag(max(sqrt(lambda_j) - sqrt(c), 0)) V^T
        (zero when c >= lambda_max);
      `loss`: sum_j [sqrt(lambda_j c) - c/2 if lambda_j > c else lambda_j/2];
      `mse`: sum_j min(lambda_j, c) (training MSE summed over target dims, mean over samples);
      `b` (n,): ybar; `c`: lam_h*lam_w; `eigenvalues` (n,) descending; `num_fit`: number of
      directions with lambda_j > c; `w_norm_sq`: ||W*||_F^2; `h_norm_sq`: ||H*||_F^2 / M (the mean
      squared feature norm, as in `metrics`), from the identity lam_h ||H||^2 = M lam_w ||W||^2.
    Needs lam_h, lam_w > 0, except lam_h = lam_w = 0 where the minimum (loss 0, MSE 0) is attained by
    every exact fit: `wwt`, `w_norm_sq`, `h_norm_sq` are then NaN (not unique).
    """
    _check_targets(targets)
    _check_lambda("lam_h", lam_h)
    _check_lambda("lam_w", lam_w)
    both_zero = _is_concrete(lam_h) and _is_concrete(lam_w) and float(lam_h) == float(lam_w) == 0
    if not both_zero:
        _check_positive_lambdas(lam_h, lam_w, "optimum")
    return _optimum(jnp.asarray(targets), lam_h, lam_w)


def _optimal_spectrum(targets, lam_h, lam_w):
    """(ybar, lambda_j, V, c, eigenvalues of W*W*^T (n,)): W*W*^T = V diag(.) V^T."""
    ybar, values, vectors = _spectrum(targets)
    lam_h = jnp.asarray(lam_h, values.dtype)
    lam_w = jnp.asarray(lam_w, values.dtype)
    c = lam_h * lam_w
    shrunk = jnp.where(values > c, jnp.sqrt(values) - jnp.sqrt(c), 0.0)
    # NaN only when both lambdas are 0, where the optimum is not unique.
    return ybar, values, vectors, c, jnp.sqrt(lam_h / lam_w) * shrunk


@jax.jit
def _optimum(targets, lam_h, lam_w):
    ybar, values, vectors, c, singular_sq = _optimal_spectrum(targets, lam_h, lam_w)
    fit = values > c
    wwt = (vectors * singular_sq[None, :]) @ vectors.T
    w_norm_sq = jnp.sum(singular_sq)
    return {
        "wwt": wwt,
        "loss": jnp.sum(jnp.where(fit, jnp.sqrt(values * c) - c / 2, values / 2)),
        "mse": jnp.sum(jnp.minimum(values, c)),
        "b": ybar,
        "c": c,
        "eigenvalues": values,
        "num_fit": jnp.sum(fit),
        "w_norm_sq": w_norm_sq,
        # lam_h ||H||^2 = M lam_w ||W||^2  =>  ||H||^2 / M = (lam_w / lam_h) ||W||^2.
        "h_norm_sq": jnp.where(c > 0, lam_w / jnp.where(c > 0, lam_h, 1.0), jnp.nan) * w_norm_sq,
    }


def orthonormal_rows(key: Array, n: int, d: int, dtype=jnp.float32) -> Array:
    """A random (n, d) matrix with orthonormal rows (QR of a Gaussian (d, n) matrix)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, n), dtype))
    # Fix QR's sign ambiguity so the draw is Haar-distributed.
    return (q * jnp.where(jnp.diag(r) < 0, -1.0, 1.0).astype(dtype)[None, :]).T


def closed_form(
    targets: Array, lam_h: float, lam_w: float, d: int, key: Array
) -> tuple[Array, Array, Array]:
    """A global minimizer (H* (M, d), W* (n, d), b* (n,)) for lam_h, lam_w > 0.

    W* = (W*W*^T)^{1/2} R with R (n, d) orthonormal rows drawn from `key`, b* = ybar,
    H* = (Y - ybar) (W*W*^T + lam_h I_n)^{-1} W*. Everything except the basis R is unique.
    """
    _, n = _check_targets(targets)
    d = _check_width(d, n)
    _check_lambda("lam_h", lam_h)
    _check_lambda("lam_w", lam_w)
    _check_positive_lambdas(lam_h, lam_w, "closed_form")
    return _closed_form(jnp.asarray(targets), lam_h, lam_w, d, key)


@functools.partial(jax.jit, static_argnums=(3,))
def _closed_form(targets, lam_h, lam_w, d, key):
    ybar, _, vectors, _, singular_sq = _optimal_spectrum(targets, lam_h, lam_w)
    dtype = targets.dtype
    R = orthonormal_rows(key, targets.shape[1], d, dtype)
    W = (vectors * jnp.sqrt(singular_sq)[None, :]) @ vectors.T @ R
    # (Y - ybar)(W W^T + lam_h I)^{-1} W, the inverse applied in the eigenbasis V of W W^T.
    inverse = (vectors / (singular_sq + jnp.asarray(lam_h, dtype))[None, :]) @ vectors.T
    H = (targets - ybar[None, :]) @ inverse @ W
    return H, W, ybar


# ----------------------------------------------------------------------------------------------
# First-order solver: inertial alternating (block) gradient steps with per-block Lipschitz steps.
#
# The bias is eliminated (b = ybar - mean(H) W^T is optimal for any H, W). One iteration, in
# Gauss-Seidel order (iPALM, Pock & Sabach 2016, with restarts):
#   H <- H^ - grad_H L(H^, W) / L_H,   L_H = (||W||_2^2 + lam_h) / M,   H^ = H + beta (H - H_prev)
#   mean(H) <- 0 if lam_h > 0          (that block's loss is lam_h/2 ||mean(H)||^2: its 1/L step)
#   W <- W^ - grad_W L(H, W^) / L_W,   L_W = ||H - mean(H)||_2^2 / M + lam_w
#   (H, W) <- (a H, W / a)             (exact minimization along the rescaling, lam_h, lam_w > 0)
# Each L is the Lipschitz constant of its block gradient (L_W through a tight upper bound of
# ||Hc||_2), so a step without momentum never increases the loss; an accelerated step that does
# is rejected, and the momentum restarts then or when it points uphill. The gradient steps move
# the part of H outside the row space of W only through lam_h, so at lam = 0 that part of the
# random start is kept (no collapse).
# Convergence: linear, but the remaining slow directions (rotations/rescalings within the fitted
# subspace, curvature ~ lambda) make the iteration count grow roughly like 1/lambda: about 700
# iterations at lambda = 1e-2 and 6,000 at 1e-3 for M=40, n=3 (see the tests and the report).

GD_DEFAULTS = {
    "max_iters": 100_000,  # hard cap on iterations (static: sizes the history buffers)
    "tol": 1e-13,  # stop when L_H ||dH||^2 + L_W ||dW||^2 <= tol * loss (a relative stationarity)
    "atol": 0.0,  # ... or <= atol (for lam = 0, where the loss itself goes to 0)
    "log_every": 100,  # record the history every this many iterations (static)
    "init_scale": 1.0,  # rows of H and W start as N(0, init_scale^2 / d I_d): norm ~ init_scale
    "momentum": True,  # Nesterov-type extrapolation with restart; False gives plain block GD
    "balance": True,  # exact step along the rescaling (aH, W/a) after each sweep (see _balance)
}


def _spectral_norm_sq_bound(Hc: Array, W: Array) -> Array:
    """Upper bound on ||Hc||_2^2 (Hc (M, d)), tight when the rows of Hc lie in the row space of W.

    With Q (d, n) any orthonormal basis: ||Hc||_2 <= ||Hc Q||_2 + ||Hc (I - Q Q^T)||_F. Using the
    row space of W (where the features of a UFM minimizer lie) avoids a d x d eigenproblem per step.
    """
    Q, _ = jnp.linalg.qr(W.T)
    projected = Hc @ Q
    top = jnp.linalg.eigvalsh(projected.T @ projected)[-1]
    rest = jnp.sum(Hc**2) - jnp.sum(projected**2)
    return (jnp.sqrt(jnp.clip(top, 0.0, None)) + jnp.sqrt(jnp.clip(rest, 0.0, None))) ** 2


def _balance(H, W, lam_h, lam_w):
    """Exact minimizer along the rescaling (a H, W / a), which leaves H W^T and the fit unchanged.

    The penalty a^2 lam_h ||H||^2 / (2M) + lam_w ||W||^2 / (2 a^2) is smallest at
    a^4 = M lam_w ||W||^2 / (lam_h ||H||^2). This direction is the flattest of the loss (curvature
    ~ lambda), so gradient steps alone crawl along it for small lambdas. Needs lam_h, lam_w > 0.
    """
    M = H.shape[0]
    h_sq = lam_h * jnp.sum(H**2)
    w_sq = M * lam_w * jnp.sum(W**2)
    ok = (h_sq > 0) & (w_sq > 0)
    a = jnp.where(ok, (jnp.where(ok, w_sq, 1.0) / jnp.where(ok, h_sq, 1.0)) ** 0.25, 1.0)
    return a * H, W / a


def _optimal_bias(H, W, ybar):
    return ybar - jnp.mean(H, axis=0) @ W.T


def _block_step(H, W, H_prev, W_prev, beta, targets, ybar, lam_h, lam_w, balance):
    """One inertial Gauss-Seidel sweep; returns (H, W, b, stationarity measure, momentum uphill)."""
    M = targets.shape[0]
    centered_targets = targets - ybar[None, :]
    H_hat = H + beta * (H - H_prev)
    # b is eliminated (b = ybar - mean(H) W^T is optimal for any H, W), so the residual is centered
    # and the mean of H only feels lam_h: that block is the isotropic quadratic lam_h/2 ||mean(H)||^2,
    # whose Lipschitz step (1/lam_h) lands exactly on 0. At lam_h = 0 it has no gradient: kept.
    residual = (H_hat - jnp.mean(H_hat, axis=0)[None, :]) @ W.T - centered_targets
    lip_h = jnp.linalg.eigvalsh(W @ W.T)[-1] + lam_h  # times 1/M, which cancels in the step
    H_new = H_hat - (residual @ W + lam_h * H_hat) / lip_h
    H_new = H_new - jnp.where(lam_h > 0, 1.0, 0.0) * jnp.mean(H_new, axis=0)[None, :]
    W_hat = W + beta * (W - W_prev)
    mean_h = jnp.mean(H_new, axis=0)
    Hc = H_new - mean_h[None, :]
    residual_c = Hc @ W_hat.T - centered_targets
    lip_w = _spectral_norm_sq_bound(Hc, W_hat) / M + lam_w
    W_new = W_hat - (residual_c.T @ Hc / M + lam_w * W_hat) / lip_w
    if balance:
        H_new, W_new = _balance(H_new, W_new, lam_h, lam_w)
    b_new = ybar - jnp.mean(H_new, axis=0) @ W_new.T
    change = (lip_h / M) * jnp.sum((H_new - H) ** 2) + lip_w * jnp.sum((W_new - W) ** 2)
    # <gradient at the extrapolated point, step taken> > 0: the momentum points uphill.
    uphill = (lip_h / M) * jnp.sum((H_hat - H_new) * (H_new - H)) \
        + lip_w * jnp.sum((W_hat - W_new) * (W_new - W)) > 0
    return H_new, W_new, b_new, change, uphill


HISTORY_KEYS = ("iteration", "loss", "nrc1", "nrc2", "nrc3")


def _history_row(it, H, W, b, targets, sigma, lam_h, lam_w, gamma):
    n = targets.shape[1]
    return jnp.stack([
        jnp.asarray(it, H.dtype),
        _loss(H, W, b, targets, lam_h, lam_w),
        metrics.nrc1(H, n),
        metrics.nrc2(H, W),
        metrics.nrc3(W, sigma, gamma),
    ])


@functools.partial(jax.jit, static_argnames=("max_iters", "log_every", "momentum", "balance"))
def _gradient_descent(targets, lam_h, lam_w, H, W, tol, atol, *, max_iters, log_every, momentum,
                      balance):
    dtype = targets.dtype
    lam_h = jnp.asarray(lam_h, dtype)
    lam_w = jnp.asarray(lam_w, dtype)
    ybar = jnp.mean(targets, axis=0)
    sigma = metrics.target_stats(targets)["sigma"]
    gamma = lam_h * lam_w
    b = _optimal_bias(H, W, ybar)
    record = functools.partial(_history_row, targets=targets, sigma=sigma, lam_h=lam_h,
                               lam_w=lam_w, gamma=gamma)
    num_rows = max_iters // log_every + 2
    history = jnp.full((num_rows, len(HISTORY_KEYS)), jnp.nan, dtype)
    history = history.at[0].set(record(0, H, W, b))
    one = jnp.ones((), dtype)
    state = {
        "it": jnp.zeros((), jnp.int32), "H": H, "W": W, "b": b, "H_prev": H, "W_prev": W,
        "t": one, "loss": _loss(H, W, b, targets, lam_h, lam_w),
        "change": jnp.asarray(jnp.inf, dtype), "history": history,
        "restarts": jnp.zeros((), jnp.int32),
    }

    def converged(s):
        return s["change"] <= tol * s["loss"] + atol

    def keep_going(s):
        return (s["it"] < max_iters) & ~converged(s)

    def step(s):
        t_next = (1 + jnp.sqrt(1 + 4 * s["t"] ** 2)) / 2
        beta = (s["t"] - 1) / t_next if momentum else jnp.zeros((), dtype)
        H_new, W_new, b_new, change, uphill = _block_step(
            s["H"], s["W"], s["H_prev"], s["W_prev"], beta, targets, ybar, lam_h, lam_w, balance)
        loss_new = _loss(H_new, W_new, b_new, targets, lam_h, lam_w)
        # An extrapolated step that raised the loss is undone and the momentum restarts; the next
        # (plain) step is then a descent step. Plain steps are always accepted. The momentum also
        # restarts when it points uphill (O'Donoghue & Candes 2015, gradient scheme), which keeps
        # the ill-conditioned small-lambda problems converging linearly.
        reject = (loss_new > s["loss"]) & (beta > 0)
        pick = lambda new, old: jnp.where(reject, old, new)  # noqa: E731
        it = s["it"] + 1
        out = {
            "it": it,
            "H": pick(H_new, s["H"]), "W": pick(W_new, s["W"]), "b": pick(b_new, s["b"]),
            "H_prev": s["H"], "W_prev": s["W"],
            "t": jnp.where(reject | uphill, one, t_next), "loss": pick(loss_new, s["loss"]),
            "change": jnp.where(reject, jnp.inf, change),
            "restarts": s["restarts"] + (reject | uphill).astype(jnp.int32),
        }
        out["history"] = jax.lax.cond(
            it % log_every == 0,
            lambda h: h.at[it // log_every].set(record(it, out["H"], out["W"], out["b"])),
            lambda h: h,
            s["history"],
        )
        return out

    s = jax.lax.while_loop(keep_going, step, state)
    last = s["it"] // log_every + jnp.where(s["it"] % log_every == 0, 0, 1)
    history = s["history"].at[last].set(record(s["it"], s["H"], s["W"], s["b"]))
    info = {"iterations": s["it"], "converged": converged(s), "restarts": s["restarts"],
            "num_rows": last + 1, "change": s["change"]}
    return s["H"], s["W"], s["b"], history, info


def gradient_descent(
    targets: Array, lam_h: float, lam_w: float, d: int, key: Array, **options: Any
) -> tuple[Array, Array, Array, dict[str, Array]]:
    """Minimize the UFM loss from a random start by inertial alternating gradient steps.

    targets (M, n); lam_h, lam_w >= 0; d >= n the feature width; `key` draws the start
    (H (M, d) and W (n, d) with i.i.d. N(0, init_scale^2 / d) entries, b optimal for them).
    `options` override `GD_DEFAULTS` (max_iters, tol, atol, log_every, init_scale, momentum), or
    pass `H0`/`W0` to start from given arrays.

    Returns (H (M, d), W (n, d), b (n,), history): `history` maps "iteration", "loss", "nrc1",
    "nrc2", "nrc3" to 1-D arrays (one entry every `log_every` iterations plus the last one; NRC3 at
    gamma = lam_h*lam_w, NRC1/NRC2 in the paper's normalized form, all from `nrc_jax.metrics`),
    plus scalars "iterations", "converged", "restarts" (momentum restarts) and "change" (the final
    stationarity measure L_H ||dH||^2 + L_W ||dW||^2).
    """
    M, n = _check_targets(targets)
    d = _check_width(d, n)
    _check_lambda("lam_h", lam_h)
    _check_lambda("lam_w", lam_w)
    unknown = set(options) - set(GD_DEFAULTS) - {"H0", "W0"}
    if unknown:
        raise ConfigError(f"unknown gradient_descent option(s) {sorted(unknown)}; "
                          f"known: {sorted(GD_DEFAULTS) + ['H0', 'W0']}")
    opts = {**GD_DEFAULTS, **options}
    for name in ("max_iters", "log_every"):
        if isinstance(opts[name], bool) or not isinstance(opts[name], (int, np.integer)) \
                or opts[name] < 1:
            raise ConfigError(f"{name} must be an int >= 1; got {opts[name]!r}")
    for name in ("tol", "atol", "init_scale"):
        if not np.isfinite(opts[name]) or opts[name] < 0:
            raise ConfigError(f"{name} must be finite and >= 0; got {opts[name]!r}")
    targets = jnp.asarray(targets)
    dtype = targets.dtype
    key_h, key_w = jax.random.split(key)
    scale = opts["init_scale"] / np.sqrt(d)
    H0 = opts.get("H0")
    W0 = opts.get("W0")
    for name, given, shape in (("H0", H0, (M, d)), ("W0", W0, (n, d))):
        if given is not None and tuple(np.shape(given)) != shape:
            raise DataError(f"{name} must have shape {shape} for targets {(M, n)} and d={d}; "
                            f"got {tuple(np.shape(given))}")
    H0 = scale * jax.random.normal(key_h, (M, d), dtype) if H0 is None else jnp.asarray(H0, dtype)
    W0 = scale * jax.random.normal(key_w, (n, d), dtype) if W0 is None else jnp.asarray(W0, dtype)
    H, W, b, rows, info = _gradient_descent(
        targets, lam_h, lam_w, H0, W0, jnp.asarray(opts["tol"], dtype),
        jnp.asarray(opts["atol"], dtype), max_iters=int(opts["max_iters"]),
        log_every=int(opts["log_every"]), momentum=bool(opts["momentum"]),
        balance=bool(opts["balance"]))
    rows = rows[: int(info.pop("num_rows"))]
    history = {k: rows[:, i] for i, k in enumerate(HISTORY_KEYS)}
    history.update(info)
    return H, W, b, history


if __name__ == "__main__":
    from nrc_jax import ufm_study  # matplotlib and absl stay out of the library import

    ufm_study.main()
