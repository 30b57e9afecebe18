"""The paper's MuJoCo runs: `get_config('swimmer' | 'reacher' | 'hopper'[, 'quick'])`.

The base is configs/mlp.py (3 x 256 ReLU MLP, head with bias, batch 256, SGD lr 1e-2 without
momentum, loss 0.5*MSE + 0.5*wd*sum ||theta||^2) with the authors' recipe: the MSE of the loss
averaged over the target dimensions too (optim.mse_reduction='mean', PyTorch's mse_loss) and
PyTorch's default initialization (model.init='torch'); each data set sets the paper's epochs and weight
decay (Swimmer 1e6 epochs / 1e-2, Reacher 1.5e6 / 1.5e-3, Hopper 2e5 / 1e-2), seeds 0, 1, 2 as a
vmapped sweep, an evaluation every 1/1000 of the run and a checkpoint every 1/100.

Launch:
  python -m nrc_jax.main --config=configs/mujoco.py:swimmer --workdir=runs/swimmer
  python -m nrc_jax.main --config=configs/mujoco.py:hopper,quick --workdir=/tmp/hopper_quick
  # the weight-decay sweep of Figure 5 (5 x 3 = 15 models in one program):
  python -m nrc_jax.main --config=configs/mujoco.py:swimmer --workdir=runs/swimmer_wd \
      --config.sweep.weight_decay="(1e-2,5e-3,5e-4,5e-5,0.)"
Expected runtime (this 2-core CPU, estimated from the measured ~8.3 ms per model-epoch at Swimmer
size and ~84 ms at Hopper size in results/bench.md): a full Swimmer run (1e6 epochs x 3 seeds) is
about 7 h, Hopper (2e5 x 3, 10x the data) about 14 h; on an accelerator far shorter (not measured).
`:<name>,quick` (200 epochs, one seed) takes well under a minute.
"""
from __future__ import annotations

import ml_collections

from nrc_jax.io.config_files import sibling

mlp = sibling(__file__, "mlp")  # configs/mlp.py beside this file, from any working directory

PAPER = {  # data set: (epochs, weight decay, seed sweep for the weight-decay figure)
    "swimmer": (1_000_000, 1e-2, (1e-2, 5e-3, 5e-4, 5e-5, 0.0)),
    "reacher": (1_500_000, 1.5e-3, (1.5e-3, 5e-4, 5e-5, 5e-6, 0.0)),
    "hopper": (200_000, 1e-2, (1e-2, 5e-3, 5e-4, 5e-5, 0.0)),
}


def get_config(arg: str = "swimmer") -> ml_collections.ConfigDict:
    """`arg`: a data set name from PAPER, optionally followed by ',quick'."""
    name, *options = [a for a in arg.split(",") if a]
    if name not in PAPER or set(options) - {"quick"}:
        raise ValueError(f"configs/mujoco.py: argument {arg!r}; use one of {sorted(PAPER)} [+ ',quick']")
    epochs, weight_decay, _ = PAPER[name]
    config = mlp.get_config()
    config.data.name = name
    config.optim.weight_decay = weight_decay
    config.optim.mse_reduction = "mean"
    config.model.init = "torch"
    config.train.epochs = epochs
    config.train.eval_every = epochs // 1000
    config.train.checkpoint_every = epochs // 100
    config.sweep.seed = (0, 1, 2)
    if "quick" in options:
        config.train.update(epochs=200, eval_every=20, checkpoint_every=100)
        config.sweep.seed = ()
    return config


def weight_decay_sweep(name: str) -> tuple[float, ...]:
    """The paper's weight-decay values for `name` (set them as config.sweep.weight_decay)."""
    return PAPER[name][2]
