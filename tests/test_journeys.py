"""Issue 18's journeys of a user from outside the repository: configs by absolute path from
another working directory, workdirs on other file systems, extending a finished run."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from nrc_jax.io import run_files

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ("mlp", "mujoco:swimmer,quick", "paper:fig2_hopper,quick", "images:synthetic_images,quick",
           "deep_mlp:swimmer,quick", "sgemm:quick", "ufm:quick")


def outside_env(tmp_path: pathlib.Path) -> dict:
    """Environment in which `nrc_jax` is importable but the repository root (so `configs`) is not:
    as for a user with nrc_jax installed who runs from their own directory."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    if not (site / "nrc_jax").exists():
        (site / "nrc_jax").symlink_to(ROOT / "nrc_jax")
    return {**os.environ, "PYTHONPATH": str(site), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def test_every_config_loads_by_absolute_path_from_another_directory(tmp_path):
    script = ("import sys\nfrom absl import flags\nfrom ml_collections import config_flags\n"
              "c = config_flags.DEFINE_config_file('config')\n"
              "for arg in sys.argv[1:]:\n    flags.FLAGS.unparse_flags()\n"
              "    flags.FLAGS(['x', '--config=' + arg])\n    print(arg, c.value.train.epochs if 'train' in c.value else 'ok')\n")
    args = [f"{ROOT}/configs/{name.split(':')[0]}.py" + (f":{name.split(':')[1]}" if ":" in name else "")
            for name in CONFIGS]
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, env=outside_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == len(CONFIGS)


def test_main_runs_a_config_given_by_absolute_path_from_another_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "nrc_jax.main", f"--config={ROOT}/configs/mujoco.py:swimmer,quick",
         "--workdir=run", "--config.train.epochs=4", "--config.train.eval_every=2",
         "--config.train.checkpoint_every=4", "--config.model.widths=(16,)"],
        cwd=tmp_path, env=outside_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["epoch"] for r in run_files.read_metrics(tmp_path / "run")] == [0, 2, 4]
    # Not a terminal: log lines, not tqdm's carriage returns; no TFDS or Orbax chatter.
    assert "\r" not in done.stderr and "epoch 4/4 (100%): train_mse" in done.stderr, done.stderr
    for noise in ("Using custom data configuration", "Downloading and preparing", "orbax", "checkpoint_manager"):
        assert noise not in done.stderr, done.stderr
    # TensorBoard: the config as text and the member's hyperparameters, before the metric scalars.
    events = tensorboard_events(tmp_path / "run" / "tensorboard" / "run")
    tags = [tag for _, tag, _ in events]
    assert tags[:4] == ["config/text_summary", "_hparams_/experiment", "_hparams_/session_start_info",
                        "_hparams_/session_end_info"]
    start = next(content for _, tag, content in events if tag == "_hparams_/session_start_info")
    for name in ("seed", "weight_decay", "lr", "swimmer"):
        assert name.encode() in start
    assert {"train_mse", "nrc1"} <= set(tags)


def tensorboard_events(logdir: pathlib.Path) -> list[tuple[int, str, bytes]]:
    """(step, tag, plugin content) of every summary value in the one event file of `logdir`."""
    import struct

    from tensorboardX.proto import event_pb2

    (path,) = logdir.glob("events.out.tfevents.*")
    data, i, out = path.read_bytes(), 0, []
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
        i += 16 + length  # length, its crc, the record, its crc
        out += [(event.step, v.tag, v.metadata.plugin_data.content) for v in event.summary.value]
    return out


# --------------------------------------------------------------------- extending a finished run
@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    y = np.stack([np.tanh(x[:, 0]), x[:, 1] * x[:, 2]], 1).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=x[:70], y_train=y[:70], x_test=x[70:], y_test=y[70:])
    return str(path)


def tiny_config(npz_path, **train):
    from nrc_jax.io.config_files import sibling

    config = sibling(str(ROOT / "configs" / "mlp.py"), "mlp").get_config()
    config.data.name, config.data.path = "npz", npz_path
    config.model.widths = (16,)
    config.train.update(epochs=4, eval_every=2, checkpoint_every=2, batch_size=16, progress_bar=False)
    config.train.update(train)
    config.mesh.num_devices = 1
    return config


def metric_rows(workdir):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in run_files.read_metrics(str(workdir))]


def test_a_larger_train_epochs_extends_a_finished_run_as_if_trained_at_once(npz_path, tmp_path):
    from nrc_jax.engine import train

    train.train_and_evaluate(tiny_config(npz_path), str(tmp_path / "extended"))
    # The cadence may change too (it only picks the epochs evaluated).
    train.train_and_evaluate(tiny_config(npz_path, epochs=8, eval_every=2, checkpoint_every=4),
                             str(tmp_path / "extended"))
    train.train_and_evaluate(tiny_config(npz_path, epochs=8), str(tmp_path / "direct"))
    extended, direct = metric_rows(tmp_path / "extended"), metric_rows(tmp_path / "direct")
    assert [r["epoch"] for r in extended] == [0, 2, 4, 6, 8]
    for a, b in zip(extended, direct):
        np.testing.assert_allclose(a["train_mse"], b["train_mse"], rtol=1e-6)
        np.testing.assert_allclose(a["w_norm"], b["w_norm"], rtol=1e-6)
    assert json.load(open(tmp_path / "extended" / "config.json"))["train"]["epochs"] == 8


