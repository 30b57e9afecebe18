"""nrc_jax.core.deep against float64 numpy recomputations from the arrays, CKA invariances, the probe
against numpy lstsq, and the per-layer end-to-end check (train -> metrics.jsonl `layers` ->
inspect --export -> recomputation from `layer_features_<i>`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nrc_jax.core import deep, metrics


# ----------------------------------------------------------------------------- numpy oracle
def np_centered_cov(a, b=None):
    b = a if b is None else b
    return (a - a.mean(0)).T @ (b - b.mean(0)) / a.shape[0]


def np_top_pcs(h, n):
    values, vectors = np.linalg.eigh(np_centered_cov(h))
    return vectors[:, ::-1][:, :n]


def np_layer_metrics(h, y, own, reader):
    n = y.shape[1]
    v = np_top_pcs(h, n)
    hc = h - h.mean(0)
    nrc1_variance = np.sum((hc - hc @ v @ v.T) ** 2) / np.sum(hc**2)
    norms = np.linalg.norm(h, axis=1, keepdims=True)
    ht = h[norms[:, 0] > 0] / norms[norms[:, 0] > 0]  # zero rows have no direction: skipped (metrics.py)
    nrc1 = np.mean(np.sum((ht - ht @ v @ v.T) ** 2, axis=1))
    s = np.linalg.svd(hc, compute_uv=False)
    stable = np.sum(s**2) / s[0] ** 2
    sw = np.linalg.svd(own, compute_uv=False)
    weight_stable = np.sum(sw**2) / sw[0] ** 2
    reads = np.linalg.svd(reader)[2][:n].T
    alignment = np.mean(np.linalg.svd(v.T @ reads, compute_uv=False))
    yc = y - y.mean(0)
    cka = np.linalg.norm(yc.T @ hc) ** 2 / (np.linalg.norm(hc.T @ hc) * np.linalg.norm(yc.T @ yc))
    design = np.concatenate([h, np.ones((len(h), 1))], 1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    probe = np.mean(np.sum((design @ coef - y) ** 2, axis=1))
    return {"nrc1_variance": nrc1_variance, "nrc1": nrc1, "stable_rank": stable,
            "weight_stable_rank": weight_stable, "alignment": alignment, "cka": cka, "probe_mse": probe}


def sample(seed=0, m=300, d=12, n=3):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(m, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    y = h[:, :n] @ rng.normal(size=(n, n)) + 0.3 * rng.normal(size=(m, n)) + 2.0
    own, reader = rng.normal(size=(d, 7)), rng.normal(size=(5, d))
    return h, y, own, reader


# ----------------------------------------------------------------------------- one layer
def test_layer_metrics_match_numpy_float64():
    h, y, own, reader = sample()
    expected = np_layer_metrics(h, y, own, reader)
    with jax.enable_x64(True):
        got = deep.layer_metrics(h, y, deep.LayerWeights(jnp.asarray(own), jnp.asarray(reader)), probe_ridge=1e-13)
        for key in deep.LAYER_KEYS:
            np.testing.assert_allclose(float(got[key]), expected[key], rtol=1e-8, atol=1e-10, err_msg=key)


def test_metrics_from_batched_stats_equal_one_pass():
    """The stats add over batches (and a padded, masked batch): the metrics do not change."""
    h, y, own, reader = sample(seed=1, m=250)
    weights = deep.LayerWeights(jnp.asarray(own), jnp.asarray(reader))
    with jax.enable_x64(True):
        whole = deep.layer_metrics(h, y, weights)
        pad_h = np.concatenate([h[200:], np.full((50, h.shape[1]), np.nan)])
        pad_y = np.concatenate([y[200:], np.zeros((50, y.shape[1]))])
        mask = np.arange(100) < 50
        stats = metrics.merge(metrics.feature_stats(h[:200], y[:200], y[:200]),
                              metrics.feature_stats(pad_h, pad_y, pad_y, mask))
        merged = deep.layer_metrics_from_stats(stats, weights)
        for key in deep.LAYER_KEYS:
            np.testing.assert_allclose(float(merged[key]), float(whole[key]), rtol=1e-9, err_msg=key)


def test_nrc1_agrees_with_metrics_module():
    h, y, _, _ = sample(seed=2)
    with jax.enable_x64(True):
        got = deep.layer_metrics(h, y)
        assert float(got["nrc1_variance"]) == pytest.approx(float(metrics.nrc1(h, 3, variant="variance")), rel=1e-10)
        assert float(got["nrc1"]) == pytest.approx(float(metrics.nrc1(h, 3, variant="paper")), rel=1e-10)
        assert np.isnan(float(got["alignment"])) and np.isnan(float(got["weight_stable_rank"]))


@pytest.mark.parametrize("residual", (1e-2, 1e-6, 1e-10))
def test_one_definition_last_layer_nrc1_is_metrics_nrc1_float32(residual):
    """deep's NRC1 is metrics' NRC1 (one definition): on rows in memory the last layer's nrc1 and
    nrc1_variance equal metrics.nrc1 and metrics_from_features on the same float32 features to
    float rounding, so a planted tiny residual keeps metrics' precision (tests/test_precision.py);
    from sums, layer_metrics_from_stats equals metrics_from_stats on the same FeatureStats."""
    from tests import reference_numpy as ref
    from tests.test_precision import D, M, N, planted

    h, w = planted(residual)
    y = np.random.default_rng(3).normal(size=(M, N)).astype(np.float32)
    weights = [deep.LayerWeights(jnp.eye(D, 7), jnp.asarray(w))] * 2
    layers = deep.per_layer_metrics([np.asarray(h[:, ::-1]), h], y, y, weights)
    full = metrics.metrics_from_features(h, y, y, w)
    for key, variant in (("nrc1", "paper"), ("nrc1_variance", "variance")):
        got = float(layers[key][-1])
        assert got == pytest.approx(float(metrics.nrc1(h, N, variant=variant)), rel=1e-5), key
        assert got == pytest.approx(float(full[key]), rel=1e-5), key
        assert got == pytest.approx(ref.nrc1(h, N, variant), rel=0.05), key
    assert float(layers["alignment"][-1]) == pytest.approx(1.0, abs=1e-3)  # w spans the top-N PCs
    stats = metrics.feature_stats(h, y, y)
    from_stats = deep.layer_metrics_from_stats(stats, weights[-1])
    merged = metrics.metrics_from_stats(stats, w)
    for key in ("nrc1", "nrc1_variance"):
        assert float(from_stats[key]) == pytest.approx(float(merged[key]), rel=1e-5, abs=1e-12), key


def test_rows_and_stats_paths_agree_with_a_mask():
    """layer_metrics (rows in memory, padded rows masked) equals layer_metrics_from_stats of the
    kept rows for every key, in float64."""
    h, y, own, reader = sample(seed=8, m=120)
    weights = deep.LayerWeights(jnp.asarray(own), jnp.asarray(reader))
    pad_h = np.concatenate([h, np.full((30, h.shape[1]), np.nan)])
    pad_y = np.concatenate([y, np.full((30, y.shape[1]), 7.0)])
    mask = np.arange(150) < 120
    with jax.enable_x64(True):
        rows = deep.layer_metrics(pad_h, pad_y, weights, mask=mask)
        sums = deep.layer_metrics_from_stats(metrics.feature_stats(h, y, y), weights)
        for key in deep.LAYER_KEYS:
            np.testing.assert_allclose(float(rows[key]), float(sums[key]), rtol=1e-9, err_msg=key)


def test_collapsed_layer_scores():
    """Features that are an affine image of the targets (d > n): NRC1 = 0, probe error 0, alignment 1
    with a reader whose rows span the same subspace."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=(300, 3))
    basis = np.linalg.qr(rng.normal(size=(12, 3)))[0]
    h = y @ basis.T + 5.0
    reader = rng.normal(size=(5, 3)) @ basis.T
    with jax.enable_x64(True):
        got = deep.layer_metrics(h, y, deep.LayerWeights(jnp.eye(12)[:, :7], jnp.asarray(reader)))
        assert float(got["nrc1_variance"]) == pytest.approx(0.0, abs=1e-12)
        assert float(got["probe_mse"]) == pytest.approx(0.0, abs=1e-9)
        assert float(got["alignment"]) == pytest.approx(1.0, abs=1e-12)
        assert float(got["stable_rank"]) <= 3.0 + 1e-9


