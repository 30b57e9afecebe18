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

Where the code lives (every name below stays importable from here):
- this module: the public entry points, which check their arguments (`nrc_jax.core.checks`) and call
  compiled code: the array functions (`nrc1`, `nrc2`, `nrc3`, `nrc3_curve`, `best_gamma`,
  `explained_variance_ratio`, `target_stats`, `mse`, `mse_per_dim`, `r2`, `r2_per_dim`,
  `top_eigenvectors`), `metrics_from_stats`, `metrics_from_features` and `regression_metrics`.
- `nrc_jax.core.stats`: sufficient statistics. `FeatureStats` (built by `feature_stats`, added by
  `merge`) holds sums over samples, so metrics of a data set streamed in batches, sharded over
  devices or split over hosts are exact; the "centered" variant needs hbar before normalizing, so it
  takes a second pass, `centered_feature_stats(features, feature_mean(stats))`.
- `nrc_jax.core.metric_core`: statistics to metrics. One definition of each metric: every entry point
  (the array functions, `metrics_from_stats`, `metrics_from_features` and `nrc_jax.core.deep`'s
  per-layer metrics) holds the moments of H as a `FeatureMoments` (rows or sums) and reads the
  principal directions from `principal_subspace`, NRC1/NRC2 in every variant from `nrc_variants`,
  NRC3 from `nrc3_values`, EVR from `explained_variance`, MSE and R2 from `regression_from_sums`.
