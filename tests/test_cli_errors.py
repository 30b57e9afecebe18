"""Every command-line entry point prints a user error as one message, without a traceback, and exits 2.

Each case starts a fresh interpreter (what a user runs); they all run at once to share the wait.
None of them gets as far as compiling: they stop at the config, the data or the workdir.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = [sys.executable, "-m", "nrc_jax.main", "--config=configs/mlp.py"]
TINY = ["--config.model.widths=(16, 16)", "--config.train.batch_size=32", "--config.train.progress_bar=False",
        "--config.mesh.num_devices=1", "--config.train.epochs=4", "--config.train.eval_every=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """good.npz, nan_targets.npz (2 nan in y_train, first at row 7), rows.npz (100 x rows, 99 y rows)."""
    d = tmp_path_factory.mktemp("cli_data")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = rng.normal(size=(120, 2)).astype(np.float32)
    np.savez(d / "good.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    y_nan = y.copy()
    y_nan[[7, 30], [1, 0]] = np.nan
    np.savez(d / "nan_targets.npz", x_train=x[:100], y_train=y_nan[:100], x_test=x[100:], y_test=y[100:])
    np.savez(d / "rows.npz", x_train=x[:100], y_train=y[:99], x_test=x[100:], y_test=y[100:])
    (d / "not_an_npz.npz").write_text("hello")
    return d


def cases(d, tmp):
    """name -> (argv, texts the message must contain)."""
    npz = lambda name: [f"--config.data.path={d / name}", "--config.data.name=npz"]
    work = lambda name: [f"--workdir={tmp / name}"]
    return {
        "unknown data set": (MAIN + work("a") + TINY + ["--config.data.name=halfcheetah_v9"], ["halfcheetah_v9", "data.name"]),
        "missing npz": (MAIN + work("b") + TINY + npz("missing.npz"), [str(d / "missing.npz")]),
        "not an npz": (MAIN + work("c") + TINY + npz("not_an_npz.npz"), [str(d / "not_an_npz.npz"), "cannot read"]),
        "nan targets": (MAIN + work("d") + TINY + npz("nan_targets.npz"), ["nan", "2 non-finite", "first at row 7", "targets"]),
        "row mismatch": (MAIN + work("e") + TINY + npz("rows.npz"), ["rows", "100", "99"]),
        "negative weight decay": (MAIN + work("f") + TINY + npz("good.npz") + ["--config.optim.weight_decay=-0.01"],
                                  ["optim.weight_decay=-0.01", ">= 0"]),
        "negative sweep weight decay": (MAIN + work("g") + TINY + npz("good.npz") + ["--config.sweep.weight_decay=(0.01, -1.0)"],
                                        ["sweep.weight_decay[1]=-1.0"]),
        "batch over devices": (MAIN + work("h") + TINY + npz("good.npz") + ["--config.mesh.num_devices=-1", "--config.train.batch_size=30"],
                               ["train.batch_size=30", "devices"]),
        "too many target dims": (MAIN + work("i") + TINY + npz("good.npz") + ["--config.model.widths=(16, 1)"],
                                 ["n=2 target dims", "d=1"]),
        "missing config file": ([sys.executable, "-m", "nrc_jax.main", "--config=configs/no_such_config.py"] + work("j"),
                                ["configs/no_such_config.py"]),
        "config argument": ([sys.executable, "-m", "nrc_jax.main", "--config=configs/mlp.py:fast"] + work("k"),
                            ["unknown argument 'fast'"]),
        "mistyped override": (MAIN + work("l") + ["--config.train.eval_evry=5"], ["--config.train.eval_evry", "no field", "Did you mean \"eval_every\""]),
        "override type": (MAIN + work("m") + ["--config.train.epochs=ten"], ["--config.train.epochs=ten"]),
        "inspect: not a run": ([sys.executable, "-m", "nrc_jax.inspect", str(tmp / "nowhere")], [str(tmp / "nowhere")]),
        "plot: not a run": ([sys.executable, "-m", "nrc_jax.plot", str(tmp / "nowhere"), "--out", str(tmp / "plots")],
                            [str(tmp / "nowhere")]),
        "data: missing path": ([sys.executable, "-m", "nrc_jax.data", "describe", "npz", "--path", str(d / "missing.npz")],
                               [str(d / "missing.npz")]),
        "data: nan targets": ([sys.executable, "-m", "nrc_jax.data", "describe", "npz", f"--data.path={d / 'nan_targets.npz'}"],
                              ["nan"]),
        "data: mistyped field": ([sys.executable, "-m", "nrc_jax.data", "describe", "npz", "--data.train_sz=5"],
                                 ["--data.train_sz", "no field 'train_sz'"]),
        "ufm: d < n": ([sys.executable, "-m", "nrc_jax.ufm", "--config=configs/ufm.py:quick", f"--config.out_dir={tmp / 'ufm'}",
                        "--config.d=2"], ["d=2"]),
    }


@pytest.fixture(scope="module")
def results(data_dir, tmp_path_factory):
    """name -> (exit status, stderr) of every case, run concurrently."""
    tmp = tmp_path_factory.mktemp("cli_runs")
    procs = {name: (subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                    texts) for name, (argv, texts) in cases(data_dir, tmp).items()}
    out = {}
    for name, (proc, texts) in procs.items():
        _, stderr = proc.communicate(timeout=600)
        out[name] = (proc.returncode, stderr, texts)
    return out


@pytest.mark.parametrize("name", list(cases(pathlib.Path("."), pathlib.Path("."))))
def test_user_error_is_one_message_without_traceback(results, name):
    status, stderr, texts = results[name]
    assert status == 2, stderr
    assert "Traceback" not in stderr, stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, stderr
    message = stderr[stderr.index("error: "):]
    for text in texts:
        assert text in message, f"{text!r} not in {message!r}"
