"""Neural Regression Collapse metrics in pure jax.numpy (the math is docs/nrc.md).

Rows are samples: features `H` (M, d), head weights `W` (n, d), targets `Y` (M, n), predictions
`H @ W.T + b` (M, n). Every function is jittable and works in float32 and float64.

NRC1/NRC2 variants (keyword `variant`):
- "paper" (default): per-sample normalized, not centered, `ht_i = h_i / ||h_i||`;
  `NRC = (1/M) sum_i ||ht_i - P ht_i||^2 = 1 - tr(P S~)`, `S~ = (1/M) sum ht ht^T`.
- "centered": as "paper" with `ht_i = (h_i - hbar) / ||h_i - hbar||`.
- "variance": Deep NRC's `1 - tr(V^T S_h V) / tr(S_h)`, `S_h` the centered covariance of raw H.
- "unnormalized": the first code release, `(1/M) sum_i ||h_i - P h_i||^2` on raw (uncentered) h.
- "unnormalized_md": the same divided by d as well (the authors' long runs).
Residuals are summed from the vectors `x - P x` themselves where rows are in memory, so float32
resolves them down to ~1e-10; the streamed FeatureStats path takes trace differences (floor in
docs/nrc.md).
`P` is the projector onto the top-n principal directions of H (eigenvectors of the centered
covariance of raw H) for NRC1, and onto the row space of W for NRC2.

Conventions the spec leaves open (the test oracle tests/reference_numpy.py follows them):
- Zero rows of H have no direction: the per-sample-normalized forms ("paper", "centered") skip them
  (they count neither in the sum nor in M); the PCA covariance and the "variance"/"unnormalized"
  forms still include them. If every row is zero the normalized forms are nan.
- NRC2 uses the numerical row space of W: singular values <= max(n, d) * eps * s_max are dropped
  (numpy's matrix_rank tolerance), so rank-deficient W is handled; W = 0 gives NRC2 = 1.
- NRC3 for n = 1 is 0.0 (the spec calls it trivial: both normalized 1x1 matrices are 1). A zero
  `W W^T` (or `A_gamma`) normalizes to the zero matrix, so W = 0 gives NRC3 = 1.
- `mse`, `mse_per_dim`, `r2`, `r2_per_dim` take `(targets, predictions)` in that order
  (sklearn's y_true, y_pred); `r2` is the mean of the per-dimension values.

Sufficient statistics: `FeatureStats` (built by `feature_stats`, added by `merge`) holds sums over
samples, so metrics of a data set streamed in batches, sharded over devices or split over hosts are
exact; `metrics_from_stats` turns them into every metric above. The "centered" normalized variant
needs hbar before normalizing, so it takes a second pass: `centered_feature_stats(features, mean)`.
Where every row is in memory (the trainer's evaluation), `metrics_from_features` gives the same dict
with one d x d product instead of three; `regression_metrics` gives MSE and R2 alone.
One definition of each metric: every entry point (the array functions, `metrics_from_features`,
`metrics_from_stats` and `nrc_jax.deep`'s per-layer metrics) holds the moments of H as a
`FeatureMoments` (rows or sums) and reads the principal directions from `principal_subspace` and
NRC1/NRC2 in every variant from `nrc_variants`; MSE and R2 come from one function of sums.
FeatureStats sums are accumulated in the input dtype: in float32 their centered covariance
`sum_hh/M - hbar hbar^T` loses digits when |hbar| >> the feature spread; the in-memory paths center
the rows first.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nrc_jax.checks import array_arg, count_arg, finite_arg, nonnegative_scalar_arg
from nrc_jax.errors import ConfigError, DataError
from nrc_jax.linalg import (Gram, Rows, covariance_from_sums, dot, kept_count, masked, normalize_rows,
                            residual_share, row_space_basis, symmetrize, top_eigh)

VARIANTS = ("paper", "centered", "variance", "unnormalized", "unnormalized_md")
Array = jax.Array
ArrayLike = Any


# ----------------------------------------------------------------------------- validation
def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def _check_weights(weights: ArrayLike, d: int | None = None) -> Array:
    w = array_arg("weights", weights, 2)
    n, dw = w.shape
    if d is not None and dw != d:
        raise DataError(f"weights shape {tuple(w.shape)} does not match feature dim d={d} (want (n, {d}))")
    if n < 1 or n > dw:
        raise DataError(f"weights shape {tuple(w.shape)} must be (n, d) with 1 <= n <= d")
    return w


def _check_sigma(sigma: ArrayLike, n: int) -> Array:
    s = array_arg("sigma", sigma, 2)
    if s.shape != (n, n):
        raise DataError(f"sigma shape {tuple(s.shape)} must be (n, n) = ({n}, {n}) to match weights")
    return s


def _check_targets_predictions(targets: ArrayLike, predictions: ArrayLike, *,
                               check_finite: bool = True) -> tuple[Array, Array]:
    y = _as_2d("targets", targets, check_finite)
    p = _as_2d("predictions", predictions, check_finite)
    if y.shape != p.shape:
        raise DataError(f"targets shape {tuple(y.shape)} and predictions shape {tuple(p.shape)} differ")
    return y, p


def _as_2d(name: str, x: ArrayLike, check_finite: bool = True) -> Array:
    """A (M,) array becomes (M, 1); (M, n) stays."""
    if np.ndim(x) == 1:
        return array_arg(name, x, 1, check_finite=check_finite)[:, None]
    return array_arg(name, x, 2, check_finite=check_finite)


# ----------------------------------------------------------------------------- linear algebra
def _unit(m: Array) -> Array:
    """m / ||m||_F, and the zero matrix for m = 0."""
    norm = jnp.linalg.norm(m)
    return jnp.where(norm > 0, m / jnp.where(norm > 0, norm, 1.0), 0.0)


def top_eigenvectors(
    cov: ArrayLike, n: int, init: ArrayLike | None = None, iters: int = 30
) -> tuple[Array, Array]:
    """Top-n eigenpairs of a symmetric PSD matrix by subspace (orthogonal) iteration with QR.

    Args:
      cov: (d, d) symmetric PSD matrix.
      n: number of eigenpairs, 1 <= n <= d.
      init: (d, n) starting basis (need not be orthonormal), e.g. the vectors returned last time:
        warm-starting from the previous epoch's basis makes a few iterations enough. Default: a
        fixed random basis (PRNGKey(0)).
      iters: QR iterations. The error in the subspace shrinks like (lambda_{n+1}/lambda_n)^iters,
        then a Rayleigh-Ritz step (eigh of the n x n projected matrix) orders the pairs.

    Returns:
      (values (n,), vectors (d, n)), descending like `jnp.linalg.eigh` reversed. Jittable.
    """
    cov = array_arg("cov", cov, 2)
    d = cov.shape[0]
    if cov.shape != (d, d):
        raise DataError(f"cov must be square (d, d), got shape {tuple(cov.shape)}")
    n = count_arg("n", n, 1, d, f"cov is {d}x{d}")
    iters = count_arg("iters", iters, 0, 10**6, "QR iterations")
    if init is None:
        init = jax.random.normal(jax.random.PRNGKey(0), (d, n), cov.dtype)
    else:
        init = array_arg("init", init, 2)
        if init.shape != (d, n):
            raise DataError(f"init shape {tuple(init.shape)} must be (d, n) = ({d}, {n})")
    return _subspace_iteration(cov, init.astype(cov.dtype), iters)


@functools.partial(jax.jit, static_argnums=2)
def _subspace_iteration(cov: Array, init: Array, iters: int) -> tuple[Array, Array]:
    cov = symmetrize(cov)

    def step(_, q):
        return jnp.linalg.qr(dot(cov, q))[0]

    q = jax.lax.fori_loop(0, iters, step, jnp.linalg.qr(init)[0])
    ritz_values, ritz_vectors = jnp.linalg.eigh(symmetrize(dot(q.T, dot(cov, q))))
    return ritz_values[::-1], dot(q, ritz_vectors[:, ::-1])


def pca_basis_init(d: int, n: int, *, evr_k: int = 5, key: Array | None = None,
                   dtype: Any = jnp.float32) -> Array:
    """A random orthonormal (d, max(n, min(evr_k, d))) basis to start `metrics_from_stats(pca_init=)`.

    Carry the returned `pca_basis` of each call in the training state and pass it back next time.
    """
    width = max(n, min(evr_k, d))
    key = jax.random.PRNGKey(0) if key is None else key
    return jnp.linalg.qr(jax.random.normal(key, (d, width), dtype))[0]


# ----------------------------------------------------------------------------- array metrics
def _all_rows(h: Array, centered: bool) -> tuple[FeatureMoments, Array]:
    """FeatureMoments (held as rows) of every row of h (M, d), and the count M."""
    return feature_moments_from_rows(h, jnp.mean(h, axis=0), centered=centered), jnp.asarray(h.shape[0], h.dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _nrc1_impl(h: Array, n: int, variant: str) -> Array:
    f, count = _all_rows(h, variant == "centered")
    _, _, basis = principal_subspace(f, count, n)
    return nrc_variants(f, count, basis)[variant]


@functools.partial(jax.jit, static_argnums=2)
def _nrc2_impl(h: Array, w: Array, variant: str) -> Array:
    f, count = _all_rows(h, variant == "centered")
    return nrc_variants(f, count, *row_space_basis(w))[variant]


def _features_arg(features: ArrayLike, check_finite: bool = True) -> Array:
    h = array_arg("features", features, 2, check_finite=check_finite)
    if h.shape[0] < 1 or h.shape[1] < 1:
        raise DataError(f"features must be (M, d) with M, d >= 1, got shape {tuple(h.shape)}")
    return h


def nrc1(features: ArrayLike, n: int, *, variant: str = "paper") -> Array:
    """NRC1: residual of the features outside their top-n principal subspace.

    Args:
      features: H, (M, d), rows are samples.
      n: number of principal directions (the target dim), 1 <= n <= d.
      variant: "paper" (default), "centered", "variance" or "unnormalized" (module docstring).
    Returns: scalar.
    """
    h = _features_arg(features)
    n = count_arg("n", n, 1, h.shape[1], f"features shape {tuple(h.shape)}")
    return _nrc1_impl(h, n, _check_variant(variant))


def nrc2(features: ArrayLike, weights: ArrayLike, *, variant: str = "paper") -> Array:
    """NRC2: residual of the features outside the row space of W.

    Args:
      features: H, (M, d). weights: W, (n, d), n <= d; rank-deficient W uses its numerical rank.
      variant: "paper" (default), "centered", "variance" or "unnormalized" (module docstring).
    Returns: scalar.
    """
    h = _features_arg(features)
    w = _check_weights(weights, h.shape[1])
    return _nrc2_impl(h, w.astype(h.dtype), _check_variant(variant))


def _nrc3_values(w: Array, sigma: Array, gammas: Array) -> Array:
    """NRC3 at each gamma in `gammas` (k,) -> (k,); zeros for n = 1.

    Evaluated in the eigenbasis V of Sigma (eigh): there A_gamma = diag(sqrt(lambda) - sqrt(gamma))
    (tiny negative eigenvalues clipped to 0), and the Frobenius norm is unchanged by the rotation,
    so the whole grid costs one n x n eigh.
    """
    if w.shape[0] == 1:
        return jnp.zeros_like(gammas)
    values, vectors = jnp.linalg.eigh(symmetrize(sigma))
    roots = jnp.sqrt(jnp.clip(values, 0.0, None))
    rotated = dot(vectors.T, dot(_unit(dot(w, w.T)), vectors))
    diagonal = jnp.diagonal(rotated)
    off_diagonal = jnp.sum(jnp.where(jnp.eye(w.shape[0], dtype=bool), 0.0, rotated**2))
    a_gamma = roots[None, :] - jnp.sqrt(gammas)[:, None]
    norms = jnp.linalg.norm(a_gamma, axis=1, keepdims=True)
    a_unit = jnp.where(norms > 0, a_gamma / jnp.where(norms > 0, norms, 1.0), 0.0)
    return off_diagonal + jnp.sum((diagonal[None, :] - a_unit) ** 2, axis=1)


@jax.jit
def _nrc3_impl(w: Array, sigma: Array, gamma: Array) -> Array:
    return _nrc3_values(w, sigma, jnp.reshape(jnp.asarray(gamma, w.dtype), (1,)))[0]


def nrc3(weights: ArrayLike, sigma: ArrayLike, gamma: ArrayLike) -> Array:
    """NRC3(gamma) = || WW^T/||WW^T||_F - A/||A||_F ||_F^2, A = Sigma^{1/2} - sqrt(gamma) I_n.

    Args: weights W (n, d); sigma, the target covariance (n, n); gamma >= 0 (scalar, may be traced).
    Returns: scalar; 0.0 for n = 1 (trivial, see module docstring).
    """
    w = _check_weights(weights)
    s = _check_sigma(sigma, w.shape[0])
    return _nrc3_impl(w, s.astype(w.dtype), nonnegative_scalar_arg("gamma", gamma))


@functools.partial(jax.jit, static_argnums=2)
def _nrc3_curve_impl(w: Array, sigma: Array, num: int) -> tuple[Array, Array]:
    lambda_min = jnp.maximum(jnp.linalg.eigvalsh(symmetrize(sigma))[0], 0.0)
    gammas = jnp.linspace(0.0, lambda_min, num, endpoint=False, dtype=w.dtype)
    return gammas, _nrc3_values(w, sigma, gammas)


def nrc3_curve(weights: ArrayLike, sigma: ArrayLike, num: int = 1000) -> tuple[Array, Array]:
    """NRC3 on the grid gammas = linspace(0, lambda_min(Sigma), num, endpoint=False).

    Returns: (gammas (num,), values (num,)).
    """
    w = _check_weights(weights)
    s = _check_sigma(sigma, w.shape[0])
    num = count_arg("num", num, 1, 10**7, "grid size")
    return _nrc3_curve_impl(w, s.astype(w.dtype), num)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _best_gamma_impl(w: Array, sigma: Array, num: int, refine: bool) -> tuple[Array, Array]:
    gammas, values = _nrc3_curve_impl(w, sigma, num)
    best = jnp.argmin(values)
    gamma, value = gammas[best], values[best]
    if refine and w.shape[0] > 1:
        # A second grid between the neighbours of the best grid point; the grid best is kept
        # unless something strictly better is found, so refining never makes the value worse.
        step = gammas[1] - gammas[0] if num > 1 else gammas[0]
        fine = jnp.linspace(jnp.maximum(gamma - step, 0.0), gamma + step, num, endpoint=False)
        fine = jnp.minimum(fine, gammas[-1] + step * (1 - 1e-6)).astype(w.dtype)
        fine_values = _nrc3_values(w, sigma, fine)
        fine_best = jnp.argmin(fine_values)
        better = fine_values[fine_best] < value
        gamma = jnp.where(better, fine[fine_best], gamma)
        value = jnp.where(better, fine_values[fine_best], value)
    return gamma, value


def best_gamma(weights: ArrayLike, sigma: ArrayLike, num: int = 1000, *,
               refine: bool = False) -> tuple[Array, Array]:
    """The gamma in linspace(0, lambda_min, num, endpoint=False) minimizing NRC3 at `weights`.

    With `refine=True` a second grid of `num` points between the best point's neighbours is
    searched too; the returned value is never worse than the plain grid's. Report gamma/lambda_min
    beside it (the spec).

    Returns: (gamma, nrc3_value), scalars. For n = 1: (0.0, 0.0).
    """
    w = _check_weights(weights)
    s = _check_sigma(sigma, w.shape[0])
    num = count_arg("num", num, 1, 10**7, "grid size")
    return _best_gamma_impl(w, s.astype(w.dtype), num, bool(refine))


@functools.partial(jax.jit, static_argnums=1)
def _evr_impl(h: Array, k: int) -> Array:
    f, count = _all_rows(h, False)
    cov, values, _ = principal_subspace(f, count, k)
    return values / jnp.trace(cov)


def explained_variance_ratio(features: ArrayLike, k: int) -> Array:
    """Fraction of the variance of centered H on each of its top-k principal components, (k,)."""
    h = _features_arg(features)
    k = count_arg("k", k, 1, h.shape[1], f"features shape {tuple(h.shape)}")
    return _evr_impl(h, k)


@jax.jit
def _target_stats_impl(y: Array) -> dict[str, Array]:
    mean = jnp.mean(y, axis=0)
    centered = y - mean[None, :]
    sigma = dot(centered.T, centered) / y.shape[0]
    eigenvalues = jnp.linalg.eigvalsh(symmetrize(sigma))[::-1]
    std = jnp.sqrt(jnp.diag(sigma))
    return {
        "mean": mean,
        "sigma": sigma,
        "eigenvalues": eigenvalues,
        "lambda_min": eigenvalues[-1],
        "lambda_max": eigenvalues[0],
        "correlation": sigma / jnp.outer(std, std),
    }


def target_stats(targets: ArrayLike) -> dict[str, Array]:
    """Target statistics of Y (M, n) or (M,).

    Returns dict: mean (n,), sigma (n, n) (population covariance, divided by M), eigenvalues (n,)
    descending, lambda_min, lambda_max, correlation (n, n) (nan where a target is constant).
    """
    return _target_stats_impl(_as_2d("targets", targets))


@jax.jit
def _array_regression_impl(y: Array, p: Array) -> dict[str, Array]:
    """`_regression_from_sums` of rows y, p (M, n), SST from centered rows (two passes)."""
    sst = jnp.sum((y - jnp.mean(y, axis=0, keepdims=True)) ** 2, axis=0)
    return _regression_from_sums(jnp.asarray(y.shape[0], y.dtype), jnp.sum((p - y) ** 2, axis=0), sst)


def mse_per_dim(targets: ArrayLike, predictions: ArrayLike) -> Array:
    """(1/M) sum_i (yhat_ij - y_ij)^2 per target dimension, (n,). Inputs (M, n) or (M,)."""
    return _array_regression_impl(*_check_targets_predictions(targets, predictions))["mse_per_dim"]


def mse(targets: ArrayLike, predictions: ArrayLike) -> Array:
    """(1/M) sum_i ||yhat_i - y_i||^2 (summed over target dims), scalar."""
    return _array_regression_impl(*_check_targets_predictions(targets, predictions))["mse"]


def r2_per_dim(targets: ArrayLike, predictions: ArrayLike) -> Array:
    """1 - SSE_j / SST_j per target dimension, (n,)."""
    return _array_regression_impl(*_check_targets_predictions(targets, predictions))["r2_per_dim"]


def r2(targets: ArrayLike, predictions: ArrayLike) -> Array:
    """Mean over target dimensions of `r2_per_dim`, scalar."""
    return _array_regression_impl(*_check_targets_predictions(targets, predictions))["r2"]


# ----------------------------------------------------------------------------- sufficient stats
class FeatureStats(NamedTuple):
    """Sums over samples (a pytree; `merge` adds two). d = feature dim, n = target dim.

    count: number of samples (masked rows excluded), scalar in the feature dtype.
    sum_h (d,), sum_hh (d, d): first and second moments of raw h.
    sum_hn_hn (d, d): sum of ht ht^T, ht = h/||h|| (zero rows add nothing).
    sum_y (n,), sum_yy (n, n), sum_hy (d, n): target moments and feature-target cross moment.
    sum_res (n,), sum_res_sq (n,): sums of the residual (prediction - target) and its square.
    """

    count: Array
    sum_h: Array
    sum_hh: Array
    sum_hn_hn: Array
    sum_y: Array
    sum_yy: Array
    sum_hy: Array
    sum_res: Array
    sum_res_sq: Array


class CenteredStats(NamedTuple):
    """Second pass for the "centered" variant: count and sum of hc hc^T, hc = (h - mean)/||h - mean||."""

    count: Array
    sum_hcn_hcn: Array


class _Moments(NamedTuple):
    """The sums every metric needs besides the normalized moments (fields as in FeatureStats)."""

    count: Array
    sum_h: Array
    sum_hh: Array
    sum_y: Array
    sum_yy: Array
    sum_res: Array
    sum_res_sq: Array


def merge(a, b):
    """Adds two FeatureStats (or CenteredStats): statistics of the union of their samples."""
    return jax.tree.map(jnp.add, a, b)


def empty_feature_stats(d: int, n: int, dtype: Any = jnp.float32) -> FeatureStats:
    """All-zero FeatureStats, the start of an accumulation (e.g. a scan carry)."""
    z = functools.partial(jnp.zeros, dtype=dtype)
    return FeatureStats(z(()), z((d,)), z((d, d)), z((d, d)), z((n,)), z((n, n)), z((d, n)),
                        z((n,)), z((n,)))


def _mask_arg(mask: ArrayLike | None, m: int) -> Array | None:
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != (m,):
        raise DataError(f"mask shape {tuple(mask.shape)} must be (M,) = ({m},) to match the rows")
    return mask.astype(bool)


def _target_moments(y: Array, p: Array, mask: Array | None) -> _Moments:
    """The target and residual sums of the rows `mask` keeps (sum_h, sum_hh left None)."""
    y, p = masked(y, mask), masked(p, mask)
    count = kept_count(y, mask)
    res = p - y
    return _Moments(count=count, sum_h=None, sum_hh=None, sum_y=jnp.sum(y, axis=0), sum_yy=dot(y.T, y),
                    sum_res=jnp.sum(res, axis=0), sum_res_sq=jnp.sum(res**2, axis=0))


def _first_moments(h: Array, y: Array, p: Array, mask: Array | None) -> tuple[_Moments, Array]:
    """The `_Moments` of the rows `mask` keeps (sum_hh left None), and h with the dropped rows zeroed."""
    h = masked(h, mask)
    return _target_moments(y, p, mask)._replace(sum_h=jnp.sum(h, axis=0)), h


@jax.jit
def _feature_stats_impl(h: Array, y: Array, p: Array, mask: Array | None) -> FeatureStats:
    m, h = _first_moments(h, y, p, mask)
    hn = normalize_rows(h)
    return FeatureStats(count=m.count, sum_h=m.sum_h, sum_hh=dot(h.T, h), sum_hn_hn=dot(hn.T, hn),
                        sum_y=m.sum_y, sum_yy=m.sum_yy, sum_hy=dot(h.T, masked(y, mask)),
                        sum_res=m.sum_res, sum_res_sq=m.sum_res_sq)


def check_rows(features: ArrayLike, targets: ArrayLike, predictions: ArrayLike,
               mask: ArrayLike | None = None) -> tuple[Array, Array, Array, Array | None]:
    """Validated (h (M, d), y (M, n), p (M, n), mask (M,) or None) of one set of rows, y and p in h's
    dtype; targets/predictions (M,) become (M, 1). DataError naming the argument; non-finite values
    in kept rows are refused when the inputs are concrete (not traced)."""
    h = _features_arg(features, check_finite=False)
    y, p = _check_targets_predictions(targets, predictions, check_finite=False)
    if y.shape[0] != h.shape[0]:
        raise DataError(f"features shape {tuple(h.shape)} and targets shape {tuple(y.shape)} "
                        "have different numbers of rows")
    mask = _mask_arg(mask, h.shape[0])
    for name, x in (("features", h), ("targets", y), ("predictions", p)):
        finite_arg(name, x, mask)
    return h, y.astype(h.dtype), p.astype(h.dtype), mask


def feature_stats(features: ArrayLike, targets: ArrayLike, predictions: ArrayLike,
                  mask: ArrayLike | None = None) -> FeatureStats:
    """Sufficient statistics of one batch.

    Args:
      features: H (M, d); targets: Y (M, n) or (M,); predictions: (M, n) or (M,).
      mask: optional (M,) bool/0-1: rows with False are ignored (padding), whatever they hold.
    Jittable; with the batch sharded over devices XLA inserts the cross-device sums.
    Non-finite values in kept rows raise DataError when the inputs are concrete (not traced).
    """
    return _feature_stats_impl(*check_rows(features, targets, predictions, mask))


@jax.jit
def _centered_stats_impl(h: Array, mean: Array, mask: Array | None) -> CenteredStats:
    hcn = masked(normalize_rows(h - mean[None, :]), mask)
    count = kept_count(h, mask)
    return CenteredStats(count=count, sum_hcn_hcn=dot(hcn.T, hcn))


def centered_feature_stats(features: ArrayLike, mean: ArrayLike,
                           mask: ArrayLike | None = None) -> CenteredStats:
    """Second-pass statistics for the "centered" variant.

    The centered per-sample normalization needs hbar before normalizing, so it cannot be a one-pass
    sum: take `mean = feature_mean(stats)` from a first pass, then merge these over batches and
    pass the result as `metrics_from_stats(..., centered=...)`.
    """
    h = _features_arg(features, check_finite=False)
    mu = array_arg("mean", mean, 1)
    if mu.shape != (h.shape[1],):
        raise DataError(f"mean shape {tuple(mu.shape)} must be (d,) = ({h.shape[1]},)")
    mask = _mask_arg(mask, h.shape[0])
    finite_arg("features", h, mask)
    return _centered_stats_impl(h, mu.astype(h.dtype), mask)


def feature_mean(stats: FeatureStats) -> Array:
    """hbar (d,) from the statistics."""
    return stats.sum_h / stats.count


def _moments_of(stats: FeatureStats) -> _Moments:
    return _Moments(*(getattr(stats, f) for f in _Moments._fields))


# ----------------------------------------------------------------------------- statistics to metrics
class FeatureMoments(NamedTuple):
    """The four second moments of H (M, d) the NRC metrics read, each a `linalg.Rows` (rows in
    memory: residuals summed directly) or a `linalg.Gram` (merged sums: residuals as trace
    differences). Built by `feature_moments_from_stats` or `feature_moments_from_rows`."""

    raw: Gram | Rows           # h: h_norm_sq, the unnormalized variants
    centered_raw: Gram | Rows  # h - hbar: the PCA covariance, EVR, the variance variant
    normalized: Gram | Rows    # h/||h||: the paper's NRC1/NRC2
    centered: Gram | Rows | None  # (h - hbar)/||h - hbar||: the centered variant (None: not asked)


def feature_moments_from_stats(stats: FeatureStats, centered: CenteredStats | None = None) -> FeatureMoments:
    """FeatureMoments held as sums, from merged FeatureStats (and the centered second pass)."""
    return FeatureMoments(
        raw=Gram(stats.sum_hh),
        centered_raw=Gram(symmetrize(stats.sum_hh - jnp.outer(stats.sum_h, stats.sum_h) / stats.count)),
        normalized=Gram(stats.sum_hn_hn),
        centered=None if centered is None else Gram(centered.sum_hcn_hcn))


def feature_moments_from_rows(h: Array, mean: Array, mask: Array | None = None, *,
                              centered: bool = True) -> FeatureMoments:
    """FeatureMoments held as rows: h (M, d) with the rows `mask` (M,) drops already zero, mean (d,)
    the mean of the kept rows. The centered rows are formed before any product (two passes)."""
    centered_raw = masked(h - mean[None, :], mask)
    return FeatureMoments(raw=Rows(h), centered_raw=Rows(centered_raw),
                          normalized=Rows(normalize_rows(h)),  # dropped rows are zero and stay zero
                          centered=Rows(normalize_rows(centered_raw)) if centered else None)


def principal_subspace(f: FeatureMoments, count: Array, r: int, pca_init: Array | None = None,
                       pca_iters: int = 0) -> tuple[Array, Array, Array]:
    """(cov (d, d), values (r,), vectors (d, r)): the centered covariance of H and its top-r
    eigenpairs, descending (eigh, or `pca_iters` subspace iterations from pca_init (d, r))."""
    cov = symmetrize(f.centered_raw.gram()) / count
    if pca_init is None:
        values, vectors = top_eigh(cov, r)
    else:
        values, vectors = _subspace_iteration(cov, pca_init, pca_iters)
    return cov, values, vectors


def nrc_variants(f: FeatureMoments, count: Array, basis: Array, keep: Array | None = None) -> dict[str, Array]:
    """The residual of H outside the columns of basis (d, r) that keep (r,) marks, in every
    variant of VARIANTS (module docstring), keyed by variant; "centered" only if f has it.
    With basis = the top-n principal directions these are NRC1, with W's row space NRC2."""
    out = {"paper": residual_share(f.normalized, basis, keep),
           "variance": residual_share(f.centered_raw, basis, keep),
           "unnormalized": f.raw.residual(basis, keep) / count}
    out["unnormalized_md"] = out["unnormalized"] / basis.shape[0]
    if f.centered is not None:
        out["centered"] = residual_share(f.centered, basis, keep)
    return out


