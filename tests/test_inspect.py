"""inspect CLI: describes a run without training; --export matches the logged metrics."""
import json

import numpy as np
import pytest

from configs import mlp
from nrc_jax import inspect as nrc_inspect
from nrc_jax.core import metrics
from nrc_jax.engine import train
from nrc_jax.io import run_files


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """A 2-member weight-decay sweep with per-layer features on, trained for 4 epochs."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]), x[:, 1] - x[:, 2]], 1).astype(np.float32)
    root = tmp_path_factory.mktemp("inspect")
    np.savez(root / "d.npz", x_train=x[:70], y_train=y[:70], x_test=x[70:], y_test=y[70:])
    config = mlp.get_config()
    config.data.name, config.data.path = "npz", str(root / "d.npz")
    config.model.widths = (8, 8)
    config.train.update(epochs=4, eval_every=2, checkpoint_every=2, batch_size=16, progress_bar=False)
    config.metrics.per_layer = True
    config.sweep.weight_decay = (1e-2, 0.0)
    config.mesh.num_devices = 2
    train.train_and_evaluate(config, str(root / "run"))
    return root / "run"


def test_export_recomputes_logged_metrics(sweep_run, tmp_path, capsys):
    rows = run_files.read_metrics(str(sweep_run))
    for member in (0, 1):
        out = tmp_path / f"m{member}.npz"
        assert nrc_inspect.main([str(sweep_run), "--export", str(out), "--member", str(member)]) == 0
        f = np.load(out)
        assert f["features"].shape == (70, 8) and f["weights"].shape == (2, 8) and f["bias"].shape == (2,)
        assert f["targets"].shape == f["predictions"].shape == (70, 2)
        assert [f[f"layer_features_{i}"].shape for i in range(2)] == [(70, 8), (70, 8)]
        np.testing.assert_allclose(f["features"] @ f["weights"].T + f["bias"][None, :], f["predictions"],
                                   rtol=1e-4, atol=1e-5)
        final = [r for r in rows if r["sweep_index"] == member][-1]
        assert [layer["width"] for layer in final["layers"]] == [8, 8]  # metrics.per_layer rows
        assert final["epoch"] == int(f["epoch"]) == 4
        assert float(metrics.nrc1(f["features"], 2)) == pytest.approx(final["nrc1"], rel=1e-3)
        assert float(metrics.nrc2(f["features"], f["weights"])) == pytest.approx(final["nrc2"], rel=1e-3)
        assert float(metrics.mse(f["targets"], f["predictions"])) == pytest.approx(final["train_mse"], rel=1e-3)


def test_float64_check_recomputes_the_logged_metrics_in_both_precisions(sweep_run, capsys):
    import jax

    assert nrc_inspect.main([str(sweep_run), "--json", "--float64"]) == 0
    checks = json.loads(capsys.readouterr().out)["precision_check"]
    assert not jax.config.jax_enable_x64  # switched on only for the float64 recomputation
    rows = run_files.read_metrics(str(sweep_run))
    assert [c["member"] for c in checks] == [0, 1]
    assert [c["sweep"] for c in checks] == [{"weight_decay": 1e-2}, {"weight_decay": 0.0}]
    for check in checks:
        final = [r for r in rows if r["sweep_index"] == check["member"]][-1]
        for key in ("nrc1", "nrc2", "train_mse"):
            assert check["float32"][key] == pytest.approx(final[key], rel=1e-3), key
            assert check["float64"][key] == pytest.approx(check["float32"][key], rel=1e-3), key
    assert nrc_inspect.main([str(sweep_run), "--float64"]) == 0
    assert "nrc1_centered: " in capsys.readouterr().out


def test_json_description_and_step_selection(sweep_run, capsys):
    assert nrc_inspect.main([str(sweep_run), "--json", "--step", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == [2, 4] and info["step"] == 2
    assert info["param_shapes"]["['head']['kernel']"] == [2, 8, 2]
    assert [r["epoch"] for r in info["latest_metrics"]] == [2, 2]
    np.testing.assert_allclose(info["wwt"][1], info["latest_metrics"][1]["wwt"], rtol=1e-5)
    assert [m["sweep"] for m in info["members"]] == [{"weight_decay": 0.01}, {"weight_decay": 0.0}]
    assert nrc_inspect.main([str(sweep_run)]) == 0
    text = capsys.readouterr().out
    assert "saved steps (epochs): [2, 4]" in text and "W W^T" in text


def test_user_errors_exit_2(sweep_run, tmp_path, capsys):
    assert nrc_inspect.main([str(sweep_run), "--step", "3"]) == 2
    assert "saved steps: [2, 4]" in capsys.readouterr().err
    assert nrc_inspect.main([str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert nrc_inspect.main([str(sweep_run), "--export", str(tmp_path / "x.npz"), "--member", "5"]) == 2
    assert "--member 5" in capsys.readouterr().err
