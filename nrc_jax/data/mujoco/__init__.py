"""Offline expert imitation data for Swimmer-v5, Reacher-v5 and Hopper-v5 (x = observations, y = actions).

`load(name, data_config)` is the registry entry; it imports TFDS and Gymnasium only when called, so
importing `nrc_jax.data` stays fast.
"""
from __future__ import annotations

import ml_collections

from nrc_jax.data.base import RegressionData

EXPERT_DATASETS = ("swimmer", "reacher", "hopper")


def load(name: str, data_config: ml_collections.ConfigDict) -> RegressionData:
    """Loads expert data set `name` (see `nrc_jax.data.mujoco.loader.load_expert_data`)."""
    from nrc_jax.data.mujoco.loader import load_expert_data

    return load_expert_data(name, data_config)
