"""Per-layer ("deep") Neural Regression Collapse metrics, pure jax.numpy.

Rows are samples. For hidden layer i the features are `H_i` (M, d_i), the targets `Y` (M, n).
The metrics are thin wrappers over the statistics-to-metrics code of `nrc_jax.core.metric_core`: a
layer's features are held as `stats.FeatureMoments`, either as rows in memory (`layer_metrics`,
`per_layer_metrics`: residuals summed from the rows, covariances from centered rows) or as sums
(`layer_metrics_from_stats`, from a `stats.FeatureStats` merged over batches, devices and hosts),
and NRC1 comes from `metric_core.principal_subspace` and `metric_core.nrc_variants`, so the last
layer's values equal `metrics`' NRC1 on the same features. No M x M matrix is ever formed. With
`S_h` the centered feature covariance (d_i, d_i), `S_hy` the centered feature-target
cross-covariance (d_i, n), `S_yy` the centered target covariance (n, n), `S~` the second moment of
the per-sample normalized features, and `V_n` (d_i, n) the top-n eigenvectors of `S_h`:

  nrc1_variance       1 - tr(V_n^T S_h V_n) / tr(S_h)                  (Deep NRC's NRC1)
  nrc1                1 - tr(V_n^T S~ V_n) / tr(S~)                     (the paper's NRC1)
  stable_rank         tr(S_h) / ||S_h||_2 = sum_k s_k^2 / max_k s_k^2, s the singular values of
                      the centered feature matrix
  weight_stable_rank  ||W_i||_F^2 / ||W_i||_2^2 of the weight matrix that produces the layer
                      (`nrc_jax.engine.models.layer_weights`)
  alignment           mean singular value of V_n^T R_n (n x n): the mean cosine of the principal
                      angles between the top-n feature PCs and R_n (d_i, n), the top-n right
                      singular vectors of the NEXT layer's weights (the directions of layer i that
                      the next layer reads; the head W for the last hidden layer, so there it
                      compares the PCs with W's row space). 1 = same subspace, ~sqrt(n/d_i) random.
  cka                 linear CKA of features and targets, ||S_hy||_F^2 / (||S_h||_F ||S_yy||_F)
                      (the 1/M factors cancel), invariant to isotropic scaling and orthogonal
                      transforms of either side
  probe_mse           training MSE (summed over target dims, like `metrics.mse`) of the least-squares
                      probe Y ~ H_i B + c: B = (S_h + r I)^{-1} S_hy with the small ridge
                      r = probe_ridge * tr(E[h h^T]), c the mean residual (so the bias is exact).
                      The ridge keeps directions below the rounding level out of the fit: from
                      sums S_h = sum_hh/M - hbar hbar^T has an error of about eps * tr(E[h h^T]);
                      default probe_ridge 1e-5 in float32, 1e-12 in float64, on both paths (pass
                      a smaller one in float64 to get the plain least-squares error)

Layers are numbered from 0 in depth order, like `inspect --export`'s `layer_features_<i>`.
The weights each layer uses (`nrc_jax.engine.models.layer_weights`):
  mlp         W_i = dense_i kernel^T (d_i, d_{i-1}); reader = dense_{i+1} kernel^T, head W for the last
  small_cnn   conv_i: W_i = its kernel reshaped to (c_out, 3*3*c_in); reader = conv_{i+1} kernel summed
              over its 3x3 window (c_next, c_i), i.e. the map a spatially constant input sees (an
              approximation), feature_dense for the last conv (exact: it reads the pooled output)
  resnet      stage s: W = the stage's last conv2 reshaped; reader = the next stage's first conv1
              summed over its window (approximation), feature_dense or the head for the last stage
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nrc_jax.core import metric_core
from nrc_jax.core.checks import check_rows
from nrc_jax.core.linalg import (covariance_from_sums, cross_covariance_from_sums, dot, kept_count, masked, safe_divide,
                                 symmetrize)
from nrc_jax.core.stats import FeatureMoments, FeatureStats, feature_moments_from_rows, feature_moments_from_stats
from nrc_jax.errors import ConfigError, DataError

Array = jax.Array
LAYER_KEYS = ("nrc1_variance", "nrc1", "stable_rank", "weight_stable_rank", "alignment", "cka", "probe_mse")
DEFAULT_PROBE_RIDGE = {"float32": 1e-5, "float64": 1e-12}  # by the dtype of the features


class LayerWeights(NamedTuple):
    """The weights around one hidden layer of width d: `own` (d, fan_in) produces it, `reader`
    (d_next, d) reads it (rows are output units, like the head W (n, d))."""

    own: Array
    reader: Array


# ----------------------------------------------------------------------------- building blocks
def stable_rank(matrix: Array) -> Array:
    """||A||_F^2 / ||A||_2^2 of a 2-D matrix (nan for A = 0). Jittable."""
    singular = jnp.linalg.svd(matrix, compute_uv=False)
    return safe_divide(jnp.sum(singular**2), jnp.max(singular) ** 2)


def top_right_singular_vectors(matrix: Array, k: int) -> Array:
    """(cols, min(k, rows, cols)) orthonormal columns: the top right singular vectors of A (rows, cols)."""
    _, _, vt = jnp.linalg.svd(matrix, full_matrices=False)
    return vt[:k].T


def subspace_alignment(basis_a: Array, basis_b: Array) -> Array:
    """Mean singular value of basis_a^T basis_b for orthonormal columns (d, p) and (d, q):
    the mean cosine of the min(p, q) principal angles between the two subspaces, in [0, 1]."""
    return jnp.mean(jnp.linalg.svd(dot(basis_a.T, basis_b), compute_uv=False))


def linear_cka_from_covariances(s_hh: Array, s_hy: Array, s_yy: Array) -> Array:
    """Linear CKA ||S_hy||_F^2 / (||S_hh||_F ||S_yy||_F) from centered (d,d), (d,n), (n,n) covariances."""
    return safe_divide(jnp.sum(s_hy**2), jnp.linalg.norm(s_hh) * jnp.linalg.norm(s_yy))


def probe_mse_from_covariances(s_hh: Array, s_hy: Array, s_yy: Array, ridge: float) -> Array:
    """Training MSE of the ridge least-squares probe Y ~ H B + c from centered covariances.

    `ridge` is absolute here (r). With S_hh = U diag(e) U^T and G = U^T S_hy, the probe
    B = U diag(1/(e + r)) G leaves MSE = tr(S_yy) - 2 tr(B^T S_hy) + tr(B^T S_hh B)
    = tr(S_yy) - sum_k ||G_k||^2 (e_k + 2r) / (e_k + r)^2 (clipped at 0 against rounding).
    """
    values, vectors = jnp.linalg.eigh(symmetrize(s_hh))
    values = jnp.clip(values, 0.0, None)
    r = ridge
    g_sq = jnp.sum(dot(vectors.T, s_hy) ** 2, axis=1)
    den = (values + r) ** 2
    explained = jnp.sum(jnp.where(den > 0, g_sq * (values + 2 * r) / jnp.where(den > 0, den, 1.0), 0.0))
    return jnp.maximum(jnp.trace(s_yy) - explained, 0.0)


# ----------------------------------------------------------------------------- one layer
class LayerMoments(NamedTuple):
    """What the per-layer metrics read of one layer over the whole set: the count M, the moments of
    the features H (M, d) as `stats.FeatureMoments` (rows or sums), and the centered
    feature-target cross-covariance S_hy (d, n) and target covariance S_yy (n, n)."""

    count: Array
    features: FeatureMoments
    s_hy: Array
    s_yy: Array


def layer_moments_from_stats(stats: FeatureStats) -> LayerMoments:
    """LayerMoments held as sums (merged over batches, devices or hosts): residuals are trace
    differences, covariances `sum x x^T / M - xbar xbar^T` (docs/nrc.md, "Precision")."""
    count = stats.count
    return LayerMoments(count=count, features=feature_moments_from_stats(stats),
                        s_hy=cross_covariance_from_sums(stats.sum_hy, stats.sum_h, stats.sum_y, count),
                        s_yy=covariance_from_sums(stats.sum_yy, stats.sum_y, count))


def layer_moments_from_rows(h: Array, y: Array, mask: Array | None = None) -> LayerMoments:
    """LayerMoments held as rows: h (M, d), y (M, n), mask (M,) or None (rows with False ignored,
    whatever they hold). Residuals are summed from the residual vectors and every covariance is
    formed from centered rows, as in `metrics.metrics_from_features`."""
    h, y = masked(h, mask), masked(y, mask)
    count = kept_count(h, mask)
    features = feature_moments_from_rows(h, jnp.sum(h, axis=0) / count, mask, centered=False)
    y_centered = masked(y - (jnp.sum(y, axis=0) / count)[None, :], mask)
    return LayerMoments(count=count, features=features,
                        s_hy=dot(features.centered_raw.rows.T, y_centered) / count,
                        s_yy=symmetrize(dot(y_centered.T, y_centered)) / count)


def _check_layer(d: int, n: int, weights: LayerWeights | None) -> None:
    if not 1 <= n <= d:
        raise ConfigError(f"n={n} principal directions need 1 <= n <= d={d} (layer width)")
    if weights is not None and weights.reader.shape[1] != d:
        raise DataError(f"reader weights shape {tuple(weights.reader.shape)} do not read a layer of width {d}")


def _default_ridge(probe_ridge: float | None, dtype: Any) -> float:
    return DEFAULT_PROBE_RIDGE["float64" if dtype == jnp.float64 else "float32"] if probe_ridge is None \
        else probe_ridge


def layer_metrics_from_stats(stats: FeatureStats, weights: LayerWeights | None = None, *,
                             n: int | None = None, probe_ridge: float | None = None) -> dict[str, Array]:
    """Every per-layer metric (module docstring) of one hidden layer, from sums. Jittable.

    Args:
      stats: FeatureStats of the layer's features (d) and the targets (n) over the whole set.
      weights: the layer's LayerWeights; without it weight_stable_rank and alignment are nan.
      n: number of principal directions (default: the target dim), 1 <= n <= d.
      probe_ridge: relative ridge of the linear probe, r = probe_ridge * tr(E[h h^T]) (module
        docstring); None: DEFAULT_PROBE_RIDGE of the statistics' dtype.
    Returns: dict of scalars keyed by LAYER_KEYS.
    """
    d, n_targets = stats.sum_hy.shape
    n = n_targets if n is None else n
    _check_layer(d, n, weights)
    return _layer_metrics_from_stats_impl(stats, weights, n, _default_ridge(probe_ridge, stats.sum_hh.dtype))


def layer_metrics(features: Any, targets: Any, weights: LayerWeights | None = None, *, n: int | None = None,
                  probe_ridge: float | None = None, mask: Any | None = None) -> dict[str, Array]:
    """`layer_metrics_from_stats`' metrics of rows in memory (residuals summed from the rows, so
    small ones keep their precision): features (M, d), targets (M, n) or (M,), mask (M,) or None."""
    h, y, _, mask = check_rows(features, targets, targets, mask)
    n = y.shape[1] if n is None else n
    _check_layer(h.shape[1], n, weights)
    return _layer_metrics_from_rows_impl(h, y, mask, weights, n, _default_ridge(probe_ridge, h.dtype))


@functools.partial(jax.jit, static_argnums=2)
def _layer_metrics_from_stats_impl(stats, weights, n, probe_ridge):
    return _layer_metrics(layer_moments_from_stats(stats), weights, n, probe_ridge)


@functools.partial(jax.jit, static_argnums=4)
def _layer_metrics_from_rows_impl(h, y, mask, weights, n, probe_ridge):
    return _layer_metrics(layer_moments_from_rows(h, y, mask), weights, n, probe_ridge)


def _layer_metrics(m: LayerMoments, weights: LayerWeights | None, n: int, probe_ridge: float) -> dict[str, Array]:
    """The LAYER_KEYS scalars of one layer: NRC1 in both forms from `metric_core.nrc_variants` on
    the top-n principal directions of `metric_core.principal_subspace`, the rest from its covariance."""
    d = m.s_hy.shape[0]
    s_hh, values, pcs = metric_core.principal_subspace(m.features, m.count, d)
    values = jnp.clip(values, 0.0, None)
    pcs = pcs[:, :n]
    nrc1 = metric_core.nrc_variants(m.features, m.count, pcs)
    ridge = probe_ridge * m.features.raw.total() / m.count
    out = {
        "nrc1_variance": nrc1["variance"],
        "nrc1": nrc1["paper"],
        "stable_rank": safe_divide(jnp.sum(values), values[0]),
        "cka": linear_cka_from_covariances(s_hh, m.s_hy, m.s_yy),
        "probe_mse": probe_mse_from_covariances(s_hh, m.s_hy, m.s_yy, ridge),
    }
    nan = jnp.full((), jnp.nan, s_hh.dtype)
    if weights is None:
        out["weight_stable_rank"] = out["alignment"] = nan
    else:
        reader = weights.reader.astype(s_hh.dtype)
        out["weight_stable_rank"] = stable_rank(weights.own.astype(s_hh.dtype))
        out["alignment"] = subspace_alignment(pcs, top_right_singular_vectors(reader, n))
    return {k: out[k] for k in LAYER_KEYS}


# ----------------------------------------------------------------------------- a whole network
def per_layer_metrics(hidden: Sequence[Array], targets: Array, predictions: Array, weights: Sequence[LayerWeights],
                      mask: Array | None = None, *, probe_ridge: float | None = None) -> dict[str, Array]:
    """Per-layer metrics of a network on one set held in memory, for use inside compiled code.

    Args:
      hidden: list of L feature arrays (M, d_i), in depth order.
      targets, predictions: (M, n) (the predictions are checked like the targets; no per-layer
        metric reads them). weights: L LayerWeights (`nrc_jax.engine.models.layer_weights`).
      mask: optional (M,) row mask (padding rows 0).
    Returns: dict key -> (L,) array for every LAYER_KEYS entry, plus `width` (L,) int32.
    """
    if len(hidden) != len(weights):
        raise DataError(f"{len(hidden)} hidden layers but {len(weights)} LayerWeights")
    if hidden:
        check_rows(hidden[-1], targets, predictions, mask)
    per_layer = [layer_metrics(h, targets, w, probe_ridge=probe_ridge, mask=mask) for h, w in zip(hidden, weights)]
    out = {k: jnp.stack([m[k] for m in per_layer]) for k in LAYER_KEYS}
    out["width"] = jnp.asarray([h.shape[-1] for h in hidden], jnp.int32)
    return out


def layer_rows(layers: dict[str, Any]) -> list[dict]:
    """Host conversion of one member's `per_layer_metrics` ((L,) arrays) to the `layers` list of a
    metrics.jsonl row: [{"layer": i, "width": d_i, "nrc1_variance": ..., ...}, ...] in depth order."""
    arrays = {k: np.asarray(v) for k, v in layers.items()}
    rows = []
    for i in range(len(arrays["width"])):
        row = {"layer": i, "width": int(arrays["width"][i])}
        row.update({k: float(arrays[k][i]) for k in LAYER_KEYS})
        rows.append(row)
    return rows


__all__ = ["LAYER_KEYS", "LayerWeights", "LayerMoments", "stable_rank", "top_right_singular_vectors",
           "subspace_alignment", "linear_cka_from_covariances", "probe_mse_from_covariances",
           "layer_moments_from_stats", "layer_moments_from_rows", "layer_metrics_from_stats", "layer_metrics",
           "per_layer_metrics", "layer_rows"]
