"""End-to-end tests of the training engine on a tiny npz data set (tiny MLP, a few epochs)."""
import json
import os

import jax
import numpy as np
import pytest

from configs import mlp
from nrc_jax.engine import learner, memory, sweeps, train
from nrc_jax.errors import ConfigError, DivergenceError
from nrc_jax.io import run_files, writers

ROW_KEYS = {"epoch", "sweep_index", "sweep", "train_mse", "test_mse", "train_mse_per_dim", "test_mse_per_dim",
            "train_r2", "test_r2", "train_r2_per_dim", "test_r2_per_dim", "loss", "nrc1", "nrc2", "nrc3",
            "nrc3_gamma", "nrc1_centered", "nrc1_variance", "nrc1_unnormalized", "nrc2_variance",
            "nrc2_unnormalized", "evr", "wwt", "w_norm", "h_norm_sq", "lambda_min", "time_s"}


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(140, 5)).astype(np.float32)
    y = np.stack([np.tanh(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3]], 1).astype(np.float32)
    path = str(tmp_path_factory.mktemp("data") / "tiny.npz")
    np.savez(path, x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    return path


def tiny_config(npz_path, **overrides):
    config = mlp.get_config()
    config.data.name, config.data.path = "npz", npz_path
    config.model.widths = (16, 16)
    config.train.update(epochs=6, eval_every=2, checkpoint_every=2, batch_size=32, progress_bar=False)
    config.mesh.num_devices = 1
    config.update_from_flattened_dict(overrides)
    return config


def rows_by_member(workdir):
    rows = run_files.read_metrics(str(workdir))
    return {k: [r for r in rows if r["sweep_index"] == k] for k in {r["sweep_index"] for r in rows}}


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def assert_rows_close(a, b, rtol):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_mse", "test_mse", "loss", "nrc1", "nrc2", "nrc3", "w_norm", "h_norm_sq", "evr", "wwt"):
            np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=1e-6, err_msg=f"{key} epoch {ra['epoch']}")


def test_end_to_end_outputs_and_no_recompilation(npz_path, tmp_path, traced_at_most):
    # One trace of the chunk for the initial evaluation (0 epochs), the 3 chunks, and a second run
    # of the same config in this process resuming the finished run (the cached program).
    traced_at_most(memory.Trainer, "_train_chunk", 1)
    config = tiny_config(npz_path)
    result = train.train_and_evaluate(config, str(tmp_path))
    rows = run_files.read_metrics(str(tmp_path))
    assert [r["epoch"] for r in rows] == [0, 2, 4, 6]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert len(row["evr"]) == 5 and np.shape(row["wwt"]) == (2, 2)
        assert 0.0 <= row["nrc1"] <= 1.0 and 0.0 <= row["nrc2"] <= 1.0
    assert rows[-1]["train_mse"] < rows[0]["train_mse"]
    assert json.load(open(tmp_path / "config.json"))["model"]["widths"] == [16, 16]
    summary = run_files.read_summary(tmp_path)["members"][0]
    assert len(summary["gammas"]) == len(summary["nrc3_curve"]) == 1000
    assert summary["epochs"] == [0, 2, 4, 6] and len(summary["nrc3_over_epochs"]) == 4
    assert summary["best_nrc3"] == pytest.approx(min(summary["nrc3_curve"]), abs=1e-6)
    assert summary["best_gamma_over_lambda_min"] == pytest.approx(summary["best_gamma"] / rows[0]["lambda_min"])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4", "6"]
    scalars = tensorboard_scalars(tmp_path / "tensorboard" / "run")
    assert sorted(scalars) == [0, 2, 4, 6]
    for row in rows:
        assert scalars[row["epoch"]]["train_mse"] == pytest.approx(row["train_mse"], rel=1e-6)
        assert scalars[row["epoch"]]["nrc1"] == pytest.approx(row["nrc1"], rel=1e-6)
        assert scalars[row["epoch"]]["evr/4"] == pytest.approx(row["evr"][4], rel=1e-6)
    assert result["members"][0]["epoch"] == 6
    resumed = train.train_and_evaluate(config, str(tmp_path))  # nothing left to train: the final rows again
    assert strip_time(resumed["members"]) == strip_time(result["members"])


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
                out.setdefault(event.step, {})[value.tag] = value.simple_value
    return out


