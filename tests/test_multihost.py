"""End to end: `launch/local_multihost.sh 2` (2 processes x 2 CPU devices, gloo over loopback)
against `python -m nrc_jax.main` on 1 process x 4 devices, on a data set made here (not in the
repository). Checks: the same metrics (1e-3 relative), exactly one metrics.jsonl, a 2x2 checkpoint
restored on 1 device for inspection and continued there to the same end, and a batch size that
does not divide over the devices stopping every process with a message.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from nrc_jax.io import run_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch", "local_multihost.sh")
EPOCHS, EVERY = 4, 2
FEATURES, TARGETS = 5, 2
COMPARED = ("train_mse", "test_mse", "train_r2", "test_r2", "loss", "nrc1", "nrc2", "nrc3", "w_norm",
            "h_norm_sq", "train_mse_per_dim", "test_mse_per_dim", "evr", "wwt")

pytestmark = pytest.mark.slow


def main_flags(data_path: str, workdir: str, **overrides) -> list[str]:
    flags = {"config.data.name": "npz", "config.data.path": data_path, "config.train.batch_size": 32,
             "config.train.epochs": EPOCHS, "config.train.eval_every": EVERY,
             "config.train.checkpoint_every": EVERY, "config.train.progress_bar": False,
             "config.model.widths": "(16,16)", "config.sweep.seed": "(0,1)", **overrides}
    return [f"--config={REPO}/configs/mlp.py:quick", f"--workdir={workdir}"] + [
        f"--{k}={v}" for k, v in flags.items()]


def single_process_env(devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    for name in ("NRC_JAX_COORDINATOR", "NRC_JAX_NUM_PROCESSES", "NRC_JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def launch_env() -> dict:
    return dict(os.environ, NRC_JAX_DEVICES_PER_PROCESS="2", PYTHON=sys.executable, NRC_JAX_INIT_TIMEOUT="60")


def read_rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_rows_close(got: list[dict], expected: list[dict]) -> None:
    assert [(r["epoch"], r["sweep_index"]) for r in got] == [(r["epoch"], r["sweep_index"]) for r in expected]
    for g, e in zip(got, expected):
        for key in COMPARED:
            np.testing.assert_allclose(np.asarray(g[key]), np.asarray(e[key]), rtol=1e-3, atol=1e-6,
                                       err_msg=f"{key} at epoch {e['epoch']} member {e['sweep_index']}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 1x4 run and the 2x2 run of the same config."""
    root = tmp_path_factory.mktemp("multihost")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(150, FEATURES)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(FEATURES, TARGETS))).astype(np.float32)
    data_path = str(root / "regression.npz")
    np.savez(data_path, x_train=x[:110], y_train=y[:110], x_test=x[110:], y_test=y[110:])
    one, two = root / "one_by_four", root / "two_by_two"
    # One after the other: on a loaded machine, side by side runs skew the two processes' compile
    # times, and gloo gives up when peers reach a new collective more than 30 s apart.
    single = subprocess.run([sys.executable, "-m", "nrc_jax.main"] + main_flags(data_path, str(one)),
                            cwd=REPO, env=single_process_env(4), capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([LAUNCH, "2"] + main_flags(data_path, str(two)), cwd=REPO, env=launch_env(),
                           capture_output=True, text=True, timeout=400)
    assert multi.returncode == 0, multi.stdout[-2000:] + multi.stderr[-3000:]
    return {"root": root, "data": data_path, "one": one, "two": two}


def test_two_processes_match_one_process(runs):
    expected = read_rows(runs["one"])
    assert len(expected) == 2 * (EPOCHS // EVERY + 1)
    assert_rows_close(read_rows(runs["two"]), expected)


def test_exactly_one_metrics_file(runs):
    found = [os.path.join(d, f) for d, _, files in os.walk(runs["two"]) for f in files if "metrics" in f
             and f.endswith(".jsonl")]
    assert found == [os.path.join(str(runs["two"]), "metrics.jsonl")]


def test_two_by_two_checkpoint_restores_on_one_device_for_inspection(runs):
    """`nrc_jax.inspect` restores onto a 1-device mesh: the 2x2 run's weights equal the 1x4 run's."""
    from nrc_jax import inspect

    described = {}
    for name in ("one", "two"):
        run = inspect.load_run(str(runs[name]))
        assert run["step"] == EPOCHS
        assert {leaf.sharding.mesh.size for leaf in jax.tree.leaves(run["state"])} == {1}
        described[name] = inspect.describe(run)
    np.testing.assert_allclose(np.asarray(described["two"]["wwt"]), np.asarray(described["one"]["wwt"]),
                               rtol=1e-3, atol=1e-6)


def test_two_by_two_checkpoint_continues_on_one_process_one_device(runs):
    """Resume the 2x2 run from its epoch-2 checkpoint on 1 device: same end as the 1x4 run."""
    workdir = runs["root"] / "continued_1x1"
    shutil.copytree(runs["two"], workdir)
    for step in os.listdir(workdir / "checkpoints"):
        if step.isdigit() and int(step) > EVERY:
            shutil.rmtree(workdir / "checkpoints" / step)
    proc = subprocess.run([sys.executable, "-m", "nrc_jax.main"] + main_flags(runs["data"], str(workdir)),
                          cwd=REPO, env=single_process_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_rows_close(read_rows(workdir), read_rows(runs["one"]))


def test_members_on_the_two_processes_match_one_process(runs, tmp_path):
    """mesh.member_devices=2: each process's 2 devices train one of the 2 members (rows over its
    2 devices); the rows equal the 1x4 run's, written once by process 0."""
    workdir = tmp_path / "members_2x2"
    proc = subprocess.run([LAUNCH, "2"] + main_flags(runs["data"], str(workdir), **{"config.mesh.member_devices": 2}),
                          cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert_rows_close(read_rows(workdir), read_rows(runs["one"]))
    summary = run_files.read_summary(workdir)
    assert len(summary["members"]) == 2


def test_batch_not_dividing_stops_every_process(runs, tmp_path):
    proc = subprocess.run([LAUNCH, "2"] + main_flags(runs["data"], str(tmp_path / "bad"),
                                                     **{"config.train.batch_size": 6}),
                          cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "train.batch_size=6" in proc.stderr and "failed with exit status 2" in proc.stderr
    assert "Traceback" not in proc.stderr
