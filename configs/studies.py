"""Follow-up studies (`nrc_jax.studies`): `get_config('preprocessing' | 'multitask')`.

  preprocessing   each target transform in `transforms`, every run beside the UFM prediction
  multitask       one network on all n targets vs n networks on one target each
Every run is `run` (configs/mlp.py with Adam lr 1e-3, full batch, no progress bar, one device)
UFM-regularized at lambda_H = lambda_W = each of `lambdas`, and with the paper's weight decay at
each of `decays` (empty: none); the math is in nrc_jax/studies.py.

Launch (the runs of results/studies/; `--workdir` keeps the runs, default a temporary folder):
  python -m nrc_jax.studies --config=configs/studies.py:preprocessing --config.run.train.epochs=1500 \
      --config.run.model.widths="(128,128,128)" --config.decays="(0.01,)" \
      --workdir=/tmp/studies_runs --out=results/studies
  python -m nrc_jax.studies --config=configs/studies.py:multitask --config.run.train.epochs=1500 \
      --config.run.model.widths="(128,128,128)" --workdir=/tmp/studies_runs --out=results/studies
  python -m nrc_jax.studies --config=configs/studies.py:multitask --config.run.data.name=npz \
      --config.run.data.path=my_data.npz --config.lambdas="(0.1,1.0)"
Expected runtime (results/studies/README.md, quiet 2-core CPU): the first two commands 1 min 11 s
and 58 s wall.
"""
from __future__ import annotations

import ml_collections

from nrc_jax.io.config_files import sibling

mlp = sibling(__file__, "mlp")  # configs/mlp.py beside this file, from any working directory

STUDIES = ("preprocessing", "multitask")
TRANSFORMS = ("none", "standardize", "zca")


def get_config(arg: str = "preprocessing") -> ml_collections.ConfigDict:
    """`arg`: the study, one of STUDIES."""
    if arg not in STUDIES:
        raise ValueError(f"configs/studies.py: unknown argument {arg!r}; use one of {list(STUDIES)}")
    config = ml_collections.ConfigDict()
    config.study = arg
    config.lambdas = (0.1, 0.5, 1.0)  # UFM lambda_H = lambda_W values (c = lambda^2)
    config.decays = ()                # weight-decay values (prediction with the approximate c = wd^2)
    if arg == "preprocessing":
        config.transforms = TRANSFORMS  # data.target_transform of each run
    config.run = run_config()
    return config


def run_config() -> ml_collections.ConfigDict:
    """The training config every run of a study starts from (before the study's sweep)."""
    config = mlp.get_config()
    config.data.name = "swimmer"
    config.model.widths = (256, 256, 256)
    config.optim.update(name="adam", lr=1e-3)  # full batch: a few thousand epochs near the optimum
    config.train.update(epochs=2000, batch_size=1000, progress_bar=False)
    epochs = config.train.get_ref("epochs")
    # Ten evaluations and one checkpoint at the end, following train.epochs when it is overridden:
    # eval_every = max(epochs // 10, 1) (the second term is 1 only for epochs < 10).
    config.train.eval_every = epochs // 10 + 1 // (epochs // 10 + 1)
    config.train.checkpoint_every = epochs
    config.mesh.num_devices = 1
    return config
