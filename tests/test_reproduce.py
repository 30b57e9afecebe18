"""The main job (`python -m nrc_jax.reproduce`) end to end at a tiny scale, into tmp_path."""
from __future__ import annotations

import json

import pytest

from nrc_jax import reproduce

STAGES = ("wd_swimmer", "ufm_study")
SCALE = 0.0075  # 400 -> 3 epochs; UFM gradient descent 3000 -> 50 iterations (the floor)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    logs: list[str] = []
    result = reproduce.reproduce(root / "out", root / "work", only=STAGES, epochs_scale=SCALE, num_devices=1,
                                   log=logs.append)
    return root, result, logs


def test_writes_figures_tables_and_summary(first_run):
    root, result, logs = first_run
    out = root / "out"
    for name in ("swimmer_training.png", "swimmer_evr.png", "swimmer_nrc3_gamma.png", "sweep_weight_decay.png",
                 "index.md", "table1.md", "summary.md", "ufm/nrc_vs_c.png", "ufm/trajectories.png", "ufm/gaps.md"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    assert "| swimmer | wd=0.01 | 3 |" in summary and "| swimmer | wd=0 | 3 |" in summary
    assert "λH = λW = 0: after" in summary and "--epochs-scale 0.0075" in summary
    table = (out / "table1.md").read_text()
    assert all(f"| {name} |" in table for name in ("swimmer", "reacher", "hopper", "synthetic_images"))
    assert [t.stage for t in result["timings"]] == [*STAGES, "sum of the stages", "total"]
    assert all(t.status == "new" for t in result["timings"][:-2])
    assert logs[0].startswith("[1/2] wd_swimmer") and "ETA" in logs[0]


def test_summary_numbers_are_the_runs_final_metrics(first_run):
    root, _, _ = first_run
    rows = [json.loads(line) for line in (root / "work" / "wd_swimmer" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["epoch"] == 3 and r["sweep"]["weight_decay"] == 0.0][0]
    summary = (root / "out" / "summary.md").read_text()
    line = [ln for ln in summary.splitlines() if ln.startswith("| swimmer | wd=0 |")][0]
    assert f"→ {reproduce._fmt(final['nrc2'])} |" in line and f"| {reproduce._fmt(final['test_mse'])} |" in line


def test_rerun_reuses_and_changed_config_starts_over(first_run):
    root, _, _ = first_run
    again = reproduce.reproduce(root / "out2", root / "work", only=STAGES, epochs_scale=SCALE, num_devices=1,
                                log=lambda _: None)
    assert [t.status for t in again["timings"][:-2]] == ["reused", "reused"]
    assert again["timings"][0].wall_s == first_run[1]["timings"][0].wall_s  # the times of the run that made it
    changed = reproduce.reproduce(root / "out3", root / "work", only=("wd_swimmer",), epochs_scale=2 * SCALE,
                                  num_devices=1,
                                  log=lambda _: None)
    assert changed["timings"][0].status == "new"  # another config: the old workdir was cleared
    rows = (root / "work" / "wd_swimmer" / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(r)["epoch"] for r in rows) == 6


def test_cli_user_errors_exit_2(capsys, tmp_path):
    assert reproduce.main(["--only", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert reproduce.main(["--epochs-scale", "0", "--out", str(tmp_path), "--workdirs", str(tmp_path)]) == 2
