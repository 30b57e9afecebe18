"""nrc_jax.core.ufm (closed forms, gradient descent) and the UFM study command, against float64 numpy.

Every gradient-descent call here uses one problem shape; the penalized calls use the solver's
defaults and the lambda = 0 calls (tests and study) one other set of options, so the solver
compiles twice (balanced and plain branch) for the whole file, the study included.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nrc_jax import ufm_study
from nrc_jax.core import ufm
from nrc_jax.errors import ConfigError, DataError
from nrc_jax.io.config_files import repository_config

import reference_numpy as ref

M, N, D = 40, 3, 6
SOLVER = repository_config("ufm").solver_config().to_dict()  # the solver's defaults
ZERO_OPTIONS = {**SOLVER, "max_iters": 3_000, "log_every": 100, "tol": 0.0}  # lambda = 0: fixed iterations
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _targets(seed: int = 0, m: int = M, n: int = N) -> np.ndarray:
    """Correlated targets with a non-zero mean; eigenvalues roughly between 0.1 and 5."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(n, n)) + 1.5 * np.eye(n)
    return rng.normal(size=(m, n)) @ mix + rng.normal(size=n)


# An independent float64 numpy implementation of the spec's UFM section.


def np_loss(H, W, b, Y, lam_h, lam_w):
    m = Y.shape[0]
    residual = H @ W.T + b - Y
    return (np.sum(residual**2) + lam_h * np.sum(H**2)) / (2 * m) + lam_w / 2 * np.sum(W**2)


def np_minimizer(Y, lam_h, lam_w, d, seed):
    """(H*, W*, b*) built from the spec's formulas, with its own random R."""
    ybar = Y.mean(axis=0)
    sigma = (Y - ybar).T @ (Y - ybar) / Y.shape[0]
    values, vectors = np.linalg.eigh(sigma)
    c = lam_h * lam_w
    wwt = np.sqrt(lam_h / lam_w) * (vectors * np.maximum(np.sqrt(values) - np.sqrt(c), 0)) @ vectors.T
    root_values, root_vectors = np.linalg.eigh(wwt)
    root = (root_vectors * np.sqrt(np.clip(root_values, 0, None))) @ root_vectors.T
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, Y.shape[1])))
    W = root @ q.T
    H = (Y - ybar) @ np.linalg.inv(wwt + lam_h * np.eye(Y.shape[1])) @ W
    return H, W, ybar, wwt, values


def np_min_loss(values, c):
    return sum(np.sqrt(v * c) - c / 2 if v > c else v / 2 for v in values)


# The regimes: every direction fit, some truncated, none (c > lambda_max).
def _regime_lambdas(Y):
    values = np.linalg.eigvalsh(np.cov(Y.T, bias=True))
    cs = {"all_fit": 0.3 * values[0], "truncated": 0.5 * (values[0] + values[1]),
          "none_fit": 2.0 * values[-1]}
    # unequal penalties, so sqrt(lam_h/lam_w) != 1 is exercised
    return {name: (2.0 * np.sqrt(c), np.sqrt(c) / 2.0) for name, c in cs.items()}


