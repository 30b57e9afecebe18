"""The PyTorch reference loop of benchmarks/ runs, and its NRC numbers agree with nrc_jax.core.metrics.

The benchmark's ratios are only meaningful if the reference computes the same metrics: checked here
on the same features, against nrc_jax.core.metrics and the float64 numpy oracle.
"""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import torch_reference  # noqa: E402

import reference_numpy  # noqa: E402
from nrc_jax.core import metrics  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch/BLAS thread: on a shared 2-core machine spinning OpenMP threads cost far more than they give."""
    from threadpoolctl import threadpool_limits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def _relu_features(m: int, d: int, seed: int) -> np.ndarray:
    """Non-negative, non-centered features (M, d) like a ReLU layer's, with a few dominant directions."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((m, 4)) * np.array([3.0, 2.0, 1.0, 0.5])
    h = latent @ rng.standard_normal((4, d)) + 0.3 * rng.standard_normal((m, d))
    return np.maximum(h, 0.0).astype(np.float32)


def test_reference_nrc_matches_nrc_jax_and_oracle():
    n = 3
    rng = np.random.default_rng(n)
    h = _relu_features(600, 32, seed=n)
    w = rng.standard_normal((n, 32)).astype(np.float32)
    y = rng.standard_normal((600, n)).astype(np.float32) @ rng.standard_normal((n, n)).astype(np.float32)
    sigma_sqrt, lambda_min = torch_reference.target_sigma_sqrt(y)
    ref = torch_reference.nrc_from_features(h, w, sigma_sqrt, lambda_min)

    sigma = np.cov(y, rowvar=False, bias=True)
    stats = metrics.feature_stats(h, y, y)
    ours = metrics.metrics_from_stats(stats, w, sigma=sigma.astype(np.float32))
    gamma, value = reference_numpy.best_gamma(w, sigma)

    assert ref["nrc1"] == pytest.approx(float(ours["nrc1"]), rel=1e-4, abs=1e-6)
    assert ref["nrc2"] == pytest.approx(float(ours["nrc2"]), rel=1e-4, abs=1e-6)
    assert ref["nrc3"] == pytest.approx(float(ours["nrc3"]), rel=1e-3, abs=1e-6)
    assert ref["nrc1"] == pytest.approx(reference_numpy.nrc1(h, n), rel=1e-4, abs=1e-6)
    assert ref["nrc2"] == pytest.approx(reference_numpy.nrc2(h, w), rel=1e-4, abs=1e-6)
    assert ref["nrc3"] == pytest.approx(value, rel=1e-3, abs=1e-6)
    assert ref["nrc3_gamma"] == pytest.approx(gamma, rel=1e-3, abs=1e-3 * lambda_min)


def test_gram_schmidt_spans_the_row_space_and_drops_dependent_rows():
    rows = torch.tensor([[1.0, 2.0, 0.0, 1.0], [2.0, 4.0, 0.0, 2.0], [0.0, 1.0, 1.0, 0.0]])
    basis = torch_reference.gram_schmidt(rows)
    assert basis.shape == (2, 4)
    np.testing.assert_allclose((basis @ basis.T).numpy(), np.eye(2), atol=1e-6)
    projector = basis.T @ basis
    np.testing.assert_allclose((rows @ projector).numpy(), rows.numpy(), atol=1e-5)


def test_reference_loop_trains_and_evaluates():
    x_train, y_train, x_test, y_test = torch_reference.random_regression_data(300, 5, 2, seed=0)
    assert (x_train.shape, y_train.shape, x_test.shape, y_test.shape) == ((300, 5), (300, 2), (60, 5), (60, 2))
    run = torch_reference.make_run(x_train, y_train, x_test, y_test, weight_decay=1e-3)
    before = run.evaluate()
    history = run.run(epochs=4, eval_every=2)
    assert [row["epoch"] for row in history] == [2, 4]
    after = history[-1]
    assert after["train_mse"] < before["train_mse"]
    for key in ("nrc1", "nrc2", "nrc3", "train_mse", "test_mse"):
        assert np.isfinite(after[key])
    assert 0.0 <= after["nrc1"] <= 1.0 and 0.0 <= after["nrc2"] <= 1.0
    assert 0.0 <= after["nrc3_gamma"] < run.lambda_min


