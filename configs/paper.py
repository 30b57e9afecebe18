"""Every experiment of the paper: `get_config('<experiment>[,quick]')`.

Experiments (full scale = the paper's settings, docs/nrc.md):
  fig2_<set>       Figures 2-4 (train/test MSE, R2, NRC1-3 vs epoch; EVR of the top 5 PCs; final
                   NRC3 vs gamma/lambda_min) at the paper's weight decay, seeds 0, 1, 2 as one sweep.
                   <set>: swimmer, reacher, hopper (3 x 256 MLP), carla1d, carla2d (ResNet18),
                   utkface (ResNet34).
  fig5_wd_<set>    Figures 5, 7, 8: the weight-decay sweep (phase change at small decay), values x
                   seeds in one program. <set>: swimmer, hopper {1e-2, 5e-3, 5e-4, 5e-5, 0},
                   reacher {1.5e-3, 5e-4, 5e-5, 5e-6, 0}, carla2d {1e-1, 1e-2, 5e-3, 5e-4, 0}.
  fig6_ufm_<set>   Figures 6, 9: UFM-regularized networks: no decay on the body, 0.5*lambda_H*mean
                   ||h||^2 + 0.5*lambda_W*||W||^2 with lambda_H = lambda_W in {1e-2, 1e-3, 1e-4,
                   1e-5, 0} (sweep.mode='zip' with the seeds), no ReLU before the features, 1e4
                   epochs. <set>: swimmer, reacher, hopper (the spec's 1e4 epochs are MLP-sized).
  table1           Table 1: the data sets whose statistics are tabulated (`datasets`, a dict of
                   data configs); see nrc_jax.reproduce.write_table1.
The base configs are configs/mujoco.py (MLP runs) and configs/images.py (ResNets); each experiment
changes a few fields of them.

`,quick` shrinks a run for 2 CPU cores. For the MuJoCo sets it also changes the optimization so the
collapse shows within minutes instead of CPU-days: batch 64 (instead of 256) and lr 5e-2 (instead
of 1e-2) give 20x the weight decay per epoch (lr*wd per step, 4x the steps) at the paper's weight
decay values; Swimmer and Reacher 400 epochs, Hopper 200 epochs on 2,000 of its 10,000 rows; one
seed; weight-decay sweeps only {paper value, 0}. The UFM-regularized quick runs use lr 2e-2 (5e-2
diverges: without the ReLU the features are unbounded), 300 epochs, lambda in {1e-2, 1e-3, 0}.
Image sets: ResNet18/34 of width 16 at 16x16 pixels on 256 images, 4 epochs (CARLA/UTKFace still
need data.path; `synthetic_images` is embedded).

Launch (resumes from WORKDIR when rerun):
  python -m nrc_jax.main --config=configs/paper.py:fig2_swimmer --workdir=runs/fig2_swimmer
  python -m nrc_jax.main --config=configs/paper.py:fig5_wd_hopper,quick --workdir=/tmp/wd_hopper
  python -m nrc_jax.main --config=configs/paper.py:fig2_carla2d --workdir=runs/carla2d \
      --config.data.path=/data/carla
  python -m nrc_jax.plot runs/fig2_swimmer runs/fig5_wd_swimmer --out figures/
  python -m nrc_jax.reproduce            # all quick runs, figures and tables -> results/quick/

Runtime (this project's 2-core CPU; see results/quick/summary.md and results/paper/README.md for the
measured runs behind these figures). Quick: each MuJoCo stage of `make run` takes about 20-25 s wall
on the quiet machine and 1 min under load, the ResNet18 stage about a minute (half of it compiling),
the whole job 2-8 min. Paper settings, measured (results/paper/README.md lists every run with its
CPU time; the machine was shared, so wall times are upper bounds):
fig2_swimmer,tenth,seed0,with_zero (1e5 epochs, 2 models) about 1,650 s CPU; fig2_reacher,tenth,
seed0,with_zero (1.5e5 epochs) about 40 min wall; fig6_ufm_hopper,seed0 at 2,000 epochs (5 models)
991 s CPU; fig6_ufm_swimmer,seed0, fig6_ufm_reacher,seed0 and fig6_ufm_hopper,seed0 (1e4 epochs, 5
models) 492 s, 511 s and 4,584 s CPU (44 min wall); fig2_reacher,tenth,seed1,seed2 and
fig2_hopper,tenth,seed1,seed2 (2 models) 2,324 s and 3,329 s CPU; a 5-value weight-decay sweep at
1/100 of the paper's epochs 465 s (Swimmer) and 660 s (Reacher) CPU. results/bench.md (2-core Intel
Xeon, quiet): 4.29 ms per model-epoch at Swimmer size and 42.97 ms at Hopper size. ESTIMATES from
those: fig2_swimmer at full length (1e6 epochs x 3 seeds) ~ 3.6 h, fig2_reacher (1.5e6 x 3) ~ 5.4 h,
fig2_hopper (2e5 x 3) ~ 7.2 h; `,tenth,seed0,with_zero` is 2/30 of that; a 5-value weight-decay
sweep 5/3 of its fig2 run; fig6_ufm_* (1e4 epochs x 15 models) ~ 0.2 h (Swimmer, Reacher) to 1.8 h
(Hopper). A GPU trains the vmapped members in one program (benchmarks/device_check projects the grid
there). CARLA (600,000 images at 224x224, ResNet18, 100 epochs) and UTKFace (25,000, ResNet34) need
a GPU: of the order of a day and of an hour on one modern GPU (estimate from ~1.8 GFLOP per ResNet18
forward at 224x224, 3x for a training step).
"""
from __future__ import annotations

