"""Issue 18's journeys of a user from outside the repository: configs by absolute path from
another working directory, workdirs on other file systems, extending a finished run."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

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
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [0, 2, 4]