def _metric_options(d: int, n: int, weights: ArrayLike, dtype: Any, sigma: ArrayLike | None,
                    gamma: ArrayLike | None, evr_k: int, pca_init: ArrayLike | None, pca_iters: int,
                    gamma_num: int) -> tuple:
    """Validated (w, sigma, gamma, pca_init, k, pca_iters, gamma_num) of the metrics_from_* calls."""
    w = _check_weights(weights, d)
    if w.shape[0] != n:
        raise DataError(f"weights shape {tuple(w.shape)} does not match the {n} targets")
    k = min(count_arg("evr_k", evr_k, 1, 10**6, "number of EVR components"), d)
    width = max(n, k)
    if sigma is not None:
        sigma = _check_sigma(sigma, n).astype(dtype)
    if gamma is not None:
        gamma = jnp.asarray(nonnegative_scalar_arg("gamma", gamma), dtype)
    if pca_init is not None:
        pca_init = array_arg("pca_init", pca_init, 2)
        if pca_init.shape != (d, width):
            raise DataError(f"pca_init shape {tuple(pca_init.shape)} must be (d, max(n, evr_k)) = "
                            f"({d}, {width})")
        pca_init = pca_init.astype(dtype)
    gamma_num = count_arg("gamma_num", gamma_num, 1, 10**7, "grid size")
    pca_iters = count_arg("pca_iters", pca_iters, 0, 10**6, "QR iterations")
    return w.astype(dtype), sigma, gamma, pca_init, k, pca_iters, gamma_num


