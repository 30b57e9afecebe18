"""Reliability (issue 16): one run per workdir, the metric history repaired from checkpoints, one
`error:` line for each bad input, and bounded ends of multi-process faults. docs/reliability.md
lists what is guaranteed; each guarantee has a test here.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import mlp
from nrc_jax.engine import train
from nrc_jax.errors import ConfigError, DataError
from nrc_jax.io import locking, run_files, writers

from tests.test_faults import REPO, RUN_TIMEOUT_S, TINY, npz_path  # noqa: F401 (fixture)


def make_config(npz_path, **overrides):
    config = mlp.get_config()
    config.update_from_flattened_dict({**TINY, "data.path": npz_path, **overrides})
    return config


def cli(workdir, npz_path, **overrides) -> list[str]:
    values = {**TINY, "data.path": npz_path, **overrides}
    flags = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}" for k, v in values.items()]
    return [sys.executable, "-m", "nrc_jax.main", "--config=configs/mlp.py", f"--workdir={workdir}", *flags]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """Subprocess environment: this session's XLA flags plus a compilation cache shared by every run."""
    cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def tree_state(root) -> dict:
    """path -> (size, mtime_ns) of every file and folder under root: 'touching nothing' is equality."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.stat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# --------------------------------------------------------------------- one run per workdir
def test_second_run_is_refused_naming_the_holder_and_touches_nothing(npz_path, tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(make_config(npz_path, **{"train.epochs": 2}), str(workdir))
    before = tree_state(workdir)
    with locking.WorkdirLock(str(workdir)) as held:
        during = tree_state(workdir)
        with pytest.raises(locking.WorkdirBusyError) as refused:
            train.train_and_evaluate(make_config(npz_path, **{"train.epochs": 2}), str(workdir))
        assert tree_state(workdir) == during
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message and "UTC" in message
        assert held.path in message
    assert tree_state(workdir) == before  # the lock file is removed on release
    train.train_and_evaluate(make_config(npz_path, **{"train.epochs": 2}), str(workdir))  # free again
    assert [r["epoch"] for r in run_files.read_metrics(str(workdir))] == [0, 2]


def test_lock_is_released_when_the_run_fails(npz_path, tmp_path):
    with pytest.raises(DataError):
        train.train_and_evaluate(make_config(str(tmp_path / "missing.npz")), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / locking.LOCK_FILE)
    with locking.WorkdirLock(str(tmp_path / "run")):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "2026-01-01 00:00:00 UTC"}
    (tmp_path / locking.LOCK_FILE).write_text(json.dumps(stale))
    with caplog.at_level("WARNING", logger="nrc_jax.io.locking"):
        with locking.WorkdirLock(str(tmp_path)) as lock:
            assert json.loads(open(lock.path).read())["pid"] == os.getpid()
    assert any(f"pid {stale['pid']}" in r.getMessage() and "without releasing" in r.getMessage()
               for r in caplog.records)


def test_lock_is_exclusive_across_processes_and_freed_by_kill_9(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from nrc_jax.io import locking; "
                               f"locking.WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
                               "time.sleep(600)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locking.WorkdirBusyError, match=f"pid {holder.pid} "):
            locking.WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    with locking.WorkdirLock(str(tmp_path)):  # the kernel released the dead holder's lock
        pass


def test_workdir_that_is_a_file_is_a_config_error(npz_path, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        train.train_and_evaluate(make_config(npz_path), str(path))
    with pytest.raises(ConfigError, match="a parent is a file"):
        train.train_and_evaluate(make_config(npz_path), str(path / "sub"))
    assert path.read_text() == "not a directory"


def test_cli_second_run_exits_2_with_one_error_line(npz_path, tmp_path, cli_env):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with locking.WorkdirLock(str(workdir)):
        proc = subprocess.run(cli(workdir, npz_path), cwd=REPO, env=cli_env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in line and "running since" in line
    assert sorted(os.listdir(workdir)) == []  # the lock file went with the holder; the refused run wrote nothing


@pytest.mark.slow
def test_same_command_started_twice_one_runs_one_is_refused(npz_path, tmp_path, cli_env):
    workdir = tmp_path / "run"
    command = cli(workdir, npz_path, **{"train.epochs": 40, "train.eval_every": 4, "train.checkpoint_every": 8})
    procs = [subprocess.Popen(command, cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=RUN_TIMEOUT_S), p.stderr.read()) for p in procs]
    assert sorted(status for status, _ in results) == [0, 2], results
    refused = next(stderr for status, stderr in results if status == 2)
    assert len(error_lines(refused)) == 1 and "is in use by another run" in refused and "Traceback" not in refused
    assert [r["epoch"] for r in run_files.read_metrics(str(workdir))] == list(range(0, 41, 4))
    assert not [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]
    assert not os.path.exists(workdir / locking.LOCK_FILE)


# --------------------------------------------------------------------- the metric history
def strip_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def metrics_text(workdir) -> str:
    with open(os.path.join(workdir, run_files.METRICS_FILE)) as f:
        return f.read()


def tensorboard_scalars(directory) -> dict[int, dict[str, float]]:
    """{step: {tag: value}} read back from the TFRecord-framed event files in `directory`."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[int, dict[str, float]] = {}
    for name in sorted(os.listdir(directory)):
        data = open(os.path.join(directory, name), "rb").read()
        offset = 0
        while offset < len(data):  # record: length (8 bytes), crc (4), payload, crc (4)
            length = int.from_bytes(data[offset:offset + 8], "little")
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                assert value.tag not in out.get(event.step, {}), f"step {event.step} logged twice"
                out.setdefault(event.step, {})[value.tag] = value.simple_value
    return out