def test_cka_invariances():
    h, y, _, _ = sample(seed=4)
    rng = np.random.default_rng(5)
    q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    qy = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    with jax.enable_x64(True):
        base = float(deep.layer_metrics(h, y)["cka"])
        assert 0.0 < base <= 1.0
        for hh, yy in ((3.7 * h, y), (h @ q + 1.0, y), (h, 0.2 * y @ qy - 4.0)):
            assert float(deep.layer_metrics(hh, yy)["cka"]) == pytest.approx(base, rel=1e-10)
        # not invariant to an anisotropic scaling: the test can fail
        assert float(deep.layer_metrics(h * np.linspace(0.1, 10, 12), y)["cka"]) != pytest.approx(base, rel=1e-3)


def test_probe_equals_lstsq_and_default_ridge_is_close():
    h, y, _, _ = sample(seed=6, m=80)
    h[:, 5] = h[:, 4] * 2.0  # rank-deficient design: lstsq's minimum-norm fit, same residual
    design = np.concatenate([h, np.ones((len(h), 1))], 1)
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    expected = np.mean(np.sum((design @ coef - y) ** 2, axis=1))
    with jax.enable_x64(True):
        exact = float(deep.layer_metrics(h, y, probe_ridge=1e-14)["probe_mse"])
        default = float(deep.layer_metrics(h, y)["probe_mse"])
    assert exact == pytest.approx(expected, rel=1e-7)
    assert default == pytest.approx(expected, rel=1e-3)
    assert default >= exact