def metrics_from_stats(stats: FeatureStats, weights: ArrayLike, *, sigma: ArrayLike | None = None,
                       gamma: ArrayLike | None = None, evr_k: int = 5,
                       centered: CenteredStats | None = None, pca_init: ArrayLike | None = None,
                       pca_iters: int = 10, gamma_num: int = 1000) -> dict[str, Array]:
    """Every metric of the spec, exactly, from merged sufficient statistics. Jittable.

    Args:
      stats: FeatureStats of the whole set (d features, n targets).
      weights: W (n, d).
      centered: CenteredStats of the same set; adds nrc1_centered and nrc2_centered.
      sigma: target covariance (n, n) for NRC3; default: the one of the targets.
      gamma: NRC3's gamma (e.g. lambda_H * lambda_W, or the best gamma at the final weights);
        default: the best on the grid linspace(0, lambda_min, gamma_num, endpoint=False).
      evr_k: number of explained-variance ratios (clipped to d).
      pca_init: (d, max(n, min(evr_k, d))) basis, e.g. `pca_basis_init(...)` or the previous call's
        `pca_basis`: the principal directions then come from `pca_iters` warm-started subspace
        iterations (`top_eigenvectors`) instead of a full eigh, and the dict gets `pca_basis`.

    Returns dict: mse, mse_per_dim (n,), r2, r2_per_dim (n,), nrc1, nrc2, nrc1_variance,
      nrc1_unnormalized, nrc2_variance, nrc2_unnormalized, evr (k,), wwt (n, n), w_norm,
      h_norm_sq (mean ||h||^2), nrc3, nrc3_gamma [, nrc1_centered, nrc2_centered] [, pca_basis].
    """
    if not isinstance(stats, FeatureStats):
        raise DataError(f"stats must be a FeatureStats (from feature_stats/merge), got {type(stats).__name__}")
    if centered is not None and not isinstance(centered, CenteredStats):
        raise DataError(f"centered must be a CenteredStats (from centered_feature_stats), "
                        f"got {type(centered).__name__}")
    d, n = stats.sum_hy.shape
    options = _metric_options(d, n, weights, stats.sum_hh.dtype, sigma, gamma, evr_k, pca_init, pca_iters,
                              gamma_num)
    return _metrics_from_stats_impl(stats, centered, *options, n)