`metrics_from_stats` turns merged FeatureStats into every metric above; where every row is in memory
(the trainer's evaluation), `metrics_from_features` gives the same dict with one d x d product
instead of three; `regression_metrics` gives MSE and R2 alone. FeatureStats sums are accumulated in
the input dtype: in float32 their centered covariance `sum_hh/M - hbar hbar^T` loses digits when
|hbar| >> the feature spread; the in-memory paths center the rows first.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from nrc_jax.core.checks import (ArrayLike, array_arg, as_2d, check_rows, count_arg, features_arg, finite_arg, mask_arg,
                                 nonnegative_scalar_arg, sigma_arg, targets_predictions_args, weights_arg)
from nrc_jax.core.linalg import dot, row_space_basis, subspace_iteration, symmetrize
from nrc_jax.core.metric_core import (VARIANTS, all_metrics, best_gamma_on_grid, explained_variance, nrc3_at, nrc3_grid,
                                      nrc_variants, principal_subspace, regression_from_moments, regression_from_sums)
from nrc_jax.core.stats import (CenteredStats, FeatureMoments, FeatureStats, centered_feature_stats,
                                empty_feature_stats, feature_mean, feature_moments_from_rows,
                                feature_moments_from_stats, feature_stats, first_moments, merge, moments_of,
                                target_moments)
from nrc_jax.errors import ConfigError, DataError

Array = jax.Array


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


# ----------------------------------------------------------------------------- eigenvectors
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
    return subspace_iteration(cov, init.astype(cov.dtype), iters)


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


def nrc1(features: ArrayLike, n: int, *, variant: str = "paper") -> Array:
    """NRC1: residual of the features outside their top-n principal subspace.

    Args:
      features: H, (M, d), rows are samples.
      n: number of principal directions (the target dim), 1 <= n <= d.
      variant: "paper" (default), "centered", "variance" or "unnormalized" (module docstring).
    Returns: scalar.
    """
    h = features_arg(features)
    n = count_arg("n", n, 1, h.shape[1], f"features shape {tuple(h.shape)}")
    return _nrc1_impl(h, n, _check_variant(variant))


def nrc2(features: ArrayLike, weights: ArrayLike, *, variant: str = "paper") -> Array:
    """NRC2: residual of the features outside the row space of W.

    Args:
      features: H, (M, d). weights: W, (n, d), n <= d; rank-deficient W uses its numerical rank.
      variant: "paper" (default), "centered", "variance" or "unnormalized" (module docstring).
    Returns: scalar.
    """
    h = features_arg(features)
    w = weights_arg(weights, h.shape[1])
    return _nrc2_impl(h, w.astype(h.dtype), _check_variant(variant))


def nrc3(weights: ArrayLike, sigma: ArrayLike, gamma: ArrayLike) -> Array:
    """NRC3(gamma) = || WW^T/||WW^T||_F - A/||A||_F ||_F^2, A = Sigma^{1/2} - sqrt(gamma) I_n.

    Args: weights W (n, d); sigma, the target covariance (n, n); gamma >= 0 (scalar, may be traced).
    Returns: scalar; 0.0 for n = 1 (trivial, see module docstring).
    """
    w = weights_arg(weights)
    s = sigma_arg(sigma, w.shape[0])
    return nrc3_at(w, s.astype(w.dtype), nonnegative_scalar_arg("gamma", gamma))


def nrc3_curve(weights: ArrayLike, sigma: ArrayLike, num: int = 1000) -> tuple[Array, Array]:
    """NRC3 on the grid gammas = linspace(0, lambda_min(Sigma), num, endpoint=False).

    Returns: (gammas (num,), values (num,)).
    """
    w = weights_arg(weights)
    s = sigma_arg(sigma, w.shape[0])
    num = count_arg("num", num, 1, 10**7, "grid size")
    return nrc3_grid(w, s.astype(w.dtype), num)


def best_gamma(weights: ArrayLike, sigma: ArrayLike, num: int = 1000, *,
               refine: bool = False) -> tuple[Array, Array]:
    """The gamma in linspace(0, lambda_min, num, endpoint=False) minimizing NRC3 at `weights`.

    With `refine=True` a second grid of `num` points between the best point's neighbours is
    searched too; the returned value is never worse than the plain grid's. Report gamma/lambda_min
    beside it (the spec).

    Returns: (gamma, nrc3_value), scalars. For n = 1: (0.0, 0.0).
    """
    w = weights_arg(weights)
    s = sigma_arg(sigma, w.shape[0])
    num = count_arg("num", num, 1, 10**7, "grid size")
    return best_gamma_on_grid(w, s.astype(w.dtype), num, bool(refine))


@functools.partial(jax.jit, static_argnums=1)
def _evr_impl(h: Array, k: int) -> Array:
    f, count = _all_rows(h, False)
    cov, values, _ = principal_subspace(f, count, k)
    return explained_variance(cov, values)


def explained_variance_ratio(features: ArrayLike, k: int) -> Array:
    """Fraction of the variance of centered H on each of its top-k principal components, (k,)."""
    h = features_arg(features)
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
    return _target_stats_impl(as_2d("targets", targets))


@jax.jit
def _array_regression_impl(y: Array, p: Array) -> dict[str, Array]:
    """`metric_core.regression_from_sums` of rows y, p (M, n), SST from centered rows (two passes)."""
    sst = jnp.sum((y - jnp.mean(y, axis=0, keepdims=True)) ** 2, axis=0)
    return regression_from_sums(jnp.asarray(y.shape[0], y.dtype), jnp.sum((p - y) ** 2, axis=0), sst)


def mse_per_dim(targets: ArrayLike, predictions: ArrayLike) -> Array:
    """(1/M) sum_i (yhat_ij - y_ij)^2 per target dimension, (n,). Inputs (M, n) or (M,)."""
    return _array_regression_impl(*targets_predictions_args(targets, predictions))["mse_per_dim"]


def mse(targets: ArrayLike, predictions: ArrayLike) -> Array:
    """(1/M) sum_i ||yhat_i - y_i||^2 (summed over target dims), scalar."""
    return _array_regression_impl(*targets_predictions_args(targets, predictions))["mse"]


def r2_per_dim(targets: ArrayLike, predictions: ArrayLike) -> Array:
    """1 - SSE_j / SST_j per target dimension, (n,)."""
    return _array_regression_impl(*targets_predictions_args(targets, predictions))["r2_per_dim"]


def r2(targets: ArrayLike, predictions: ArrayLike) -> Array:
    """Mean over target dimensions of `r2_per_dim`, scalar."""
    return _array_regression_impl(*targets_predictions_args(targets, predictions))["r2"]


# ----------------------------------------------------------------------------- statistics to metrics
def _metric_options(d: int, n: int, weights: ArrayLike, dtype: Any, sigma: ArrayLike | None,
                    gamma: ArrayLike | None, evr_k: int, pca_init: ArrayLike | None, pca_iters: int,
                    gamma_num: int) -> tuple:
    """Validated (w, sigma, gamma, pca_init, k, pca_iters, gamma_num) of the metrics_from_* calls."""
    w = weights_arg(weights, d)
    if w.shape[0] != n:
        raise DataError(f"weights shape {tuple(w.shape)} does not match the {n} targets")
    k = min(count_arg("evr_k", evr_k, 1, 10**6, "number of EVR components"), d)
    width = max(n, k)
    if sigma is not None:
        sigma = sigma_arg(sigma, n).astype(dtype)
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
    return all_metrics(moments_of(stats), features, w, sigma, gamma, pca_init, n, k, pca_iters, gamma_num)


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
    moments, h = first_moments(h, y, p, mask)
    features = feature_moments_from_rows(h, moments.sum_h / moments.count, mask, centered=with_centered)
    return all_metrics(moments, features, w, sigma, gamma, pca_init, n, k, pca_iters, gamma_num)


def regression_metrics(targets: ArrayLike, predictions: ArrayLike, mask: ArrayLike | None = None
                       ) -> dict[str, Array]:
    """mse, mse_per_dim (n,), r2, r2_per_dim (n,) of the rows `mask` keeps (all by default). Jittable.

    targets, predictions: (M, n) or (M,); mask: optional (M,) bool/0-1.
    """
    y, p = targets_predictions_args(targets, predictions, check_finite=False)
    mask = mask_arg(mask, y.shape[0])
    for name, x in (("targets", y), ("predictions", p)):
        finite_arg(name, x, mask)
    return _regression_metrics_impl(y, p.astype(y.dtype), mask)


@jax.jit
def _regression_metrics_impl(y: Array, p: Array, mask: Array | None) -> dict[str, Array]:
    return regression_from_moments(target_moments(y, p, mask))


__all__ = [
    # array metrics
    "VARIANTS", "nrc1", "nrc2", "nrc3", "nrc3_curve", "best_gamma", "explained_variance_ratio", "target_stats",
    "mse", "mse_per_dim", "r2", "r2_per_dim", "top_eigenvectors", "pca_basis_init",
    # statistics to metrics
    "metrics_from_stats", "metrics_from_features", "regression_metrics", "principal_subspace", "nrc_variants",
    # re-exported from nrc_jax.core.stats and nrc_jax.core.checks
    "FeatureStats", "CenteredStats", "FeatureMoments", "feature_stats", "centered_feature_stats", "merge",
    "empty_feature_stats", "feature_mean", "feature_moments_from_stats", "feature_moments_from_rows", "check_rows",
]