def test_layer_weights_of_mlp_and_small_cnn():
    """Shapes only (jax.eval_shape: nothing is compiled): each layer's own weights produce it and
    its reader reads it."""
    import ml_collections

    from nrc_jax.engine import models

    def shapes(cfg, x):
        net = models.get_model(cfg, 2)
        params = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)["params"]
        _, _, hidden = jax.eval_shape(net.apply, {"params": params}, x)
        weights = jax.eval_shape(lambda p: models.layer_weights(p, cfg), params)
        return [w.own.shape for w in weights], [w.reader.shape for w in weights], [h.shape[1] for h in hidden]

    cfg = models.default_model_config()
    cfg.widths = (6, 5, 4)
    own, readers, widths = shapes(cfg, jnp.zeros((1, 3)))
    assert own == [(6, 3), (5, 6), (4, 5)] and readers == [(5, 6), (4, 5), (2, 4)] and widths == [6, 5, 4]

    cnn = ml_collections.ConfigDict(models.default_model_config().to_dict())
    cnn.arch, cnn.channels, cnn.feature_dim = "small_cnn", (4, 8), 6
    own, readers, widths = shapes(cnn, jnp.zeros((3, 8, 8, 1)))
    assert [o[0] for o in own] == widths == [4, 8, 6] and [r[1] for r in readers] == widths
    assert readers[-1] == (2, 6)

    resnet = ml_collections.ConfigDict(models.default_model_config().to_dict())
    resnet.update(arch="resnet18", width=4, stem="cifar", norm="none")
    own, readers, widths = shapes(resnet, jnp.zeros((1, 8, 8, 3)))
    assert [o[0] for o in own] == widths == [4, 8, 16, 32] and [r[1] for r in readers] == widths


def test_layer_rows_format():
    layers = {k: np.arange(3.0) + i for i, k in enumerate(deep.LAYER_KEYS)}
    layers["width"] = np.asarray([8, 8, 4])
    rows = deep.layer_rows(layers)
    assert [r["layer"] for r in rows] == [0, 1, 2] and [r["width"] for r in rows] == [8, 8, 4]
    assert set(rows[0]) == {"layer", "width", *deep.LAYER_KEYS}
    assert rows[2]["cka"] == 2.0 + deep.LAYER_KEYS.index("cka")


# ----------------------------------------------------------------------------- end to end
def test_per_layer_run_matches_recomputation_from_exported_features(tmp_path):
    """The issue's check: a per-layer run on data made here (not in the repository): every hidden
    layer is reported, and each layer's nrc1_variance (and the other keys) equals a float64
    recomputation from `inspect --export`'s layer_features_<i> and the checkpointed weights."""
    from configs import mlp
    from nrc_jax import inspect
    from nrc_jax.engine import models, train
    from nrc_jax.io import run_files

    rng = np.random.default_rng(7)
    x = rng.normal(size=(130, 5)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]) + x[:, 1], x[:, 2] * x[:, 3] - x[:, 4]], 1).astype(np.float32)
    data_path = str(tmp_path / "made_here.npz")
    np.savez(data_path, x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    config = mlp.get_config()
    config.data.update(name="npz", path=data_path)
    config.model.widths = (16, 12, 8)
    config.metrics.per_layer = True
    config.train.update(epochs=3, eval_every=3, checkpoint_every=3, batch_size=32, progress_bar=False)
    config.mesh.num_devices = 1
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)

    rows = run_files.read_metrics(workdir)
    assert rows and all([layer["width"] for layer in r["layers"]] == [16, 12, 8] for r in rows)
    assert all([layer["layer"] for layer in r["layers"]] == [0, 1, 2] for r in rows)
    final = rows[-1]
    out = str(tmp_path / "export.npz")
    run = inspect.load_run(workdir)
    inspect.export(run, out)
    weights = models.layer_weights(jax.tree.map(lambda a: a[0], run["state"].params), config.model)
    with np.load(out) as f:
        assert int(f["epoch"]) == final["epoch"] == 3
        targets = f["targets"].astype(np.float64)
        for i, logged in enumerate(final["layers"]):
            h = f[f"layer_features_{i}"].astype(np.float64)
            assert h.shape == (100, logged["width"])
            expected = np_layer_metrics(h, targets, np.asarray(weights[i].own, np.float64),
                                        np.asarray(weights[i].reader, np.float64))
            assert logged["nrc1_variance"] == pytest.approx(expected["nrc1_variance"], rel=2e-3, abs=1e-5)
            for key in deep.LAYER_KEYS:
                assert logged[key] == pytest.approx(expected[key], rel=5e-3, abs=1e-4), (i, key)
        np.testing.assert_allclose(f["layer_features_2"], f["features"])