@functools.partial(jax.jit, static_argnums=(6, 7, 8, 9))
def _metrics_from_stats_impl(stats, centered, w, sigma, gamma, pca_init, k, pca_iters, gamma_num, n):
    features = feature_moments_from_stats(stats, centered)
    return _metrics_impl(_moments_of(stats), features, w, sigma, gamma, pca_init, n, k, pca_iters, gamma_num)


def metrics_from_features(features: ArrayLike, targets: ArrayLike, predictions: ArrayLike,
                          weights: ArrayLike, *, mask: ArrayLike | None = None, centered: bool = True,
                          sigma: ArrayLike | None = None, gamma: ArrayLike | None = None, evr_k: int = 5,
                          pca_init: ArrayLike | None = None, pca_iters: int = 10,
                          gamma_num: int = 1000) -> dict[str, Array]:
    """`metrics_from_stats` of a whole set held in memory, with one d x d product instead of three.

    Same values as `metrics_from_stats(feature_stats(...), centered=centered_feature_stats(...))`
    (to float rounding): the row-normalized and centered moments enter the metrics only through
    their trace and their projection on the n NRC directions, so they are taken from the rows
    (M*d*n) rather than as Gram matrices (M*d^2 each). The covariance of raw H, whose principal
    directions NRC1 needs, is the one d x d product left. Use this where every row is on the
    devices (the trainer's evaluation); use FeatureStats to stream batches or merge over hosts.
    Jittable; with rows sharded over devices XLA inserts the cross-device sums.

    Args:
      features: H (M, d); targets: Y (M, n) or (M,); predictions (M, n) or (M,); weights: W (n, d).
      mask: optional (M,) bool/0-1: rows with False are ignored (padding), whatever they hold.
      centered: also compute nrc1_centered and nrc2_centered.
      sigma, gamma, evr_k, pca_init, pca_iters, gamma_num: as in `metrics_from_stats`.

    Returns the dict of `metrics_from_stats`.
    """
    h, y, p, mask = check_rows(features, targets, predictions, mask)
    options = _metric_options(h.shape[1], y.shape[1], weights, h.dtype, sigma, gamma, evr_k, pca_init,
                              pca_iters, gamma_num)
    return _metrics_from_features_impl(h, y, p, mask, *options, y.shape[1], bool(centered))


