"""The quick reproduction behind `make run` (`python -m nrc_jax.reproduce`): its stages, in order.

Each stage trains one config of configs/paper.py (`,quick`; one compiled program, the sweep members
vmapped) or runs the UFM study (configs/ufm.py:quick), in the workdir `--workdirs/<stage name>`:
  wd_swimmer, wd_reacher, wd_hopper   the MuJoCo expert sets at the paper's weight decay and at 0
  ufm_net_swimmer                     the UFM-regularized MLP, lambda_H = lambda_W in {1e-2, 1e-3, 0}
  synthetic_images                    the embedded image set through the ResNet18 path (16x16)
  ufm_study                           the UFM closed form vs gradient descent
`table1` lists the data sets of `table1.md`. A stage's `config` is the whole run config, so any
field can be changed (`--config.stages.wd_hopper.config.train.epochs=100`); a stage whose config
changed starts over on the next run.

Launch:
  python -m nrc_jax.reproduce                                         # = make run
  python -m nrc_jax.reproduce --only wd_swimmer ufm_study --config.epochs_scale=0.01   # smoke run
Expected runtime: `make run` took 3 min 12 s wall on the quiet 2-core machine and 12 min 28 s under
load (results/README.md); each stage's `expected_s` is its share for the ETA.
"""
from __future__ import annotations

import ml_collections

from nrc_jax.io.config_files import sibling

paper = sibling(__file__, "paper")  # configs/paper.py beside this file, from any working directory
ufm = sibling(__file__, "ufm")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """`arg`: "" (the only variant)."""
    if arg:
        raise ValueError(f"configs/reproduce.py: unknown argument {arg!r}; use ''")
    config = ml_collections.ConfigDict()
    config.epochs_scale = 1.0  # multiplies the training stages' epochs and the UFM study's iterations
    config.num_devices = -1    # devices of every training stage's mesh (-1: all)
    # ETA: the share of a quick stage's time that does not shrink with epochs_scale < 1 (compiling).
    config.compile_share = 1 / 3
    config.order = ("wd_swimmer", "wd_reacher", "wd_hopper", "ufm_net_swimmer", "synthetic_images", "ufm_study")
    config.stages = ml_collections.ConfigDict({
        "wd_swimmer": train_stage("fig5_wd_swimmer,quick", 60, "Swimmer, weight decay 1e-2 vs 0"),
        "wd_reacher": train_stage("fig5_wd_reacher,quick", 60, "Reacher, weight decay 1.5e-3 vs 0"),
        "wd_hopper": train_stage("fig5_wd_hopper,quick", 60, "Hopper (2,000 rows), weight decay 1e-2 vs 0"),
        "ufm_net_swimmer": train_stage("fig6_ufm_swimmer,quick", 70,
                                       "Swimmer, UFM-regularized MLP, lambda_H = lambda_W in {1e-2, 1e-3, 0}"),
        # One model, 4 epochs: compiling the ResNet18 is about half of this stage on 2 busy cores.
        "synthetic_images": train_stage("fig2_synthetic_images,quick", 60,
                                        "synthetic images, ResNet18 (width 16, 16x16), weight decay 5e-4"),
        "ufm_study": stage("ufm_study", ufm.get_config("quick"), 40, "UFM closed form vs gradient descent"),
    })
    config.table1 = paper.get_config("table1,quick")
    return config


def stage(kind: str, run: ml_collections.ConfigDict, expected_s: float, what: str) -> ml_collections.ConfigDict:
    """One stage: `kind` 'train' (a nrc_jax.engine.train run of `config`) or 'ufm_study'; `expected_s` is
    its rough single-process wall time on a quiet 2-core CPU (for the ETA)."""
    return ml_collections.ConfigDict({"kind": kind, "config": run, "expected_s": float(expected_s), "what": what})


def train_stage(experiment: str, expected_s: float, what: str) -> ml_collections.ConfigDict:
    """A training stage running configs/paper.py:`experiment`."""
    return stage("train", paper.get_config(experiment), expected_s, what)
