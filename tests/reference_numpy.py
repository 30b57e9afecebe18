"""Independent float64 numpy implementation of the NRC spec (docs/nrc.md), the test oracle.

Written directly from the per-sample definitions (explicit projectors, explicit per-row residuals),
not from the sufficient-statistics formulas used by `nrc_jax.core.metrics`, so the two can be compared.
Rows are samples: features `H` (M, d), weights `W` (n, d), targets `Y` (M, n).

Conventions shared with `nrc_jax.core.metrics` (they are choices the spec leaves open):
- Zero rows of `H` are skipped by the per-sample-normalized forms (they have no direction).
- NRC3 for n = 1 is 0.0 (the spec calls it trivial); a zero `W W^T` or `A_gamma` normalizes to zero.
- R2 averages the per-dimension values.
"""
from __future__ import annotations

import numpy as np


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _centered_covariance(features: np.ndarray) -> np.ndarray:
    h = _f64(features)
    centered = h - h.mean(axis=0)
    return centered.T @ centered / h.shape[0]


def _pca_projector(features: np.ndarray, n: int) -> np.ndarray:
    """Projector (d, d) onto the top-n eigenvectors of the centered covariance of raw features."""
    values, vectors = np.linalg.eigh(_centered_covariance(features))
    top = vectors[:, np.argsort(values)[::-1][:n]]
    return top @ top.T


def _row_space_projector(weights: np.ndarray) -> np.ndarray:
    """P_W = W^T (W W^T)^+ W, via the pseudo-inverse (handles rank-deficient W)."""
    w = _f64(weights)
    return w.T @ np.linalg.pinv(w @ w.T) @ w


def _normalized_rows(h: np.ndarray) -> np.ndarray:
    """Rows divided by their norm; zero rows are dropped."""
    norms = np.linalg.norm(h, axis=1)
    keep = norms > 0
    return h[keep] / norms[keep][:, None]


def _residual_nrc(features, projector: np.ndarray, variant: str) -> float:
    h = _f64(features)
    if variant == "paper":
        rows = _normalized_rows(h)
    elif variant == "centered":
        rows = _normalized_rows(h - h.mean(axis=0))
    elif variant in ("unnormalized", "unnormalized_md"):
        rows = h
    elif variant == "variance":
        covariance = _centered_covariance(h)
        return float(1.0 - np.trace(projector @ covariance) / np.trace(covariance))
    else:
        raise ValueError(variant)
    residual = rows - rows @ projector.T
    per_row = float(np.mean(np.sum(residual**2, axis=1)))
    return per_row / h.shape[1] if variant == "unnormalized_md" else per_row


def nrc2_w_pca(features, weights) -> float:
    """The first code release's NRC2: ||W - W P_pca||_F (not squared), P_pca of the top n PCs."""
    w = _f64(weights)
    projector = _pca_projector(features, w.shape[0])
    return float(np.linalg.norm(w - w @ projector))


def nrc1(features, n: int, variant: str = "paper") -> float:
    return _residual_nrc(features, _pca_projector(features, n), variant)


def nrc2(features, weights, variant: str = "paper") -> float:
    return _residual_nrc(features, _row_space_projector(weights), variant)


def sqrtm_psd(sigma) -> np.ndarray:
    values, vectors = np.linalg.eigh(_f64(sigma))
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _unit(matrix: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(matrix)
    return matrix / norm if norm > 0 else np.zeros_like(matrix)


def nrc3(weights, sigma, gamma: float) -> float:
    w = _f64(weights)
    n = w.shape[0]
    if n == 1:
        return 0.0
    a_gamma = sqrtm_psd(sigma) - np.sqrt(gamma) * np.eye(n)
    return float(np.sum((_unit(w @ w.T) - _unit(a_gamma)) ** 2))


def nrc3_grid(sigma, num: int = 1000) -> np.ndarray:
    lambda_min = np.linalg.eigvalsh(_f64(sigma))[0]
    return np.linspace(0.0, lambda_min, num, endpoint=False)


def best_gamma(weights, sigma, num: int = 1000) -> tuple[float, float]:
    gammas = nrc3_grid(sigma, num)
    values = np.array([nrc3(weights, sigma, g) for g in gammas])
    best = int(np.argmin(values))
    return float(gammas[best]), float(values[best])


def evr(features, k: int) -> np.ndarray:
    """Explained-variance ratio of each of the top-k principal components, shape (k,)."""
    values = np.sort(np.linalg.eigvalsh(_centered_covariance(features)))[::-1]
    return values[:k] / values.sum()


def target_stats(targets) -> dict:
    y = _f64(targets)
    mean = y.mean(axis=0)
    sigma = (y - mean).T @ (y - mean) / y.shape[0]
    eigenvalues = np.sort(np.linalg.eigvalsh(sigma))[::-1]
    std = np.sqrt(np.diag(sigma))
    return {
        "mean": mean,
        "sigma": sigma,
        "eigenvalues": eigenvalues,
        "lambda_min": eigenvalues[-1],
        "lambda_max": eigenvalues[0],
        "correlation": sigma / np.outer(std, std),
    }


def mse_per_dim(targets, predictions) -> np.ndarray:
    return np.mean((_f64(predictions) - _f64(targets)) ** 2, axis=0)


def mse(targets, predictions) -> float:
    return float(np.mean(np.sum((_f64(predictions) - _f64(targets)) ** 2, axis=1)))


def r2_per_dim(targets, predictions) -> np.ndarray:
    y = _f64(targets)
    sse = np.sum((_f64(predictions) - y) ** 2, axis=0)
    sst = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    return 1.0 - sse / sst


def r2(targets, predictions) -> float:
    return float(np.mean(r2_per_dim(targets, predictions)))
