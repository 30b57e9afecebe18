"""Augmented Random Search (Mania, Guy & Recht 2018) for linear MuJoCo experts.

ARS V2-t: linear policy on observations normalized by running statistics of every state visited
in training rollouts; each iteration draws N Gaussian directions, rolls out W +/- nu*delta (the
pair shares one reset seed), keeps the b best directions by max(r+, r-) and steps
W += alpha / (b * sigma_R) * sum (r+ - r-) delta, sigma_R = std of the 2b kept returns.
Hopper subtracts the survival bonus from training rewards (the paper's shift), never from the
evaluation returns.

Training is resumable: `python -m nrc_jax.data.mujoco.ars hopper --max-seconds 540` trains until its
episode budget or the time limit, saves its state, evaluates 10 episodes and writes the expert file;
running the same command again continues. Iteration i draws its randomness from SeedSequence([seed, i]),
so the result does not depend on how the run was cut into chunks.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from nrc_jax.data.mujoco.envs import ENV_SPECS, EnvSpec, make_env
from nrc_jax.data.mujoco.generate import evaluate, run_episode
from nrc_jax.data.mujoco.policies import LinearPolicy, save_policy
from nrc_jax.errors import ConfigError, UserError


@dataclasses.dataclass(frozen=True)
class ARSConfig:
    """Hyperparameters (names as in the ARS paper's Table 9)."""

    num_directions: int  # N
    top_directions: int  # b
    step_size: float  # alpha
    noise: float  # nu
    reward_shift: float  # subtracted from every training reward (survival bonus)
    max_episodes: int
    normalize: bool = True


ARS_CONFIGS: dict[str, ARSConfig] = {
    "swimmer": ARSConfig(num_directions=1, top_directions=1, step_size=0.02, noise=0.01, reward_shift=0.0,
                         max_episodes=400, normalize=False),
    # 3440 episodes = the ~25 min (wall, 2 shared cores) the shipped expert was trained for.
    "hopper": ARSConfig(num_directions=8, top_directions=4, step_size=0.01, noise=0.025, reward_shift=1.0,
                        max_episodes=3440),
    "reacher": ARSConfig(num_directions=8, top_directions=4, step_size=0.01, noise=0.025, reward_shift=0.0,
                         max_episodes=2000),
}


@dataclasses.dataclass
class ARSState:
    """Everything needed to resume. weights (act, obs); running sums of visited observations."""

    weights: np.ndarray
    obs_count: float
    obs_sum: np.ndarray
    obs_sumsq: np.ndarray
    iteration: int = 0
    episodes: int = 0
    env_steps: int = 0
    seconds: float = 0.0

    @classmethod
    def initial(cls, spec: EnvSpec) -> "ARSState":
        return cls(np.zeros((spec.act_dim, spec.obs_dim)), 0.0, np.zeros(spec.obs_dim), np.zeros(spec.obs_dim))

    def normalizer(self, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the visited observations; (0, 1) before any data or without normalization."""
        if not normalize or self.obs_count < 2:
            return np.zeros_like(self.obs_sum), np.ones_like(self.obs_sum)
        mean = self.obs_sum / self.obs_count
        var = np.maximum(self.obs_sumsq / self.obs_count - mean**2, 0.0)
        # Constant coordinates would otherwise divide by ~0.
        return mean, np.where(var > 1e-8, np.sqrt(var), 1.0)

    def policy(self, normalize: bool) -> LinearPolicy:
        mean, std = self.normalizer(normalize)
        return LinearPolicy(self.weights.copy(), mean, std)

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, **dataclasses.asdict(self))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "ARSState":
        with np.load(path) as f:
            fields = {k: f[k] for k in f.files}
        return cls(fields.pop("weights"), float(fields.pop("obs_count")), fields.pop("obs_sum"),
                   fields.pop("obs_sumsq"), **{k: type(getattr(cls, k))(v) for k, v in fields.items()})


def ars_iteration(state: ARSState, spec: EnvSpec, config: ARSConfig, env, seed: int) -> list[float]:
    """One ARS V2-t update of `state` in place; returns the 2N training returns (shift removed)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, state.iteration]))
    deltas = rng.standard_normal((config.num_directions, *state.weights.shape))
    env_seeds = rng.integers(2**31 - 1, size=config.num_directions)
    mean, std = state.normalizer(config.normalize)
    returns = np.zeros((config.num_directions, 2))
    visited = []
    for k, (delta, env_seed) in enumerate(zip(deltas, env_seeds)):
        for j, sign in enumerate((1.0, -1.0)):
            policy = LinearPolicy(state.weights + sign * config.noise * delta, mean, std)
            episode = run_episode(env, policy, env_seed=int(env_seed), horizon=spec.horizon)
            returns[k, j] = episode.total_return - config.reward_shift * len(episode.rewards)
            visited.append(episode.observations)
    top = np.argsort(-returns.max(axis=1))[: config.top_directions]
    sigma = returns[top].std()
    if sigma > 0:
        step = np.tensordot(returns[top, 0] - returns[top, 1], deltas[top], axes=1)
        state.weights = state.weights + config.step_size / (config.top_directions * sigma) * step
    visited = np.concatenate(visited)
    state.obs_count += len(visited)
    state.obs_sum = state.obs_sum + visited.sum(axis=0)
    state.obs_sumsq = state.obs_sumsq + (visited**2).sum(axis=0)
    state.iteration += 1
    state.episodes += 2 * config.num_directions
    state.env_steps += len(visited)
    return list(returns.ravel() + 0.0)