import ml_collections

from nrc_jax.io.config_files import sibling

images = sibling(__file__, "images")  # configs/images.py beside this file, from any working directory
mujoco = sibling(__file__, "mujoco")

MUJOCO_SETS = ("swimmer", "reacher", "hopper")
SEEDS = (0, 1, 2)
IMAGE_SETS = {  # experiment data set: (configs/images.py base, data.targets)
    "carla1d": ("carla", "speed"),
    "carla2d": ("carla", "speed_steer"),
    "utkface": ("utkface", ""),
    "synthetic_images": ("synthetic_images", "x_y_size"),  # embedded stand-in, not in the paper
}
WD_SWEEPS = {name: mujoco.weight_decay_sweep(name) for name in MUJOCO_SETS}
WD_SWEEPS["carla2d"] = (1e-1, 1e-2, 5e-3, 5e-4, 0.0)
WD_SWEEPS["synthetic_images"] = (1e-2, 5e-3, 5e-4, 5e-5, 0.0)  # ours (the CARLA 2D values' scale)
UFM_LAMBDAS = (1e-2, 1e-3, 1e-4, 1e-5, 0.0)
UFM_EPOCHS = 10_000

# The quick MuJoCo setting (see the module docstring): (epochs, train_size) per data set.
QUICK_MUJOCO = {"swimmer": (400, 0), "reacher": (400, 0), "hopper": (200, 2000)}
QUICK_LR, QUICK_BATCH = 5e-2, 64
QUICK_UFM_LAMBDAS = (1e-2, 1e-3, 0.0)
QUICK_UFM_LR, QUICK_UFM_EPOCHS = 2e-2, 300


def experiment_names() -> tuple[str, ...]:
    """Every experiment `get_config` accepts (each also with ',quick')."""
    return (tuple(f"fig2_{s}" for s in (*MUJOCO_SETS, *IMAGE_SETS))
            + tuple(f"fig5_wd_{s}" for s in WD_SWEEPS)
            + tuple(f"fig6_ufm_{s}" for s in MUJOCO_SETS) + ("table1",))


