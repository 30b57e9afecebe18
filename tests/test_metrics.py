"""nrc_jax.core.metrics against the independent float64 numpy oracle (tests/reference_numpy.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nrc_jax.core import metrics
from nrc_jax.errors import ConfigError, DataError

import reference_numpy as ref

RTOL = 1e-6


def _problem(seed: int, m: int = 240, d: int = 12, n: int = 3):
    """Features with a non-zero mean and a decaying spectrum, weights, targets, predictions."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(m, d)) * np.geomspace(3.0, 0.2, d) + rng.normal(size=d)
    w = rng.normal(size=(n, d))
    y = rng.normal(size=(m, n)) @ rng.normal(size=(n, n)) + rng.normal(size=n)
    p = h @ w.T + 0.1 * rng.normal(size=(m, n))
    return h, w, y, p


def _sigma_and_aligned_weights(seed: int, n: int = 3, d: int = 8, gamma_fraction: float = 0.4):
    """Sigma and a W whose W W^T is proportional to Sigma^{1/2} - sqrt(g0) I (so NRC3(g0) = 0)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    sigma = a @ a.T + 0.5 * np.eye(n)
    g0 = gamma_fraction * np.linalg.eigvalsh(sigma)[0]
    target = ref.sqrtm_psd(sigma) - np.sqrt(g0) * np.eye(n)
    values, vectors = np.linalg.eigh(target)
    root = (vectors * np.sqrt(values)) @ vectors.T
    orthonormal_rows = np.linalg.qr(rng.normal(size=(d, n)))[0].T
    return sigma, 2.5 * root @ orthonormal_rows, g0


@pytest.mark.parametrize("variant", metrics.VARIANTS)
def test_nrc1_nrc2_match_reference(variant):
    h, w, _, _ = _problem(0)
    with jax.enable_x64(True):
        np.testing.assert_allclose(metrics.nrc1(h, 3, variant=variant), ref.nrc1(h, 3, variant), rtol=RTOL)
        np.testing.assert_allclose(metrics.nrc2(h, w, variant=variant), ref.nrc2(h, w, variant), rtol=RTOL)


def test_float32_close_to_float64_reference():
    h, w, y, _ = _problem(1)
    h32, w32 = h.astype(np.float32), w.astype(np.float32)
    value = metrics.nrc1(h32, 3)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, ref.nrc1(h, 3), rtol=1e-4)
    np.testing.assert_allclose(metrics.nrc2(h32, w32), ref.nrc2(h, w), rtol=1e-4)
    # Half precision is summed in float32.
    assert metrics.nrc2(h32.astype(jnp.bfloat16), w32).dtype == jnp.float32
    sigma = ref.target_stats(y)["sigma"]
    np.testing.assert_allclose(metrics.nrc3(w32, sigma.astype(np.float32), 0.1),
                               ref.nrc3(w, sigma, 0.1), rtol=1e-4)


def test_nrc3_curve_and_best_gamma_match_reference():
    sigma, w, g0 = _sigma_and_aligned_weights(2)
    with jax.enable_x64(True):
        gammas, values = metrics.nrc3_curve(w, sigma, num=200)
        ref_gammas = ref.nrc3_grid(sigma, 200)
        np.testing.assert_allclose(gammas, ref_gammas, rtol=1e-12)
        np.testing.assert_allclose(values, [ref.nrc3(w, sigma, g) for g in ref_gammas], rtol=RTOL, atol=1e-12)
        gamma, value = metrics.best_gamma(w, sigma, num=200)
        ref_gamma, ref_value = ref.best_gamma(w, sigma, num=200)
        np.testing.assert_allclose([gamma, value], [ref_gamma, ref_value], rtol=RTOL, atol=1e-12)
        assert abs(float(gamma) - g0) <= ref_gammas[1]  # the planted minimum, to grid resolution
        np.testing.assert_allclose(metrics.nrc3(w, sigma, g0), 0.0, atol=1e-12)


def test_best_gamma_refined_is_never_worse_than_the_grid():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        for seed in range(4):
            sigma, w, _ = _sigma_and_aligned_weights(seed, gamma_fraction=0.37)
            w = w + 0.3 * rng.normal(size=w.shape)
            lambda_min = np.linalg.eigvalsh(sigma)[0]
            _, grid_value = metrics.best_gamma(w, sigma, num=200)
            gamma, value = metrics.best_gamma(w, sigma, num=200, refine=True)
            assert float(value) <= float(grid_value)
            assert 0.0 <= float(gamma) < lambda_min
            np.testing.assert_allclose(value, ref.nrc3(w, sigma, float(gamma)), rtol=RTOL)


def test_target_stats_evr_mse_r2_match_reference():
    h, _, y, p = _problem(4)
    with jax.enable_x64(True):
        stats = metrics.target_stats(y)
        expected = ref.target_stats(y)
        for key, value in expected.items():
            np.testing.assert_allclose(stats[key], value, rtol=RTOL, err_msg=key)
        np.testing.assert_allclose(metrics.explained_variance_ratio(h, 5), ref.evr(h, 5), rtol=RTOL)
        np.testing.assert_allclose(metrics.mse(y, p), ref.mse(y, p), rtol=RTOL)
        np.testing.assert_allclose(metrics.mse_per_dim(y, p), ref.mse_per_dim(y, p), rtol=RTOL)
        np.testing.assert_allclose(metrics.r2(y, p), ref.r2(y, p), rtol=RTOL)
        np.testing.assert_allclose(metrics.r2_per_dim(y, p), ref.r2_per_dim(y, p), rtol=RTOL)
        # 1-D targets are one target dimension.
        np.testing.assert_allclose(metrics.r2(y[:, 0], p[:, 0]), ref.r2(y[:, :1], p[:, :1]), rtol=RTOL)


def _reference_metrics(h, w, y, p, gamma=None):
    sigma = ref.target_stats(y)["sigma"]
    if gamma is None:
        gamma, nrc3 = ref.best_gamma(w, sigma)
    else:
        nrc3 = ref.nrc3(w, sigma, gamma)
    out = {
        "mse": ref.mse(y, p), "mse_per_dim": ref.mse_per_dim(y, p),
        "r2": ref.r2(y, p), "r2_per_dim": ref.r2_per_dim(y, p),
        "evr": ref.evr(h, 5), "wwt": w @ w.T, "w_norm": np.linalg.norm(w),
        "h_norm_sq": np.mean(np.sum(h**2, axis=1)), "nrc3": nrc3, "nrc3_gamma": gamma,
    }
    n = w.shape[0]
    for variant in ("paper", "centered", "variance", "unnormalized"):
        suffix = "" if variant == "paper" else f"_{variant}"
        out[f"nrc1{suffix}"] = ref.nrc1(h, n, variant)
        out[f"nrc2{suffix}"] = ref.nrc2(h, w, variant)
    return out


def _assert_metrics_match(got, expected, rtol=RTOL):
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=1e-12, err_msg=key)


def _stats_with_centered(h, y, p, mask=None):
    stats = metrics.feature_stats(h, y, p, mask=mask)
    return stats, metrics.centered_feature_stats(h, metrics.feature_mean(stats), mask=mask)


def test_metrics_from_stats_match_reference():
    h, w, y, p = _problem(5)
    with jax.enable_x64(True):
        stats, centered = _stats_with_centered(h, y, p)
        got = metrics.metrics_from_stats(stats, w, centered=centered)
        _assert_metrics_match(got, _reference_metrics(h, w, y, p))
        at_gamma = metrics.metrics_from_stats(stats, w, gamma=0.05)
        np.testing.assert_allclose(at_gamma["nrc3"], ref.nrc3(w, ref.target_stats(y)["sigma"], 0.05), rtol=RTOL)
        assert float(at_gamma["nrc3_gamma"]) == 0.05
        assert "nrc1_centered" not in at_gamma and "pca_basis" not in at_gamma


def test_metrics_from_features_equal_stats_path_and_reference():
    """The in-memory path (one d x d product) gives what the sufficient statistics give, with padding."""
    h, w, y, p = _problem(8)
    pad = 17
    rng = np.random.default_rng(1)
    hp, yp, pp = (np.concatenate([x, rng.normal(size=(pad, x.shape[1])) * 1e3]) for x in (h, y, p))
    hp[-1] = np.nan  # dropped rows may hold anything
    mask = np.arange(len(hp)) < len(h)
    with jax.enable_x64(True):
        stats, centered = _stats_with_centered(h, y, p)
        basis = metrics.pca_basis_init(12, 3)
        for pca_init in (None, basis):
            expected = metrics.metrics_from_stats(stats, w, centered=centered, pca_init=pca_init)
            got = metrics.metrics_from_features(hp, yp, pp, w, mask=mask, pca_init=pca_init)
            assert set(got) == set(expected)
            _assert_metrics_match(got, expected, rtol=1e-12)
        _assert_metrics_match(metrics.metrics_from_features(h, y, p, w), _reference_metrics(h, w, y, p))
        plain = metrics.metrics_from_features(h, y, p, w, centered=False, gamma=0.05)
        assert "nrc1_centered" not in plain and float(plain["nrc3_gamma"]) == 0.05
        regression = metrics.regression_metrics(yp, pp, mask)
        _assert_metrics_match(regression, {k: expected[k] for k in ("mse", "mse_per_dim", "r2", "r2_per_dim")})
        np.testing.assert_allclose(regression["mse"], ref.mse(y, p), rtol=1e-12)


def test_metrics_from_features_sharded_over_8_devices_equals_single_device():
    h, w, y, p = (x.astype(np.float32) for x in _problem(9))
    mask = np.arange(240) < 233
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    evaluate = jax.jit(lambda h, y, p, mask, w: metrics.metrics_from_features(h, y, p, w, mask=mask))
    sharded = evaluate(*(jax.device_put(x, rows) for x in (h, y, p, mask)), w)
    single = evaluate(*(jax.device_put(x, jax.devices()[0]) for x in (h, y, p, mask, w)))
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], rtol=2e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(sharded["nrc1"], ref.nrc1(h[:233], 3), rtol=1e-4)


def _padded_batches(arrays, batch):
    """Batches of `batch` rows; the last is padded with nan rows and a False mask."""
    m = len(arrays[0])
    for start in range(0, m, batch):
        real = min(batch, m - start)
        mask = np.arange(batch) < real
        padded = [np.concatenate([x[start:start + real], np.full((batch - real, x.shape[1]), np.nan)])
                  for x in arrays]
        yield padded, mask


def test_streamed_padded_batches_merged_equal_whole_array():
    h, w, y, p = _problem(6)  # 240 rows in batches of 64: the last has 48 real rows
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
    with jax.enable_x64(True):
        whole = metrics.feature_stats(h, y, p)
        streamed = metrics.empty_feature_stats(12, 3, jnp.float64)
        for (hb, yb, pb), mask in _padded_batches((h, y, p), 64):
            streamed = metrics.merge(streamed, metrics.feature_stats(hb, yb, pb, mask=mask))
        jax.tree.map(close, whole, streamed)

        mean = metrics.feature_mean(whole)
        centered = metrics.CenteredStats(jnp.zeros(()), jnp.zeros((12, 12)))
        for (hb,), mask in _padded_batches((h,), 64):
            centered = metrics.merge(centered, metrics.centered_feature_stats(hb, mean, mask=mask))
        jax.tree.map(close, metrics.centered_feature_stats(h, mean), centered)
        _assert_metrics_match(metrics.metrics_from_stats(streamed, w, centered=centered),
                              _reference_metrics(h, w, y, p))


def test_sharded_jit_over_8_devices_equals_single_device():
    assert jax.device_count() == 8, "tests/conftest.py forces 8 host devices"
    h, w, y, p = (x.astype(np.float32) for x in _problem(7))
    mask = np.arange(240) < 233
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())

    @jax.jit
    def evaluate(h, y, p, mask, w):
        stats = metrics.feature_stats(h, y, p, mask=mask)
        centered = metrics.centered_feature_stats(h, metrics.feature_mean(stats), mask=mask)
        return metrics.metrics_from_stats(stats, w, centered=centered)

    sharded_args = [jax.device_put(x, rows) for x in (h, y, p, mask)] + [jax.device_put(w, replicated)]
    assert len(sharded_args[0].sharding.device_set) == 8
    sharded = evaluate(*sharded_args)
    single = evaluate(*(jax.device_put(x, jax.devices()[0]) for x in (h, y, p, mask, w)))
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], rtol=2e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(sharded["nrc1"], ref.nrc1(h[:233], 3), rtol=1e-4)
    np.testing.assert_allclose(sharded["nrc2"], ref.nrc2(h[:233], w), rtol=1e-4)


def test_scale_invariances():
    h, w, y, _ = _problem(8)
    sigma = ref.target_stats(y)["sigma"]
    with jax.enable_x64(True):
        for variant in ("paper", "centered", "variance"):
            np.testing.assert_allclose(metrics.nrc1(7.3 * h, 3, variant=variant),
                                       metrics.nrc1(h, 3, variant=variant), rtol=1e-10)
            np.testing.assert_allclose(metrics.nrc2(7.3 * h, w, variant=variant),
                                       metrics.nrc2(h, w, variant=variant), rtol=1e-10)
        np.testing.assert_allclose(metrics.nrc2(h, 0.01 * w), metrics.nrc2(h, w), rtol=1e-10)
        np.testing.assert_allclose(metrics.nrc3(4.0 * w, sigma, 0.02), metrics.nrc3(w, sigma, 0.02), rtol=1e-10)
        np.testing.assert_allclose(metrics.best_gamma(0.1 * w, sigma, num=200)[1],
                                   metrics.best_gamma(w, sigma, num=200)[1], rtol=1e-10)


def test_collapsed_features_give_zero_nrc():
    rng = np.random.default_rng(9)
    w = rng.normal(size=(3, 12))
    h = rng.normal(size=(240, 3)) @ w + 1.0 * w[0]  # every row in the row space of W
    with jax.enable_x64(True):
        for variant in metrics.VARIANTS:
            np.testing.assert_allclose(metrics.nrc2(h, w, variant=variant), 0.0, atol=1e-10)
        # The principal plane of the centered features is the row space of W too.
            np.testing.assert_allclose(metrics.nrc1(h, 3, variant=variant), 0.0, atol=1e-10)
        # Shifting the features off the row space of W breaks NRC2 but not NRC1 (PCA follows them).
        shifted = h + 5.0 * np.linalg.svd(w)[2][-1]
        assert float(metrics.nrc2(shifted, w)) > 0.1
        np.testing.assert_allclose(metrics.nrc1(shifted, 3, variant="variance"), 0.0, atol=1e-10)


def test_n_equal_1():
    h, w, y, _ = _problem(10, n=1)
    with jax.enable_x64(True):
        sigma = ref.target_stats(y)["sigma"]
        np.testing.assert_allclose(metrics.nrc2(h, w), ref.nrc2(h, w), rtol=RTOL)
        assert float(metrics.nrc3(w, sigma, 0.1)) == 0.0
        gamma, value = metrics.best_gamma(w, sigma, num=200)
        assert (float(gamma), float(value)) == (0.0, 0.0)


def test_rank_deficient_and_zero_weights():
    h, w, y, _ = _problem(11)
    deficient = np.stack([w[0], w[1], 2.0 * w[0] - 0.5 * w[1]])  # rank 2
    sigma = ref.target_stats(y)["sigma"]
    with jax.enable_x64(True):
        for variant in metrics.VARIANTS:
            np.testing.assert_allclose(metrics.nrc2(h, deficient, variant=variant),
                                       ref.nrc2(h, deficient, variant), rtol=RTOL)
            np.testing.assert_allclose(metrics.nrc2(h, deficient, variant=variant),
                                       ref.nrc2(h, w[:2], variant), rtol=RTOL)
        zero = np.zeros_like(w)
        np.testing.assert_allclose(metrics.nrc2(h, zero), 1.0, rtol=1e-12)
        np.testing.assert_allclose(metrics.nrc3(zero, sigma, 0.0), ref.nrc3(zero, sigma, 0.0), rtol=1e-12)
        np.testing.assert_allclose(metrics.nrc3(zero, sigma, 0.0), 1.0, rtol=1e-12)
    # float32: the rank tolerance scales with eps, so the dependent row is still dropped.
    np.testing.assert_allclose(metrics.nrc2(h.astype(np.float32), deficient.astype(np.float32)),
                               ref.nrc2(h, w[:2]), rtol=1e-4)


def test_zero_feature_rows_are_skipped_by_normalized_forms():
    h, w, y, p = _problem(12)
    h[[3, 17, 100]] = 0.0
    with jax.enable_x64(True):
        for variant in metrics.VARIANTS:
            np.testing.assert_allclose(metrics.nrc1(h, 3, variant=variant), ref.nrc1(h, 3, variant), rtol=RTOL)
            np.testing.assert_allclose(metrics.nrc2(h, w, variant=variant), ref.nrc2(h, w, variant), rtol=RTOL)
        # Skipping: the paper NRC2 equals that of the non-zero rows alone.
        nonzero = np.delete(h, [3, 17, 100], axis=0)
        np.testing.assert_allclose(metrics.nrc2(h, w), ref.nrc2(nonzero, w), rtol=RTOL)
        stats, centered = _stats_with_centered(h, y, p)
        _assert_metrics_match(metrics.metrics_from_stats(stats, w, centered=centered),
                              _reference_metrics(h, w, y, p))
        assert np.isnan(metrics.nrc2(np.zeros_like(h), w))  # documented: no direction at all


def test_subspace_iteration_agrees_with_eigh():
    rng = np.random.default_rng(13)
    d, r = 40, 5
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    spectrum = np.r_[np.array([10.0, 8.0, 6.0, 4.0, 3.0]), np.linspace(1.0, 0.01, d - r)]
    cov = (basis * spectrum) @ basis.T
    with jax.enable_x64(True):
        values, vectors = metrics.top_eigenvectors(cov, r, iters=200)
        np.testing.assert_allclose(values, spectrum[:r], rtol=1e-9)
        np.testing.assert_allclose(vectors @ vectors.T, basis[:, :r] @ basis[:, :r].T, atol=1e-8)
        # Warm start from a perturbed answer: a few iterations suffice.
        init = basis[:, :r] + 0.01 * rng.normal(size=(d, r))
        warm_values, warm_vectors = jax.jit(metrics.top_eigenvectors, static_argnums=(1, 3))(cov, r, init, 12)
        np.testing.assert_allclose(warm_values, spectrum[:r], rtol=1e-6)
        np.testing.assert_allclose(warm_vectors @ warm_vectors.T, basis[:, :r] @ basis[:, :r].T, atol=1e-4)


def test_carried_pca_basis_under_vmap_over_sweep_members():
    """As in the trainer: all sweep members at once (vmap over stats, weights, gamma, basis), the
    PCA basis carried from one evaluation to the next, so a few subspace iterations per call suffice."""
    problems = [_problem(seed) for seed in (18, 19)]
    with jax.enable_x64(True):
        stats = jax.tree.map(lambda *xs: jnp.stack(xs), *(metrics.feature_stats(h, y, p) for h, _, y, p in problems))
        weights = jnp.stack([w for _, w, _, _ in problems])
        gammas = jnp.asarray([0.01, 0.02])
        basis = jnp.stack([metrics.pca_basis_init(12, 3, dtype=jnp.float64)] * 2)
        evaluate = jax.jit(jax.vmap(lambda s, w, g, b: metrics.metrics_from_stats(s, w, gamma=g, pca_init=b,
                                                                                  pca_iters=20)))
        for _ in range(8):
            out = evaluate(stats, weights, gammas, basis)
            basis = out["pca_basis"]
        assert basis.shape == (2, 12, 5)
        for member, (h, w, y, p) in enumerate(problems):
            expected = _reference_metrics(h, w, y, p, gamma=float(gammas[member]))
            expected = {k: v for k, v in expected.items() if "centered" not in k}
            _assert_metrics_match(jax.tree.map(lambda x: x[member], out), expected)


def test_jit_of_public_functions():
    h, w, y, _ = _problem(15)
    sigma = ref.target_stats(y)["sigma"]
    nrc1 = jax.jit(metrics.nrc1, static_argnums=1, static_argnames="variant")
    np.testing.assert_allclose(nrc1(h, 3, variant="centered"), ref.nrc1(h, 3, "centered"), rtol=1e-4)
    gamma = jnp.asarray(0.03, jnp.float32)  # a traced gamma skips the concrete value check
    np.testing.assert_allclose(jax.jit(metrics.nrc3)(w, sigma, gamma), ref.nrc3(w, sigma, 0.03), rtol=1e-4)


@pytest.mark.parametrize("call, error, words", [
    (lambda h, w, s: metrics.nrc1(h, 0), ConfigError, "n must be in [1, 12]"),
    (lambda h, w, s: metrics.nrc1(h, 13), ConfigError, "n must be in [1, 12]"),
    (lambda h, w, s: metrics.nrc1(h, 2.0), ConfigError, "n must be a Python int"),
    (lambda h, w, s: metrics.nrc1(h[0], 2), DataError, "features must be 2-D, got shape (12,)"),
    (lambda h, w, s: metrics.nrc1(h, 2, variant="pca"), ConfigError, "variant must be one of"),
    (lambda h, w, s: metrics.nrc2(h, w[:, :5]), DataError, "weights shape (3, 5)"),
    (lambda h, w, s: metrics.nrc2(h[:, :2], w[:, :2]), DataError, "1 <= n <= d"),
    (lambda h, w, s: metrics.nrc2(np.where(h > 2, np.nan, h), w), DataError, "features (shape (240, 12)) contains non-finite"),
    (lambda h, w, s: metrics.nrc3(w, s[:2, :2], 0.1), DataError, "sigma shape (2, 2) must be (n, n) = (3, 3)"),
    (lambda h, w, s: metrics.nrc3(w, s, -0.1), ConfigError, "gamma must be a finite scalar >= 0"),
    (lambda h, w, s: metrics.nrc3(w, s * np.inf, 0.1), DataError, "sigma"),
    (lambda h, w, s: metrics.best_gamma(w, s, num=0), ConfigError, "num must be in"),
    (lambda h, w, s: metrics.explained_variance_ratio(h, 20), ConfigError, "k must be in [1, 12]"),
    (lambda h, w, s: metrics.mse(h[:, :3], h[:10, :3]), DataError, "targets shape (240, 3) and predictions shape (10, 3)"),
    (lambda h, w, s: metrics.feature_stats(h, h[:10, :3], h[:10, :3]), DataError, "different numbers of rows"),
    (lambda h, w, s: metrics.feature_stats(h, h[:, :3], h[:, :3], mask=np.ones(7)), DataError, "mask shape (7,)"),
    (lambda h, w, s: metrics.feature_stats(np.where(h > 2, np.nan, h), h[:, :3], h[:, :3], mask=h[:, 0] > 0),
     DataError, "features (shape (240, 12)) contains non-finite values in rows the mask keeps"),
    (lambda h, w, s: metrics.metrics_from_stats({"count": 1}, w), DataError, "stats must be a FeatureStats"),
    (lambda h, w, s: metrics.top_eigenvectors(s, 2, init=np.ones((3, 3))), DataError, "init shape (3, 3)"),
    (lambda h, w, s: metrics.metrics_from_stats(metrics.empty_feature_stats(12, 2), w),
     DataError, "weights shape (3, 12) does not match the 2 targets"),
    (lambda h, w, s: metrics.metrics_from_features(h, h[:, :3], h[:, :3], w, mask=np.ones(7)),
     DataError, "mask shape (7,)"),
    (lambda h, w, s: metrics.metrics_from_features(h, h[:, :3], np.where(h[:, :3] > 2, np.inf, h[:, :3]), w),
     DataError, "predictions (shape (240, 3)) contains non-finite values"),
    (lambda h, w, s: metrics.metrics_from_features(h, h[:, :2], h[:, :2], w),
     DataError, "weights shape (3, 12) does not match the 2 targets"),
    (lambda h, w, s: metrics.regression_metrics(h[:, :3], h[:, :2]), DataError, "differ"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, error, words):
    h, w, y, _ = _problem(16)
    sigma = ref.target_stats(y)["sigma"]
    with pytest.raises(error) as info:
        call(h.astype(np.float32), w.astype(np.float32), sigma.astype(np.float32))
    assert isinstance(info.value, ValueError)
    assert words in str(info.value)


def test_shape_errors_are_raised_while_tracing_under_jit():
    h, w, _, _ = _problem(17)
    with pytest.raises(DataError, match="weights shape"):
        jax.jit(metrics.nrc2)(h, w[:, :4])


# The names code, docs and notebooks import from nrc_jax.core.metrics; the code behind them lives in
# nrc_jax.core.stats and nrc_jax.core.metric_core since the split, and must stay reachable from here.
PUBLIC_METRICS_NAMES = (
    "VARIANTS", "nrc1", "nrc2", "nrc3", "nrc3_curve", "best_gamma", "explained_variance_ratio", "target_stats",
    "mse", "mse_per_dim", "r2", "r2_per_dim", "regression_metrics", "top_eigenvectors", "pca_basis_init",
    "FeatureStats", "CenteredStats", "FeatureMoments", "feature_stats", "centered_feature_stats", "merge",
    "empty_feature_stats", "feature_mean", "feature_moments_from_stats", "feature_moments_from_rows",
    "principal_subspace", "nrc_variants", "metrics_from_stats", "metrics_from_features", "check_rows")


def test_public_names_stay_importable_from_metrics_and_are_the_split_modules_objects():
    from nrc_jax.core import checks, metric_core, stats

    assert set(PUBLIC_METRICS_NAMES) <= set(metrics.__all__)
    for name in metrics.__all__:
        value = getattr(metrics, name)
        for module in (stats, metric_core, checks):
            if hasattr(module, name):
                assert value is getattr(module, name), name
    assert metrics.FeatureStats is stats.FeatureStats and metrics.nrc_variants is metric_core.nrc_variants
