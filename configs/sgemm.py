"""SGEMM GPU kernel performance (UCI; tabular, 14 kernel parameters -> 4 run times) on the deep
8 x 512 MLP of configs/deep_mlp.py with per-layer NRC metrics, as in the deep-collapse work.

The csv is not shipped (and not downloadable here): point `data.path` at `sgemm_product.csv` or
the folder holding it (https://archive.ics.uci.edu/dataset/440). Targets are the log run times
(`data.targets='log_runs'`, the usual choice for this skewed set; 'runs' gives milliseconds),
standardized on the training split (`data.target_transform='standardize'`, inverse available);
train/test sizes default to the loader's split (5/6 of the 241,600 rows for training).

Launch:
  python -m nrc_jax.main --config=configs/sgemm.py --workdir=runs/sgemm \
      --config.data.path=/data/sgemm_product.csv
  python -m nrc_jax.main --config=configs/sgemm.py:quick --workdir=/tmp/sgemm_quick \
      --config.data.path=/data/sgemm_product.csv      # 20,000 training rows, 20 epochs
Expected runtime on this 2-core CPU: the full set (about 200k training rows, batch 1024) takes
roughly a minute per epoch of the 8 x 512 body; `:quick` takes a few minutes. On one GPU an epoch
is about a second.
"""
from __future__ import annotations

import ml_collections

from nrc_jax.io.config_files import sibling

deep_mlp = sibling(__file__, "deep_mlp")  # configs/deep_mlp.py beside this file, from any working directory


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """`arg`: "" (default) or "quick" (20,000 training rows, 20 epochs)."""
    if arg not in ("", "quick"):
        raise ValueError(f"configs/sgemm.py: unknown argument {arg!r}; use '' or 'quick'")
    config = deep_mlp.get_config("swimmer")
    config.data.update(name="sgemm", path="", targets="log_runs", target_transform="standardize")
    config.train.update(epochs=200, batch_size=1024, eval_every=5, checkpoint_every=20)
    if arg == "quick":
        config.data.update(train_size=20_000, test_size=4_000)
        config.train.update(epochs=20, eval_every=5, checkpoint_every=10)
    return config
