"""nrc_jax.io.run_files: the on-disk form of metrics rows and the one reader of a workdir."""
import json
import math

import pytest

from nrc_jax.errors import DataError
from nrc_jax.io import run_files


def row(epoch: int, index: int = 0, **values) -> dict:
    return {"epoch": epoch, "sweep_index": index, "sweep": {"weight_decay": 0.1 * index}, **values}


def write(path, text: str):
    path.mkdir(exist_ok=True)
    (path / run_files.METRICS_FILE).write_text(text)
    return path


def test_rows_are_strict_json_with_null_for_non_finite_and_read_back_as_nan(tmp_path):
    line = run_files.json_line({"epoch": 2, "nrc1": float("nan"), "evr": [1.0, float("inf")],
                                "sweep": {"seed": None}})
    assert line == '{"epoch": 2, "nrc1": null, "evr": [1.0, null], "sweep": {"seed": null}}\n'
    write(tmp_path, line)
    (back,) = run_files.read_metrics(tmp_path)
    assert math.isnan(back["nrc1"]) and back["evr"][0] == 1.0 and math.isnan(back["evr"][1])
    assert back["sweep"] == {"seed": None}  # sweep values are kept as written
    assert run_files.rows_to_json([back]) == [json.loads(line)]


def test_a_torn_last_line_is_skipped_and_strict_reading_names_a_bad_middle_line(tmp_path):
    good = run_files.json_line(row(0)) + run_files.json_line(row(2))
    write(tmp_path, good + '{"epoch": 4, "nrc')
    assert [r["epoch"] for r in run_files.read_metrics(tmp_path, strict=True)] == [0, 2]
    write(tmp_path, run_files.json_line(row(0)) + "garbage\n" + run_files.json_line(row(2)))
    assert [r["epoch"] for r in run_files.read_metrics(tmp_path)] == [0, 2]
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        run_files.read_metrics(tmp_path, strict=True)
    write(tmp_path, good + '{"sweep_index": 0}\n')
    with pytest.raises(DataError, match="line 3 has no 'epoch' field"):
        run_files.read_metrics(tmp_path, strict=True)
    assert run_files.read_metrics(tmp_path / "elsewhere") == []


def test_load_groups_members_by_epoch_and_says_what_is_missing(tmp_path):
    rows = [row(2, 1), row(0, 0), row(0, 1), row(2, 0, time_s=3.5)]
    wd = write(tmp_path / "wd", "".join(run_files.json_line(r) for r in rows))
    run = run_files.load(wd)
    assert run.config == {} and run.summary is None and not run.finished
    assert {k: [r["epoch"] for r in v] for k, v in run.members.items()} == {0: [0, 2], 1: [0, 2]}
    assert run.epochs_done == 2 and run.wall_s == 3.5
    run_files.write_json_atomic(wd / run_files.SUMMARY_FILE, {"members": [], "best": float("nan")})
    assert run_files.load(wd).finished and run_files.read_summary(wd) == {"members": [], "best": None}
    (wd / run_files.CONFIG_FILE).write_text("{")
    with pytest.raises(DataError, match="config.json: not valid JSON"):
        run_files.load(wd)
    with pytest.raises(DataError, match="does not exist"):
        run_files.load(tmp_path / "missing")
    with pytest.raises(DataError, match="has no metrics.jsonl"):
        run_files.load(tmp_path)
    with pytest.raises(DataError, match="no metric rows"):
        run_files.load(write(tmp_path / "empty", ""))
