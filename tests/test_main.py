"""The command line: a quick run, resume by re-running, locked config, user errors exit 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nrc_jax.io import run_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=300):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "nrc_jax.main", "--config=configs/mlp.py:quick", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = np.stack([x[:, 0] ** 2, x[:, 1]], 1).astype(np.float32)
    path = tmp_path_factory.mktemp("main") / "d.npz"
    np.savez(path, x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    return str(path)


SMALL = ["--config.data.name=npz", "--config.model.widths=(8,8)", "--config.train.batch_size=16",
         "--config.train.epochs=4", "--config.train.eval_every=2", "--config.train.checkpoint_every=2"]


def test_quick_run_then_rerun_resumes(npz_path, tmp_path):
    args = [f"--workdir={tmp_path}", f"--config.data.path={npz_path}", *SMALL]
    first = run_main(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [r["epoch"] for r in run_files.read_metrics(tmp_path)] == [0, 2, 4]
    written = (tmp_path / run_files.METRICS_FILE).read_text()
    assert json.load(open(tmp_path / "config.json"))["train"]["epochs"] == 4
    again = run_main(*args)  # finished run: resumes at epoch 4, trains nothing, keeps the rows
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / run_files.METRICS_FILE).read_text() == written


def test_typo_override_fails_and_user_errors_exit_2_without_traceback(npz_path, tmp_path):
    typo = run_main(f"--workdir={tmp_path}", "--config.optim.weight_dacay=0.1")
    assert typo.returncode != 0 and "weight_dacay" in typo.stderr
    missing = run_main(f"--workdir={tmp_path}", "--config.data.name=npz", "--config.data.path=/nonexistent/x.npz")
    assert missing.returncode == 2 and "/nonexistent/x.npz" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run_main(f"--workdir={tmp_path}", f"--config.data.path={npz_path}", *SMALL, "--config.optim.schedule=cosine")
    assert bad.returncode == 2 and "optim.schedule" in bad.stderr and "Traceback" not in bad.stderr


def test_paper_mlp_on_two_cpu_devices_does_not_deadlock(tmp_path):
    """The paper's MLP at Swimmer size on a 2-device CPU mesh: evaluation all-reduces that need only
    the data (a mask's row count) once deadlocked against the epoch loop's gradient all-reduce
    (XLA:CPU aborts with `rendezvous ... only 1 of them arrived`) within 20-40 epochs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 8)).astype(np.float32)
    y = np.tanh(x[:, :2]).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x[:1000], y_train=y[:1000], x_test=x[1000:], y_test=y[1000:])
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
           "--xla_cpu_collective_call_warn_stuck_timeout_seconds=5 --xla_cpu_collective_call_terminate_timeout_seconds=10"}
    done = subprocess.run([sys.executable, "-m", "nrc_jax.main", "--config=configs/mlp.py",
                           f"--workdir={tmp_path / 'run'}", "--config.data.name=npz", f"--config.data.path={tmp_path / 'd.npz'}",
                           "--config.train.epochs=120", "--config.train.progress_bar=False"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["epoch"] for r in run_files.read_metrics(tmp_path / "run")] == list(range(0, 121, 10))
