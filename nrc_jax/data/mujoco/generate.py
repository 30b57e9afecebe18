"""Expert rollouts turned into regression arrays: x = observations, y = the actions executed.

Determinism: every episode's environment reset seed and its action-noise stream are drawn from a
`numpy.random.SeedSequence` keyed by (seed, split), so the same (seed, split, noise, expert) always
gives the same arrays, and train and test never share an episode.
"""
from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

from nrc_jax.data.mujoco.envs import EnvSpec, make_env
from nrc_jax.data.mujoco.policies import Policy

SPLIT_KEYS = {"train": 0, "test": 1}
# Evaluation episodes use reset seeds from here on: disjoint from ARS training seeds (drawn below
# 2**31 from the training rng, almost surely never these few) and from the data streams' SeedSequences.
EVAL_SEED = 2**31 + 7


@dataclasses.dataclass(frozen=True)
class Episode:
    """One rollout. observations (T, obs_dim) seen before each action, actions (T, act_dim) executed,
    rewards (T,)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray

    @property
    def total_return(self) -> float:
        return float(self.rewards.sum())


def run_episode(env: gym.Env, policy: Policy, *, env_seed: int, horizon: int, action_noise: float = 0.0,
                noise_rng: np.random.Generator | None = None) -> Episode:
    """Rolls out `policy` from `env.reset(seed=env_seed)` until termination or `horizon` steps.

    With `action_noise > 0` the executed (and recorded) action is clip(policy(o) + N(0, noise^2), -1, 1),
    like the stochastic policies recorded expert data sets come from.
    """
    obs, _ = env.reset(seed=env_seed)
    observations, actions, rewards = [], [], []
    for _ in range(horizon):
        action = policy(obs)
        if action_noise > 0.0:
            action = np.clip(action + action_noise * noise_rng.standard_normal(action.shape), -1.0, 1.0)
        observations.append(obs)
        actions.append(action)
        obs, reward, terminated, _, _ = env.step(action)
        rewards.append(reward)
        if terminated:
            break
    return Episode(np.asarray(observations), np.asarray(actions), np.asarray(rewards))


def evaluate(spec: EnvSpec, policy: Policy, num_episodes: int = 10) -> np.ndarray:
    """Returns (num_episodes,) noise-free returns from reset seeds EVAL_SEED + i."""
    env = make_env(spec)
    return np.array([run_episode(env, policy, env_seed=EVAL_SEED + i, horizon=spec.horizon).total_return
                     for i in range(num_episodes)])


@dataclasses.dataclass(frozen=True)
class StepData:
    """`num_steps` consecutive steps of whole episodes (the last one cut to fit).

    observations (N, obs_dim) float32, actions (N, act_dim) float32, rewards (N,) float32,
    episode (N,) int32 episode index within the split, step (N,) int32 time step within the episode,
    episode_returns (E,) full (uncut) returns of the E episodes used, env_seeds (E,), cut_last: whether
    the last episode was cut short to fit.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    episode_returns: np.ndarray
    env_seeds: np.ndarray
    cut_last: bool


def collect_steps(spec: EnvSpec, policy: Policy, num_steps: int, *, seed: int, split: str,
                  action_noise: float = 0.0) -> StepData:
    """Rolls out whole episodes until `num_steps` steps are collected; the last episode is truncated.

    Each episode runs to its natural end (so `episode_returns` are true returns) but only the first
    steps needed to reach `num_steps` exactly are kept.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    seeds_rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_KEYS[split], 0]))
    noise_rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_KEYS[split], 1]))
    env = make_env(spec)
    episodes, env_seeds, have = [], [], 0
    while have < num_steps:
        env_seed = int(seeds_rng.integers(2**31 - 1))
        episode = run_episode(env, policy, env_seed=env_seed, horizon=spec.horizon, action_noise=action_noise,
                              noise_rng=noise_rng)
        episodes.append(episode)
        env_seeds.append(env_seed)
        have += len(episode.rewards)
    lengths = [len(e.rewards) for e in episodes]
    lengths[-1] -= have - num_steps
    cat = lambda field: np.concatenate([getattr(e, field)[:n] for e, n in zip(episodes, lengths)])
    return StepData(
        observations=cat("observations").astype(np.float32),
        actions=cat("actions").astype(np.float32),
        rewards=cat("rewards").astype(np.float32),
        episode=np.repeat(np.arange(len(lengths), dtype=np.int32), lengths),
        step=np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        episode_returns=np.array([e.total_return for e in episodes]),
        env_seeds=np.array(env_seeds, dtype=np.int64),
        cut_last=have > num_steps,
    )
