"""Streamed training (image sets larger than data.max_in_memory_mb) end to end on a tiny synthetic set."""
import os

import numpy as np
import pytest

from configs import images
from nrc_jax.data import load_dataset
from nrc_jax.engine import streamed, sweeps, train
from nrc_jax.errors import ConfigError
from nrc_jax.io import run_files, writers

ROW_KEYS = {"epoch", "sweep_index", "sweep", "train_mse", "test_mse", "train_r2", "test_r2", "loss", "nrc1",
            "nrc2", "nrc3", "nrc3_gamma", "nrc1_centered", "nrc2_centered", "nrc1_variance", "evr", "wwt",
            "w_norm", "h_norm_sq", "lambda_min", "time_s"}
COMPARED = ("train_mse", "test_mse", "train_r2", "test_r2", "loss", "nrc1", "nrc2", "nrc3_epoch_best", "nrc1_centered",
            "nrc2_centered", "evr", "wwt", "w_norm", "h_norm_sq")


def streamed_config(**train_overrides):
    """SmallCNN on 96 + 40 synthetic 16x16 images, forced to stream (0.05 MB limit), on 2 devices,
    two sweep members (seeds 0 and 1)."""
    config = images.get_config("synthetic_images,quick")
    config.data.update(train_size=96, test_size=40, max_in_memory_mb=0.05)
    config.train.update(epochs=3, eval_every=1, checkpoint_every=1, batch_size=32, eval_chunk=64,
                        progress_bar=False)
    config.train.update(**train_overrides)
    config.sweep.seed = (0, 1)
    config.mesh.num_devices = 2
    return config


def in_memory(config):
    """`config` with the data set held on the devices (the in-memory engine)."""
    config = config.copy_and_resolve_references()
    config.data.max_in_memory_mb = 2048.0
    return config


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """A streamed run whose batch step and evaluation step were each traced once (else it fails)."""
    import chex

    from nrc_jax.engine import learner

    workdir = str(tmp_path_factory.mktemp("straight"))
    chex.clear_trace_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(learner, "_PROGRAMS", {})
        for name in ("_train_step", "_stats_step"):  # one compilation each, whatever the batch
            patch.setattr(streamed.StreamedSteps, name,
                          chex.assert_max_traces(getattr(streamed.StreamedSteps, name), n=1))
        result = train.train_and_evaluate(streamed_config(), workdir)
    return workdir, result


def test_streamed_run_writes_rows_summary_and_checkpoints(straight_run):
    workdir, result = straight_run
    rows = run_files.read_metrics(workdir)
    assert [(r["epoch"], r["sweep_index"]) for r in rows] == [(e, k) for e in range(4) for k in (0, 1)]
    assert ROW_KEYS <= set(rows[0])
    assert rows[-1]["train_mse"] < rows[0]["train_mse"]  # it trained
    assert result["members"][0]["epoch"] == 3
    assert os.path.exists(os.path.join(workdir, "summary.json"))
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())[-1] == 3


def test_every_evaluation_equals_the_in_memory_engine(straight_run, tmp_path):
    """Both engines train each member on its own shuffles (`learner.epoch_batches` of the member's
    key), so the streamed rows are the in-memory engine's up to float32 rounding, member by member."""
    workdir, _ = straight_run
    config = in_memory(streamed_config())
    assert not load_dataset(config.data).streamed
    train.train_and_evaluate(config, str(tmp_path))
    streamed, held = run_files.read_metrics(workdir), run_files.read_metrics(str(tmp_path))
    assert [(r["epoch"], r["sweep_index"]) for r in streamed] == [(r["epoch"], r["sweep_index"]) for r in held]
    assert {r["sweep_index"] for r in streamed} == {0, 1}
    for got, want in zip(streamed, held):
        for key in COMPARED:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{key} epoch {got['epoch']} member {got['sweep_index']}")
    first, second = ([r["train_mse"] for r in streamed if r["sweep_index"] == k] for k in (0, 1))
    assert first != second  # the members differ (seed and shuffles)


def test_resume_after_crash_matches_straight_run(straight_run, tmp_path, monkeypatch):
    straight_dir, _ = straight_run
    original = writers.RunWriter.write

    def crash_at_epoch_3(self, rows):
        if rows[0]["epoch"] == 3:
            raise RuntimeError("simulated crash")
        original(self, rows)

    monkeypatch.setattr(writers.RunWriter, "write", crash_at_epoch_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train_and_evaluate(streamed_config(), str(tmp_path))
    assert [r["epoch"] for r in run_files.read_metrics(str(tmp_path))] == [0, 0, 1, 1, 2, 2]
    monkeypatch.setattr(writers.RunWriter, "write", original)
    calls = []
    monkeypatch.setattr(streamed.StreamedEngine, "train_epoch",
                        lambda self, state, _f=streamed.StreamedEngine.train_epoch:
                        calls.append(int(state.epoch[0])) or _f(self, state))
    train.train_and_evaluate(streamed_config(), str(tmp_path))  # resumes from the epoch-2 checkpoint
    assert calls == [2]
    assert strip_time(run_files.read_metrics(str(tmp_path))) == strip_time(run_files.read_metrics(straight_dir))


def test_per_layer_metrics_are_refused_for_streamed_data(tmp_path):
    config = streamed_config()
    config.metrics.per_layer = True
    with pytest.raises(ConfigError, match="metrics.per_layer"):
        train.train_and_evaluate(config, str(tmp_path))


def test_row_view_reads_rows_of_the_source_in_order():
    source = np.arange(30, dtype=np.float32).reshape(10, 3)
    view = streamed.RowView(source, np.array([9, 0, 0, 4]))
    assert view.shape == (4, 3) and len(view) == 4
    np.testing.assert_array_equal(view[np.array([3, 0])], source[[4, 9]])


def test_centered_pass_rereads_the_train_set_when_features_are_not_kept(monkeypatch):
    config = streamed_config()
    data = load_dataset(config.data)
    members = sweeps.sweep_members(config)
    run = streamed.StreamedEngine(config, data, members)
    state = run.create_state(members)
    _, cached = run.evaluate(state)
    monkeypatch.setattr(streamed, "CACHED_FEATURES_MB", -1.0)
    _, reread = run.evaluate(state)
    for key in ("nrc1_centered", "nrc2_centered", "nrc1", "train_mse"):
        np.testing.assert_allclose(np.asarray(reread[key]), np.asarray(cached[key]), rtol=1e-6, err_msg=key)
