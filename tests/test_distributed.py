"""nrc_jax.io.distributed: settings precedence and real loopback runs; the row partition of the tests'
global arrays (tests/multihost_helpers.py).

The loopback tests start 2 Python processes with 2 simulated CPU devices each (gloo collectives)
running tests/multihost_worker.py, and compare with the same functions run here in one process.
"""
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nrc_jax.core import metrics
from nrc_jax.errors import ConfigError
from nrc_jax.io import distributed

sys.path.insert(0, os.path.dirname(__file__))
import multihost_helpers as helpers  # noqa: E402
import multihost_worker as worker  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_ENV = {"SLURM_JOB_ID": "12", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
LOOPBACK_ENV = {"NRC_JAX_COORDINATOR": "127.0.0.1:1234", "NRC_JAX_NUM_PROCESSES": "2",
                "NRC_JAX_PROCESS_ID": "1"}


# --- where the settings come from -------------------------------------------------------------

def test_no_settings_means_single_process():
    settings = distributed.resolve_settings(environ={})
    assert settings.source == "none"
    assert settings.initialization_timeout == distributed.DEFAULT_INIT_TIMEOUT_S


def test_loopback_variables_are_parsed():
    env = dict(LOOPBACK_ENV, NRC_JAX_LOCAL_DEVICE_IDS="0, 1", NRC_JAX_INIT_TIMEOUT="9")
    settings = distributed.resolve_settings(environ=env)
    assert (settings.source, settings.coordinator_address, settings.num_processes,
            settings.process_id, settings.local_device_ids, settings.initialization_timeout) == (
        "env", "127.0.0.1:1234", 2, 1, (0, 1), 9)


def test_explicit_flags_win_over_variables_and_cluster():
    env = dict(LOOPBACK_ENV, **SLURM_ENV)
    settings = distributed.resolve_settings("10.0.0.1:99", 4, 3, initialization_timeout=5, environ=env)
    assert (settings.source, settings.coordinator_address, settings.num_processes,
            settings.process_id, settings.initialization_timeout) == ("explicit", "10.0.0.1:99", 4, 3, 5)


def test_loopback_variables_win_over_cluster():
    assert distributed.resolve_settings(environ=dict(LOOPBACK_ENV, **SLURM_ENV)).source == "env"


def test_cluster_environment_is_left_to_jax():
    assert distributed.resolve_settings(environ=SLURM_ENV).source == "cluster"
    assert distributed.resolve_settings(environ={"NRC_JAX_DISTRIBUTED": "auto"}).source == "cluster"
    off = dict(SLURM_ENV, NRC_JAX_DISTRIBUTED="off")
    assert distributed.resolve_settings(environ=off).source == "none"
    # sbatch without srun has no step node list: one process, no initialization.
    batch_only = {k: v for k, v in SLURM_ENV.items() if k != "SLURM_STEP_NODELIST"}
    assert distributed.resolve_settings(environ=batch_only).source == "none"


@pytest.mark.parametrize("env, names", [
    ({"NRC_JAX_COORDINATOR": "127.0.0.1:1234"}, ["NRC_JAX_NUM_PROCESSES", "NRC_JAX_PROCESS_ID"]),
    (dict(LOOPBACK_ENV, NRC_JAX_COORDINATOR="localhost"), ["NRC_JAX_COORDINATOR", "host:port"]),
    (dict(LOOPBACK_ENV, NRC_JAX_PROCESS_ID="2"), ["NRC_JAX_PROCESS_ID=2", "NRC_JAX_NUM_PROCESSES=2"]),
    (dict(LOOPBACK_ENV, NRC_JAX_NUM_PROCESSES="two"), ["NRC_JAX_NUM_PROCESSES", "'two'"]),
    (dict(LOOPBACK_ENV, NRC_JAX_INIT_TIMEOUT="0"), ["NRC_JAX_INIT_TIMEOUT"]),
    ({"NRC_JAX_DISTRIBUTED": "yes"}, ["NRC_JAX_DISTRIBUTED", "auto", "off"]),
])
def test_bad_settings_name_the_variable(env, names):
    with pytest.raises(ConfigError) as info:
        distributed.resolve_settings(environ=env)
    for name in names:
        assert name in str(info.value)


def test_partial_flags_name_the_missing_flags():
    with pytest.raises(ConfigError, match="--num_processes, --process_id"):
        distributed.resolve_settings(coordinator_address="h:1", environ={})


def test_single_process_initialize_does_nothing(monkeypatch):
    for name in list(LOOPBACK_ENV) + list(SLURM_ENV) + ["NRC_JAX_DISTRIBUTED", "OMPI_MCA_orte_hnp_uri"]:
        monkeypatch.delenv(name, raising=False)
    assert distributed.maybe_initialize().source == "none"
    assert not jax.distributed.is_initialized()
    assert jax.process_index() == 0


# --- which rows each process loads ------------------------------------------------------------

@pytest.mark.parametrize("num_rows, num_devices, processes", [
    (10, 4, 2), (12, 4, 2), (3, 8, 4), (0, 2, 2), (101, 6, 3), (7, 1, 1)])
def test_process_rows_cover_every_row_once_in_order(num_rows, num_devices, processes):
    shards = [helpers.process_rows(num_rows, num_devices, p, processes) for p in range(processes)]
    covered = np.concatenate([np.arange(s.start, s.stop) for s in shards])
    np.testing.assert_array_equal(covered, np.arange(num_rows))
    per_process_devices = num_devices // processes
    for s in shards:
        assert s.size % per_process_devices == 0 and s.num_real <= s.size
        assert s.global_size == s.size * processes and s.global_size % num_devices == 0
        assert num_rows <= s.global_size < num_rows + num_devices


def test_process_rows_padding_sits_at_the_global_end():
    """Same total device count, any process split: the same global (padded) row layout."""
    def layout(processes):
        rows = []
        for p in range(processes):
            s = helpers.process_rows(10, 4, p, processes)
            rows += list(range(s.start, s.stop)) + [-1] * (s.size - s.num_real)
        return rows
    assert layout(1) == layout(2) == list(range(10)) + [-1, -1]


def test_process_rows_rejects_bad_topology():
    with pytest.raises(ValueError, match="process_index=2"):
        helpers.process_rows(10, 4, 2, 2)
    with pytest.raises(ValueError, match="num_devices=3"):
        helpers.process_rows(10, 3, 0, 2)


def test_pad_rows_masks_the_padding():
    padded, mask = helpers.pad_rows(np.ones((3, 2), np.float32), 5)
    np.testing.assert_array_equal(padded, [[1, 1]] * 3 + [[0, 0]] * 2)
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0])