def assert_tensorboard_matches(workdir, rows: list[dict]) -> None:
    scalars = tensorboard_scalars(os.path.join(workdir, "tensorboard", "run"))
    assert sorted(scalars) == [r["epoch"] for r in rows]
    for row in rows:
        assert scalars[row["epoch"]]["train_mse"] == pytest.approx(row["train_mse"], rel=1e-6)


@pytest.fixture(scope="module")
def straight(npz_path, tmp_path_factory):
    """A finished uninterrupted run: (workdir, metrics.jsonl text)."""
    workdir = tmp_path_factory.mktemp("straight")
    train.train_and_evaluate(make_config(npz_path), str(workdir))
    return workdir, metrics_text(workdir)


def crashed_at_epoch_4(npz_path, workdir, monkeypatch) -> None:
    """A run that dies while writing the rows of epoch 4, so its only checkpoint is epoch 2."""
    original = writers.RunWriter.write

    def crash(self, rows):
        if rows[0]["epoch"] == 4:
            raise RuntimeError("simulated crash")
        original(self, rows)

    monkeypatch.setattr(writers.RunWriter, "write", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train_and_evaluate(make_config(npz_path), str(workdir))
    monkeypatch.setattr(writers.RunWriter, "write", original)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]


def deleted(path):
    os.remove(path)


