"""The main job (`python -m nrc_jax.reproduce`) end to end at a tiny scale, into tmp_path, and its
config (configs/reproduce.py)."""
from __future__ import annotations

import json
import pathlib

import pytest

from nrc_jax import reproduce
from nrc_jax.io import run_files

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAGES = ("wd_swimmer", "ufm_study")
SCALE = 0.0075  # 400 -> 3 epochs; UFM gradient descent 3000 -> 50 iterations (the floor)


def scaled_config(epochs_scale: float = SCALE):
    """`python -m nrc_jax.reproduce --config.epochs_scale=... --config.num_devices=1`'s config."""
    return reproduce.parse_args([f"--config.epochs_scale={epochs_scale}", "--config.num_devices=1"]).config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    logs: list[str] = []
    result = reproduce.reproduce(scaled_config(), root / "out", root / "work", only=STAGES, log=logs.append)
    return root, result, logs


def test_the_default_stages_are_make_runs():
    config = reproduce.parse_args([]).config
    assert [s.name for s in reproduce.stages_of(config)] == ["wd_swimmer", "wd_reacher", "wd_hopper",
                                                            "ufm_net_swimmer", "synthetic_images", "ufm_study"]
    # the recorded UFM study of results/quick ran this very config
    ufm = reproduce.stages_of(config, ["ufm_study"])[0]
    recorded = json.loads((ROOT / "results" / "quick" / "ufm" / "summary.json").read_text())["config"]
    ran = json.loads(reproduce.config_fingerprint(reproduce.stage_config(ufm)))
    assert {**ran, "out_dir": None} == {**recorded, "out_dir": None}


def test_writes_figures_tables_and_summary(first_run):
    root, result, logs = first_run
    out = root / "out"
    for name in ("swimmer_training.png", "swimmer_evr.png", "swimmer_nrc3_gamma.png", "sweep_weight_decay.png",
                 "index.md", "table1.md", "summary.md", "ufm/nrc_vs_c.png", "ufm/trajectories.png", "ufm/gaps.md"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    assert "| swimmer | wd=0.01 | 3 |" in summary and "| swimmer | wd=0 | 3 |" in summary
    assert "λH = λW = 0: after" in summary and "--config.epochs_scale=0.0075" in summary
    table = (out / "table1.md").read_text()
    assert all(f"| {name} |" in table for name in ("swimmer", "reacher", "hopper", "synthetic_images"))
    assert [t.stage for t in result["timings"]] == [*STAGES, "sum of the stages", "total"]
    assert all(t.status == "new" for t in result["timings"][:-2])
    assert logs[0].startswith("[1/2] wd_swimmer") and "ETA" in logs[0]


def test_summary_numbers_are_the_runs_final_metrics(first_run):
    root, _, _ = first_run
    rows = run_files.read_metrics(root / "work" / "wd_swimmer")
    final = [r for r in rows if r["epoch"] == 3 and r["sweep"]["weight_decay"] == 0.0][0]
    summary = (root / "out" / "summary.md").read_text()
    line = [ln for ln in summary.splitlines() if ln.startswith("| swimmer | wd=0 |")][0]
    assert f"→ {reproduce._fmt(final['nrc2'])} |" in line and f"| {reproduce._fmt(final['test_mse'])} |" in line


def test_rerun_reuses_and_changed_config_starts_over(first_run):
    root, _, _ = first_run
    again = reproduce.reproduce(scaled_config(), root / "out2", root / "work", only=STAGES, log=lambda _: None)
    assert [t.status for t in again["timings"][:-2]] == ["reused", "reused"]
    assert again["timings"][0].wall_s == first_run[1]["timings"][0].wall_s  # the times of the run that made it
    changed = reproduce.reproduce(scaled_config(2 * SCALE), root / "out3", root / "work", only=("wd_swimmer",),
                                  log=lambda _: None)
    assert changed["timings"][0].status == "new"  # another config: the old workdir was cleared
    assert max(r["epoch"] for r in run_files.read_metrics(root / "work" / "wd_swimmer")) == 6


def test_cli_user_errors_exit_2(capsys, tmp_path):
    assert reproduce.main(["--only", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert reproduce.main(["--config.epochs_scale=0", "--out", str(tmp_path), "--workdirs", str(tmp_path)]) == 2
    assert "epochs_scale=0.0: allowed a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a mistyped setting stops before anything runs
        reproduce.main(["--config.epoch_scale=0.5", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "no field 'epoch_scale'" in capsys.readouterr().err