@functools.partial(jax.jit, static_argnums=(8, 9, 10, 11, 12))
def _metrics_from_features_impl(h, y, p, mask, w, sigma, gamma, pca_init, k, pca_iters, gamma_num, n,
                                with_centered):
    moments, h = _first_moments(h, y, p, mask)
    features = feature_moments_from_rows(h, moments.sum_h / moments.count, mask, centered=with_centered)
    return _metrics_impl(moments, features, w, sigma, gamma, pca_init, n, k, pca_iters, gamma_num)


def _regression_from_sums(count: Array, sum_res_sq: Array, sst: Array) -> dict[str, Array]:
    """The one definition of MSE and R2: mse_per_dim = SSE_j / M, mse = their sum, r2_per_dim =
    1 - SSE_j / SST_j, r2 = their mean; count M, sum_res_sq = SSE (n,), sst = SST (n,)."""
    out = {"mse_per_dim": sum_res_sq / count}
    out["mse"] = jnp.sum(out["mse_per_dim"])
    out["r2_per_dim"] = 1.0 - sum_res_sq / sst
    out["r2"] = jnp.mean(out["r2_per_dim"])
    return out


def _regression_metrics(m: _Moments) -> dict[str, Array]:
    """MSE and R2 from sums (SST = sum y^2 - (sum y)^2 / M)."""
    return _regression_from_sums(m.count, m.sum_res_sq, jnp.diag(m.sum_yy) - m.sum_y**2 / m.count)


