"""nrc_jax.studies (target preprocessing, single- vs multi-task) on a tiny data set made here, the
UFM predictions against a numpy recomputation, and the CLI's user errors."""
import json
import os

import numpy as np
import pytest

from nrc_jax import studies, writers

LAMBDAS = (0.3, 1.0)


def np_ufm_mse(y, c):
    eigenvalues = np.linalg.eigvalsh(np.cov(np.asarray(y, np.float64).T, bias=True).reshape(y.shape[1], y.shape[1]))
    return float(np.sum(np.minimum(np.clip(eigenvalues, 0, None), c)))


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    z = np.tanh(x[:, :1] + 0.5 * x[:, 1:2])
    # two strongly correlated targets with different scales: the transforms and tasks differ
    y = np.concatenate([2.0 * z + 0.1 * x[:, 2:3], z - 0.2 * x[:, 3:4]], 1).astype(np.float32)
    path = str(tmp_path_factory.mktemp("studies") / "made_here.npz")
    np.savez(path, x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    return path


def tiny_study_config(npz_path):
    config = studies.study_config("npz", epochs=3, widths=(8,), lr=1e-2, batch_size=40)
    config.data.path = npz_path
    return config


def test_ufm_mse_is_the_closed_form():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(200, 3)) @ np.diag([3.0, 1.0, 0.2])
    for lam in (0.0, 0.1, 0.5, 1.0, 4.0):
        assert studies.ufm_mse(y, lam, lam) == pytest.approx(np_ufm_mse(y, lam * lam), rel=1e-9, abs=1e-12)


def test_weight_decay_mapping_is_labelled_approximate():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(50, 2)) @ np.diag([1.0, 0.1])
    member = {"weight_decay": 0.3, "lambda_h": 0.0, "lambda_w": 0.0}
    predicted, mapping = studies.member_prediction(y, member, "weight_decay")
    assert mapping.startswith("approx") and predicted == pytest.approx(np_ufm_mse(y, 0.09), rel=1e-9)
    assert studies.with_weight_decay_sweep(studies.study_config(), (0.1, 0.0)).sweep.weight_decay == (0.1, 0.0)


def test_preprocessing_study_rows(npz_path, tmp_path):
    from nrc_jax.data import load_dataset

    config = tiny_study_config(npz_path)
    result = studies.preprocessing_study(config, str(tmp_path), transforms=("zca",), lambdas=LAMBDAS)
    rows = result["rows"]
    assert [(r["transform"], r["regularizer"]) for r in rows] == [("zca", "ufm"), ("zca", "ufm")]
    for r in rows:
        config.data.target_transform = r["transform"]
        y = load_dataset(config.data).y_train
        assert r["predicted_mse"] == pytest.approx(np_ufm_mse(y, r["c"]), rel=1e-6)
        workdir = tmp_path / "preprocessing" / f"{r['transform']}_{r['regularizer']}"
        final = [row for row in writers.read_metrics(str(workdir)) if row["sweep"] == r["sweep"]][-1]
        assert r["measured_mse"] == final["train_mse"] and final["epoch"] == 3
    zca = [r for r in rows if r["transform"] == "zca" and r["regularizer"] == "ufm"]
    np.testing.assert_allclose(zca[0]["eigenvalues"], [1.0, 1.0], rtol=1e-4)
    assert [r["c"] for r in zca] == pytest.approx([lam**2 for lam in LAMBDAS])
    assert zca[-1]["predicted_mse"] == pytest.approx(2.0, rel=1e-4)  # c = 1 >= every eigenvalue: fit nothing

    paths = studies.write_outputs(result, str(tmp_path / "out"))
    assert [os.path.basename(p) for p in paths] == ["preprocessing_npz.json", "preprocessing_npz.md",
                                                   "preprocessing_npz.png"]
    assert json.load(open(paths[0]))["rows"] == json.loads(json.dumps(rows))
    assert len(open(paths[1]).read().strip().splitlines()) == 2 + len(rows)


def test_multitask_study_rows(npz_path, tmp_path):
    config = tiny_study_config(npz_path)
    result = studies.multitask_study(config, str(tmp_path), lambdas=LAMBDAS)
    y = np.load(npz_path)["y_train"].astype(np.float64)
    assert len(result["rows"]) == len(LAMBDAS)
    for r, lam in zip(result["rows"], LAMBDAS):
        c = lam * lam
        assert r["multi"]["predicted_mse"] == pytest.approx(np_ufm_mse(y, c), rel=1e-6)
        assert r["single"]["predicted_mse"] == pytest.approx(
            sum(min(np.var(y[:, j]), c) for j in range(2)), rel=1e-6)
        assert r["single"]["measured_mse"] == pytest.approx(sum(r["single"]["measured_per_dim"]))
        assert len(r["multi"]["measured_per_dim"]) == 2
    # strongly correlated targets: for c between the small eigenvalue and the variances one network
    # for both is predicted to fit better than one network per target
    first = result["rows"][0]
    assert first["multi"]["predicted_mse"] < first["single"]["predicted_mse"]
    single = writers.read_metrics(str(tmp_path / "multitask" / "single_1_ufm"))
    assert single[-1]["train_mse"] == first["single"]["measured_per_dim"][1] or len(LAMBDAS) > 1
    assert np.asarray(single[-1]["wwt"]).shape == (1, 1)


def test_cli_user_errors_exit_2(capsys, tmp_path):
    assert studies.main(["multitask", "--lambdas", "a,b", "--out", str(tmp_path)]) == 2
    assert "comma-separated numbers" in capsys.readouterr().err
    assert studies.main(["preprocessing", "--dataset", "nope", "--epochs", "2", "--out", str(tmp_path),
                         "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown data set 'nope'") and "Traceback" not in err
    assert studies.main(["preprocessing", "--lambdas", "", "--decays", "", "--out", str(tmp_path)]) == 2
    assert "nothing to run" in capsys.readouterr().err
