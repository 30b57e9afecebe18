"""Workdirs on an object store (gs://), offline, two ways: `etils.epath.testing.mock_epath` maps
gs://bucket/ onto a local folder, and etils.epath's own fsspec backend (the one gcsfs plugs into) is
pointed at an in-memory file system without folders. Both behave like a bucket (no append, no
rename), so every workdir file write and read that goes through etils.epath is exercised
in-process. Orbax checkpoints are not: Orbax hands gs:// to tensorstore, which neither reaches."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Callable
from unittest import mock

import ml_collections
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from etils.epath import testing as epath_testing
from fsspec.implementations.memory import MemoryFileSystem

from nrc_jax import evidence
from nrc_jax.errors import ConfigError
from nrc_jax.io import checkpoints, locking, run_files, tensorboard, validate, writers
from nrc_jax.plotting import workdir as plot_workdir

BUCKET = "gs://bucket"


def row(epoch: int, index: int = 0, **values) -> dict:
    return {"epoch": epoch, "sweep_index": index, "sweep": {"weight_decay": 0.1 * index}, "nrc1": float("nan"),
            **values}


@dataclasses.dataclass
class Bucket:
    """What a test sees of gs://bucket: the text of an object (None when there is none), every
    object's key, and the operations made on gs:// paths as (name, path, mode...)."""

    read: Callable[[str], str | None]
    keys: Callable[[], list[str]]
    calls: list[tuple]


def mocked_epath_bucket(root):
    """gs://bucket/... stored under the local folder `root`, through epath's mock_epath."""
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

    def read(key):
        path = root / key
        return path.read_text() if path.is_file() else None

    def keys():
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    names = ("open", "exists", "isdir", "listdir", "glob", "makedirs", "mkdir", "remove", "rename", "replace", "stat")
    return epath_testing.mock_epath(**{name: on(name) for name in names}), Bucket(read, keys, calls)


class _MemoryBucket(MemoryFileSystem):
    """An in-memory gs:// without folders that refuses appends and renames, as a bucket does."""

    protocol = ("gs",)
    cachable = False
    store: dict = {}
    pseudo_dirs: list = [""]
    calls: list = []

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        return super()._strip_protocol(path[len("gs://"):] if path.startswith("gs://") else path)

    def open(self, path, mode="rb", **kwargs):
        if os.fspath(path).startswith(BUCKET):  # epath's call, not fsspec's own text-mode wrapping
            self.calls.append(("open", os.fspath(path), mode))
        if "a" in mode:
            raise NotImplementedError("objects cannot be appended to")
        return super().open(path, mode, **kwargs)

    def makedirs(self, path, exist_ok=False):
        self.calls.append(("makedirs", os.fspath(path)))
        return super().makedirs(path, exist_ok=exist_ok)

    def mkdir(self, path, create_parents=True, **kwargs):
        self.calls.append(("mkdir", os.fspath(path)))
        return super().mkdir(path, create_parents=create_parents, **kwargs)

    def mv(self, *args, **kwargs):
        raise NotImplementedError("a bucket has no atomic rename")


class _MemoryBackend(epath_backend._FileSystemSpecBackend):  # noqa: SLF001 - gcsfs's place in epath
    def _get_filesystem(self, name):
        return _MemoryBucket()


def fsspec_memory_bucket():
    """gs://bucket/... in memory, through etils.epath's fsspec backend."""
    _MemoryBucket.store, _MemoryBucket.pseudo_dirs, _MemoryBucket.calls = {}, [""], []

    def read(key):
        found = _MemoryBucket.store.get(f"/bucket/{key}")
        return None if found is None else found.getvalue().decode()

    def keys():
        return sorted(k[len("/bucket/"):] for k in _MemoryBucket.store)

    patch = mock.patch.dict(gpath._PREFIX_TO_BACKEND, {"gs": _MemoryBackend()})  # noqa: SLF001
    return patch, Bucket(read, keys, _MemoryBucket.calls)


