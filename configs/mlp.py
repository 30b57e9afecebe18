"""Base config: the paper's MuJoCo MLP (3 x 256 ReLU, linear head with bias), batch 256, SGD lr 1e-2
without momentum, loss 0.5*MSE + 0.5*1e-2*sum ||theta||^2 over all parameters.

Launch (any data set; a bring-your-own .npz with x_train, y_train, x_test, y_test):
  python -m nrc_jax.main --config=configs/mlp.py --workdir=/tmp/nrc_mlp \
      --config.data.name=npz --config.data.path=my_data.npz
  python -m nrc_jax.main --config=configs/mlp.py:quick --workdir=/tmp/nrc_quick ...   # CPU smoke run
Sweeps (one compiled program, vmapped over members; Cartesian product unless sweep.mode='zip'):
  --config.sweep.weight_decay="(1e-2,5e-3,5e-4,5e-5,0.)" --config.sweep.seed="(0,1,2)"
Expected runtime on this 2-core CPU, Swimmer-sized data (1,000 x 8 -> 2): about 8-11 ms per epoch
of the 3 x 256 MLP (results/bench.md) after a compile of ~4 s, so the default 1,000 epochs take
about 15 s; `:quick` (50 epochs) finishes in a few seconds, compile included.
"""
from __future__ import annotations

import ml_collections

from nrc_jax.data import default_data_config
from nrc_jax.engine import models, optim, sweeps


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """`arg`: "" (default) or "quick" (a small, short run for a CPU smoke test)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = default_data_config()
    config.model = models.default_model_config()
    config.optim = optim.default_optim_config()
    config.train = ml_collections.ConfigDict({
        "epochs": 1000,
        "batch_size": 256,
        "eval_every": 10,           # epochs between evaluations (one compiled call each)
        "eval_log_points": 0,       # > 0: also this many log-spaced evaluation epochs in [1, epochs]
        "checkpoint_every": 100,    # epochs between checkpoints; a multiple of eval_every
        "max_to_keep": 3,
        "drop_last": False,         # False keeps the last partial minibatch, like the paper's DataLoader
        "eval_chunk": 8192,         # rows per forward pass when evaluating
        "progress_bar": True,
    })
    config.metrics = ml_collections.ConfigDict({
        "evr_k": 5,
        "per_layer": False,         # also keep every hidden layer's features (inspect --export)
        "pca_iters": 10,            # 0: NRC1 from a full eigh; >0: warm-started subspace iterations (agrees with eigh to ~1e-6 in training, 10x cheaper)
    })
    config.sweep = sweeps.default_sweep_config()
    config.mesh = ml_collections.ConfigDict({
        "num_devices": -1,          # -1: every device of every process
        "member_devices": 1,        # devices along the mesh's 'members' axis: each group trains K / this many sweep members
    })
    if arg == "quick":
        config.train.epochs = 50
        config.train.eval_every = 10
        config.train.checkpoint_every = 20
    elif arg:
        raise ValueError(f"configs/mlp.py: unknown argument {arg!r}; use '' or 'quick'")
    return config
