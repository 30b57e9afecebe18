"""Linear algebra shared by the metric modules (`stats`, `metric_core`, `metrics`) and `deep`: second
moments held as rows or as sums, the residual of a moment outside a subspace, top eigenpairs (eigh or
warm-started subspace iteration). Pure jax.numpy, jittable, float32 or float64.

Rows are samples: x (M, d). A second moment `sum_i x_i x_i^T` is held either as the rows themselves
(`Rows`, where every row is in memory: residuals summed from the residual vectors, precise however
small) or as the (d, d) sum (`Gram`, mergeable over batches and hosts: residuals as trace
differences); docs/nrc.md ("Precision") states what each resolves.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def symmetrize(m: Array) -> Array:
    """(m + m^T) / 2 of a square matrix: removes the rounding asymmetry of a computed covariance."""
    return 0.5 * (m + m.T)


def safe_divide(num: Array, den: Array) -> Array:
    """num / den where den > 0, nan elsewhere (no inf/nan gradient through the masked branch)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def masked(x: Array, mask: Array | None) -> Array:
    """Rows of x (M, ...) that mask (M,) drops set to zero (where, not multiply: padded rows may
    hold anything, even nan)."""
    return x if mask is None else jnp.where(mask[:, None], x, 0.0)


def kept_count(x: Array, mask: Array | None) -> Array:
    """The number of rows of x (M, ...) that mask (M,) keeps (M without a mask), in x's dtype."""
    return jnp.asarray(x.shape[0], x.dtype) if mask is None else jnp.sum(mask).astype(x.dtype)


def normalize_rows(h: Array) -> Array:
    """Rows of h (M, d) divided by their norm; zero rows stay zero (so they drop out of sums)."""
    norms = jnp.linalg.norm(h, axis=1, keepdims=True)
    return jnp.where(norms > 0, h / jnp.where(norms > 0, norms, 1.0), 0.0)


def covariance_from_sums(total: Array, first: Array, count: Array) -> Array:
    """Centered covariance (1/M) sum (x - xbar)(x - xbar)^T (d, d) from sum x x^T (d, d) and sum x (d,)."""
    return symmetrize(total - jnp.outer(first, first) / count) / count


def cross_covariance_from_sums(total: Array, first_a: Array, first_b: Array, count: Array) -> Array:
    """(1/M) sum (a - abar)(b - bbar)^T (p, q) from sum a b^T (p, q), sum a (p,), sum b (q,)."""
    return (total - jnp.outer(first_a, first_b) / count) / count


def top_eigh(cov: Array, r: int) -> tuple[Array, Array]:
    """Top-r eigenpairs of a symmetric (d, d) matrix, descending: values (r,), vectors (d, r)."""
    values, vectors = jnp.linalg.eigh(symmetrize(cov))
    return values[::-1][:r], vectors[:, ::-1][:, :r]


@functools.partial(jax.jit, static_argnums=2)
def subspace_iteration(cov: Array, init: Array, iters: int) -> tuple[Array, Array]:
    """Top-r eigenpairs of a symmetric PSD (d, d) matrix by `iters` QR (orthogonal) iterations from
    init (d, r), then a Rayleigh-Ritz step: values (r,), vectors (d, r), descending. Unchecked; the
    checked entry point is `metrics.top_eigenvectors`."""
    cov = symmetrize(cov)

    def step(_, q):
        return jnp.linalg.qr(dot(cov, q))[0]

    q = jax.lax.fori_loop(0, iters, step, jnp.linalg.qr(init)[0])
    ritz_values, ritz_vectors = jnp.linalg.eigh(symmetrize(dot(q.T, dot(cov, q))))
    return ritz_values[::-1], dot(q, ritz_vectors[:, ::-1])


def row_space_basis(weights: Array) -> tuple[Array, Array]:
    """Orthonormal basis (d, n) of the row space of W (n, d) with a 0/1 mask (n,) of the kept directions.

    Directions with singular value <= max(n, d) * eps * s_max are dropped (numerical rank).
    """
    _, singular, vt = jnp.linalg.svd(weights, full_matrices=False)
    tol = max(weights.shape) * jnp.finfo(weights.dtype).eps * singular[0]
    keep = (singular > tol).astype(weights.dtype)
    return vt.T, keep


def _captured(moment: Array, basis: Array, keep: Array | None = None) -> Array:
    """tr(P M) for P = basis diag(keep) basis^T (basis (d, r) has orthonormal columns)."""
    per_direction = jnp.sum(basis * dot(moment, basis), axis=0)
    if keep is not None:
        per_direction = per_direction * keep
    return jnp.sum(per_direction)


class Gram(NamedTuple):
    """A second moment held as the (d, d) sum of x x^T over rows (mergeable over batches/hosts).

    Its residual outside a subspace is tr(M) - tr(P M): a difference of two sums, so float rounding
    leaves a floor of about eps * tr(M) (float32: ~1e-7 relative); docs/nrc.md states it.
    """

    sum_xx: Array

    def total(self) -> Array:
        return jnp.trace(self.sum_xx)

    def gram(self) -> Array:
        return self.sum_xx

    def residual(self, basis: Array, keep: Array | None = None) -> Array:
        return jnp.maximum(self.total() - _captured(self.sum_xx, basis, keep), 0.0)


class Rows(NamedTuple):
    """The same moment held as the rows x (M, d) themselves, dropped rows zero.

    The residual is summed from the residual vectors x - P x themselves, so it keeps its relative
    precision however small it is (no cancellation against the captured part); it costs M*d*n.
    """

    rows: Array

    def total(self) -> Array:
        return jnp.sum(jnp.square(self.rows))

    def gram(self) -> Array:
        return dot(self.rows.T, self.rows)

    def residual(self, basis: Array, keep: Array | None = None) -> Array:
        coords = dot(self.rows, basis)
        if keep is not None:
            coords = coords * keep[None, :]
        return jnp.sum(jnp.square(self.rows - dot(coords, basis.T)))


def residual_share(moment: Gram | Rows, basis: Array, keep: Array | None = None) -> Array:
    """||x - P x||^2 summed over rows / sum ||x||^2 (for unit rows: the mean residual), P the
    projector onto the columns of basis (d, r) that keep (r,) marks (all by default)."""
    return moment.residual(basis, keep) / moment.total()


__all__ = ["dot", "symmetrize", "safe_divide", "masked", "kept_count", "normalize_rows", "covariance_from_sums",
           "cross_covariance_from_sums", "top_eigh", "subspace_iteration", "row_space_basis", "Gram", "Rows",
           "residual_share"]
