"""nrc_jax.studies (target preprocessing, single- vs multi-task) on a tiny data set made here, the
UFM predictions against a numpy recomputation, configs/studies.py and the CLI's user errors."""
import json
import os

import numpy as np
import pytest

from nrc_jax import studies
from nrc_jax.io import run_files
from nrc_jax.io.config_files import repository_config

LAMBDAS = (0.3, 1.0)
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "studies.py")


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


def tiny_study_config(npz_path, study):
    config = repository_config("studies").get_config(study)
    config.run.data.update(name="npz", path=npz_path)
    config.run.model.widths = (8,)
    config.run.optim.lr = 1e-2
    config.run.train.update(epochs=3, batch_size=40)
    config.lambdas = LAMBDAS
    return config


def test_unknown_study_is_refused():
    with pytest.raises(ValueError, match="configs/studies.py: unknown argument 'nope'"):
        repository_config("studies").get_config("nope")


def test_the_run_config_follows_its_epochs():
    """Ten evaluations and a checkpoint at the end, also after --config.run.train.epochs=N."""
    run = studies.run_config(repository_config("studies").get_config("multitask"))
    assert (run.data.name, run.optim.name, run.optim.lr, run.train.batch_size, run.mesh.num_devices) == \
        ("swimmer", "adam", 1e-3, 1000, 1)
    assert (run.train.epochs, run.train.eval_every, run.train.checkpoint_every) == (2000, 200, 2000)
    for epochs, every in ((1500, 150), (15, 1), (3, 1)):
        config = studies.parse_args([f"--config={CONFIG}:preprocessing", f"--config.run.train.epochs={epochs}"]).config
        train = studies.run_config(config).train
        assert (train.epochs, train.eval_every, train.checkpoint_every) == (epochs, every, epochs)


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
    run = studies.run_config(repository_config("studies").get_config("multitask"))
    assert studies.with_weight_decay_sweep(run, (0.1, 0.0)).sweep.weight_decay == (0.1, 0.0)


def test_preprocessing_study_rows(npz_path, tmp_path):
    from nrc_jax.data import load_dataset

    config = tiny_study_config(npz_path, "preprocessing")
    config.transforms = ("zca",)
    result = studies.preprocessing_study(config, str(tmp_path))
    rows = result["rows"]
    assert [(r["transform"], r["regularizer"]) for r in rows] == [("zca", "ufm"), ("zca", "ufm")]
    for r in rows:
        data = studies.run_config(config).data
        data.target_transform = r["transform"]
        y = load_dataset(data).y_train
        assert r["predicted_mse"] == pytest.approx(np_ufm_mse(y, r["c"]), rel=1e-6)
        workdir = tmp_path / "preprocessing" / f"{r['transform']}_{r['regularizer']}"
        final = [row for row in run_files.read_metrics(str(workdir)) if row["sweep"] == r["sweep"]][-1]
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
    result = studies.multitask_study(tiny_study_config(npz_path, "multitask"), str(tmp_path))
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
    single = run_files.read_metrics(str(tmp_path / "multitask" / "single_1_ufm"))
    assert single[-1]["train_mse"] == first["single"]["measured_per_dim"][1] or len(LAMBDAS) > 1
    assert np.asarray(single[-1]["wwt"]).shape == (1, 1)


def test_cli_user_errors_exit_2(capsys, tmp_path):
    for argv, text in ((["--config.run.train.epoch=5"], "no field 'epoch'"), ([], "--config is required"),
                       (["--config.run.train.epochs=ten"], "--config.run.train.epochs=ten")):
        with pytest.raises(SystemExit) as exit_info:
            studies.main(([f"--config={CONFIG}:multitask"] if argv else []) + argv + ["--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and text in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert studies.main([f"--config={CONFIG}:multitask", "--config.lambdas=a,b", "--out", str(tmp_path)]) == 2
    assert "lambdas must be numbers >= 0" in capsys.readouterr().err
    assert studies.main([f"--config={CONFIG}:preprocessing", "--config.run.data.name=nope", "--config.run.train.epochs=2",
                         "--out", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown data set 'nope'") and "Traceback" not in err
    assert studies.main([f"--config={CONFIG}:preprocessing", "--config.lambdas=()", "--config.decays=()",
                         "--out", str(tmp_path)]) == 2
    assert "nothing to run" in capsys.readouterr().err
