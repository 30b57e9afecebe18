"""Faults: kill -9 and re-run, SIGINT/SIGTERM, unreadable checkpoints, divergence, determinism.

The command-line runs share one persistent JAX compilation cache (under pytest's base temp folder),
so only the first compiles; all runs use the same tiny model and data, hence the same program.
"""
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import mlp
from nrc_jax.data import default_data_config, load_dataset
from nrc_jax.engine import train
from nrc_jax.errors import DivergenceError
from nrc_jax.io import run_files, writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"data.name": "npz", "model.widths": (16, 16), "train.batch_size": 32, "train.progress_bar": False,
        "mesh.num_devices": 1, "train.epochs": 6, "train.eval_every": 2, "train.checkpoint_every": 2}
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(140, 5)).astype(np.float32)
    y = np.stack([np.tanh(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3]], 1).astype(np.float32)
    path = str(tmp_path_factory.mktemp("data") / "tiny.npz")
    np.savez(path, x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    return path


def fields(npz_path, **overrides) -> dict:
    return {**TINY, "data.path": npz_path, **overrides}


def make_config(values: dict):
    config = mlp.get_config()
    config.update_from_flattened_dict(values)
    return config


def rows_without_time(workdir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in run_files.read_metrics(str(workdir))]


def metric_lines(workdir) -> list[str]:
    with open(os.path.join(workdir, run_files.METRICS_FILE)) as f:
        return f.read().splitlines(keepends=True)


@pytest.fixture(scope="module")
def reference(npz_path, tmp_path_factory):
    """A finished uninterrupted run of TINY: (workdir, rows without time_s)."""
    workdir = tmp_path_factory.mktemp("reference")
    train.train_and_evaluate(make_config(fields(npz_path)), str(workdir))
    return workdir, rows_without_time(workdir)


# --------------------------------------------------------------------- unreadable checkpoints
def garbage_arrays(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        with open(path, "wb") as f:
            f.write(os.urandom(os.path.getsize(path)))


def state_missing(step_dir):  # the meta item written, the state item not
    shutil.rmtree(os.path.join(step_dir, "state"))


def meta_truncated(step_dir):
    path = os.path.join(step_dir, "meta", "metadata")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])


@pytest.mark.parametrize("corrupt", [garbage_arrays, state_missing, meta_truncated], ids=lambda f: f.__name__)
def test_unreadable_latest_checkpoint_is_skipped_with_warning(npz_path, reference, tmp_path, corrupt, caplog):
    ref_dir, ref_rows = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    corrupt(str(workdir / "checkpoints" / "6"))
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 8, "sweep_in')  # a torn last line, as a kill mid-write would leave
    with caplog.at_level(logging.WARNING, logger="nrc_jax.io.checkpoints"):
        train.train_and_evaluate(make_config(fields(npz_path)), str(workdir))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(os.path.join(str(workdir), "checkpoints", "6") in w and "unreadable" in w for w in warnings), warnings
    assert os.path.isdir(workdir / "checkpoints_unreadable" / "6")  # kept for inspection, out of the way
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]  # 6 written again from 4
    assert rows_without_time(workdir) == ref_rows  # resumed from epoch 4, bit for bit
    assert all(line.endswith("\n") for line in metric_lines(workdir))


