"""Sufficient statistics of a set of samples, and the moments the metrics read from them.

Rows are samples: features `H` (M, d), targets `Y` (M, n), predictions `P` (M, n).

- `FeatureStats` (built by `feature_stats`, added by `merge`) holds sums over samples, so metrics of
  a data set streamed in batches, sharded over devices or split over hosts are exact
  (`metrics.metrics_from_stats`). The "centered" normalized variant needs hbar before normalizing,
  so it takes a second pass: `centered_feature_stats(features, feature_mean(stats))`.
- `Moments`: the sums every metric reads besides the normalized feature moments (the count, the
  first and second moments of h and y, the residual sums); MSE, R2 and Sigma come from these.
- `FeatureMoments`: the four second moments of H the NRC metrics read, held either as rows in
  memory (`feature_moments_from_rows`: residuals summed from the residual vectors, covariances from
  centered rows) or as merged sums (`feature_moments_from_stats`: residuals as trace differences).

FeatureStats sums are accumulated in the input dtype: in float32 their centered covariance
`sum_hh/M - hbar hbar^T` loses digits when |hbar| >> the feature spread; the in-memory paths center
the rows first (docs/nrc.md, "Precision").
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nrc_jax.core.checks import ArrayLike, array_arg, check_rows, features_arg, finite_arg, mask_arg
from nrc_jax.core.linalg import Gram, Rows, dot, kept_count, masked, normalize_rows, symmetrize
from nrc_jax.errors import DataError

Array = jax.Array


# ----------------------------------------------------------------------------- sums over samples
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


class Moments(NamedTuple):
    """The sums every metric needs besides the normalized moments (fields as in FeatureStats;
    sum_h/sum_hh are None where the metric at hand reads no features)."""

    count: Array
    sum_h: Array | None
    sum_hh: Array | None
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


def target_moments(y: Array, p: Array, mask: Array | None) -> Moments:
    """The target and residual sums of the rows of y, p (M, n) that mask (M,) keeps (sum_h, sum_hh None)."""
    y, p = masked(y, mask), masked(p, mask)
    count = kept_count(y, mask)
    res = p - y
    return Moments(count=count, sum_h=None, sum_hh=None, sum_y=jnp.sum(y, axis=0), sum_yy=dot(y.T, y),
                   sum_res=jnp.sum(res, axis=0), sum_res_sq=jnp.sum(res**2, axis=0))


def first_moments(h: Array, y: Array, p: Array, mask: Array | None) -> tuple[Moments, Array]:
    """The `Moments` of the rows mask (M,) keeps (sum_hh left None) of h (M, d), y and p (M, n), and
    h with the dropped rows zeroed."""
    h = masked(h, mask)
    return target_moments(y, p, mask)._replace(sum_h=jnp.sum(h, axis=0)), h


def moments_of(stats: FeatureStats) -> Moments:
    """The `Moments` fields of merged FeatureStats."""
    return Moments(*(getattr(stats, f) for f in Moments._fields))


@jax.jit
def _feature_stats_impl(h: Array, y: Array, p: Array, mask: Array | None) -> FeatureStats:
    m, h = first_moments(h, y, p, mask)
    hn = normalize_rows(h)
    return FeatureStats(count=m.count, sum_h=m.sum_h, sum_hh=dot(h.T, h), sum_hn_hn=dot(hn.T, hn),
                        sum_y=m.sum_y, sum_yy=m.sum_yy, sum_hy=dot(h.T, masked(y, mask)),
                        sum_res=m.sum_res, sum_res_sq=m.sum_res_sq)


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
    """Second-pass statistics for the "centered" variant: features H (M, d), mean (d,), mask (M,).

    The centered per-sample normalization needs hbar before normalizing, so it cannot be a one-pass
    sum: take `mean = feature_mean(stats)` from a first pass, then merge these over batches and
    pass the result as `metrics_from_stats(..., centered=...)`.
    """
    h = features_arg(features, check_finite=False)
    mu = array_arg("mean", mean, 1)
    if mu.shape != (h.shape[1],):
        raise DataError(f"mean shape {tuple(mu.shape)} must be (d,) = ({h.shape[1]},)")
    mask = mask_arg(mask, h.shape[0])
    finite_arg("features", h, mask)
    return _centered_stats_impl(h, mu.astype(h.dtype), mask)


def feature_mean(stats: FeatureStats) -> Array:
    """hbar (d,) from the statistics."""
    return stats.sum_h / stats.count


# ----------------------------------------------------------------------------- moments of H
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


__all__ = ["FeatureStats", "CenteredStats", "Moments", "merge", "empty_feature_stats", "target_moments",
           "first_moments", "moments_of", "feature_stats", "centered_feature_stats", "feature_mean",
           "FeatureMoments", "feature_moments_from_stats", "feature_moments_from_rows"]
