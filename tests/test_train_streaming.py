"""Streamed training (image sets larger than data.max_in_memory_mb) end to end on a tiny synthetic set."""
import os

import jax
import numpy as np
import pytest

from configs import images
from nrc_jax import run_files, sweeps, train, train_streaming, writers
from nrc_jax.data import load_dataset
from nrc_jax.errors import ConfigError

ROW_KEYS = {"epoch", "sweep_index", "sweep", "train_mse", "test_mse", "train_r2", "test_r2", "loss", "nrc1",
            "nrc2", "nrc3", "nrc3_gamma", "nrc1_centered", "nrc2_centered", "nrc1_variance", "evr", "wwt",
            "w_norm", "h_norm_sq", "lambda_min", "time_s"}
COMPARED = ("train_mse", "test_mse", "train_r2", "test_r2", "loss", "nrc1", "nrc2", "nrc3_epoch_best", "nrc1_centered",
            "nrc2_centered", "evr", "wwt", "w_norm", "h_norm_sq")


def streamed_config(**train_overrides):
    """SmallCNN on 96 + 40 synthetic 16x16 images, forced to stream (0.05 MB limit), on 2 devices."""
    config = images.get_config("synthetic_images,quick")
    config.data.update(train_size=96, test_size=40, max_in_memory_mb=0.05)
    config.train.update(epochs=3, eval_every=1, checkpoint_every=1, batch_size=32, eval_chunk=64,
                        progress_bar=False)
    config.train.update(**train_overrides)
    config.mesh.num_devices = 2
    return config


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("straight"))
    result = train.train_and_evaluate(streamed_config(), workdir)
    return workdir, result


def test_streamed_run_writes_rows_summary_and_checkpoints(straight_run):
    workdir, result = straight_run
    rows = run_files.read_metrics(workdir)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert ROW_KEYS <= set(rows[0])
    assert rows[-1]["train_mse"] < rows[0]["train_mse"]  # it trained
    assert result["members"][0]["epoch"] == 3
    assert os.path.exists(os.path.join(workdir, "summary.json"))
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())[-1] == 3
    for name in ("stream_train_step", "stream_stats_step"):  # one compilation each, whatever the batch
        assert train.TRACE_COUNTS[name] == 1, name


def test_first_evaluation_equals_in_memory_engine(straight_run):
    workdir, _ = straight_run
    config = streamed_config()
    config.data.max_in_memory_mb = 2048.0
    data = load_dataset(config.data)
    assert not data.streamed
    mesh = train.make_mesh(config.mesh.num_devices)
    trainer = train.get_trainer(config, mesh, data.input_shape, data.target_dim)
    members = sweeps.sweep_members(config)
    out = trainer.evaluate(trainer.create_state(members), train.put_data(data, mesh, config.train.eval_chunk))
    lambda_min = run_files.read_metrics(workdir)[0]["lambda_min"]
    in_memory = writers.metric_rows(jax.device_get(out), members, lambda_min, 0.0)[0]
    streamed = run_files.read_metrics(workdir)[0]
    assert streamed["epoch"] == in_memory["epoch"] == 0
    for key in COMPARED:
        np.testing.assert_allclose(streamed[key], in_memory[key], rtol=1e-4, atol=1e-6, err_msg=key)


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
    assert [r["epoch"] for r in run_files.read_metrics(str(tmp_path))] == [0, 1, 2]
    monkeypatch.setattr(writers.RunWriter, "write", original)
    calls = []
    monkeypatch.setattr(train_streaming.StreamedRun, "train_epoch",
                        lambda self, state, epoch, _f=train_streaming.StreamedRun.train_epoch:
                        calls.append(epoch) or _f(self, state, epoch))
    train.train_and_evaluate(streamed_config(), str(tmp_path))  # resumes from the epoch-2 checkpoint
    assert calls == [2]
    assert strip_time(run_files.read_metrics(str(tmp_path))) == strip_time(run_files.read_metrics(straight_dir))


def test_per_layer_metrics_are_refused_for_streamed_data(tmp_path):
    config = streamed_config()
    config.metrics.per_layer = True
    with pytest.raises(ConfigError, match="metrics.per_layer"):
        train.train_and_evaluate(config, str(tmp_path))


def test_padded_order_keeps_every_row_once_and_masks_the_fill():
    order = np.random.default_rng(0).permutation(10)
    rows, mask = train_streaming.padded_order(order, 4, drop_last=False)
    assert len(rows) == 12 and mask.sum() == 10
    np.testing.assert_array_equal(rows[:10], order)
    np.testing.assert_array_equal(mask[10:], 0)
    rows, mask = train_streaming.padded_order(order, 4, drop_last=True)
    np.testing.assert_array_equal(rows, order[:8])
    assert mask.min() == 1


def test_row_view_reads_rows_of_the_source_in_order():
    source = np.arange(30, dtype=np.float32).reshape(10, 3)
    view = train_streaming.RowView(source, np.array([9, 0, 0, 4]))
    assert view.shape == (4, 3) and len(view) == 4
    np.testing.assert_array_equal(view[np.array([3, 0])], source[[4, 9]])


def test_centered_pass_rereads_the_train_set_when_features_are_not_kept(monkeypatch):
    config = streamed_config()
    data = load_dataset(config.data)
    trainer = train.get_trainer(config, train.make_mesh(config.mesh.num_devices), data.input_shape,
                                data.target_dim)
    run = train_streaming.StreamedRun(config, data, trainer)
    state = trainer.create_state(sweeps.sweep_members(config))
    _, cached = run.evaluate(state)
    monkeypatch.setattr(train_streaming, "CACHED_FEATURES_MB", -1.0)
    _, reread = run.evaluate(state)
    for key in ("nrc1_centered", "nrc2_centered", "nrc1", "train_mse"):
        np.testing.assert_allclose(np.asarray(reread[key]), np.asarray(cached[key]), rtol=1e-6, err_msg=key)
