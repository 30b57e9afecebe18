"""float32 precision of the NRC metrics: planted residuals down to 1e-10 and a large common offset.

Each float32 value is compared with a float64 computation (tests/reference_numpy.py) on the same
float32 features, so the only error measured is the metric's own arithmetic.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from nrc_jax.core import metrics
from tests import reference_numpy as ref

M, D, N = 600, 48, 3
RESIDUALS = (1e-2, 1e-4, 1e-6, 1e-8, 1e-10)
REL_TOL = 0.05


def planted(residual: float, offset: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features (M, D) float32 whose paper NRC1/NRC2 are about `residual`, and W (N, D) spanning
    their principal subspace. The rows' mean lies inside that subspace (plus `offset` along it)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(D, D)))
    span, rest = basis[:, :N], basis[:, N:]
    coords = rng.normal(size=(M, N)) * np.array([3.0, 2.0, 1.0]) + np.array([2.0, -1.0, 0.5]) * (1 + offset)
    noise = rng.normal(size=(M, D - N))
    h = coords @ span.T
    scale = np.sqrt(residual * np.mean(np.sum(h**2, axis=1)) / np.mean(np.sum(noise**2, axis=1)))
    h = h + scale * noise @ rest.T
    w = rng.normal(size=(N, N)) @ span.T
    return h.astype(np.float32), w.astype(np.float32)


def _relative(a: float, b: float) -> float:
    return abs(float(a) - b) / abs(b)


@pytest.mark.parametrize("residual", RESIDUALS)
@pytest.mark.parametrize("variant", metrics.VARIANTS)
def test_array_api_resolves_planted_residuals_in_float32(residual, variant):
    h, w = planted(residual)
    for got, want in ((metrics.nrc1(h, N, variant=variant), ref.nrc1(h, N, variant)),
                      (metrics.nrc2(h, w, variant=variant), ref.nrc2(h, w, variant))):
        assert got.dtype == jnp.float32
        assert want > 0
        assert _relative(got, want) < REL_TOL, (variant, residual, float(got), want)


@pytest.mark.parametrize("residual", RESIDUALS)
def test_in_memory_evaluation_resolves_planted_residuals_in_float32(residual):
    """The trainer's path (metrics_from_features, warm-started PCA) for every variant logged."""
    h, w = planted(residual, seed=1)
    y = np.random.default_rng(2).normal(size=(M, N)).astype(np.float32)
    pred = y + 0.1
    init = metrics.pca_basis_init(D, N, evr_k=5)
    out = metrics.metrics_from_features(h, y, pred, w, pca_init=init, pca_iters=30)
    names = {"nrc1": "paper", "nrc1_centered": "centered", "nrc1_variance": "variance",
             "nrc1_unnormalized": "unnormalized", "nrc1_unnormalized_md": "unnormalized_md"}
    for name, variant in names.items():
        for which, want in (("nrc1", ref.nrc1(h, N, variant)), ("nrc2", ref.nrc2(h, w, variant))):
            key = name.replace("nrc1", which)
            assert _relative(out[key], want) < REL_TOL, (key, residual, float(out[key]), want)
    assert _relative(out["nrc2_w_pca"], ref.nrc2_w_pca(h, w)) < REL_TOL or residual < 1e-6


def test_nrc2_w_pca_matches_reference():
    """The first code release's NRC2, ||W - W P_pca||_F, on W that is not aligned with the PCs."""
    rng = np.random.default_rng(3)
    h = rng.normal(size=(200, 16)).astype(np.float32)
    w = rng.normal(size=(2, 16)).astype(np.float32)
    out = metrics.metrics_from_features(h, np.zeros((200, 2), np.float32), np.zeros((200, 2), np.float32), w)
    np.testing.assert_allclose(float(out["nrc2_w_pca"]), ref.nrc2_w_pca(h, w), rtol=1e-4)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_evr_and_variance_nrc_survive_a_common_offset_1000x_the_spread(offset):
    h, w = planted(1e-4, offset=offset, seed=4)
    y = np.zeros((M, N), np.float32)
    out = metrics.metrics_from_features(h, y, y, w)
    np.testing.assert_allclose(np.asarray(out["evr"]), ref.evr(h, 5), rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(np.asarray(metrics.explained_variance_ratio(h, 5)), ref.evr(h, 5),
                               rtol=1e-3, atol=1e-9)
    assert _relative(out["nrc1_variance"], ref.nrc1(h, N, "variance")) < REL_TOL


def test_streamed_statistics_floor_is_as_documented():
    """FeatureStats hold sums, so residuals are trace differences: accurate down to the floor
    docs/nrc.md states (about 1e-6 of the normalized moment in float32), then 0, never negative."""
    for residual, tolerance in ((1e-3, 0.01), (1e-5, 0.2)):
        h, w = planted(residual, seed=5)
        y = np.zeros((M, N), np.float32)
        stats = metrics.feature_stats(h, y, y)
        out = metrics.metrics_from_stats(stats, w)
        assert _relative(out["nrc2"], ref.nrc2(h, w)) < tolerance
    h, w = planted(1e-10, seed=5)
    stats = metrics.feature_stats(h, np.zeros((M, N), np.float32), np.zeros((M, N), np.float32))
    out = metrics.metrics_from_stats(stats, w)
    assert 0.0 <= float(out["nrc1"]) < 1e-5 and 0.0 <= float(out["nrc2"]) < 1e-5