def test_loss_is_half_mse_plus_half_decay_over_all_parameters():
    model = torch_reference.MLP(3, 2)
    x, y = torch.randn(7, 3), torch.randn(7, 2)
    prediction, features = model(x)
    assert features.shape == (7, torch_reference.HIDDEN)
    loss = torch_reference.regularized_loss(model, prediction, y, weight_decay=0.1).detach()
    l2 = sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    mse = float(((prediction.detach() - y) ** 2).sum(1).mean())
    assert float(loss) == pytest.approx(0.5 * mse + 0.05 * l2, rel=1e-5)


# ----------------------------------------------------------------------------- the competent loop (issue 19)
import torch_competent  # noqa: E402


def test_competent_nrc_matches_the_published_reference_and_nrc_jax():
    n = 3
    rng = np.random.default_rng(1)
    h = _relu_features(600, 32, seed=7)
    w = rng.standard_normal((n, 32)).astype(np.float32)
    y = rng.standard_normal((600, n)).astype(np.float32) @ rng.standard_normal((n, n)).astype(np.float32)
    sigma_sqrt, lambda_min = torch_reference.target_sigma_sqrt(y)
    published = torch_reference.nrc_from_features(h, w, sigma_sqrt, lambda_min)
    competent = torch_competent.nrc_from_features(torch.as_tensor(h), torch.as_tensor(w), sigma_sqrt, lambda_min)
    ours = metrics.metrics_from_stats(metrics.feature_stats(h, y, y), w,
                                      sigma=np.cov(y, rowvar=False, bias=True).astype(np.float32))
    for key in ("nrc1", "nrc2", "nrc3"):
        assert competent[key] == pytest.approx(published[key], rel=1e-4, abs=1e-6), key
        assert competent[key] == pytest.approx(float(ours[key]), rel=1e-3, abs=1e-6), key
    assert competent["nrc3_gamma"] == pytest.approx(published["nrc3_gamma"], rel=1e-6, abs=1e-9)


def test_competent_loop_trains_like_the_published_one():
    """Same model, initialization, optimizer and loss: one epoch over one full batch (no shuffle
    order to differ) gives the same parameters as the published loop's; evaluations are exact."""
    arrays = torch_reference.random_regression_data(256, 5, 2, seed=0)
    published = torch_reference.make_run(*arrays, weight_decay=1e-2, seed=3)
    competent = torch_competent.make_run(*arrays, weight_decay=1e-2, seed=3)
    published.train_epoch()
    competent.train_epoch()
    for a, b in zip(published.model.parameters(), competent.model.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    ours, theirs = competent.evaluate(), published.evaluate()
    for key in ("nrc1", "nrc2", "nrc3", "train_mse", "test_mse"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    history = competent.run(epochs=4, eval_every=2)
    assert [row["epoch"] for row in history] == [2, 4] and history[-1]["train_mse"] < theirs["train_mse"]


def test_competent_script_runs_on_an_npz(tmp_path, capsys):
    import json

    path = tmp_path / "tiny.npz"
    x_train, y_train, x_test, y_test = torch_reference.random_regression_data(100, 3, 2, seed=1)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    torch_competent.main([f"--npz={path}", "--epochs=4", "--eval-every=2"])
    out = json.loads(capsys.readouterr().out)
    assert out["epochs"] == 4 and np.isfinite(out["final"]["nrc1"]) and np.isfinite(out["final"]["test_mse"])


def test_bench_dry_run_reports_both_references_and_the_ceiling(tmp_path):
    """`bench.py --dry` (the timing sections at a tiny size; the metrics and whole-process sections are
    left out here) writes a report whose every ratio names its reference, from the measured numbers."""
    import json
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    env = {**os.environ, "XLA_FLAGS": "", "OPENBLAS_NUM_THREADS": "1"}  # one device, as a user's process
    subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench.py"), "--dry", "--torch-threads=1,2",
                    "--sections=peak,train,eval,e2e", f"--out={report}", f"--json={raw}"],
                   cwd=root, env=env, check=True, capture_output=True, timeout=600)
    text, results = report.read_text(), json.loads(raw.read_text())
    assert set(results["reference"]) == set(results["competent"]) == set(results["nrc_jax"]) == {"tiny"}
    for heading in ("end to end vs the published loop", "end to end vs the competent loop",
                    "time over the matmul-peak bound", "| nrc_jax | published | vs published | competent | vs competent |"):
        assert heading in text, heading
    e2e = results["nrc_jax"]["tiny"]["e2e_epochs_per_s"] / results["competent"]["tiny"]["e2e_epochs_per_s"]
    assert f"**{e2e:.1f}x**" in text  # the table's ratio is the measured one
    assert set(results["competent"]["tiny"]["by_threads"]) == {"1", "2"}  # each reference at its best