# Options after the experiment name (`fig2_swimmer,tenth,seed0`), besides `quick`.
LENGTHS = {"tenth": 10, "hundredth": 100, "thousandth": 1000}  # epochs divided by this
# Ablations of why the published NRC1 plateaus (results/paper): actions with the noise that gives
# Swimmer the paper's lambda_min (0.274 here vs 0.276 in the paper; 0.081 at the default 0.1
# noise: clip(expert + N(0, 0.7^2), -1, 1) saturates more, higher-variance actions), and no ReLU
# before the features (the features may then be centred anywhere, as in the UFM).
PAPER_LIKE_ACTION_NOISE = 0.7
SEED_OPTIONS = {f"seed{seed}": seed for seed in SEEDS}  # seed1,seed2: those seeds only (any combination)
OPTIONS = ("quick", *LENGTHS, *SEED_OPTIONS, "with_zero", "paper_like_actions", "no_feature_relu")
EVAL_LOG_POINTS = 200  # log-spaced evaluations added to the paper-setting runs' regular ones


def get_config(arg: str = "fig2_swimmer") -> ml_collections.ConfigDict:
    """`arg`: an experiment from `experiment_names()`, then options separated by commas:
    quick (the CPU-sized run of the module docstring), tenth / hundredth / thousandth (the paper's
    settings at that fraction of its epochs), seed0 / seed1 / seed2 (only the seeds named:
    `seed1,seed2` runs seeds 1 and 2), with_zero (Figure 2 runs: also weight decay 0, in the same
    vmapped program), paper_like_actions (MuJoCo action noise 0.7), no_feature_relu (no activation
    on the features)."""
    name, *options = [a for a in arg.split(",") if a] or [""]
    if name not in experiment_names() or set(options) - set(OPTIONS):
        raise ValueError(f"configs/paper.py: argument {arg!r}; use one of {list(experiment_names())} "
                         f"[+ ',option' for options in {OPTIONS}]")
    quick = "quick" in options
    if name == "table1":
        return table1_config(quick)
    kind, dataset = name.split("_", 1) if not name.startswith("fig5_wd_") else ("fig5", name[len("fig5_wd_"):])
    if name.startswith("fig6_ufm_"):
        config = ufm_sweep_config(name[len("fig6_ufm_"):], quick)
    else:
        config = base_config(dataset, quick)
    if kind == "fig5":
        config.sweep.weight_decay = (WD_SWEEPS[dataset][0], 0.0) if quick else WD_SWEEPS[dataset]
    elif kind == "fig2" and "with_zero" in options:
        config.sweep.weight_decay = (config.optim.weight_decay, 0.0)
    for option in options:
        if option in LENGTHS:
            shorten(config, LENGTHS[option])
    seeds = [SEED_OPTIONS[option] for option in options if option in SEED_OPTIONS]
    if seeds:
        keep_seeds(config, seeds)
    if "paper_like_actions" in options:
        config.data.action_noise = PAPER_LIKE_ACTION_NOISE
    if "no_feature_relu" in options:
        config.model.feature_activation = False
    return config


