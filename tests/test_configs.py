"""configs/paper.py: every experiment builds and validates, full variants carry the paper's settings
(docs/nrc.md), quick variants are small, and one quick config trains end to end."""
from __future__ import annotations

import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from configs import paper  # noqa: E402
from nrc_jax.engine import sweeps  # noqa: E402
from nrc_jax.io import run_files, validate

TRAINING = [n for n in paper.experiment_names() if n != "table1"]
MUJOCO_PAPER = {"swimmer": (1_000_000, 1e-2), "reacher": (1_500_000, 1.5e-3), "hopper": (200_000, 1e-2)}
SPEC_WD_SWEEPS = {"swimmer": (1e-2, 5e-3, 5e-4, 5e-5, 0.0), "hopper": (1e-2, 5e-3, 5e-4, 5e-5, 0.0),
                  "reacher": (1.5e-3, 5e-4, 5e-5, 5e-6, 0.0), "carla2d": (1e-1, 1e-2, 5e-3, 5e-4, 0.0)}


def test_every_figure_family_of_the_spec_has_configs():
    names = set(paper.experiment_names())
    for s in ("swimmer", "reacher", "hopper", "carla1d", "carla2d", "utkface"):
        assert f"fig2_{s}" in names
    assert {f"fig5_wd_{s}" for s in SPEC_WD_SWEEPS} <= names
    assert {f"fig6_ufm_{s}" for s in ("swimmer", "reacher", "hopper")} <= names
    assert "table1" in names


@pytest.mark.parametrize("name", TRAINING)
@pytest.mark.parametrize("scale", ["", ",quick"])
def test_every_config_builds_and_validates(name, scale):
    config = paper.get_config(name + scale)
    validate.validate_config(config, num_devices=8)
    assert sweeps.sweep_members(config)  # the sweep expands


@pytest.mark.parametrize("arg", ["fig2_nope", "fig2_swimmer,fast", "", "table1,quick,x"])
def test_unknown_arguments_are_refused(arg):
    with pytest.raises(ValueError, match="configs/paper.py"):
        paper.get_config(arg)


@pytest.mark.parametrize("dataset", sorted(MUJOCO_PAPER))
def test_full_mujoco_runs_have_the_papers_settings(dataset):
    config = paper.get_config(f"fig2_{dataset}")
    epochs, wd = MUJOCO_PAPER[dataset]
    assert config.data.name == dataset
    assert config.train.epochs == epochs and config.optim.weight_decay == wd
    assert config.train.batch_size == 256 and config.optim.lr == 1e-2 and config.optim.name == "sgd"
    assert config.optim.momentum == 0 and config.optim.decay_mode == "l2"
    assert tuple(config.model.widths) == (256, 256, 256) and config.model.activation == "relu"
    assert config.model.head_bias and config.model.feature_activation
    assert tuple(config.sweep.seed) == (0, 1, 2)
    assert config.data.train_size == 0 and config.data.test_size == 0  # the paper's sizes, test = 20%
    assert config.data.target_transform == "none"


@pytest.mark.parametrize("dataset,arch", [("carla1d", "resnet18"), ("carla2d", "resnet18"), ("utkface", "resnet34")])
def test_full_image_runs_have_the_papers_settings(dataset, arch):
    config = paper.get_config(f"fig2_{dataset}")
    assert config.model.arch == arch and config.model.stem == "imagenet"
    assert config.train.epochs == 100 and config.train.batch_size == 512
    o = config.optim
    assert (o.name, o.momentum, o.lr, o.schedule, tuple(o.milestones), o.decay_factor) == \
        ("sgd", 0.9, 1e-3, "step", (0.5, 0.75), 0.1)
    assert config.data.image_size == 224 and config.data.image_normalization == "imagenet"
    assert tuple(config.sweep.seed) == (0, 1, 2)
    assert config.data.targets == {"carla1d": "speed", "carla2d": "speed_steer", "utkface": ""}[dataset]


