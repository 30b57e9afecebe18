"""Committed evidence: compact copies of workdirs, and the results READMEs' numbers recomputed."""
from __future__ import annotations

import pathlib
import re

import pytest

from nrc_jax import evidence, plot
from nrc_jax.engine import train
from nrc_jax.io import run_files
from tests.test_train import npz_path, tiny_config  # noqa: F401 (fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]
PAPER = REPO / "results" / "paper"


def test_kept_epochs_keeps_ends_and_spreads_the_rest():
    epochs = list(range(0, 100_001, 10))
    kept = evidence.kept_epochs(epochs, 500)
    assert len(kept) <= 500 and kept[0] == 0 and kept[-1] == 100_000 and kept == sorted(set(kept))
    assert {10, 20, 30} <= set(kept)  # log spacing keeps the early evaluations
    assert evidence.kept_epochs([5, 1, 3], 10) == [1, 3, 5]


def test_collect_thins_copies_and_plots(npz_path, tmp_path):
    config = tiny_config(npz_path, **{"train.epochs": 40, "train.eval_every": 1, "train.checkpoint_every": 40})
    config.sweep.weight_decay = (1e-2, 0.0)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    info = evidence.collect(str(tmp_path / "run"), str(tmp_path / "kept"), max_rows=30)
    rows = run_files.read_metrics(str(tmp_path / "kept"))
    assert info["finished"] and info["rows"] == 82 and info["rows_kept"] == len(rows) <= 30
    assert {r["sweep_index"] for r in rows} == {0, 1} and rows[-1]["epoch"] == 40
    summary = run_files.read_summary(tmp_path / "kept")
    assert summary["members"][0]["epochs"] == [r["epoch"] for r in rows if r["sweep_index"] == 0]
    assert plot.plot_workdirs([tmp_path / "kept"], tmp_path / "fig")
    table = evidence.claims_table(str(tmp_path))
    assert table.count("| kept |") == 2 and "40/40" in table


def test_late_range_spans_the_second_half_only():
    rows = [{"epoch": e, "nrc1": v} for e, v in [(0, 0.9), (10, 1e-3), (20, 3e-11), (30, 2e-9), (40, 5e-11)]]
    assert evidence._late_range(rows, "nrc1") == "3e-11 – 2e-09"
    assert evidence._late_range(rows, "absent") == "–"


def test_collect_refuses_a_folder_without_metrics(tmp_path):
    with pytest.raises(evidence.DataError, match="no metrics.jsonl"):
        evidence.collect(str(tmp_path), str(tmp_path / "out"))
def _bold_numbers(text: str) -> list[str]:
    return re.findall(r"\*\*(-?[0-9][0-9.,e+-]*)\*\*", text)


def test_committed_claims_table_is_recomputed_from_the_committed_metrics():
    assert (PAPER / evidence.CLAIMS_FILE).is_file(), "results/paper/claims.md is committed with the runs"
    assert (PAPER / evidence.CLAIMS_FILE).read_text() == evidence.claims_table(str(PAPER))


def test_every_bold_number_of_the_paper_readme_is_in_a_generated_table():
    """The README quotes numbers in bold; each must appear in claims.md or the torch check's table."""
    readme = (PAPER / "README.md").read_text()
    tables = (PAPER / evidence.CLAIMS_FILE).read_text()
    torch_table = REPO / "results" / "torch_check" / "table.md"
    if torch_table.is_file():
        tables += torch_table.read_text()
    numbers = _bold_numbers(readme)
    assert len(numbers) >= 5
    missing = [x for x in numbers if x not in tables]
    assert not missing, missing