def shorten(config: ml_collections.ConfigDict, factor: int) -> None:
    """The same run at 1/factor of its epochs, with 1,000 regular (+ log-spaced) evaluations."""
    epochs = max(config.train.epochs // factor, 1)
    every = max(epochs // 1000, 1)
    config.train.update(epochs=epochs, eval_every=every, checkpoint_every=every * max(epochs // every // 50, 1),
                        eval_log_points=EVAL_LOG_POINTS)


def keep_seeds(config: ml_collections.ConfigDict, seeds: list[int]) -> None:
    """Only `seeds` (in SEEDS order); in a zip sweep (the UFM runs) the other seeds' members are dropped.

    Seed 0 alone leaves an empty seed sweep (config.seed is 0), so `seed0` runs keep their workdirs'
    one-member layout."""
    sweep = config.sweep
    if sweep.mode != "zip" or not sweep.seed:
        sweep.seed = () if list(seeds) == [0] else tuple(s for s in SEEDS if s in seeds)
        return
    keep = [i for i, seed in enumerate(sweep.seed) if seed in seeds]
    for field in ("seed", "lr", "weight_decay", "lambda_h", "lambda_w"):
        if len(sweep[field]):
            sweep[field] = tuple(sweep[field][i] for i in keep)


def base_config(dataset: str, quick: bool) -> ml_collections.ConfigDict:
    """The Figure 2 run of `dataset`: the paper's settings, seeds 0, 1, 2 (one seed when quick)."""
    if dataset in MUJOCO_SETS:
        config = mujoco.get_config(dataset)
        config.train.eval_log_points = EVAL_LOG_POINTS
        if quick:
            epochs, train_size = QUICK_MUJOCO[dataset]
            config.data.train_size = train_size
            config.optim.lr = QUICK_LR
            config.train.update(epochs=epochs, batch_size=QUICK_BATCH, eval_every=epochs // 20,
                                checkpoint_every=epochs // 5)
            config.sweep.seed = ()
        return config
    base, targets = IMAGE_SETS[dataset]
    config = images.get_config(base)
    config.data.targets = targets
    config.optim.mse_reduction = "mean"  # the authors' PyTorch mse_loss
    config.model.init = "torch"  # nn.Conv2d/nn.Linear defaults (torchvision's ResNet re-draws its convs)
    config.sweep.seed = SEEDS
    if quick:
        config.data.update(image_size=16, train_size=256, test_size=64)
        config.model.update(width=16, stem="cifar")
        config.train.update(epochs=4, batch_size=64, eval_every=1, checkpoint_every=2)
        config.sweep.seed = ()
    return config


def ufm_sweep_config(dataset: str, quick: bool) -> ml_collections.ConfigDict:
    """Figures 6, 9: the UFM-regularized MLP, lambda_H = lambda_W swept with the seeds (zip)."""
    config = base_config(dataset, quick)
    config.model.feature_activation = False
    config.optim.update(regularizer="ufm", weight_decay=0.0)
    lambdas, seeds = (QUICK_UFM_LAMBDAS, (0,)) if quick else (UFM_LAMBDAS, SEEDS)
    pairs = [(lam, seed) for lam in lambdas for seed in seeds]
    config.sweep.update(mode="zip", lambda_h=tuple(p[0] for p in pairs), lambda_w=tuple(p[0] for p in pairs),
                        seed=tuple(p[1] for p in pairs))
    if quick:
        config.optim.lr = QUICK_UFM_LR  # without the ReLU the features are unbounded: 5e-2 diverges
        config.train.update(epochs=QUICK_UFM_EPOCHS, eval_every=QUICK_UFM_EPOCHS // 20,
                            checkpoint_every=QUICK_UFM_EPOCHS // 5)
    else:
        config.train.update(epochs=UFM_EPOCHS, eval_every=UFM_EPOCHS // 1000, checkpoint_every=UFM_EPOCHS // 100,
                            eval_log_points=EVAL_LOG_POINTS)
    return config


def table1_config(quick: bool) -> ml_collections.ConfigDict:
    """Table 1: `datasets` maps a row label to the data config that loads it (train split stats).

    Quick: the sets made locally (no data.path). Full: also CARLA 1D/2D and UTKFace, whose
    data.path must be set (e.g. --config.datasets.carla2d.path=/data/carla).
    """
    config = ml_collections.ConfigDict()
    config.datasets = ml_collections.ConfigDict()
    for name in (*MUJOCO_SETS, "synthetic_images"):
        config.datasets[name] = images.get_config("synthetic_images").data if name == "synthetic_images" \
            else mujoco.get_config(name).data
    if not quick:
        for label, (base, targets) in IMAGE_SETS.items():
            data = images.get_config(base).data
            data.targets = targets
            config.datasets[label] = data
    return config
