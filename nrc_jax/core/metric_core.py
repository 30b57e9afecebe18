"""Statistics to metrics: the one definition of each metric, shared by every entry point.

Rows are samples: features `H` (M, d), head weights `W` (n, d), targets `Y` (M, n). The functions
here take moments already formed (`stats.FeatureMoments` of H, held as rows or as sums, and
`stats.Moments`), check nothing and are jittable; `metrics` validates arguments and holds the
public entry points, `deep` the per-layer metrics. The variants and conventions are stated in the
`metrics` module docstring, the mathematics in docs/nrc.md.

- principal directions, EVR: `principal_subspace` (eigh, or warm-started subspace iteration),
  `explained_variance`;
- NRC1 and NRC2 in every variant: `nrc_variants`, the residual outside a basis (the top-n principal
  directions for NRC1, W's row space for NRC2);
- NRC3 and its gamma: `nrc3_values` on a grid of gammas, `nrc3_at`, `nrc3_grid`, `best_gamma_on_grid`;
- MSE and R2: `regression_from_sums` (SSE and SST per target dim), `regression_from_moments`;
- every metric of a set at once: `all_metrics` (`metrics.metrics_from_stats`/`metrics_from_features`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from nrc_jax.core.linalg import (Rows, covariance_from_sums, dot, residual_share, row_space_basis, subspace_iteration,
                                 symmetrize, top_eigh)
from nrc_jax.core.stats import FeatureMoments, Moments

Array = jax.Array
VARIANTS = ("paper", "centered", "variance", "unnormalized", "unnormalized_md")


# ----------------------------------------------------------------------------- NRC1, NRC2, EVR
def principal_subspace(f: FeatureMoments, count: Array, r: int, pca_init: Array | None = None,
                       pca_iters: int = 0) -> tuple[Array, Array, Array]:
    """(cov (d, d), values (r,), vectors (d, r)): the centered covariance of H and its top-r
    eigenpairs, descending (eigh, or `pca_iters` subspace iterations from pca_init (d, r))."""
    cov = symmetrize(f.centered_raw.gram()) / count
    if pca_init is None:
        values, vectors = top_eigh(cov, r)
    else:
        values, vectors = subspace_iteration(cov, pca_init, pca_iters)
    return cov, values, vectors


def explained_variance(cov: Array, values: Array) -> Array:
    """EVR: the top eigenvalues (k,) of the centered covariance cov (d, d) over its trace, (k,)."""
    return values / jnp.trace(cov)


def nrc_variants(f: FeatureMoments, count: Array, basis: Array, keep: Array | None = None) -> dict[str, Array]:
    """The residual of H outside the columns of basis (d, r) that keep (r,) marks, in every
    variant of VARIANTS (`metrics` module docstring), keyed by variant; "centered" only if f has it.
    With basis = the top-n principal directions these are NRC1, with W's row space NRC2."""
    out = {"paper": residual_share(f.normalized, basis, keep),
           "variance": residual_share(f.centered_raw, basis, keep),
           "unnormalized": f.raw.residual(basis, keep) / count}
    out["unnormalized_md"] = out["unnormalized"] / basis.shape[0]
    if f.centered is not None:
        out["centered"] = residual_share(f.centered, basis, keep)
    return out


# ----------------------------------------------------------------------------- NRC3
def _unit(m: Array) -> Array:
    """m / ||m||_F, and the zero matrix for m = 0."""
    norm = jnp.linalg.norm(m)
    return jnp.where(norm > 0, m / jnp.where(norm > 0, norm, 1.0), 0.0)