@pytest.mark.parametrize("regime", ["all_fit", "truncated", "none_fit"])
def test_closed_form_matches_numpy_reference(regime):
    Y = _targets(1)
    lam_h, lam_w = _regime_lambdas(Y)[regime]
    c = lam_h * lam_w
    H_ref, W_ref, b_ref, wwt_ref, values = np_minimizer(Y, lam_h, lam_w, D, seed=5)
    opt = ufm.optimum(jnp.asarray(Y), lam_h, lam_w)
    H, W, b = ufm.closed_form(jnp.asarray(Y), lam_h, lam_w, D, jax.random.key(3))
    H, W, b = np.asarray(H), np.asarray(W), np.asarray(b)
    scale = max(1.0, np.abs(wwt_ref).max())
    np.testing.assert_allclose(opt["wwt"], wwt_ref, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(W @ W.T, wwt_ref, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(b, Y.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(opt["b"], Y.mean(axis=0), rtol=1e-12, atol=1e-12)
    expected_loss = np_min_loss(values, c)
    assert float(opt["loss"]) == pytest.approx(expected_loss, rel=1e-8)
    assert np_loss(H, W, b, Y, lam_h, lam_w) == pytest.approx(expected_loss, rel=1e-8)
    assert np_loss(H_ref, W_ref, b_ref, Y, lam_h, lam_w) == pytest.approx(expected_loss, rel=1e-8)
    assert float(ufm.loss(H, W, b, Y, lam_h, lam_w)) == pytest.approx(expected_loss, rel=1e-8)
    mse = np.mean(np.sum((H @ W.T + b - Y) ** 2, axis=1))
    assert mse == pytest.approx(np.sum(np.minimum(values, c)), rel=1e-8)
    assert float(opt["mse"]) == pytest.approx(np.sum(np.minimum(values, c)), rel=1e-8)
    # lam_h ||H||^2 = M lam_w ||W||^2, and the reported norms
    assert lam_h * np.sum(H**2) == pytest.approx(M * lam_w * np.sum(W**2), rel=1e-8, abs=1e-14)
    assert float(opt["w_norm_sq"]) == pytest.approx(np.sum(W**2), rel=1e-8, abs=1e-14)
    assert float(opt["h_norm_sq"]) == pytest.approx(np.sum(H**2) / M, rel=1e-8, abs=1e-14)
    assert int(opt["num_fit"]) == int(np.sum(values > c))
    if regime == "none_fit":
        assert np.abs(W).max() == 0 and np.abs(H).max() == 0


def test_closed_form_is_a_critical_point():
    Y = jnp.asarray(_targets(2))
    H, W, b = ufm.closed_form(Y, 0.3, 0.2, D, jax.random.key(0))
    grads = jax.jit(jax.grad(ufm.loss, argnums=(0, 1, 2)))(H, W, b, Y, 0.3, 0.2)
    for g in grads:
        assert float(jnp.abs(g).max()) < 1e-12


def test_closed_form_unchanged_by_R():
    Y = jnp.asarray(_targets(3))
    (H1, W1, b1), (H2, W2, b2) = (ufm.closed_form(Y, 0.2, 0.4, D, jax.random.key(k)) for k in (1, 2))
    assert float(jnp.abs(W1 - W2).max()) > 1e-3  # the bases differ ...
    np.testing.assert_allclose(W1 @ W1.T, W2 @ W2.T, atol=1e-12)  # ... nothing else does
    np.testing.assert_allclose(H1 @ W1.T, H2 @ W2.T, atol=1e-12)
    np.testing.assert_allclose(H1 @ H1.T, H2 @ H2.T, atol=1e-12)
    np.testing.assert_allclose(b1, b2)
    assert float(ufm.loss(H1, W1, b1, Y, 0.2, 0.4)) == pytest.approx(
        float(ufm.loss(H2, W2, b2, Y, 0.2, 0.4)), rel=1e-12)


def test_nrc_vanishes_at_the_optimum():
    Y = _targets(4)
    sigma = np.cov(Y.T, bias=True)
    values = np.linalg.eigvalsh(sigma)  # ascending
    for c in (0.25 * values[0], 0.5 * (values[0] + values[1])):  # all fit; lambda_min truncated
        lam = np.sqrt(c)
        H, W, _ = (np.asarray(a) for a in ufm.closed_form(Y, lam, lam, D, jax.random.key(0)))
        assert ref.nrc1(H, N) < 1e-10 and ref.nrc2(H, W) < 1e-10
        if c < values[0]:
            assert ref.nrc3(W, sigma, c) < 1e-10
        else:
            assert ref.nrc3(W, sigma, c) > 1e-3


@pytest.mark.parametrize("seed,lam_h,lam_w", [
    (0, 1e-2, 1e-1), (1, 1.0, 0.3), (2, 1e-3, 1e-3), (3, 1e-4, 1e-4), (4, 1e-4, 1.0)])
def test_gradient_descent_reaches_the_optimum(seed, lam_h, lam_w):
    Y = jnp.asarray(_targets(10 + seed))
    opt = ufm.optimum(Y, lam_h, lam_w)
    H, W, b, history = ufm.gradient_descent(Y, lam_h, lam_w, D, jax.random.key(seed), SOLVER)
    assert bool(history["converged"])
    gd_loss = float(ufm.loss(H, W, b, Y, lam_h, lam_w))
    assert gd_loss - float(opt["loss"]) <= 1e-6 * float(opt["loss"])
    assert gd_loss >= float(opt["loss"]) * (1 - 1e-12)  # the closed form is a lower bound
    np.testing.assert_allclose(W @ W.T, opt["wwt"], atol=1e-4 * float(jnp.abs(opt["wwt"]).max()))
    mse = float(jnp.mean(jnp.sum((H @ W.T + b[None, :] - Y) ** 2, axis=1)))
    assert mse == pytest.approx(float(opt["mse"]), rel=1e-4)
    # the history: loss never increases between records, and the NRC1/2 collapse
    assert np.all(np.diff(np.asarray(history["loss"])) <= 1e-12)
    assert float(history["loss"][-1]) == pytest.approx(gd_loss, rel=1e-12)
    assert float(history["nrc1"][-1]) < 1e-5 and float(history["nrc2"][-1]) < 1e-5
    assert float(history["nrc1"][0]) > 0.1


def test_gradient_descent_without_penalty_does_not_collapse():
    Y = jnp.asarray(_targets(20))
    H, W, b, history = ufm.gradient_descent(Y, 0.0, 0.0, D, jax.random.key(7), ZERO_OPTIONS)
    assert int(history["iterations"]) == ZERO_OPTIONS["max_iters"]
    assert float(ufm.loss(H, W, b, Y, 0.0, 0.0)) < 1e-10  # the targets are fit exactly ...
    H, W = np.asarray(H), np.asarray(W)
    assert ref.nrc1(H, N) > 0.05 and ref.nrc2(H, W) > 0.05  # ... with no collapse
    assert float(history["nrc2"][-1]) == pytest.approx(ref.nrc2(H, W), rel=1e-6)


def _penalty(H, W, lam_h, lam_w):
    return lam_h * np.sum(H**2) / (2 * H.shape[0]) + lam_w / 2 * np.sum(W**2)


@pytest.mark.parametrize("lam_h,lam_w", [(0.3, 0.05), (1e-4, 1.0)])
def test_balance_keeps_the_fit_and_minimizes_the_penalty(lam_h, lam_w):
    rng = np.random.default_rng(8)
    Y = _targets(8)
    H, W = rng.normal(size=(M, D)) + 0.5, rng.normal(size=(N, D))  # off-center, H not in row(W)
    Hb, Wb = (np.asarray(a) for a in ufm.balance(H, W, lam_h, lam_w))
    Hc = H - H.mean(axis=0)
    np.testing.assert_allclose(Hb @ Wb.T, Hc @ W.T, atol=1e-12 * np.abs(Hc @ W.T).max())
    np.testing.assert_allclose(Hb.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(lam_h * Hb.T @ Hb, M * lam_w * Wb.T @ Wb,
                               atol=1e-10 * np.abs(lam_h * Hb.T @ Hb).max())
    # the smallest penalty of any factorization of Z = Hc W^T: sqrt(c / M) ||Z||_* (AM-GM)
    nuclear = np.sum(np.linalg.svd(Hc @ W.T, compute_uv=False))
    assert _penalty(Hb, Wb, lam_h, lam_w) == pytest.approx(np.sqrt(lam_h * lam_w / M) * nuclear,
                                                            rel=1e-10)
    ybar = Y.mean(axis=0)
    before = np_loss(H, W, ybar - H.mean(axis=0) @ W.T, Y, lam_h, lam_w)
    after = np_loss(Hb, Wb, ybar, Y, lam_h, lam_w)
    assert after < before
    assert after == pytest.approx(before - _penalty(H, W, lam_h, lam_w)
                                  + _penalty(Hb, Wb, lam_h, lam_w), rel=1e-10)
    # at a balanced point the move is the identity (its free rotation is the nearest one)
    Hbb, Wbb = (np.asarray(a) for a in ufm.balance(Hb, Wb, lam_h, lam_w))
    np.testing.assert_allclose(Wbb, Wb, atol=1e-10)
    np.testing.assert_allclose(Hbb, Hb, atol=1e-10 * np.abs(Hb).max())
    with pytest.raises(ConfigError, match="lam_h > 0 and lam_w > 0"):
        ufm.balance(H, W, 0.0, lam_w)


def test_gradient_descent_plain_branch_with_balance_off():
    """balance=False runs the plain full-dimensional steps: slower, but the same optimum."""
    Y = jnp.asarray(_targets(30))
    lam = 0.3
    opt = ufm.optimum(Y, lam, lam)
    H, W, b, history = ufm.gradient_descent(Y, lam, lam, D, jax.random.key(1),
                                            {**ZERO_OPTIONS, "tol": SOLVER["tol"], "balance": False})
    assert bool(history["converged"])
    gd_loss = float(ufm.loss(H, W, b, Y, lam, lam))
    assert float(opt["loss"]) * (1 - 1e-12) <= gd_loss <= float(opt["loss"]) * (1 + 1e-6)


def test_optimum_without_penalties():
    opt = ufm.optimum(jnp.asarray(_targets(0)), 0.0, 0.0)
    assert float(opt["loss"]) == 0 and float(opt["mse"]) == 0
    assert bool(jnp.all(jnp.isnan(opt["wwt"])))
    with pytest.raises(ValueError, match="lam_h > 0 and lam_w > 0"):
        ufm.optimum(jnp.asarray(_targets(0)), 0.0, 1.0)
    with pytest.raises(ValueError, match="lam_h > 0 and lam_w > 0"):
        ufm.closed_form(jnp.asarray(_targets(0)), 0.0, 0.0, D, jax.random.key(0))


def test_bad_input_is_named_before_compiling():
    Y = _targets(0)
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match=r"d=2, n=3"):
        ufm.gradient_descent(Y, 0.1, 0.1, 2, key, SOLVER)
    with pytest.raises(ConfigError, match="lam_w"):
        ufm.closed_form(Y, 0.1, -1.0, D, key)
    with pytest.raises(ConfigError, match="lam_h"):
        ufm.gradient_descent(Y, float("nan"), 0.1, D, key, SOLVER)
    bad = Y.copy()
    bad[3, 1] = np.inf
    with pytest.raises(DataError, match=r"targets \(shape \(40, 3\)\) contains non-finite values"):
        ufm.optimum(bad, 0.1, 0.1)
    with pytest.raises(DataError, match=r"shape \(40,\)"):
        ufm.optimum(Y[:, 0], 0.1, 0.1)
    with pytest.raises(DataError, match=r"H \(40, 6\), W \(2, 6\)"):
        ufm.loss(np.zeros((M, D)), np.zeros((2, D)), np.zeros(N), Y, 0.1, 0.1)
    with pytest.raises(ConfigError, match=r"unknown \['step_size'\]"):
        ufm.gradient_descent(Y, 0.1, 0.1, D, key, {**SOLVER, "step_size": 0.1})
    with pytest.raises(ConfigError, match=r"missing \['atol', 'tol'\]"):
        ufm.gradient_descent(Y, 0.1, 0.1, D, key, {k: v for k, v in SOLVER.items() if not k.endswith("tol")})
    with pytest.raises(DataError, match=r"W0 must have shape \(3, 6\)"):
        ufm.gradient_descent(Y, 0.1, 0.1, D, key, SOLVER, W0=np.zeros((3, 5)))
    with pytest.raises(ConfigError, match="max_iters"):
        ufm.gradient_descent(Y, 0.1, 0.1, D, key, {**SOLVER, "max_iters": 0})


def _tiny_study_config(out_dir) -> ml_collections.ConfigDict:
    """Same shapes as the tests above; the lambda = 0 run has the same options (no new compile)."""
    config = repository_config("ufm").get_config("quick")
    config.out_dir = str(out_dir)
    config.synthetic.num_samples = M
    config.synthetic.eigenvalues = (2.0, 0.7, 0.2)
    config.d = D
    config.ratios = (0.1, 2.0, 20.0)
    config.trajectory_ratio = 0.1
    config.gd = ml_collections.ConfigDict(SOLVER)  # reuses the penalized compile
    config.gd.log_every = ZERO_OPTIONS["log_every"]
    config.zero_lambda_iters = ZERO_OPTIONS["max_iters"]  # ... and the lambda = 0 one
    return config


def test_study_writes_figures_and_tables(tmp_path, capsys):
    summary = ufm_study.run_study(_tiny_study_config(tmp_path))
    for name in ("nrc_vs_c.png", "trajectories.png", "gaps.csv", "gaps.md", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "[3/3]" in capsys.readouterr().out
    rows = summary["sweep"]
    stats = summary["target_stats"]
    np.testing.assert_allclose(stats["eigenvalues"], (2.0, 0.7, 0.2), rtol=1e-10)
    for row in rows:
        assert row["loss_rel_gap"] <= 1e-6 and row["gd_converged"]
        assert row["mse_opt"] == pytest.approx(np.sum(np.minimum(stats["eigenvalues"], row["c"])))
    assert rows[0]["closed_form"]["nrc3"] < 1e-10  # c < lambda_min
    assert rows[-1]["closed_form"]["w_norm"] == 0  # c > lambda_max
    assert min(summary["zero_lambda_history"]["nrc2"]) > 0.05
    plain = summary["plain_gd_history"]  # the trajectory figure's lambda > 0 run: no balancing move
    # the balanced solver is in W's row space to rounding (~1e-30) from its second entry on
    assert plain["nrc1"][0] > 0.1 and 1e-20 < plain["nrc1"][1] < plain["nrc1"][0] and plain["nrc1"][-1] < 1e-8
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert len(saved["sweep"]) == 3
    csv_lines = (tmp_path / "gaps.csv").read_text().splitlines()
    assert csv_lines[0].startswith("ratio,c,lam,loss_opt,loss_rel_gap") and len(csv_lines) == 4


def test_cli_rejects_a_bad_override_with_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nrc_jax.ufm", "--config=configs/ufm.py:quick",
         f"--config.out_dir={tmp_path}", "--config.d=2"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "d=2 must be >= n=3" in result.stderr and "Traceback" not in result.stderr