def test_resume_after_crash_matches_straight_run(npz_path, tmp_path, monkeypatch):
    config = tiny_config(npz_path)
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    original = writers.RunWriter.write

    def crash_at_epoch_4(self, rows):
        if rows[0]["epoch"] == 4:
            raise RuntimeError("simulated crash")
        original(self, rows)

    monkeypatch.setattr(writers.RunWriter, "write", crash_at_epoch_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert [r["epoch"] for r in run_files.read_metrics(str(tmp_path / "resumed"))] == [0, 2]
    monkeypatch.setattr(writers.RunWriter, "write", original)
    train.train_and_evaluate(config, str(tmp_path / "resumed"))  # resumes from the epoch-2 checkpoint
    straight = strip_time(run_files.read_metrics(str(tmp_path / "straight")))
    resumed = strip_time(run_files.read_metrics(str(tmp_path / "resumed")))
    assert resumed == straight  # bit for bit, no duplicate rows


def test_resume_drops_rows_beyond_checkpoint_and_refuses_other_config(npz_path, tmp_path):
    config = tiny_config(npz_path, **{"train.epochs": 4})
    train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl", "a") as f:  # rows past the checkpoint and a torn line
        f.write(json.dumps({**run_files.read_metrics(str(tmp_path))[-1], "epoch": 8}) + "\n{\"epoch\": 1")
    train.train_and_evaluate(config, str(tmp_path))
    assert [r["epoch"] for r in run_files.read_metrics(str(tmp_path))] == [0, 2, 4]
    with pytest.raises(ConfigError, match="optim.lr"):
        train.train_and_evaluate(tiny_config(npz_path, **{"train.epochs": 4, "optim.lr": 0.5}), str(tmp_path))


def test_sweep_matches_separate_runs(npz_path, tmp_path):
    sweep = tiny_config(npz_path, **{"sweep.weight_decay": (1e-2, 0.0), "train.epochs": 4})
    train.train_and_evaluate(sweep, str(tmp_path / "sweep"))
    members = rows_by_member(tmp_path / "sweep")
    for k, wd in enumerate((1e-2, 0.0)):
        assert all(r["sweep"] == {"weight_decay": wd} for r in members[k])
        single = tiny_config(npz_path, **{"optim.weight_decay": wd, "train.epochs": 4})
        train.train_and_evaluate(single, str(tmp_path / f"single{k}"))
        assert_rows_close(members[k], rows_by_member(tmp_path / f"single{k}")[0], rtol=1e-4)


def needs_four_devices():
    """The suite forces 8 CPU devices (conftest.py); on one accelerator (benchmarks/device_check.py) skip."""
    if len(jax.devices()) < 4:
        pytest.skip(f"needs 4 devices, {len(jax.devices())} present")


def test_four_devices_match_one(npz_path, tmp_path):
    needs_four_devices()
    for n in (1, 4):
        train.train_and_evaluate(tiny_config(npz_path, **{"mesh.num_devices": n}), str(tmp_path / str(n)))
    assert_rows_close(rows_by_member(tmp_path / "4")[0], rows_by_member(tmp_path / "1")[0], rtol=1e-4)


def test_sweep_members_on_a_2d_mesh_match_one_device(npz_path, tmp_path):
    """K = 4 members sharded over the mesh's 'members' axis (2 x 2 and 4 x 1 devices): every
    member's rows equal the one-device run's, and each device group holds its K / m members."""
    needs_four_devices()
    sweep = {"sweep.weight_decay": (1e-2, 0.0), "sweep.seed": (0, 1), "train.epochs": 4}
    runs = {"1": {"mesh.num_devices": 1}, "2x2": {"mesh.num_devices": 4, "mesh.member_devices": 2},
            "4x1": {"mesh.num_devices": 4, "mesh.member_devices": 4}}
    for name, mesh in runs.items():
        train.train_and_evaluate(tiny_config(npz_path, **sweep, **mesh), str(tmp_path / name))
    one = rows_by_member(tmp_path / "1")
    for name in ("2x2", "4x1"):
        got = rows_by_member(tmp_path / name)
        assert sorted(got) == [0, 1, 2, 3]
        for k in range(4):
            assert_rows_close(got[k], one[k], rtol=1e-4)
    config = tiny_config(npz_path, **sweep, **runs["2x2"])
    trainer = memory.Trainer(config, learner.config_mesh(config), (5,), 2)
    assert dict(trainer.mesh.shape) == {"members": 2, "data": 2}
    state = trainer.create_state(sweeps.sweep_members(config))
    for leaf in jax.tree.leaves(state):
        assert leaf.sharding.spec[0] == "members"
        assert {s.data.shape[0] for s in leaf.addressable_shards} == {2}


def test_member_devices_must_divide_devices_and_members(npz_path, tmp_path):
    with pytest.raises(ConfigError, match="mesh.member_devices=3"):
        learner.make_mesh(4, 3)
    config = tiny_config(npz_path, **{"sweep.seed": (0, 1, 2), "mesh.num_devices": 2, "mesh.member_devices": 2})
    with pytest.raises(ConfigError, match="sweep's 3 members"):
        train.train_and_evaluate(config, str(tmp_path))


def test_divergence_names_epochs_and_keeps_outputs(npz_path, tmp_path):
    config = tiny_config(npz_path, **{"optim.lr": 1e4})
    with pytest.raises(DivergenceError, match=r"diverged between epochs \d+ and \d+.*last good state"):
        train.train_and_evaluate(config, str(tmp_path))
    rows = run_files.read_metrics(str(tmp_path))
    assert rows and all(np.isfinite(r["train_mse"]) for r in rows)


def test_epoch_batches_cover_every_row_once_with_partial_batch():
    idx, mask = learner.epoch_batches(jax.random.PRNGKey(3), 0, 100, 32, drop_last=False)
    assert idx.shape == mask.shape == (4, 32)
    real = np.asarray(idx)[np.asarray(mask) > 0]
    assert sorted(real.tolist()) == list(range(100))
    filled = np.asarray(idx)[np.asarray(mask) == 0]  # the last batch is filled up from the epoch's start
    np.testing.assert_array_equal(filled, np.asarray(idx).reshape(-1)[:28])
    idx, mask = learner.epoch_batches(jax.random.PRNGKey(3), 0, 100, 32, drop_last=True)
    assert idx.shape == (3, 32) and float(mask.sum()) == 96
    other_epoch, _ = learner.epoch_batches(jax.random.PRNGKey(3), 1, 100, 32, drop_last=True)
    assert not np.array_equal(np.asarray(idx), np.asarray(other_epoch))


def test_batch_layout_keeps_the_order_and_masks_the_fill():
    order = np.random.default_rng(0).permutation(10).astype(np.int32)
    rows, mask = learner.batch_layout(order, 4, drop_last=False)
    assert rows.shape == mask.shape == (3, 4) and float(mask.sum()) == 10
    np.testing.assert_array_equal(np.asarray(rows).reshape(-1), np.r_[order, order[:2]])
    np.testing.assert_array_equal(np.asarray(mask).reshape(-1)[10:], 0)
    rows, mask = learner.batch_layout(order, 4, drop_last=True)
    np.testing.assert_array_equal(np.asarray(rows).reshape(-1), order[:8])
    assert float(np.asarray(mask).min()) == 1


def test_compiled_programs_are_shared_by_configs_that_compile_alike(npz_path):
    config = tiny_config(npz_path)
    mesh = learner.make_mesh(1)
    trainer = memory.get_trainer(config, mesh, (5,), 2)
    same_program = tiny_config(npz_path, **{"optim.lr": 0.5, "seed": 3, "train.eval_every": 3})  # traced or unread
    assert memory.get_trainer(same_program, mesh, (5,), 2) is trainer
    changed = {"optim.momentum": 0.9, "train.batch_size": 16, "metrics.evr_k": 3, "model.widths": (8,)}
    for field, value in changed.items():
        assert memory.get_trainer(tiny_config(npz_path, **{field: value}), mesh, (5,), 2) is not trainer, field
    assert memory.get_trainer(config, learner.make_mesh(2), (5,), 2) is not trainer
    with pytest.raises(AttributeError):  # a Trainer cannot read a field its program is not keyed by
        trainer.config.train.eval_every


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 10000, 2**20 + 1])
def test_shuffled_indices_is_a_seeded_permutation(n):
    shuffle = jax.jit(learner.shuffled_indices, static_argnums=1)
    p = np.asarray(shuffle(jax.random.PRNGKey(5), n))
    assert p.dtype == np.int32 and sorted(p.tolist()) == list(range(n))
    np.testing.assert_array_equal(p, np.asarray(shuffle(jax.random.PRNGKey(5), n)))
    if n >= 1000:
        assert not np.array_equal(p, np.asarray(shuffle(jax.random.PRNGKey(6), n)))
        assert abs(np.corrcoef(p, np.arange(n))[0, 1]) < 0.1