def nrc3_values(w: Array, sigma: Array, gammas: Array) -> Array:
    """NRC3 of W (n, d) and Sigma (n, n) at each gamma in `gammas` (k,) -> (k,); zeros for n = 1.

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
def nrc3_at(w: Array, sigma: Array, gamma: Array) -> Array:
    """NRC3 of W (n, d) and Sigma (n, n) at one scalar gamma, scalar."""
    return nrc3_values(w, sigma, jnp.reshape(jnp.asarray(gamma, w.dtype), (1,)))[0]


@functools.partial(jax.jit, static_argnums=2)
def nrc3_grid(w: Array, sigma: Array, num: int) -> tuple[Array, Array]:
    """(gammas (num,), NRC3 values (num,)) on linspace(0, lambda_min(Sigma), num, endpoint=False)."""
    lambda_min = jnp.maximum(jnp.linalg.eigvalsh(symmetrize(sigma))[0], 0.0)
    gammas = jnp.linspace(0.0, lambda_min, num, endpoint=False, dtype=w.dtype)
    return gammas, nrc3_values(w, sigma, gammas)


@functools.partial(jax.jit, static_argnums=(2, 3))
def best_gamma_on_grid(w: Array, sigma: Array, num: int, refine: bool) -> tuple[Array, Array]:
    """(gamma, NRC3 value), scalars: the minimum over `nrc3_grid`, optionally refined (`metrics.best_gamma`)."""
    gammas, values = nrc3_grid(w, sigma, num)
    best = jnp.argmin(values)
    gamma, value = gammas[best], values[best]
    if refine and w.shape[0] > 1:
        # A second grid between the neighbours of the best grid point; the grid best is kept
        # unless something strictly better is found, so refining never makes the value worse.
        step = gammas[1] - gammas[0] if num > 1 else gammas[0]
        fine = jnp.linspace(jnp.maximum(gamma - step, 0.0), gamma + step, num, endpoint=False)
        fine = jnp.minimum(fine, gammas[-1] + step * (1 - 1e-6)).astype(w.dtype)
        fine_values = nrc3_values(w, sigma, fine)
        fine_best = jnp.argmin(fine_values)
        better = fine_values[fine_best] < value
        gamma = jnp.where(better, fine[fine_best], gamma)
        value = jnp.where(better, fine_values[fine_best], value)
    return gamma, value


# ----------------------------------------------------------------------------- MSE, R2
def regression_from_sums(count: Array, sum_res_sq: Array, sst: Array) -> dict[str, Array]:
    """The one definition of MSE and R2: mse_per_dim = SSE_j / M, mse = their sum, r2_per_dim =
    1 - SSE_j / SST_j, r2 = their mean; count M, sum_res_sq = SSE (n,), sst = SST (n,)."""
    out = {"mse_per_dim": sum_res_sq / count}
    out["mse"] = jnp.sum(out["mse_per_dim"])
    out["r2_per_dim"] = 1.0 - sum_res_sq / sst
    out["r2"] = jnp.mean(out["r2_per_dim"])
    return out


def regression_from_moments(m: Moments) -> dict[str, Array]:
    """mse, mse_per_dim (n,), r2, r2_per_dim (n,) from sums (SST = sum y^2 - (sum y)^2 / M)."""
    return regression_from_sums(m.count, m.sum_res_sq, jnp.diag(m.sum_yy) - m.sum_y**2 / m.count)


# ----------------------------------------------------------------------------- every metric
def all_metrics(m: Moments, f: FeatureMoments, w: Array, sigma: Array | None, gamma: Array | None,
                pca_init: Array | None, n: int, k: int, pca_iters: int, gamma_num: int) -> dict[str, Array]:
    """The dict of `metrics.metrics_from_stats` from the sums m, the moments f of H (M, d) and
    W (n, d); sigma (n, n) (None: the targets' covariance), gamma (None: the best on the grid of
    gamma_num points), pca_init (d, max(n, k)) (None: eigh), k EVR components."""
    count = m.count
    cov, pca_values, pca_vectors = principal_subspace(f, count, max(n, k), pca_init, pca_iters)
    pca = pca_vectors[:, :n]
    row_space, keep = row_space_basis(w)

    out = regression_from_moments(m)
    for name, basis, kept in (("nrc1", pca, None), ("nrc2", row_space, keep)):
        for variant, value in nrc_variants(f, count, basis, kept).items():
            out[name if variant == "paper" else f"{name}_{variant}"] = value
    out["nrc2_w_pca"] = Rows(w).residual(pca) ** 0.5
    out["evr"] = explained_variance(cov, pca_values[:k])
    out["wwt"] = dot(w, w.T)
    out["w_norm"] = jnp.linalg.norm(w)
    out["h_norm_sq"] = f.raw.total() / count
    if sigma is None:
        sigma = covariance_from_sums(m.sum_yy, m.sum_y, count)
    if gamma is None:
        out["nrc3_gamma"], out["nrc3"] = best_gamma_on_grid(w, sigma, gamma_num, False)
    else:
        out["nrc3_gamma"], out["nrc3"] = gamma, nrc3_at(w, sigma, gamma)
    if pca_init is not None:
        out["pca_basis"] = pca_vectors
    return out


__all__ = ["VARIANTS", "principal_subspace", "explained_variance", "nrc_variants", "nrc3_values", "nrc3_at",
           "nrc3_grid", "best_gamma_on_grid", "regression_from_sums", "regression_from_moments", "all_metrics"]
