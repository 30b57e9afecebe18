"""Workdirs on an object store (gs://), offline: `etils.epath.testing.mock_epath` maps gs://bucket/
onto a local folder and behaves like a bucket there (no append, no rename), so every workdir file
write and read that goes through etils.epath is exercised in-process. Orbax checkpoints are not:
Orbax hands gs:// to tensorstore, which the mock does not reach."""
from __future__ import annotations

import json
import logging
import os

import ml_collections
import pytest
from etils.epath import testing as epath_testing

from nrc_jax import checkpoints, evidence, locking, run_files, tensorboard, validate, writers
from nrc_jax.errors import ConfigError
from nrc_jax.plotting import workdir as plot_workdir

BUCKET = "gs://bucket"


def row(epoch: int, index: int = 0, **values) -> dict:
    return {"epoch": epoch, "sweep_index": index, "sweep": {"weight_decay": 0.1 * index}, "nrc1": float("nan"),
            **values}


@pytest.fixture
def bucket(tmp_path):
    """gs://bucket/... stored under tmp_path/bucket/; returns (that folder, the calls made on gs:// paths).
    Like a bucket it refuses appends and renames, so a test fails if the code relies on either."""
    root = tmp_path / "bucket"
    root.mkdir()
    calls = []

    def local(path):
        path = os.fspath(path)
        return str(root / path[len(BUCKET) + 1:]) if path.startswith(BUCKET) else path

    def on(name):
        def fn(original, path, *args, **kwargs):
            if not os.fspath(path).startswith(BUCKET):
                return original(path, *args, **kwargs)
            calls.append((name, os.fspath(path), *args))
            if name == "open" and "a" in args[0]:
                raise NotImplementedError("objects cannot be appended to")
            if name in ("rename", "replace"):
                raise NotImplementedError("a bucket has no atomic rename")
            if name == "open" and "w" in args[0]:  # an object's name holds its folders
                os.makedirs(os.path.dirname(local(path)), exist_ok=True)
            if name == "glob":
                return [BUCKET + "/" + os.path.relpath(p, root) for p in original(local(path))]
            return original(local(path), *args, **kwargs)
        return fn

    names = ("open", "exists", "isdir", "listdir", "glob", "makedirs", "mkdir", "remove", "rename", "replace", "stat")
    with epath_testing.mock_epath(**{name: on(name) for name in names}):
        yield root, calls


def test_replacements_on_a_bucket_are_one_whole_write_in_the_local_format(bucket, tmp_path):
    root, calls = bucket
    rows = [row(0), row(0, 1), row(2, time_s=1.5)]
    run_files.write_lines_atomic(f"{BUCKET}/run/metrics.jsonl", rows)
    run_files.write_json_atomic(f"{BUCKET}/run/config.json", {"train": {"epochs": 2}, "x": float("inf")})
    local = tmp_path / "local"
    local.mkdir()
    run_files.write_lines_atomic(local / "metrics.jsonl", rows)
    run_files.write_json_atomic(local / "config.json", {"train": {"epochs": 2}, "x": float("inf")})
    for name in ("metrics.jsonl", "config.json"):
        assert (root / "run" / name).read_bytes() == (local / name).read_bytes()
    assert sorted(p.name for p in (root / "run").iterdir()) == ["config.json", "metrics.jsonl"]  # no .tmp
    assert [c[0] for c in calls] == ["open", "open"] and all(c[2] == "w" for c in calls)


def test_the_workdir_reader_reads_a_bucket(bucket):
    root, _ = bucket
    run_files.write_lines_atomic(f"{BUCKET}/run/metrics.jsonl", [row(0), row(2, 1), row(2)])
    run_files.write_json_atomic(f"{BUCKET}/run/config.json", {"train": {"epochs": 2}})
    run = run_files.load(f"{BUCKET}/run")
    assert os.fspath(run.path) == f"{BUCKET}/run" and run.config == {"train": {"epochs": 2}}
    assert {k: [r["epoch"] for r in v] for k, v in run.members.items()} == {0: [0, 2], 1: [2]}
    assert not run.finished
    run_files.write_json_atomic(f"{BUCKET}/run/summary.json", {"members": []})
    assert run_files.read_summary(f"{BUCKET}/run") == {"members": []}
    with pytest.raises(run_files.DataError, match=f"workdir {BUCKET}/missing does not exist"):
        run_files.load(f"{BUCKET}/missing")
    assert run_files.read_metrics(f"{BUCKET}/missing") == []


