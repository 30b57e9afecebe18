"""The three Gymnasium MuJoCo environments behind the expert imitation data sets.

Each `EnvSpec` fixes the Gymnasium id, the observation/action sizes the loaders check, the paper's
train/test sizes (Table 1; test = 20% of train) and the shipped expert parameter file.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import pathlib

import gymnasium as gym


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """One expert data set's environment.

    Attributes:
      name: registry name (`data.name`).
      gym_id: Gymnasium environment id.
      obs_dim, act_dim: sizes of an observation (input x) and an action (target y).
      train_size, test_size: the paper's sizes, in steps.
      horizon: Gymnasium's time limit for the environment (steps per full episode).
      reference_return: published expert returns to compare against (text, with its source).
    """

    name: str
    gym_id: str
    obs_dim: int
    act_dim: int
    train_size: int
    test_size: int
    horizon: int
    reference_return: str

    @property
    def expert_path(self) -> pathlib.Path:
        """The expert parameter file shipped in the package (`experts/<name>.npz`)."""
        return pathlib.Path(str(importlib.resources.files(__package__) / "experts" / f"{self.name}.npz"))


ENV_SPECS: dict[str, EnvSpec] = {
    "swimmer": EnvSpec(
        "swimmer", "Swimmer-v5", obs_dim=8, act_dim=2, train_size=1_000, test_size=200, horizon=1000,
        reference_return="~360 (D4RL/Gymnasium experts; SAC/TD3 ~350; commonly reported)"),
    "reacher": EnvSpec(
        "reacher", "Reacher-v5", obs_dim=10, act_dim=2, train_size=1_000, test_size=200, horizon=50,
        reference_return="-4 to -6 (SAC/TD3 experts; commonly reported)"),
    "hopper": EnvSpec(
        "hopper", "Hopper-v5", obs_dim=11, act_dim=3, train_size=10_000, test_size=2_000, horizon=1000,
        reference_return="3200-3600 (D4RL hopper-expert, SAC; commonly reported)"),
}


def make_env(spec: EnvSpec) -> gym.Env:
    """The raw MuJoCo environment without Gymnasium's wrappers.

    The rollout loops apply `spec.horizon` themselves; dropping the wrappers (time limit, order and
    passive checkers) roughly doubles the step rate, which matters for ARS training.
    """
    env = gym.make(spec.gym_id)
    if env.spec is not None and env.spec.max_episode_steps != spec.horizon:
        raise RuntimeError(f"{spec.gym_id}: time limit {env.spec.max_episode_steps} != expected {spec.horizon}")
    return env.unwrapped