@pytest.mark.parametrize("dataset", sorted(SPEC_WD_SWEEPS))
def test_weight_decay_sweeps_use_the_specs_values_in_one_program(dataset):
    full = paper.get_config(f"fig5_wd_{dataset}")
    assert tuple(full.sweep.weight_decay) == SPEC_WD_SWEEPS[dataset]
    assert len(sweeps.sweep_members(full)) == 15  # 5 values x 3 seeds, vmapped in one run
    quick = paper.get_config(f"fig5_wd_{dataset},quick")
    assert tuple(quick.sweep.weight_decay) == (SPEC_WD_SWEEPS[dataset][0], 0.0)


@pytest.mark.parametrize("dataset", ["swimmer", "reacher", "hopper"])
def test_ufm_regularized_sweeps(dataset):
    config = paper.get_config(f"fig6_ufm_{dataset}")
    assert config.optim.regularizer == "ufm" and config.optim.weight_decay == 0.0
    assert not config.model.feature_activation and config.train.epochs == 10_000
    members = sweeps.sweep_members(config)
    assert {(m["lambda_h"], m["seed"]) for m in members} == {(lam, s) for lam in (1e-2, 1e-3, 1e-4, 1e-5, 0.0)
                                                              for s in (0, 1, 2)}
    assert all(m["lambda_h"] == m["lambda_w"] for m in members)


def _model_epochs_rows(config) -> float:
    rows = {"swimmer": 1000, "reacher": 1000, "hopper": 10_000}.get(config.data.name, 0)
    rows = config.data.train_size or rows
    return config.train.epochs * rows * len(sweeps.sweep_members(config))


@pytest.mark.parametrize("name", TRAINING)
def test_quick_variants_are_small(name):
    config = paper.get_config(name + ",quick")
    full = paper.get_config(name)
    assert config.train.epochs < full.train.epochs
    assert len(sweeps.sweep_members(config)) <= 3
    if config.model.arch == "mlp":
        assert _model_epochs_rows(config) <= 6e6  # sample-passes: a few minutes on 2 cores
        assert config.optim.weight_decay == full.optim.weight_decay  # the paper's decay, faster optimizer
    else:
        assert config.data.image_size <= 32 and config.data.train_size <= 1024 and config.model.width <= 16


def test_table1_lists_the_embedded_sets_quick_and_all_paper_sets_in_full():
    assert set(paper.get_config("table1,quick").datasets) == {"swimmer", "reacher", "hopper", "synthetic_images"}
    full = paper.get_config("table1").datasets
    assert {"carla1d", "carla2d", "utkface"} <= set(full)
    assert full.carla1d.targets == "speed" and full.carla2d.targets == "speed_steer"


def test_docstring_states_launch_commands_and_runtimes():
    doc = paper.__doc__
    assert "python -m nrc_jax.main --config=configs/paper.py:" in doc
    assert "python -m nrc_jax.reproduce" in doc
    assert "Runtime" in doc and "ESTIMATES" in doc


def test_a_quick_config_trains_two_epochs(tmp_path):
    from nrc_jax.engine import train

    config = paper.get_config("fig6_ufm_swimmer,quick")
    config.train.update(epochs=2, eval_every=1, checkpoint_every=2, progress_bar=False)
    config.mesh.num_devices = 1  # 8 simulated devices on 2 busy cores only slow this down
    out = train.train_and_evaluate(config, str(tmp_path))
    rows = run_files.read_metrics(str(tmp_path))
    assert [r["epoch"] for r in rows if r["sweep_index"] == 0] == [0, 1, 2]
    assert {r["sweep"]["lambda_h"] for r in rows} == set(paper.QUICK_UFM_LAMBDAS)
    finals = out["members"]
    assert all(f["train_mse"] < rows[0]["train_mse"] for f in finals)  # 2 x 16 SGD steps fit something
    summary = run_files.read_summary(tmp_path)
    gammas = [m["best_gamma"] for m in summary["members"]]
    assert gammas == pytest.approx([lam * lam for lam in paper.QUICK_UFM_LAMBDAS])  # UFM: gamma not searched