def truncated(path):
    with open(path, "r+") as f:
        f.truncate(len(f.readline()) // 2)


def edited(path):
    rows = run_files.read_metrics(os.path.dirname(path))
    rows[1]["train_mse"] = 123.0
    with open(path, "w") as f:
        f.writelines(run_files.json_line(r) for r in rows + rows)  # an edit and duplicated rows


@pytest.mark.parametrize("damage", [deleted, truncated, edited], ids=lambda f: f.__name__)
def test_resume_repairs_metrics_and_tensorboard_from_the_checkpoint(npz_path, straight, tmp_path, monkeypatch,
                                                                     damage, caplog):
    workdir = tmp_path / "run"
    crashed_at_epoch_4(npz_path, workdir, monkeypatch)
    damage(str(workdir / run_files.METRICS_FILE))
    for name in os.listdir(workdir / "tensorboard" / "run"):  # TensorBoard lost too
        os.remove(workdir / "tensorboard" / "run" / name)
    with caplog.at_level("WARNING", logger="nrc_jax.io.writers"):
        train.train_and_evaluate(make_config(npz_path), str(workdir))
    assert any("rewritten from the checkpoint" in r.getMessage() for r in caplog.records)
    assert strip_time(run_files.read_metrics(str(workdir))) == strip_time(run_files.read_metrics(str(straight[0])))
    assert_tensorboard_matches(workdir, run_files.read_metrics(str(workdir)))
    summary = json.load(open(workdir / run_files.SUMMARY_FILE))["members"][0]
    assert summary["final"]["epoch"] == 6 and summary["epochs"] == [0, 2, 4, 6]


def test_checkpoint_without_history_still_resumes_from_the_file(npz_path, straight, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    crashed_at_epoch_4(npz_path, workdir, monkeypatch)
    import shutil

    shutil.rmtree(workdir / "checkpoints" / "2" / "history")  # as checkpoints made before issue 16
    train.train_and_evaluate(make_config(npz_path), str(workdir))
    assert strip_time(run_files.read_metrics(str(workdir))) == strip_time(run_files.read_metrics(str(straight[0])))


def test_checkpoint_holds_the_rows_up_to_its_epoch(npz_path, straight):
    from nrc_jax.io import checkpoints

    ckpt = checkpoints.Checkpoints(str(straight[0]), meta={}, read_only=True)
    # The end of a run rewrites nrc3 of every row at the final best gamma; the rest is as logged.
    plain = lambda row: {k: v for k, v in row.items() if k not in ("time_s", "nrc3", "nrc3_gamma")}
    try:
        on_file = [plain(json.loads(line)) for line in straight[1].splitlines()]
        for step in (2, 4, 6):
            saved = [plain(json.loads(run_files.json_line(r))) for r in run_files.rows_from_json(ckpt.restore_history(step))]
            assert [r["epoch"] for r in saved] == list(range(0, step + 1, 2))
            assert saved == on_file[:len(saved)]
    finally:
        ckpt.close()


def test_files_vanishing_mid_run_are_recreated_with_a_warning(npz_path, straight, tmp_path, monkeypatch, caplog):
    workdir = tmp_path / "run"
    original = writers.RunWriter.write

    def delete_after_epoch_2(self, rows):
        original(self, rows)
        if rows[0]["epoch"] == 2:
            os.remove(workdir / run_files.METRICS_FILE)
            for name in os.listdir(workdir / "tensorboard" / "run"):
                os.remove(workdir / "tensorboard" / "run" / name)

    monkeypatch.setattr(writers.RunWriter, "write", delete_after_epoch_2)
    with caplog.at_level("WARNING", logger="nrc_jax.io.writers"):
        train.train_and_evaluate(make_config(npz_path), str(workdir))
    messages = [r.getMessage() for r in caplog.records]
    assert any(run_files.METRICS_FILE in m and "vanished" in m for m in messages), messages
    assert any("TensorBoard" in m and "vanished" in m for m in messages), messages
    assert strip_time(run_files.read_metrics(str(workdir))) == strip_time(run_files.read_metrics(str(straight[0])))
    assert_tensorboard_matches(workdir, run_files.read_metrics(str(workdir)))
    assert json.load(open(workdir / run_files.SUMMARY_FILE))["members"][0]["final"]["epoch"] == 6


# --------------------------------------------------------------------- bad inputs
def bad_npz_files(d) -> dict:
    """name -> (path, texts the error must contain)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 5)).astype(np.float32), rng.normal(size=(120, 2)).astype(np.float32)
    variants = {
        "target dim 0": ({"y_train": np.zeros((100, 0), np.float32), "y_test": np.zeros((20, 0), np.float32)},
                         ["train targets", "(100, 0)", "target dimension 0"]),
        "inputs 1e30": ({"x_train": x[:100] * 1e30}, ["train inputs", "3.9e+30", "first at row 0", "1e+12"]),
        "targets 1e30": ({"y_train": y[:100] * 1e30}, ["train targets", "1e+12"]),
        "float64 beyond float32": ({"x_test": x[100:].astype(np.float64) * 1e300},
                                   ["test inputs", "beyond float32's range"]),
        "complex targets": ({"y_train": y[:100] + 1j * y[:100]}, ["train targets", "complex dtype complex64"]),
    }
    out = {}
    for i, (name, (arrays, texts)) in enumerate(variants.items()):
        path = os.path.join(d, f"bad{i}.npz")
        np.savez(path, **{"x_train": x[:100], "y_train": y[:100], "x_test": x[100:], "y_test": y[100:], **arrays})
        out[name] = (path, texts + [path])
    return out


BAD_DATA = ["target dim 0", "inputs 1e30", "targets 1e30", "float64 beyond float32", "complex targets"]


@pytest.mark.parametrize("name", BAD_DATA)
def test_bad_data_is_one_data_error_naming_file_and_cause(name, tmp_path):
    from nrc_jax.data.npz import load_npz

    path, texts = bad_npz_files(str(tmp_path))[name]
    with pytest.raises(DataError) as error:
        load_npz(path)
    for text in texts:
        assert text in str(error.value), str(error.value)


def test_non_finite_initial_evaluation_is_not_called_a_divergence():
    row = {"epoch": 0, "sweep_index": 0, "sweep": {}, "loss": float("inf"), "train_mse": float("inf"),
           "test_mse": 1.0, "w_norm": 1.0, "h_norm_sq": float("nan")}
    with pytest.raises(train.DivergenceError) as error:
        train.check_finite([row], 0, None)
    message = str(error.value)
    assert "initial evaluation" in message and "data's scale" in message and "diverged" not in message


def test_a_full_disk_is_one_error_and_leaves_no_partial_checkpoint(npz_path, tmp_path, monkeypatch):
    from nrc_jax.errors import DiskFullError
    from nrc_jax.io import checkpoints

    monkeypatch.setattr(checkpoints, "_free_bytes", lambda directory: 5000)  # checked before each save
    with pytest.raises(DiskFullError) as error:
        train.train_and_evaluate(make_config(npz_path), str(tmp_path))
    message = str(error.value)
    assert "no space left" in message and "5000 bytes" in message and "needed" in message
    assert os.listdir(tmp_path / "checkpoints") == []
    assert not os.path.exists(tmp_path / locking.LOCK_FILE)


def test_no_space_while_writing_rows_is_a_disk_full_error(npz_path, tmp_path, monkeypatch):
    import errno

    from nrc_jax.errors import DiskFullError

    original = writers.RunWriter.write

    def full_at_epoch_4(self, rows):
        if rows[0]["epoch"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, rows)

    monkeypatch.setattr(writers.RunWriter, "write", full_at_epoch_4)
    with pytest.raises(DiskFullError, match="no space left on the device of .* free"):
        train.train_and_evaluate(make_config(npz_path), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    monkeypatch.setattr(writers.RunWriter, "write", original)
    train.train_and_evaluate(make_config(npz_path), str(tmp_path))  # resumes once there is room
    assert [r["epoch"] for r in run_files.read_metrics(str(tmp_path))] == [0, 2, 4, 6]


@pytest.fixture
def small_disk(tmp_path):
    """A mount point for a tmpfs of a given size (root only; skipped elsewhere)."""
    mounted = []

    def mount(size: str):
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)  # -l: an in-process run may hold files open


@pytest.mark.slow
def test_cli_on_a_full_device(npz_path, small_disk, cli_env):
    """A real full tmpfs: the pre-save check refuses the checkpoint that no longer fits."""
    workdir = small_disk("1200k") / "run"
    command = cli(workdir, npz_path, **{"train.epochs": 8, "train.eval_every": 1, "train.checkpoint_every": 1})
    proc = subprocess.run(command, cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert "no space left" in line and " free (" in line and " needed (" in line
    assert not [d for d in os.listdir(workdir / "checkpoints") if not d.isdigit()]


@pytest.mark.slow
def test_no_space_inside_an_async_save_removes_the_partial_checkpoint(npz_path, small_disk, monkeypatch):
    """Orbax's own write fails (no margin left for the pre-save check): still one DiskFullError."""
    from nrc_jax.errors import DiskFullError
    from nrc_jax.io import checkpoints

    monkeypatch.setattr(checkpoints, "SAVE_MARGIN_BYTES", 0)
    workdir = small_disk("300k") / "run"
    with pytest.raises(DiskFullError) as error:
        train.train_and_evaluate(make_config(npz_path, **{"train.epochs": 12, "train.eval_every": 1,
                                                          "train.checkpoint_every": 1}), str(workdir))
    assert "no space left on the device" in str(error.value) and "bytes" in str(error.value)
    assert not [d for d in os.listdir(workdir / "checkpoints") if not d.isdigit()]


# --------------------------------------------------------------------- inspect falls back
def manifest_deleted(step_dir):
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def test_inspect_reads_the_newest_readable_checkpoint_and_says_which(straight, tmp_path, capsys):
    from nrc_jax import inspect

    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(straight[0], workdir)
    manifest_deleted(str(workdir / "checkpoints" / "6"))
    assert inspect.main([str(workdir), "--json"]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert info["step"] == 4 and info["skipped_unreadable"][0]["step"] == 6
    assert "checkpoint of epoch 6 is unreadable" in err and "read the checkpoint of epoch 4 instead" in err
    assert inspect.main([str(workdir), "--step", "6"]) == 2  # asked for explicitly: an error, not a fall-back
    (line,) = error_lines(capsys.readouterr().err)
    assert "no readable checkpoint" in line and "/6:" in line


@pytest.mark.slow
def test_cli_resume_and_inspect_past_a_deleted_manifest_print_no_tracebacks(npz_path, straight, tmp_path, cli_env):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(straight[0], workdir)
    manifest_deleted(str(workdir / "checkpoints" / "6"))
    inspected = subprocess.run([sys.executable, "-m", "nrc_jax.inspect", str(workdir)], cwd=REPO, env=cli_env,
                               capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert inspected.returncode == 0, inspected.stderr
    assert "showing step 4" in inspected.stdout
    resumed = subprocess.run(cli(workdir, npz_path), cwd=REPO, env=cli_env, capture_output=True, text=True,
                             timeout=RUN_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr
    for proc in (inspected, resumed):
        assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr
    assert strip_time(run_files.read_metrics(str(workdir))) == strip_time(run_files.read_metrics(str(straight[0])))


@pytest.fixture(scope="module")
def cli_bad_inputs(npz_path, tmp_path_factory, cli_env):
    """name -> (exit status, stderr, texts, workdir) of main on each bad input, run concurrently."""
    root = tmp_path_factory.mktemp("bad_inputs")
    a_file = root / "a_file"
    a_file.write_text("x")
    cases = {name: (cli(root / f"w{i}", path), texts, root / f"w{i}")
             for i, (name, (path, texts)) in enumerate(bad_npz_files(str(root)).items())}
    cases["workdir is a file"] = (cli(a_file, npz_path), [str(a_file), "is a file, not a directory"], a_file)
    procs = {name: (subprocess.Popen(argv, cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True), texts, workdir) for name, (argv, texts, workdir) in cases.items()}
    out = {}
    for name, (proc, texts, workdir) in procs.items():
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
        out[name] = (proc.returncode, stderr, texts, workdir)
    return out


@pytest.mark.parametrize("name", BAD_DATA + ["workdir is a file"])
def test_cli_bad_input_is_one_error_line_exit_2_and_no_workdir(cli_bad_inputs, name):
    status, stderr, texts, workdir = cli_bad_inputs[name]
    assert status == 2, stderr
    assert "Traceback" not in stderr, stderr
    (line,) = error_lines(stderr)
    for text in texts:
        assert text in line, (text, line)
    if name != "workdir is a file":
        assert not os.path.exists(workdir)  # refused before anything was written


# --------------------------------------------------------------------- multi-process faults
LAUNCH = os.path.join(REPO, "launch", "local_multihost.sh")
LOST_BOUND_S = 60  # docs/reliability.md: every survivor ends within this after a peer is lost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(index: int, port: int, count: int = 2) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               NRC_JAX_COORDINATOR=f"127.0.0.1:{port}", NRC_JAX_NUM_PROCESSES=str(count),
               NRC_JAX_PROCESS_ID=str(index), PYTHONPATH=REPO)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def long_run(workdir, npz_path) -> list[str]:
    """A run that lasts minutes on 2 processes: long enough to be killed in the middle."""
    return cli(workdir, npz_path, **{"train.epochs": 100000, "train.eval_every": 20, "train.checkpoint_every": 100,
                                     "mesh.num_devices": -1})


def wait_for_rows(workdir, procs, rows: int = 2, timeout_s: float = RUN_TIMEOUT_S) -> None:
    path = os.path.join(workdir, run_files.METRICS_FILE)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if os.path.exists(path) and sum(1 for _ in open(path)) >= rows:
            return
        if any(p.poll() is not None for p in procs):
            pytest.fail("a process ended before training: " + "".join(
                open(p.args_log).read()[-2000:] for p in procs if hasattr(p, "args_log")))
        time.sleep(0.1)
    pytest.fail("no evaluation rows in time")


def start_two(workdir, npz_path, tmp_path) -> list[subprocess.Popen]:
    port, procs = free_port(), []
    for i in range(2):
        log = tmp_path / f"p{i}.log"
        proc = subprocess.Popen(long_run(workdir, npz_path), cwd=REPO, env=process_env(i, port),
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        proc.args_log = str(log)
        procs.append(proc)
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("how,victim", [("SIGKILL", 1), ("SIGKILL", 0), ("SIGSTOP", 1)],
                         ids=["worker killed", "process 0 killed", "worker hung"])
def test_lost_process_ends_the_survivor_with_one_error_line_without_launcher(npz_path, tmp_path, how, victim):
    procs = start_two(tmp_path / "run", npz_path, tmp_path)
    try:
        wait_for_rows(tmp_path / "run", procs)
        procs[victim].send_signal(getattr(signal, how))
        lost_at = time.time()
        survivor = procs[1 - victim]
        status = survivor.wait(timeout=LOST_BOUND_S + 30)
        took = time.time() - lost_at
    finally:
        for p in procs:
            p.kill()
            p.wait()
    stderr = open(survivor.args_log).read()
    assert status == 2, stderr
    assert took <= LOST_BOUND_S, took
    (line,) = error_lines(stderr)
    assert f"process {victim} " in line and "was lost" in line, line
    assert ("no heartbeat" in line) == (how == "SIGSTOP"), line
    assert "Traceback" not in stderr, stderr


def child_processes(parent: int) -> dict[int, int]:
    """{NRC_JAX_PROCESS_ID: pid} of the python processes launch/local_multihost.sh started."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"NRC_JAX_PROCESS_ID" in env and b"python" in open(f"/proc/{pid}/cmdline", "rb").read():
            out[int(env[b"NRC_JAX_PROCESS_ID"])] = int(pid)
    return out


@pytest.mark.slow
def test_worker_killed_under_the_launcher_ends_the_run(npz_path, tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, NRC_JAX_DEVICES_PER_PROCESS="2", PYTHON=sys.executable)
    launcher = subprocess.Popen([LAUNCH, "2", *long_run(workdir, npz_path)[3:]], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(workdir, [launcher])
        os.kill(child_processes(launcher.pid)[1], signal.SIGKILL)
        lost_at = time.time()
        _, stderr = launcher.communicate(timeout=LOST_BOUND_S + 30)
        took = time.time() - lost_at
    finally:
        launcher.kill()
        launcher.wait()
    assert launcher.returncode != 0 and took <= LOST_BOUND_S, (took, stderr)
    assert "Traceback" not in stderr, stderr
    assert "process 1" in stderr, stderr  # named by process 0's peer watch or by the launcher, whichever is first
    assert not child_processes(launcher.pid)


@pytest.mark.slow
def test_multi_process_run_on_a_locked_workdir_stops_every_process(npz_path, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    env = dict(os.environ, NRC_JAX_DEVICES_PER_PROCESS="2", PYTHON=sys.executable)
    with locking.WorkdirLock(str(workdir)):
        proc = subprocess.run([LAUNCH, "2", *cli(workdir, npz_path, **{"mesh.num_devices": -1})[3:]], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr
    assert "[p0] error: workdir" in proc.stderr and "is in use by another run" in proc.stderr, proc.stderr
    for index in (0, 1):  # never two lines from one process (its own, or that process 0 stopped)
        assert len([x for x in proc.stderr.splitlines() if x.startswith(f"[p{index}] error: ")]) <= 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.listdir(workdir) == []
