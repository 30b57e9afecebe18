"""Committed evidence: compact copies of workdirs, and the results READMEs' numbers recomputed."""
from __future__ import annotations

import json
import pathlib
import re

import pytest

from nrc_jax import evidence, plot, train, writers
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
    rows = writers.read_metrics(str(tmp_path / "kept"))
    assert info["finished"] and info["rows"] == 82 and info["rows_kept"] == len(rows) <= 30
    assert {r["sweep_index"] for r in rows} == {0, 1} and rows[-1]["epoch"] == 40
    summary = json.loads((tmp_path / "kept" / "summary.json").read_text())
    assert summary["members"][0]["epochs"] == [r["epoch"] for r in rows if r["sweep_index"] == 0]
    assert plot.plot_workdirs([tmp_path / "kept"], tmp_path / "fig")
    table = evidence.claims_table(str(tmp_path))
    assert table.count("| kept |") == 2 and "40/40" in table


def test_collect_refuses_a_folder_without_metrics(tmp_path):
    with pytest.raises(evidence.DataError, match="no metrics.jsonl"):
        evidence.collect(str(tmp_path), str(tmp_path / "out"))