def test_extending_is_refused_only_when_past_epochs_would_change(npz_path, tmp_path):
    from nrc_jax.engine import train
    from nrc_jax.errors import ConfigError

    step = {"optim.schedule": "step", "optim.milestones": (0.5, 0.75)}
    config = tiny_config(npz_path)
    config.update_from_flattened_dict(step)
    train.train_and_evaluate(config, str(tmp_path))
    longer = tiny_config(npz_path, epochs=8)
    longer.update_from_flattened_dict(step)
    with pytest.raises(ConfigError, match=r"from train.epochs=4 to 8: optim.schedule='step' puts its milestones"):
        train.train_and_evaluate(longer, str(tmp_path))
    with pytest.raises(ConfigError, match="it holds epoch 4, past train.epochs=2"):
        shorter = tiny_config(npz_path, epochs=2, checkpoint_every=2)
        shorter.update_from_flattened_dict(step)
        train.train_and_evaluate(shorter, str(tmp_path))


def test_schedule_kept():
    import ml_collections
    from nrc_jax.engine import optim

    c = ml_collections.ConfigDict(optim.default_optim_config())
    assert optim.schedule_kept(c, 50, 60, 50)  # constant
    c.schedule = "step"
    assert not optim.schedule_kept(c, 50, 60, 50)  # milestone 25 -> 30 moves inside the trained epochs
    assert optim.schedule_kept(c, 100, 200, 40)  # milestones 50, 75 -> 100, 150: all after epoch 40


# --------------------------------------------------------------------- progress without a terminal
class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_is_tqdm_on_a_terminal_and_log_lines_otherwise(monkeypatch):
    from nrc_jax.io import progress

    assert isinstance(progress.progress_reporter(10, 0, _Stream(False)), progress.LogProgress)
    bar = progress.progress_reporter(10, 0, _Stream(True))
    assert isinstance(bar, progress.BarProgress)
    bar.close()
    lines, now = [], [0.0]
    monkeypatch.setattr(progress.absl_logging, "info", lambda fmt, *args: lines.append(fmt % args))
    reporter = progress.LogProgress(1000, 0, interval_s=10.0, clock=lambda: now[0])
    row = {"train_mse": 0.5, "test_mse": 0.6, "nrc1": 0.25, "nrc2": float("nan")}
    for epoch, t in ((0, 0.0), (100, 5.0), (200, 10.0), (300, 12.0), (1000, 13.0)):
        now[0] = t
        reporter.report({**row, "epoch": epoch})
    assert lines[0].startswith("epoch 0/1000 (0%): train_mse 0.5, test_mse 0.6, nrc1 0.25, nrc2 nan;")
    assert lines[1] == "epoch 200/1000 (20%): train_mse 0.5, test_mse 0.6, nrc1 0.25, nrc2 nan; 20 epochs/s, ETA 40s"
    assert lines[2].startswith("epoch 1000/1000 (100%)") and lines[2].endswith("done")
    assert len(lines) == 3  # epochs 100 and 300 fell within 10 s of a line


# --------------------------------------------------------------------- workdirs given as URLs
@pytest.mark.parametrize("workdir", ["gs://bucket/runs/x", "s3://bucket/x", "memory://runs/x"])
def test_a_workdir_url_nrc_jax_cannot_write_is_one_error_line_and_creates_nothing(tmp_path, workdir):
    done = subprocess.run(
        [sys.executable, "-m", "nrc_jax.main", f"--config={ROOT}/configs/mujoco.py:swimmer,quick", f"--workdir={workdir}"],
        cwd=tmp_path, env=outside_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and workdir in errors[0] and "nothing was created" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no ./gs:/bucket/... folder


def test_file_urls_are_local_paths():
    from nrc_jax.io import validate

    assert validate.workdir_location("file:///tmp/runs/a%20b") == "/tmp/runs/a b"
    assert validate.workdir_location("runs/x") == "runs/x"


def test_studies_and_reproduce_find_the_configs_from_another_directory(tmp_path):
    script = ("from nrc_jax import reproduce, studies\n"
              f"config = studies.parse_args(['--config={ROOT}/configs/studies.py:multitask',"
              " '--config.run.train.epochs=10']).config\n"
              "print(studies.run_config(config).train.epochs,"
              " reproduce.parse_args([]).config.stages.wd_swimmer.config.data.name)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=outside_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["10", "swimmer"]
