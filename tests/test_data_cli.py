"""`python -m nrc_jax.data` as a user runs it: describe, export, table, and user errors (exit 2, no traceback)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data_fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable
SMALL = ["--data.train_size=60", "--data.test_size=12", "--data.image_size", "16"]


def cli(*args):
    return subprocess.run([PYTHON, "-m", "nrc_jax.data", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def lambdas(y):
    centered = y - y.mean(0)
    eig = np.linalg.eigvalsh(centered.T @ centered / y.shape[0])
    return eig[0], eig[-1]


def test_describe_export_agree(tmp_path):
    described = cli("describe", "synthetic_images", "--json", *SMALL)
    assert described.returncode == 0, described.stderr
    row = json.loads(described.stdout)
    assert list(row) == ["name", "train_size", "test_size", "input_shape", "target_dim", "target_correlation",
                         "lambda_min", "lambda_max"]
    assert (row["train_size"], row["test_size"], row["input_shape"], row["target_dim"]) == (60, 12, [16, 16, 3], 3)
    assert len(row["target_correlation"]) == 3
    exported = cli("export", "synthetic_images", tmp_path / "out" / "s.npz", *SMALL)
    assert exported.returncode == 0, exported.stderr
    with np.load(tmp_path / "out" / "s.npz") as f:
        arrays = {k: f[k] for k in f.files}
    assert sorted(arrays) == ["x_test", "x_train", "y_test", "y_train"]
    assert arrays["x_train"].shape == (60, 16, 16, 3) and np.isfinite(arrays["x_train"]).all()
    np.testing.assert_allclose(lambdas(arrays["y_train"].astype(np.float64)), (row["lambda_min"], row["lambda_max"]),
                               rtol=1e-6)
    # The export reads back through the npz loader with the same Table 1 row.
    again = json.loads(cli("describe", "npz", "--path", tmp_path / "out" / "s.npz", "--json").stdout)
    for key in ("train_size", "test_size", "input_shape", "target_dim"):
        assert again[key] == row[key]
    for key in ("target_correlation", "lambda_min", "lambda_max"):
        np.testing.assert_allclose(again[key], row[key], rtol=1e-6)


def test_describe_text_with_transform(tmp_path):
    fx.write_npz(tmp_path / "d.npz", n=2)
    out = cli("describe", "npz", f"--data.path={tmp_path / 'd.npz'}", "--data.target_transform=zca")
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert lines["name"] == "npz" and lines["train_size"] == "40" and lines["target_dim"] == "2"
    assert float(lines["lambda_min"]) == pytest.approx(1.0, abs=1e-4)  # whitened targets
    assert float(lines["target_correlation"]) == pytest.approx(0.0, abs=1e-4)


def test_table_markdown():
    out = cli("table", "synthetic_images", *SMALL)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("| name | train_size | test_size | input_shape | target_dim")
    assert lines[2].startswith("| synthetic_images | 60 | 12 | [16, 16, 3] | 3 |")
    listing = cli("list").stdout
    assert "synthetic_images\n" in listing and "sgemm  (needs data.path)" in listing


def test_typed_overrides_reach_the_loaded_config(monkeypatch, capsys):
    from nrc_jax.data import __main__ as data_cli

    real_load, loaded = data_cli.load_dataset, []

    def recording_load(cfg):
        loaded.append(cfg)
        return real_load(cfg)

    monkeypatch.setattr(data_cli, "load_dataset", recording_load)
    argv = ["table", "synthetic_images", "sgemm", "--json", "--data.train_size=60", "--data.test_size", "12",
            "--data.image_size=16", "--data.action_noise=0", "--data.target_transform=zca"]
    assert data_cli.main(argv) == 2  # sgemm needs data.path: its row fails, synthetic_images' is printed
    assert [cfg.name for cfg in loaded] == ["synthetic_images", "sgemm"]
    for cfg in loaded:
        assert (cfg.train_size, cfg.test_size, cfg.image_size, cfg.target_transform) == (60, 12, 16, "zca")
        assert type(cfg.train_size) is int and type(cfg.action_noise) is float and cfg.action_noise == 0.0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["train_size"], row["test_size"], row["input_shape"]) == (60, 12, [16, 16, 3])
    assert row["lambda_min"] == pytest.approx(1.0, abs=1e-4)  # zca reached the loader: whitened targets


@pytest.mark.parametrize("argv, expected", [
    (["--data.train_sz=5"], "--data.train_sz: the config has no field 'train_sz'. Did you mean \"train_size\""),
    (["--data.image_size=big"], "--data.image_size=big"),
    (["--json=maybe"], "--json=maybe"),
])
def test_bad_data_flag_is_one_error_line_and_exit_2(argv, expected, capsys):
    from nrc_jax.data import __main__ as data_cli

    with pytest.raises(SystemExit) as exit_info:
        data_cli.parse_args(["describe", "synthetic_images", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: python -m nrc_jax.data: ") and len(err.strip().splitlines()) == 1
    assert expected in err


@pytest.mark.parametrize("case", ["unknown", "missing_path", "wrong_layout", "nan", "rows", "bad_set", "export_dir"])
def test_user_errors_exit_2_without_traceback(tmp_path, case):
    bad = tmp_path / "bad.npz"
    if case == "nan":
        np.savez(bad, x_train=np.array([[1.0], [np.nan]]), y_train=np.ones((2, 1)), x_test=np.ones((1, 1)),
                 y_test=np.ones((1, 1)))
    elif case == "rows":
        np.savez(bad, x_train=np.ones((3, 1)), y_train=np.ones((2, 1)), x_test=np.ones((1, 1)), y_test=np.ones((1, 1)))
    elif case == "wrong_layout":
        (tmp_path / "sgemm_product.csv").write_text("a,b\n1,2\n")
    args = {"unknown": ("describe", "imagenet"),
            "missing_path": ("describe", "d4rl", "--path", tmp_path / "missing.hdf5"),
            "wrong_layout": ("describe", "sgemm", "--path", tmp_path),
            "nan": ("export", "npz", tmp_path / "o.npz", "--path", bad),
            "rows": ("describe", "npz", "--path", bad),
            "bad_set": ("describe", "synthetic_images", "--data.train_sz=5"),
            "export_dir": ("export", "synthetic_images", tmp_path, *SMALL)}[case]
    expected = {"unknown": "known data sets: carla, d4rl", "missing_path": "missing.hdf5",
                "wrong_layout": "expected 'MWG,NWG", "nan": "non-finite", "rows": "3 rows but targets have 2 rows",
                "bad_set": "no field 'train_sz'", "export_dir": "cannot write"}[case]
    out = cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: ")
    assert expected in out.stderr
    if case not in ("unknown", "bad_set", "export_dir"):
        assert str(tmp_path) in out.stderr  # names the path