def test_plot_and_evidence_read_a_bucket_workdir(bucket, tmp_path):
    run_files.write_lines_atomic(f"{BUCKET}/run/metrics.jsonl", [row(0), row(2)])
    run_files.write_json_atomic(f"{BUCKET}/run/config.json", {"train": {"epochs": 2}})
    (loaded,) = plot_workdir.load_workdirs([f"{BUCKET}/run", f"{BUCKET}/run"])  # the repeat is dropped
    assert os.fspath(loaded.path) == f"{BUCKET}/run" and len(loaded.members[0].rows) == 2
    info = evidence.collect(f"{BUCKET}/run", str(tmp_path / "kept"))
    assert info["source"] == f"{BUCKET}/run" and info["rows_kept"] == 2
    assert json.loads((tmp_path / "kept" / "config.json").read_text()) == {"train": {"epochs": 2}}


def test_the_run_writer_uploads_metrics_whole_at_each_evaluation_and_goes_on_without_tensorboard(
        bucket, monkeypatch, caplog):
    root, calls = bucket
    monkeypatch.setattr(tensorboard, "_importable", lambda module: False)  # google-cloud-storage absent
    config = ml_collections.ConfigDict({"train": {"epochs": 4, "progress_bar": False}})
    members = [{"sweep": {"weight_decay": 0.0}}, {"sweep": {"weight_decay": 0.1}}]
    with caplog.at_level(logging.WARNING):
        log = writers.RunWriter(f"{BUCKET}/run", config, members)
    assert [r.getMessage() for r in caplog.records] == [
        f"no TensorBoard events in {BUCKET}/run: tensorboardX writes gs:// through google-cloud-storage, which "
        "is not installed; training goes on (metrics.jsonl holds every row)"]
    assert json.loads((root / "run" / "config.json").read_text()) == config.to_dict()
    metrics = root / "run" / "metrics.jsonl"
    assert metrics.read_text() == ""
    written = []
    for epoch in (0, 2, 4):
        rows = [row(epoch), row(epoch, 1)]
        written += rows
        log.write(rows)
        assert metrics.read_text() == "".join(run_files.json_line(r) for r in written)
    log.close()
    assert {c[2] for c in calls if c[0] == "open"} <= {"r", "w"}  # never an append
    assert not [c for c in calls if c[0] in ("mkdir", "makedirs")]  # gcsfs would create a missing bucket
    assert sum(c[0] == "open" and c[1].endswith("metrics.jsonl") and c[2] == "w" for c in calls) == 4
    assert not (root / "run" / "tensorboard").exists()
    resumed = writers.RunWriter(f"{BUCKET}/run", config, members, resume_epoch=2)
    assert [r["epoch"] for r in resumed.history] == [0, 0, 2, 2]  # a checkpoint without history: the file's rows
    assert len(run_files.read_metrics(f"{BUCKET}/run")) == 4


def test_a_bucket_workdir_is_not_locked_and_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING), locking.RunLock(f"{BUCKET}/run"):
        pass
    assert [r.getMessage() for r in caplog.records] == [
        f"workdir {BUCKET}/run is on an object store, which has no file locks: not locked; make sure no other "
        "run uses it"]
    assert list(tmp_path.iterdir()) == []  # no ./gs:/bucket lock file


def test_bucket_urls_are_accepted_when_epath_can_open_them(monkeypatch):
    monkeypatch.setitem(validate.REMOTE_SCHEMES, "gs", "json")  # an importable stand-in for gcsfs
    assert validate.workdir_location(f"{BUCKET}/run") == f"{BUCKET}/run"
    assert validate.workdir_location("file:///tmp/runs/a%20b") == "/tmp/runs/a b"
    assert checkpoints.checkpoint_directory(f"{BUCKET}/run/") == f"{BUCKET}/run/checkpoints"
    monkeypatch.setitem(validate.REMOTE_SCHEMES, "gs", "no_such_client_module")
    monkeypatch.setenv("EPATH_USE_TF", "0")  # TensorFlow, when installed, would open gs:// itself
    with pytest.raises(ConfigError, match=r"gs:// workdirs need no_such_client_module, which is not installed.*"
                                          "nothing was created"):
        validate.workdir_location(f"{BUCKET}/run")
    with pytest.raises(ConfigError, match="Orbax's tensorstore cannot write checkpoints there"):
        validate.workdir_location("az://container/run")
