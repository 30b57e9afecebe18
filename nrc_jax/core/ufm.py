"""The regression Unconstrained Feature Model (UFM): loss, closed-form optimum, first-order solver.

Pure `jax.numpy` (no I/O); the sweep, figures and tables live in `nrc_jax.ufm_study`.
Rows are samples: features `H` (M, d), weights `W` (n, d), bias `b` (n,), targets `Y` (M, n),
prediction `H @ W.T + b`. The loss (spec, "The regression UFM") is

    L(H, W, b) = 1/(2M) ||H W^T + b - Y||_F^2 + lam_h/(2M) ||H||_F^2 + lam_w/2 ||W||_F^2,

with `c = lam_h * lam_w` and `Sigma = V diag(lambda_j) V^T` the centered target covariance.

Command line (the study, `nrc_jax.ufm_study`): `python -m nrc_jax.ufm --config=configs/ufm.py`.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nrc_jax.core import metrics
from nrc_jax.core.checks import array_arg, count_arg, is_concrete, nonnegative_scalar_arg
from nrc_jax.errors import ConfigError, DataError

Array = jax.Array

# ----------------------------------------------------------------------------------------------
# Input validation (runs on concrete inputs, before anything is compiled).


def _targets_arg(targets: Any) -> Array:
    """targets as a floating (M, n) jax array with M, n >= 1 and finite values (DataError otherwise)."""
    y = array_arg("targets", targets, 2)
    if y.shape[0] < 1 or y.shape[1] < 1:
        raise DataError(f"targets must have shape (M, n) with M, n >= 1; got shape {tuple(y.shape)}")
    return y


def _lambdas_arg(lam_h: Any, lam_w: Any) -> None:
    nonnegative_scalar_arg("lam_h", lam_h)
    nonnegative_scalar_arg("lam_w", lam_w)


def _width_arg(d: Any, n: int) -> int:
    return count_arg("d", d, n, None, f"feature width vs target dim: d={d}, n={n}")


def _check_positive_lambdas(lam_h: Any, lam_w: Any, what: str) -> None:
    if is_concrete(lam_h) and is_concrete(lam_w) and (float(lam_h) <= 0 or float(lam_w) <= 0):
        raise ConfigError(f"{what} needs lam_h > 0 and lam_w > 0 (got lam_h={float(lam_h)}, lam_w={float(lam_w)}): "
                          "without both penalties the minimizer is not unique or not attained")


def _both_positive(lam_h: Any, lam_w: Any) -> bool:
    """True for concrete lam_h, lam_w > 0 (traced values give False: the solver's plain branch)."""
    return is_concrete(lam_h) and is_concrete(lam_w) and float(lam_h) > 0 and float(lam_w) > 0


def _solver_options_arg(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` as a dict holding exactly `SOLVER_OPTIONS`, the counts >= 1 and tolerances >= 0."""
    missing, unknown = set(SOLVER_OPTIONS) - set(options), set(options) - set(SOLVER_OPTIONS)
    if missing or unknown:
        raise ConfigError(f"gradient_descent options: missing {sorted(missing)}, unknown {sorted(unknown)}; "
                          f"expected exactly {list(SOLVER_OPTIONS)} (configs/ufm.py solver_config())")
    for name in ("max_iters", "log_every"):
        count_arg(name, options[name], 1, None, "iterations")
    for name in ("tol", "atol", "init_scale"):
        nonnegative_scalar_arg(name, options[name])
    return dict(options)


# ----------------------------------------------------------------------------------------------
# Loss and closed form.


def loss(H: Array, W: Array, b: Array, targets: Array, lam_h: float, lam_w: float) -> Array:
    """UFM loss (scalar). H (M, d), W (n, d), b (n,), targets (M, n); lam_h, lam_w >= 0."""
    targets = _targets_arg(targets)
    M, n = targets.shape
    shapes = {"H": np.shape(H), "W": np.shape(W), "b": np.shape(b), "targets": (M, n)}
    d = shapes["H"][1] if len(shapes["H"]) == 2 else None
    if len(shapes["H"]) != 2 or shapes["H"][0] != M or shapes["W"] != (n, d) or shapes["b"] != (n,):
        raise DataError("expected H (M, d), W (n, d), b (n,), targets (M, n); got "
                        + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    _lambdas_arg(lam_h, lam_w)
    return _loss(H, W, b, targets, lam_h, lam_w)


def _loss(H, W, b, targets, lam_h, lam_w):
    M = targets.shape[0]
    residual = H @ W.T + b[None, :] - targets
    return (jnp.sum(residual**2) + lam_h * jnp.sum(H**2)) / (2 * M) + 0.5 * lam_w * jnp.sum(W**2)



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
    targets = _targets_arg(targets)
    _lambdas_arg(lam_h, lam_w)
    both_zero = is_concrete(lam_h) and is_concrete(lam_w) and float(lam_h) == float(lam_w) == 0
    if not both_zero:
        _check_positive_lambdas(lam_h, lam_w, "optimum")
    return _optimum(targets, lam_h, lam_w)


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
    targets = _targets_arg(targets)
    d = _width_arg(d, targets.shape[1])
    _lambdas_arg(lam_h, lam_w)
    _check_positive_lambdas(lam_h, lam_w, "closed_form")
    return _closed_form(targets, lam_h, lam_w, d, key)


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
# First-order solver: inertial alternating (block) gradient steps with per-block Lipschitz steps,
# plus an exact balancing move.
#
# The bias is eliminated throughout (b = ybar - mean(H) W^T is optimal for any H, W), so the fit
# only sees Z = (H - mean(H)) W^T (M, n). One iteration, in Gauss-Seidel order (iPALM, Pock &
# Sabach 2016, with restarts):
#   H <- H^ - grad_H L(H^, W) / L_H,   L_H = (||W||_2^2 + lam_h) / M,   H^ = H + beta (H - H_prev)
#   mean(H) <- 0 if lam_h > 0          (that block's loss is lam_h/2 ||mean(H)||^2: its 1/L step)
#   W <- W^ - grad_W L(H, W^) / L_W,   L_W = ||H - mean(H)||_2^2 / M + lam_w
#   (H, W) <- balance(H, W)            (lam_h, lam_w > 0 only; exact, see `balance`)
# Each L is the Lipschitz constant of its block gradient, so a step without momentum never
# increases the loss; an accelerated step that does is rejected, and the momentum restarts then or
# when it points uphill.
#
# Why the balancing move: plain block steps need ~1/lambda iterations. The slow directions are
# those that keep Z fixed, (H Q G, W Q G^{-T}) for invertible n x n G and the part of H outside
# the row space of W, whose only curvature is the penalty (~lambda). For a fixed Z the penalty
# has a closed-form minimum over all of them (the balanced factorization), so jumping there is an
# exact move that never increases the loss and leaves no slow direction but the singular values
# and vectors of Z, which the gradient steps fit linearly at a rate set by the target spectrum and
# by how far the eigenvalues lambda_j are from c (iteration counts: results/ufm/gd_benchmark.md;
# sublinear where some lambda_j equals c and the optimum is degenerate).
#
# Why small coordinates: after the first balancing H = A Q^T and W = B Q^T with Q (d, n) orthonormal,
# and every later gradient stays in that row space (grad_H = ((A B^T - Yc) B + lam_h A) Q^T / M,
# grad_W = ((A B^T - Yc)^T A / M + lam_w B) Q^T, Yc the centered targets), and so does every
# balancing. The iteration above is therefore run, exactly, on A (M, n) and B (n, n): d drops out
# and an iteration costs O(M n^2) flops instead of ~20 memory-bound passes over the (M, d) H.
# This is still a first-order method from a random start: Q is the row space of the random W0.
#
# With lam_h = 0 or lam_w = 0 (or balance=False) the plain iteration runs in full dimension: the
# gradient steps move the part of H outside the row space of W only through lam_h, so at lam = 0
# that part of the random start is kept (no collapse), and no balancing imposes one.

# Every option `gradient_descent` needs; their defaults are configs/ufm.py's `solver_config()`.
SOLVER_OPTIONS = ("max_iters", "tol", "atol", "log_every", "init_scale", "momentum", "balance")


def _polar(X: Array) -> Array:
    """The orthogonal factor of X (n, n): argmax over orthogonal P of tr(P^T X)."""
    u, _, vt = jnp.linalg.svd(X)
    return u @ vt


def _balanced_coordinates(A: Array, B: Array, lam_h: Array, lam_w: Array) -> tuple[Array, Array]:
    """The balanced factorization of Z = A B^T (A (M, n) centered, B (n, n)); needs lam_h, lam_w > 0.

    With Z = U S V^T (thin SVD) and a^4 = M lam_w / lam_h, the minimizers of
    lam_h/(2M) ||A'||^2 + lam_w/2 ||B'||^2 subject to A' B'^T = Z are exactly
    A' = U S^{1/2} a P, B' = V S^{1/2} P / a for an orthogonal P (n, n) (the penalty is then
    sqrt(c/M) ||Z||_*, its minimum, by AM-GM on each singular value). P is free; the one nearest to
    the current (A, B) in the metric of the step sizes is taken, so the move is the identity at a
    balanced point and does not scramble the momentum.
    """
    M = A.shape[0]
    Qa, Ra = jnp.linalg.qr(A)  # Z = Qa (Ra B^T): an n x n SVD instead of an M x n one
    u, s, vt = jnp.linalg.svd(Ra @ B.T)
    a = (M * lam_w / lam_h) ** 0.25
    root = jnp.sqrt(s)
    A_bal = (Qa @ u) * (a * root)[None, :]
    B_bal = vt.T * (root / a)[None, :]
    # A ~ a sqrt(s) and B ~ sqrt(s) / a, so these weights make both blocks count alike.
    P = _polar(A_bal.T @ A / a**2 + a**2 * (B_bal.T @ B))
    return A_bal @ P, B_bal @ P


def balance(H: Array, W: Array, lam_h: float, lam_w: float) -> tuple[Array, Array]:
    """The exact balancing move: (H' (M, d), W' (n, d)) with the same fit and the smallest penalty.

    H (M, d), W (n, d); lam_h, lam_w > 0. With Q (d, n) an orthonormal basis of the row space of W
    (W = B Q^T), A = (H - mean(H)) Q, the result is H' = A' Q^T, W' = B' Q^T with (A', B') the
    balanced factorization of Z = A B^T (see `_balanced_coordinates`). So H' W'^T =
    (H - mean(H)) W^T, H' is centered and in the row space of W, and lam_h H'^T H' = M lam_w W'^T W'
    (the optimality identity). Dropping mean(H) and the part of H outside the row space of W changes
    nothing in the fit once b is optimal and only lowers lam_h ||H||^2, so the loss with the optimal
    bias never increases.
    """
    _, d = np.shape(H)
    _lambdas_arg(lam_h, lam_w)
    _check_positive_lambdas(lam_h, lam_w, "balance")
    if np.ndim(W) != 2 or np.shape(W)[1] != d or np.shape(W)[0] > d:
        raise DataError(f"balance expects H (M, d), W (n, d) with n <= d; got H {np.shape(H)}, "
                        f"W {np.shape(W)}")
    return _balance(jnp.asarray(H), jnp.asarray(W), lam_h, lam_w)


@jax.jit
def _balance(H, W, lam_h, lam_w):
    lam_h = jnp.asarray(lam_h, H.dtype)
    lam_w = jnp.asarray(lam_w, H.dtype)
    Q, _ = jnp.linalg.qr(W.T)
    A, B = _balanced_coordinates((H - jnp.mean(H, axis=0)[None, :]) @ Q, W @ Q, lam_h, lam_w)
    return A @ Q.T, B @ Q.T


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


def _optimal_bias(H, W, ybar):
    return ybar - jnp.mean(H, axis=0) @ W.T


def _step_report(x_hat, x, x_new, lips):
    """(L-weighted ||x_new - x||^2, whether the momentum points uphill) for blocks x = (H, W)."""
    change = sum(lip * jnp.sum((new - old) ** 2) for lip, new, old in zip(lips, x_new, x))
    # <gradient at the extrapolated point, step taken> > 0: the momentum points uphill.
    uphill = sum(lip * jnp.sum((hat - new) * (new - old))
                 for lip, hat, new, old in zip(lips, x_hat, x_new, x)) > 0
    return change, uphill


def _full_step(x, x_prev, beta, targets, ybar, lam_h, lam_w):
    """One inertial Gauss-Seidel sweep on x = (H (M, d), W (n, d)), no balancing."""
    (H, W), (H_prev, W_prev) = x, x_prev
    M = targets.shape[0]
    centered_targets = targets - ybar[None, :]
    H_hat = H + beta * (H - H_prev)
    # b is eliminated, so the residual is centered and the mean of H only feels lam_h: that block
    # is the isotropic quadratic lam_h/2 ||mean(H)||^2, whose Lipschitz step (1/lam_h) lands
    # exactly on 0. At lam_h = 0 it has no gradient: kept.
    residual = (H_hat - jnp.mean(H_hat, axis=0)[None, :]) @ W.T - centered_targets
    lip_h = jnp.linalg.eigvalsh(W @ W.T)[-1] + lam_h  # times 1/M, which cancels in the step
    H_new = H_hat - (residual @ W + lam_h * H_hat) / lip_h
    H_new = H_new - jnp.where(lam_h > 0, 1.0, 0.0) * jnp.mean(H_new, axis=0)[None, :]
    W_hat = W + beta * (W - W_prev)
    Hc = H_new - jnp.mean(H_new, axis=0)[None, :]
    residual_c = Hc @ W_hat.T - centered_targets
    lip_w = _spectral_norm_sq_bound(Hc, W_hat) / M + lam_w
    W_new = W_hat - (residual_c.T @ Hc / M + lam_w * W_hat) / lip_w
    x_new = (H_new, W_new)
    return (x_new, *_step_report((H_hat, W_hat), x, x_new, (lip_h / M, lip_w)))


def _reduced_step(x, x_prev, beta, centered_targets, lam_h, lam_w):
    """The same sweep, then balancing, on x = (A (M, n), B (n, n)) with H = A Q^T, W = B Q^T."""
    (A, B), (A_prev, B_prev) = x, x_prev
    M = centered_targets.shape[0]
    A_hat = A + beta * (A - A_prev)  # centered, like A and A_prev
    lip_a = jnp.linalg.eigvalsh(B.T @ B)[-1] + lam_h  # times 1/M, which cancels in the step
    A_new = A_hat - ((A_hat @ B.T - centered_targets) @ B + lam_h * A_hat) / lip_a
    B_hat = B + beta * (B - B_prev)
    lip_b = jnp.linalg.eigvalsh(A_new.T @ A_new)[-1] / M + lam_w
    B_new = B_hat - ((A_new @ B_hat.T - centered_targets).T @ A_new / M + lam_w * B_hat) / lip_b
    x_new = _balanced_coordinates(A_new, B_new, lam_h, lam_w)
    return (x_new, *_step_report((A_hat, B_hat), x, x_new, (lip_a / M, lip_b)))


HISTORY_KEYS = ("iteration", "loss", "nrc1", "nrc2", "nrc3")


def _history_row(it, H, W, loss_value, sigma, gamma):
    """NRC1-3 are invariant under H -> H Q^T, W -> W Q^T (Q^T orthonormal rows), so the small
    coordinates (A, B) give the metrics of (A Q^T, B Q^T) without forming the (M, d) features."""
    return jnp.stack([jnp.asarray(it, H.dtype), loss_value, metrics.nrc1(H, W.shape[0]), metrics.nrc2(H, W),
                      metrics.nrc3(W, sigma, gamma)])


def _ipalm(x0, step, loss_fn, record, tol, atol, max_iters, log_every, momentum, history):
    """The shared loop: accelerated steps with rejection and restarts, history every log_every."""
    dtype = history.dtype
    one = jnp.ones((), dtype)
    state = {
        "it": jnp.zeros((), jnp.int32), "x": x0, "x_prev": x0, "t": one, "loss": loss_fn(x0),
        "change": jnp.asarray(jnp.inf, dtype), "history": history,
        "restarts": jnp.zeros((), jnp.int32),
    }

    def converged(s):
        return s["change"] <= tol * s["loss"] + atol

    def keep_going(s):
        return (s["it"] < max_iters) & ~converged(s)

    def body(s):
        t_next = (1 + jnp.sqrt(1 + 4 * s["t"] ** 2)) / 2
        beta = (s["t"] - 1) / t_next if momentum else jnp.zeros((), dtype)
        x_new, change, uphill = step(s["x"], s["x_prev"], beta)
        loss_new = loss_fn(x_new)
        # An extrapolated step that raised the loss is undone and the momentum restarts; the next
        # (plain) step is then a descent step. Plain steps are always accepted. The momentum also
        # restarts when it points uphill (O'Donoghue & Candes 2015, gradient scheme), which keeps
        # the ill-conditioned problems converging linearly.
        reject = (loss_new > s["loss"]) & (beta > 0)
        pick = lambda new, old: jnp.where(reject, old, new)  # noqa: E731
        it = s["it"] + 1
        out = {
            "it": it, "x": jax.tree.map(pick, x_new, s["x"]), "x_prev": s["x"],
            "t": jnp.where(reject | uphill, one, t_next), "loss": pick(loss_new, s["loss"]),
            "change": jnp.where(reject, jnp.inf, change),
            "restarts": s["restarts"] + (reject | uphill).astype(jnp.int32),
        }
        out["history"] = jax.lax.cond(
            it % log_every == 0,
            lambda h: h.at[it // log_every].set(record(it, out["x"], out["loss"])),
            lambda h: h,
            s["history"],
        )
        return out

    s = jax.lax.while_loop(keep_going, body, state)
    last = s["it"] // log_every + jnp.where(s["it"] % log_every == 0, 0, 1)
    history = s["history"].at[last].set(record(s["it"], s["x"], s["loss"]))
    info = {"iterations": s["it"], "converged": converged(s), "restarts": s["restarts"],
            "num_rows": last + 1, "change": s["change"]}
    return s["x"], history, info


@functools.partial(jax.jit, static_argnames=("max_iters", "log_every", "momentum", "reduced"))
def _gradient_descent(targets, lam_h, lam_w, H, W, tol, atol, *, max_iters, log_every, momentum,
                      reduced):
    dtype = targets.dtype
    lam_h = jnp.asarray(lam_h, dtype)
    lam_w = jnp.asarray(lam_w, dtype)
    ybar = jnp.mean(targets, axis=0)
    centered_targets = targets - ybar[None, :]
    sigma = metrics.target_stats(targets)["sigma"]
    gamma = lam_h * lam_w
    record = functools.partial(_history_row, sigma=sigma, gamma=gamma)
    history = jnp.full((max_iters // log_every + 2, len(HISTORY_KEYS)), jnp.nan, dtype)
    history = history.at[0].set(
        record(0, H, W, _loss(H, W, _optimal_bias(H, W, ybar), targets, lam_h, lam_w)))
    loop = functools.partial(_ipalm, tol=tol, atol=atol, max_iters=max_iters, log_every=log_every,
                             momentum=momentum, history=history)
    if reduced:
        Q, _ = jnp.linalg.qr(W.T)  # (d, n): the row space of the random W0, fixed from here on
        A = (H - jnp.mean(H, axis=0)[None, :]) @ Q
        x0 = _balanced_coordinates(A, W @ Q, lam_h, lam_w)
        loss_fn = lambda x: _loss(*x, jnp.zeros_like(ybar), centered_targets, lam_h, lam_w)  # noqa: E731
        (A, B), history, info = loop(
            x0, lambda x, x_prev, beta: _reduced_step(x, x_prev, beta, centered_targets, lam_h, lam_w),
            loss_fn, lambda it, x, value: record(it, *x, value))
        H, W, b = A @ Q.T, B @ Q.T, ybar
    else:
        loss_fn = lambda x: _loss(*x, _optimal_bias(*x, ybar), targets, lam_h, lam_w)  # noqa: E731
        (H, W), history, info = loop(
            (H, W), lambda x, x_prev, beta: _full_step(x, x_prev, beta, targets, ybar, lam_h, lam_w),
            loss_fn, lambda it, x, value: record(it, *x, value))
        b = _optimal_bias(H, W, ybar)
    return H, W, b, history, info


def gradient_descent(
    targets: Array, lam_h: float, lam_w: float, d: int, key: Array, options: Mapping[str, Any], *,
    H0: Array | None = None, W0: Array | None = None,
) -> tuple[Array, Array, Array, dict[str, Array]]:
    """Minimize the UFM loss from a random start by inertial alternating gradient steps.

    targets (M, n); lam_h, lam_w >= 0; d >= n the feature width; `key` draws the start
    (H (M, d) and W (n, d) with i.i.d. N(0, init_scale^2 / d) entries, b optimal for them) unless
    `H0`/`W0` give it. `options` holds every name of `SOLVER_OPTIONS` (max_iters, tol, atol,
    log_every, init_scale, momentum, balance; configs/ufm.py's `solver_config()` gives defaults).

    Method (see the comment above `SOLVER_OPTIONS`): block gradient steps with Lipschitz step sizes,
    momentum with restarts, b in closed form. For concrete lam_h, lam_w > 0 with balance=True each
    sweep ends with the exact balancing move (`balance`) and the iteration runs on the n-dimensional
    row space of the random W0, where it stays (about 40-1,300 iterations for M=1000, n=8, d=512 at
    lambdas in [1e-4, 1], benchmarks/ufm_gd.py), so NRC1/NRC2 in `history` are ~0 from the second
    entry on. Otherwise (a lambda of 0, traced lambdas, or balance=False) plain steps run in full
    dimension; at lam_h = lam_w = 0 the random start's part of H outside W's row space is kept.

    Returns (H (M, d), W (n, d), b (n,), history): `history` maps "iteration", "loss", "nrc1",
    "nrc2", "nrc3" to 1-D arrays (one entry every `log_every` iterations plus the last one; NRC3 at
    gamma = lam_h*lam_w, NRC1/NRC2 in the paper's normalized form, all from `nrc_jax.core.metrics`),
    plus scalars "iterations", "converged", "restarts" (momentum restarts) and "change" (the final
    stationarity measure L_H ||dH||^2 + L_W ||dW||^2).
    """
    targets = _targets_arg(targets)
    M, n = targets.shape
    d = _width_arg(d, n)
    _lambdas_arg(lam_h, lam_w)
    opts = _solver_options_arg(options)
    dtype = targets.dtype
    key_h, key_w = jax.random.split(key)
    scale = opts["init_scale"] / np.sqrt(d)
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
        reduced=bool(opts["balance"]) and _both_positive(lam_h, lam_w))
    rows = rows[: int(info.pop("num_rows"))]
    history = {k: rows[:, i] for i, k in enumerate(HISTORY_KEYS)}
    history.update(info)
    return H, W, b, history