# --- global arrays from process-local rows (one process here) ---------------------------------

def test_shard_host_array_places_rows_over_the_data_axis():
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    rows = np.arange(16.0, dtype=np.float32).reshape(8, 2)
    out = helpers.shard_host_array(mesh, {"x": rows})["x"]
    assert out.sharding == NamedSharding(mesh, PartitionSpec("data"))
    assert [s.data.shape for s in out.addressable_shards] == [(2, 2)] * 4
    np.testing.assert_array_equal(np.asarray(out), rows)
    with pytest.raises(ValueError, match="6 local rows do not divide over this process's 4 devices"):
        helpers.shard_host_array(mesh, rows[:6])


def unpadded_single_device_stats() -> dict[str, np.ndarray]:
    """The reference: feature_stats of all rows at once on one device, no padding, no mask."""
    features, targets = worker.make_data()
    stats = metrics.feature_stats(features, targets, features @ worker.HEAD.T)
    return {k: np.asarray(v) for k, v in stats._asdict().items()}


def assert_same_stats(got, expected):
    assert set(expected) <= set(got)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_padded_sharded_stats_match_unpadded_single_device():
    stats = worker.global_stats(worker.data_mesh(jax.devices()[:4]))
    assert stats["count"] == worker.NUM_ROWS
    assert_same_stats(stats, unpadded_single_device_stats())


def test_one_process_barrier_returns_and_compile_together_runs():
    distributed.barrier("alone", timeout_s=1)
    x = jax.numpy.arange(8.0)
    compiled = distributed.compile_together("double", jax.jit(lambda a: 2 * a), x)
    np.testing.assert_array_equal(np.asarray(compiled(x)), 2 * np.arange(8.0))


# --- real processes on loopback ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(process_id: int, num_processes: int, port: int, timeout_s: int, devices: int = 2) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", NRC_JAX_COORDINATOR=f"127.0.0.1:{port}",
               NRC_JAX_NUM_PROCESSES=str(num_processes), NRC_JAX_PROCESS_ID=str(process_id),
               NRC_JAX_INIT_TIMEOUT=str(timeout_s), PYTHONPATH=REPO)
    env.pop("NRC_JAX_LOCAL_DEVICE_IDS", None)
    return env


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    """Runs 2 processes x 2 devices once; they restore a 1x1 checkpoint and save their own."""
    out = tmp_path_factory.mktemp("two_by_two")
    one_by_one = str(out / "ckpt_1x1")
    worker.save_tree(one_by_one, worker.data_mesh(jax.devices()[:1]))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, str(out), one_by_one], env=worker_env(i, 2, port, 30),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{logs[i][-3000:]}"
    return out


def test_two_processes_reduce_like_one(two_by_two):
    expected = worker.global_stats(worker.data_mesh(jax.devices()[:4]))
    for index in range(2):
        got = np.load(two_by_two / f"stats_{index}.npz")
        assert (int(got["process_count"]), int(got["device_count"])) == (2, 4)
        assert_same_stats(got, expected)
        assert_same_stats(got, unpadded_single_device_stats())


def test_checkpoint_from_one_device_restores_on_two_processes(two_by_two):
    tree = worker.make_tree()
    for index in range(2):
        got = np.load(two_by_two / f"restored_{index}.npz")
        assert int(got["step"]) == worker.CHECKPOINT_STEP and bool(got["shardings_ok"])
        for key in tree:
            np.testing.assert_array_equal(got[key], tree[key], err_msg=key)


def test_checkpoint_from_two_processes_restores_on_one_device(two_by_two):
    got = worker.restore_tree(str(two_by_two / "ckpt"), worker.data_mesh(jax.devices()[:1]))
    assert int(got["step"]) == worker.CHECKPOINT_STEP and bool(got["shardings_ok"])
    for key, value in worker.make_tree().items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_unreachable_coordinator_stops_with_a_message(tmp_path):
    port = free_port()  # nobody listens there
    start = time.monotonic()
    proc = subprocess.run([sys.executable, WORKER, str(tmp_path)], env=worker_env(1, 2, port, 2),
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert elapsed < 30
    assert f"127.0.0.1:{port}" in proc.stderr and "initialization_timeout=2 s" in proc.stderr
    assert "Traceback" not in proc.stderr