@pytest.mark.parametrize("cpu", [True, False])
def test_shuffle_follows_the_backend(monkeypatch, cpu):
    """The packed sort on the CPU, `jax.random.permutation` elsewhere: both seeded permutations."""
    from nrc_jax.engine import models

    monkeypatch.setattr(models, "cpu_rewrites", lambda: cpu)
    key, n = jax.random.PRNGKey(7), 1000
    got = np.asarray(jax.jit(lambda k: learner.shuffled_indices(k, n))(key))
    want = learner.packed_shuffle(key, n) if cpu else jax.random.permutation(key, n)
    np.testing.assert_array_equal(got, np.asarray(want))
    assert got.dtype == np.int32 and sorted(got.tolist()) == list(range(n))


def test_shuffled_indices_is_uniform_over_small_permutations():
    # 24,000 permutations of 4 items: each of the 24 orders ~1,000 times (chi-square, 23 dof,
    # 0.1% quantile 49.7), and every item equally likely in every position.
    keys = jax.random.split(jax.random.PRNGKey(0), 24000)
    perms = np.asarray(jax.vmap(lambda k: learner.shuffled_indices(k, 4))(keys))
    counts = np.unique(perms @ np.array([64, 16, 4, 1]), return_counts=True)[1]
    assert len(counts) == 24 and ((counts - 1000) ** 2 / 1000).sum() < 49.7
    for position in range(4):
        np.testing.assert_allclose(np.bincount(perms[:, position], minlength=4) / 24000, 0.25, atol=0.015)


def test_eval_epochs_include_the_last():
    config = mlp.get_config()
    config.train.update(epochs=25, eval_every=10)
    assert train.eval_epochs(0, config) == [10, 20, 25]
    assert train.eval_epochs(20, config) == [25]
    assert train.eval_epochs(25, config) == []


def test_configs_parse_and_reject_unknown_arguments():
    from configs import images, mujoco

    hopper = mujoco.get_config("hopper")
    assert (hopper.data.name, hopper.train.epochs, hopper.optim.weight_decay) == ("hopper", 200_000, 1e-2)
    assert hopper.sweep.seed == (0, 1, 2) and hopper.model.widths == (256, 256, 256)
    quick = mujoco.get_config("reacher,quick")
    assert quick.train.epochs == 200 and quick.optim.weight_decay == 1.5e-3
    carla = images.get_config("carla")
    assert (carla.model.arch, carla.optim.momentum, carla.optim.schedule, carla.train.batch_size) == (
        "resnet18", 0.9, "step", 512)
    assert images.get_config("utkface").model.arch == "resnet34"
    for module, arg in ((mujoco, "ant"), (images, "carla,slow"), (mlp, "fast")):
        with pytest.raises(ValueError):
            module.get_config(arg)
