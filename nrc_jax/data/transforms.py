"""Target preprocessing fitted on the training targets, with an exact inverse.

Every transform here is affine, `z = (y - shift) @ matrix`, with inverse `y = z @ inverse_matrix + shift`,
so one small dataclass covers them all and the inverse maps predictions back to original units
(reported errors can then be in the units of the raw data). Rows are samples: `y` is (M, n).

Kinds (`data.target_transform`):
  none         identity (the paper's default)
  center       subtract the training mean
  standardize  subtract the mean, divide each dimension by its standard deviation
  minmax       map each dimension's training [min, max] to [0, 1]
  zca          ZCA whitening: `matrix = V diag(1/sqrt(lambda + eps)) V^T` from `eigh` of the centered
               covariance `Sigma = (Y - ybar)^T (Y - ybar) / M`; the whitened training targets have
               covariance I (up to eps).
`forward`/`inverse` use only `-`, `+` and `@`, so they work on numpy and jax.numpy arrays alike.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nrc_jax.errors import ConfigError, DataError

TRANSFORMS = ("none", "center", "standardize", "minmax", "zca")
ZCA_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class TargetTransform:
    """A fitted affine target transform.

    Attributes:
      kind: one of TRANSFORMS.
      shift: (n,) subtracted before the linear map.
      matrix: (n, n) the linear map applied to row vectors (`(y - shift) @ matrix`).
      inverse_matrix: (n, n) its inverse.
    """

    kind: str
    shift: np.ndarray
    matrix: np.ndarray
    inverse_matrix: np.ndarray

    def forward(self, y: Any) -> Any:
        """(M, n) original targets or predictions -> (M, n) transformed."""
        return (y - self.shift[None, :]) @ self.matrix

    def inverse(self, z: Any) -> Any:
        """(M, n) transformed targets or predictions -> (M, n) in original units."""
        return z @ self.inverse_matrix + self.shift[None, :]

    @property
    def target_dim(self) -> int:
        return int(self.shift.shape[0])

    def to_dict(self) -> dict:
        """JSON-friendly form (lists of floats), for config.json / summaries."""
        return {"kind": self.kind, "shift": self.shift.tolist(), "matrix": self.matrix.tolist(),
                "inverse_matrix": self.inverse_matrix.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TargetTransform":
        return cls(d["kind"], np.asarray(d["shift"], np.float64), np.asarray(d["matrix"], np.float64),
                   np.asarray(d["inverse_matrix"], np.float64))


def identity_transform(n: int) -> TargetTransform:
    eye = np.eye(n)
    return TargetTransform("none", np.zeros(n), eye, eye)


def _diagonal(kind: str, shift: np.ndarray, scale: np.ndarray) -> TargetTransform:
    return TargetTransform(kind, shift, np.diag(1.0 / scale), np.diag(scale))


def _nonconstant_scale(kind: str, scale: np.ndarray, dataset: str) -> np.ndarray:
    constant = np.flatnonzero(scale <= 0)
    if constant.size:
        raise DataError(
            f"data set {dataset!r}: target dimension(s) {constant.tolist()} are constant on the training split; "
            f"data.target_transform={kind!r} would divide by zero (use 'none' or 'center')")
    return scale


def zca_matrices(y: np.ndarray, eps: float = ZCA_EPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, n) targets -> (mean (n,), whitening (n, n), its inverse (n, n)), via eigh of Sigma."""
    mean = y.mean(axis=0)
    centered = y - mean[None, :]
    sigma = centered.T @ centered / y.shape[0]
    eigvals, eigvecs = np.linalg.eigh(sigma)
    eigvals = np.maximum(eigvals, 0.0)
    whiten = (eigvecs / np.sqrt(eigvals + eps)[None, :]) @ eigvecs.T
    unwhiten = (eigvecs * np.sqrt(eigvals + eps)[None, :]) @ eigvecs.T
    return mean, whiten, unwhiten


def fit_transform(kind: str, y_train: np.ndarray, dataset: str = "?") -> TargetTransform:
    """Fits transform `kind` on (M, n) training targets (float64 statistics).

    Raises ConfigError for an unknown kind, DataError when a scale would be zero.
    """
    if kind not in TRANSFORMS:
        raise ConfigError(f"data.target_transform={kind!r} is not one of {', '.join(TRANSFORMS)}")
    y = np.asarray(y_train, np.float64)
    n = y.shape[1]
    if kind == "none":
        return identity_transform(n)
    mean = y.mean(axis=0)
    if kind == "center":
        return TargetTransform(kind, mean, np.eye(n), np.eye(n))
    if kind == "standardize":
        return _diagonal(kind, mean, _nonconstant_scale(kind, y.std(axis=0), dataset))
    if kind == "minmax":
        low = y.min(axis=0)
        return _diagonal(kind, low, _nonconstant_scale(kind, y.max(axis=0) - low, dataset))
    mean, whiten, unwhiten = zca_matrices(y)
    return TargetTransform(kind, mean, whiten, unwhiten)


def apply_forward(transform: TargetTransform, y: np.ndarray) -> np.ndarray:
    """Numpy helper: float64 arithmetic, float32 result, for the (M, n) target arrays of a data set."""
    return transform.forward(np.asarray(y, np.float64)).astype(np.float32)
