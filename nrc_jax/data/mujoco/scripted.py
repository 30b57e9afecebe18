"""Tunes the scripted Reacher expert (Jacobian-transpose PD) by a grid search over its two gains.

`python -m nrc_jax.data.mujoco.scripted` scores every (kp, kd) on 20 tuning episodes (reset seeds
0..19), keeps the best mean return, evaluates it on the 10 evaluation episodes (seeds EVAL_SEED + i,
never used for tuning) and writes `experts/reacher.npz`.
"""
from __future__ import annotations

import sys

import numpy as np

from nrc_jax.data.mujoco.envs import ENV_SPECS, make_env
from nrc_jax.data.mujoco.generate import evaluate, run_episode
from nrc_jax.data.mujoco.policies import ReacherPDPolicy, save_policy

KP_GRID = tuple(np.geomspace(3.0, 100.0, 9))
KD_GRID = tuple(np.geomspace(0.003, 0.3, 9))


def tuning_return(policy: ReacherPDPolicy, num_episodes: int = 20) -> float:
    """Mean return over the tuning episodes (reset seeds 0..num_episodes-1)."""
    spec = ENV_SPECS["reacher"]
    env = make_env(spec)
    return float(np.mean([run_episode(env, policy, env_seed=s, horizon=spec.horizon).total_return
                          for s in range(num_episodes)]))


def tune(kp_grid=KP_GRID, kd_grid=KD_GRID) -> tuple[ReacherPDPolicy, float]:
    """Grid search; returns the best policy and its tuning return."""
    scores = {(kp, kd): tuning_return(ReacherPDPolicy(float(kp), float(kd))) for kp in kp_grid for kd in kd_grid}
    (kp, kd), best = max(scores.items(), key=lambda item: item[1])
    return ReacherPDPolicy(float(kp), float(kd)), best


def main(argv: list[str] | None = None) -> int:
    from absl import flags

    from nrc_jax import cli

    def define(fv) -> None:
        flags.DEFINE_string("expert-out", str(ENV_SPECS["reacher"].expert_path), "expert file to write",
                            flag_values=fv)

    fv, _ = cli.parse(argv, define, prog="python -m nrc_jax.data.mujoco.scripted", usage="[flags]", doc=__doc__)
    args = cli.namespace(fv)
    policy, tuned = tune()
    returns = evaluate(ENV_SPECS["reacher"], policy, num_episodes=10)
    save_policy(args.expert_out, policy, eval_returns=returns, trainer=np.array("grid_search_pd"),
                tuning_return=np.array(tuned), kp_grid=np.array(KP_GRID), kd_grid=np.array(KD_GRID))
    print(f"Reacher-v5 PD expert kp={policy.kp:.3g} kd={policy.kd:.3g}: tuning return {tuned:.3f}; "
          f"eval return {returns.mean():.3f} +- {returns.std():.3f} over 10 episodes -> {args.expert_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