def regression_metrics(targets: ArrayLike, predictions: ArrayLike, mask: ArrayLike | None = None
                       ) -> dict[str, Array]:
    """mse, mse_per_dim (n,), r2, r2_per_dim (n,) of the rows `mask` keeps (all by default). Jittable.

    targets, predictions: (M, n) or (M,); mask: optional (M,) bool/0-1.
    """
    y, p = _check_targets_predictions(targets, predictions, check_finite=False)
    mask = _mask_arg(mask, y.shape[0])
    for name, x in (("targets", y), ("predictions", p)):
        finite_arg(name, x, mask)
    return _regression_metrics_impl(y, p.astype(y.dtype), mask)


@jax.jit
def _regression_metrics_impl(y: Array, p: Array, mask: Array | None) -> dict[str, Array]:
    return _regression_metrics(_target_moments(y, p, mask))


def _metrics_impl(m: _Moments, f: FeatureMoments, w, sigma, gamma, pca_init, n, k, pca_iters, gamma_num):
    count = m.count
    cov, pca_values, pca_vectors = principal_subspace(f, count, max(n, k), pca_init, pca_iters)
    pca = pca_vectors[:, :n]
    row_space, keep = row_space_basis(w)

    out = _regression_metrics(m)
    for name, basis, kept in (("nrc1", pca, None), ("nrc2", row_space, keep)):
        for variant, value in nrc_variants(f, count, basis, kept).items():
            out[name if variant == "paper" else f"{name}_{variant}"] = value
    out["nrc2_w_pca"] = Rows(w).residual(pca) ** 0.5
    out["evr"] = pca_values[:k] / jnp.trace(cov)
    out["wwt"] = dot(w, w.T)
    out["w_norm"] = jnp.linalg.norm(w)
    out["h_norm_sq"] = f.raw.total() / count
    if sigma is None:
        sigma = covariance_from_sums(m.sum_yy, m.sum_y, count)
    if gamma is None:
        out["nrc3_gamma"], out["nrc3"] = _best_gamma_impl(w, sigma, gamma_num, False)
    else:
        out["nrc3_gamma"], out["nrc3"] = gamma, _nrc3_impl(w, sigma, gamma)
    if pca_init is not None:
        out["pca_basis"] = pca_vectors
    return out