@pytest.fixture(params=["mock_epath", "fsspec_memory"])
def bucket(request, tmp_path):
    """gs://bucket, one of two stand-ins (see the module docstring)."""
    if request.param == "mock_epath":
        (tmp_path / "bucket").mkdir()
        patch, view = mocked_epath_bucket(tmp_path / "bucket")
    else:
        patch, view = fsspec_memory_bucket()
    with patch:
        yield view


def test_replacements_on_a_bucket_are_one_whole_write_in_the_local_format(bucket, tmp_path):
    rows = [row(0), row(0, 1), row(2, time_s=1.5)]
    run_files.write_lines_atomic(f"{BUCKET}/run/metrics.jsonl", rows)
    run_files.write_json_atomic(f"{BUCKET}/run/config.json", {"train": {"epochs": 2}, "x": float("inf")})
    local = tmp_path / "local"
    local.mkdir()
    run_files.write_lines_atomic(local / "metrics.jsonl", rows)
    run_files.write_json_atomic(local / "config.json", {"train": {"epochs": 2}, "x": float("inf")})
    for name in ("metrics.jsonl", "config.json"):
        assert bucket.read(f"run/{name}") == (local / name).read_text()
    assert bucket.keys() == ["run/config.json", "run/metrics.jsonl"]  # no .tmp
    assert [(c[0], c[2]) for c in bucket.calls] == [("open", "w"), ("open", "w")]


def test_the_workdir_reader_reads_a_bucket(bucket):
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
    monkeypatch.setattr(tensorboard, "_importable", lambda module: False)  # google-cloud-storage absent
    config = ml_collections.ConfigDict({"train": {"epochs": 4, "progress_bar": False}})
    members = [{"sweep": {"weight_decay": 0.0}}, {"sweep": {"weight_decay": 0.1}}]
    with caplog.at_level(logging.WARNING):
        log = writers.RunWriter(f"{BUCKET}/run", config, members)
    assert [r.getMessage() for r in caplog.records] == [
        f"no TensorBoard events in {BUCKET}/run: tensorboardX writes gs:// through google-cloud-storage, which "
        "is not installed; training goes on (metrics.jsonl holds every row)"]
    assert json.loads(bucket.read("run/config.json")) == config.to_dict()
    assert bucket.read("run/metrics.jsonl") == ""
    written = []
    for epoch in (0, 2, 4):
        rows = [row(epoch), row(epoch, 1)]
        written += rows
        log.write(rows)
        assert bucket.read("run/metrics.jsonl") == "".join(run_files.json_line(r) for r in written)
    log.close()
    opens = [c for c in bucket.calls if c[0] == "open"]
    assert {c[2] for c in opens} <= {"r", "w"}  # never an append
    assert not [c for c in bucket.calls if c[0] in ("mkdir", "makedirs")]  # gcsfs would create a missing bucket
    assert sum(c[1].endswith("metrics.jsonl") and c[2] == "w" for c in opens) == 4
    assert bucket.keys() == ["run/config.json", "run/metrics.jsonl"]  # no tensorboard/
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


@pytest.mark.parametrize("bucket", ["fsspec_memory"], indirect=True)
def test_an_unreadable_step_on_a_bucket_is_moved_aside_by_copy_and_delete(bucket, monkeypatch):
    monkeypatch.setattr(_MemoryBucket, "mv", MemoryFileSystem.mv)  # gcsfs's mv: a copy, then a delete
    for key in ("checkpoints/3/state/data", "checkpoints/3/meta/metadata", "checkpoints/5/meta/metadata"):
        run_files.workdir_path(f"{BUCKET}/run/{key}").write_text(key)
    checkpoints._move_aside(f"{BUCKET}/run/checkpoints/3", f"{BUCKET}/run/checkpoints_unreadable/3")  # noqa: SLF001
    assert bucket.keys() == ["run/checkpoints/5/meta/metadata", "run/checkpoints_unreadable/3/meta/metadata",
                             "run/checkpoints_unreadable/3/state/data", "run/checkpoints_unreadable/README"]
    assert bucket.read("run/checkpoints_unreadable/3/state/data") == "checkpoints/3/state/data"