def train(spec: EnvSpec, config: ARSConfig, state: ARSState, *, seed: int, max_seconds: float,
          log_every: int = 10) -> ARSState:
    """Runs ARS iterations until `config.max_episodes` or `max_seconds` of wall time."""
    env = make_env(spec)
    start = time.time()
    while state.episodes < config.max_episodes and time.time() - start < max_seconds:
        t0 = time.time()
        returns = ars_iteration(state, spec, config, env, seed)
        state.seconds += time.time() - t0
        if state.iteration % log_every == 0:
            print(f"iter {state.iteration:5d} episodes {state.episodes:6d} steps {state.env_steps:9d} "
                  f"train return mean {np.mean(returns):9.2f} max {np.max(returns):9.2f} "
                  f"({state.seconds:.0f} s)", flush=True)
    return state


def export_expert(spec: EnvSpec, config: ARSConfig, state: ARSState, path: str, seed: int) -> np.ndarray:
    """Evaluates the current policy (10 episodes, no noise) and writes it with its provenance."""
    policy = state.policy(config.normalize)
    returns = evaluate(spec, policy, num_episodes=10)
    save_policy(path, policy, eval_returns=returns, trainer=np.array("ars_v2t" if config.normalize else "ars_v1t"),
                episodes=np.array(state.episodes), env_steps=np.array(state.env_steps),
                train_seconds=np.array(state.seconds), seed=np.array(seed),
                hyperparameters=np.array(repr(config)))
    return returns


def _define_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_integer("seed", 0, "ARS seed", flag_values=fv)
    flags.DEFINE_integer("max-episodes", None, "total episode budget (default per env)", flag_values=fv)
    flags.DEFINE_float("max-seconds", 540.0, "wall time of this chunk", flag_values=fv)
    flags.DEFINE_string("state", None, "resumable state (default ~/.cache/nrc_jax/ars/ENV_seedS.npz)", flag_values=fv)
    flags.DEFINE_string("expert-out", None, "expert file to write (default: the package's experts/ENV.npz)",
                        flag_values=fv)
    flags.DEFINE_boolean("fresh", False, "ignore an existing state file", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    from nrc_jax import cli

    fv, (env,) = cli.parse(argv, _define_flags, prog="python -m nrc_jax.data.mujoco.ars",
                           usage=f"ENV [flags]  (ENV one of {sorted(ARS_CONFIGS)})", doc=__doc__, num_args=(1, 1))
    args = cli.namespace(fv, env=env)
    try:
        if args.env not in ARS_CONFIGS:
            raise ConfigError(f"unknown environment {args.env!r} (env); known: {', '.join(sorted(ARS_CONFIGS))}")
        spec = ENV_SPECS[args.env]
        config = ARS_CONFIGS[args.env]
        if args.max_episodes is not None:
            config = dataclasses.replace(config, max_episodes=args.max_episodes)
        state_path = args.state or os.path.expanduser(f"~/.cache/nrc_jax/ars/{args.env}_seed{args.seed}.npz")
        os.makedirs(os.path.dirname(os.path.abspath(state_path)), exist_ok=True)
        if os.path.exists(state_path) and not args.fresh:
            state = ARSState.load(state_path)
            print(f"resuming {state_path} at {state.episodes} episodes", flush=True)
        else:
            state = ARSState.initial(spec)
        state = train(spec, config, state, seed=args.seed, max_seconds=args.max_seconds)
        state.save(state_path)
        expert_out = args.expert_out or str(spec.expert_path)
        returns = export_expert(spec, config, state, expert_out, args.seed)
        done = state.episodes >= config.max_episodes
        print(f"{spec.gym_id}: {state.episodes} episodes, {state.env_steps} steps, {state.seconds:.0f} s; "
              f"eval return {returns.mean():.1f} +- {returns.std():.1f} over 10 episodes -> {expert_out}")
        print("done" if done else f"time limit reached; rerun the same command to resume from {state_path}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