def test_leftover_temporary_checkpoint_is_ignored_and_removed(npz_path, reference, tmp_path):
    ref_dir, ref_rows = reference
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    os.rename(workdir / "checkpoints" / "6", workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1700000000")
    train.train_and_evaluate(make_config(fields(npz_path)), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
    assert rows_without_time(workdir) == ref_rows


# --------------------------------------------------------------------- signals, divergence, determinism
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_the_rerun_matches(signum, npz_path, reference, tmp_path, monkeypatch):
    config = make_config(fields(npz_path, **{"train.checkpoint_every": 6}))
    original = writers.RunWriter.write
    handler_before = signal.getsignal(signum)

    def signal_while_epochs_3_4_train(self, rows):
        original(self, rows)
        if rows[0]["epoch"] == 2:  # the host writes these rows while the chunk to epoch 4 runs
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(writers.RunWriter, "write", signal_while_epochs_3_4_train)
    with pytest.raises(KeyboardInterrupt, match="after epoch 4; checkpoint saved"):
        train.train_and_evaluate(config, str(tmp_path))
    assert signal.getsignal(signum) is handler_before  # handler restored
    assert os.listdir(tmp_path / "checkpoints") == ["4"]  # saved although checkpoint_every is 6
    assert [r["epoch"] for r in run_files.read_metrics(str(tmp_path))] == [0, 2, 4]
    monkeypatch.setattr(writers.RunWriter, "write", original)
    train.train_and_evaluate(config, str(tmp_path))
    assert rows_without_time(tmp_path) == reference[1]


def diverging_after_a_finite_epoch(npz_path, tmp_path):
    """(config, workdir, error) of the first learning rate whose run diverges after >= 1 finite
    epoch (where a too-large step blows up is specific to the trajectory, hence several tries)."""
    for lr in (5.0, 8.0, 4.0, 12.0, 6.0):
        config = make_config(fields(npz_path, **{"optim.lr": lr, "train.eval_every": 1, "train.checkpoint_every": 1}))
        workdir = tmp_path / f"lr{lr}"
        try:
            train.train_and_evaluate(config, str(workdir))
        except DivergenceError as error:
            if json.loads(metric_lines(workdir)[-1])["epoch"] >= 1:
                return config, workdir, error
    pytest.fail("no learning rate diverged after a finite epoch")


def test_divergence_names_epochs_and_checkpoint_and_loses_nothing(npz_path, tmp_path):
    config, tmp_path, error = diverging_after_a_finite_epoch(npz_path, tmp_path)
    lines = metric_lines(tmp_path)
    rows = [json.loads(line) for line in lines]
    last = rows[-1]["epoch"]
    message = str(error)
    assert f"between epochs {last} and {last + 1}" in message
    assert f"checkpoint of epoch {last} in {tmp_path / 'checkpoints'}" in message
    assert all(np.isfinite(r[k]) for r in rows for k in ("loss", "train_mse", "test_mse"))
    assert max(int(s) for s in os.listdir(tmp_path / "checkpoints")) == last  # no diverged state saved
    # Re-running resumes from that checkpoint and stops the same way; nothing written is lost.
    with pytest.raises(DivergenceError) as again:
        train.train_and_evaluate(config, str(tmp_path))
    assert str(again.value) == message
    assert [{k: v for k, v in json.loads(x).items() if k != "time_s"} for x in metric_lines(tmp_path)] == [
        {k: v for k, v in r.items() if k != "time_s"} for r in rows]


def test_same_config_and_seed_give_the_same_metrics(npz_path, reference, tmp_path):
    train.train_and_evaluate(make_config(fields(npz_path)), str(tmp_path))
    assert rows_without_time(tmp_path) == reference[1]
    train.train_and_evaluate(make_config(fields(npz_path, seed=1)), str(tmp_path / "seed1"))
    assert rows_without_time(tmp_path / "seed1")[-1]["train_mse"] != reference[1][-1]["train_mse"]


def test_data_generation_is_deterministic_for_a_seed(tmp_path):
    def reacher(seed: int, cache: str):
        config = default_data_config()
        config.update(name="reacher", seed=seed, train_size=100, test_size=20, action_noise=0.1,
                      cache_dir=str(tmp_path / cache))
        return load_dataset(config)

    a, b, other = reacher(3, "a"), reacher(3, "b"), reacher(4, "c")  # separate caches: generated 3 times
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.y_train, other.y_train)

    def images(seed: int):
        config = default_data_config()
        config.update(name="synthetic_images", seed=seed, train_size=12, test_size=4, image_size=8)
        return load_dataset(config)

    c, d, e = images(0), images(0), images(1)
    np.testing.assert_array_equal(np.asarray(c.x_train[np.arange(12)]), np.asarray(d.x_train[np.arange(12)]))
    np.testing.assert_array_equal(c.y_train, d.y_train)
    assert not np.array_equal(c.y_train, e.y_train)


# --------------------------------------------------------------------- the command line, killed
def cli(workdir, values: dict) -> list[str]:
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}" for k, v in values.items()]
    return [sys.executable, "-m", "nrc_jax.main", "--config=configs/mlp.py", f"--workdir={workdir}", *flags]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """Subprocess environment: this session's XLA flags plus a compilation cache shared by every run."""
    cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def run_and_signal(command, env, workdir, *, evaluations: int, sig: int, log_path) -> tuple[int, str]:
    """Runs `command`; once this run has appended `evaluations` evaluation rows (epoch > 0) to
    metrics.jsonl, sends `sig`. Returns (exit status, stderr)."""
    path = os.path.join(workdir, run_files.METRICS_FILE)
    old_inode = os.stat(path).st_ino if os.path.exists(path) else None  # the run rewrites the file first
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + RUN_TIMEOUT_S
        while proc.poll() is None and time.time() < deadline:
            if os.path.exists(path) and os.stat(path).st_ino != old_inode:
                with open(path) as f:
                    done = [line for line in f if line.endswith("\n")]
                if sum(json.loads(line)["epoch"] > 0 for line in done) >= evaluations:
                    proc.send_signal(sig)
                    break
            time.sleep(0.005)
        status = proc.wait(timeout=RUN_TIMEOUT_S)
    with open(log_path) as f:
        return status, f.read()


def test_kill_9_then_sigterm_then_rerun_ends_like_an_uninterrupted_run(npz_path, tmp_path, cli_env):
    values = fields(npz_path, **{"train.epochs": 120, "train.eval_every": 10, "train.checkpoint_every": 20})
    train.train_and_evaluate(make_config(values), str(tmp_path / "straight"))  # in this process
    workdir = str(tmp_path / "killed")
    command = cli(workdir, values)

    status, _ = run_and_signal(command, cli_env, workdir, evaluations=2, sig=signal.SIGKILL,
                               log_path=tmp_path / "kill.log")
    assert status == -signal.SIGKILL
    assert len(run_files.read_metrics(workdir)) >= 3  # epoch 0 and two evaluations were written

    status, stderr = run_and_signal(command, cli_env, workdir, evaluations=1, sig=signal.SIGTERM,
                                    log_path=tmp_path / "term.log")
    assert status == 130, stderr
    assert "Traceback" not in stderr
    stopped = [line for line in stderr.splitlines() if "stopped by signal after epoch" in line]
    assert stopped and "checkpoint saved" in stopped[0], stderr
    epoch = int(stopped[0].split("after epoch ")[1].split(";")[0])
    assert str(epoch) in os.listdir(os.path.join(workdir, "checkpoints"))
    assert run_files.read_metrics(workdir)[-1]["epoch"] == epoch

    done = subprocess.run(command, cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    rows = rows_without_time(workdir)
    epochs = [r["epoch"] for r in rows]
    assert epochs == sorted(set(epochs))  # no duplicates
    assert rows == rows_without_time(tmp_path / "straight")  # bit for bit, across processes
    assert all(line.endswith("\n") for line in metric_lines(workdir))
    assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]
    assert os.path.exists(os.path.join(workdir, run_files.SUMMARY_FILE))
