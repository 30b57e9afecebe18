"""A deeper MLP (8 hidden layers of 512, ReLU, head with bias) with per-layer ("deep") NRC metrics,
for measuring collapse below the last layer as in the deep-collapse follow-up work.

`get_config('<data set>[,quick]')`, data set one of SETS (default swimmer); every other data set
works through `--config.data.name=... --config.data.path=...` (configs/sgemm.py is the tabular one).
Optimizer (our choice, not the paper's MuJoCo SGD): Adam lr 1e-3 with decoupled weight decay 1e-4
(AdamW form), batch 256; the 8 x 512 body trains poorly with plain SGD lr 1e-2 in short runs.

Launch:
  python -m nrc_jax.main --config=configs/deep_mlp.py:swimmer --workdir=runs/deep_swimmer
  python -m nrc_jax.main --config=configs/deep_mlp.py:swimmer,quick --workdir=/tmp/deep_quick
  python -m nrc_jax.plot /tmp/deep_quick --out /tmp/deep_quick/figures     # layers_<data>.png heat maps
  python -m nrc_jax.inspect /tmp/deep_quick --export /tmp/deep_quick/export.npz   # layer_features_<i>
Expected runtime on this 2-core CPU (Swimmer, 1,000 x 8 -> 2): about 1 s per epoch of the 8 x 512
body when the CPU is free (we measured ~19 s per epoch with the machine shared by several jobs),
so the default 3,000 epochs take about an hour; `:quick` keeps the depth but narrows the body to
8 x 128 (1/16 of the cost) for 200 epochs: a few minutes.
"""
from __future__ import annotations

import ml_collections

from nrc_jax.io.config_files import sibling

mlp = sibling(__file__, "mlp")  # configs/mlp.py beside this file, from any working directory

SETS = ("swimmer", "reacher", "hopper")
DEPTH, WIDTH = 8, 512


def get_config(arg: str = "swimmer") -> ml_collections.ConfigDict:
    """`arg`: a data set name from SETS (default swimmer), optionally followed by ',quick'."""
    name, *options = [a for a in arg.split(",") if a] or ["swimmer"]
    if name == "quick":
        name, options = "swimmer", ["quick"] + options
    if name not in SETS or set(options) - {"quick"}:
        raise ValueError(f"configs/deep_mlp.py: argument {arg!r}; use one of {list(SETS)} [+ ',quick']")
    config = mlp.get_config()
    config.data.name = name
    config.model.widths = (WIDTH,) * DEPTH
    config.metrics.per_layer = True
    config.optim.update(name="adam", lr=1e-3, weight_decay=1e-4, decay_mode="decoupled")
    config.train.update(epochs=3000, eval_every=30, checkpoint_every=300)
    if "quick" in options:  # 8 x 128: the same depth at 1/16 of the body's cost
        config.model.widths = (128,) * DEPTH
        config.train.update(epochs=200, eval_every=10, checkpoint_every=100)
    return config
