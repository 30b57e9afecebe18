"""Expert policies: linear (trained by ARS) and a scripted Jacobian-transpose PD controller.

A policy maps one observation (obs_dim,) to one action (act_dim,) in [-1, 1] (the actuators'
control range); clipping here keeps the recorded target equal to the control MuJoCo applies.
Parameters are stored as small `.npz` files with a `kind` entry naming the policy class.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Protocol

import numpy as np

from nrc_jax.errors import DataError


class Policy(Protocol):
    def __call__(self, observation: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class LinearPolicy:
    """a = clip(W (o - mean) / std, -1, 1) (ARS V2 with observation normalization).

    Attributes:
      weights: (act_dim, obs_dim).
      obs_mean, obs_std: (obs_dim,) normalization statistics (zeros/ones for ARS V1).
    """

    weights: np.ndarray
    obs_mean: np.ndarray
    obs_std: np.ndarray

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        return np.clip(self.weights @ ((observation - self.obs_mean) / self.obs_std), -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class ReacherPDPolicy:
    """Jacobian-transpose PD control of Reacher's fingertip towards the target.

    Reacher-v5 observation: [cos q1, cos q2, sin q1, sin q2, target_xy (2), dq (2), fingertip -
    target (2)]. The torque is tau = -kp J(q)^T e - kd dq with e the fingertip-to-target vector and J
    the planar two-link Jacobian of the fingertip (link lengths 0.1 and 0.11 from reacher.xml).
    """

    kp: float
    kd: float
    link1: float = 0.1
    link2: float = 0.11

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        c1, c2, s1, s2 = observation[0:4]
        dq = observation[6:8]
        err = observation[8:10]
        c12 = c1 * c2 - s1 * s2
        s12 = s1 * c2 + c1 * s2
        jacobian = np.array([[-self.link1 * s1 - self.link2 * s12, -self.link2 * s12],
                             [self.link1 * c1 + self.link2 * c12, self.link2 * c12]])
        return np.clip(-self.kp * jacobian.T @ err - self.kd * dq, -1.0, 1.0)


def save_policy(path: str | os.PathLike, policy: LinearPolicy | ReacherPDPolicy, **metadata: np.ndarray) -> None:
    """Writes `policy` (and scalar/array `metadata`, e.g. eval returns) to a .npz file."""
    if isinstance(policy, LinearPolicy):
        arrays = {"kind": np.array("linear"), "weights": policy.weights, "obs_mean": policy.obs_mean,
                  "obs_std": policy.obs_std}
    else:
        arrays = {"kind": np.array("reacher_pd"), "kp": np.array(policy.kp), "kd": np.array(policy.kd),
                  "link1": np.array(policy.link1), "link2": np.array(policy.link2)}
    clash = set(arrays) & set(metadata)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} clash with policy parameters")
    tmp = f"{os.fspath(path)}.tmp.npz"
    np.savez(tmp, **arrays, **{k: np.asarray(v) for k, v in metadata.items()})
    os.replace(tmp, path)


def load_policy(path: str | os.PathLike) -> tuple[LinearPolicy | ReacherPDPolicy, dict[str, np.ndarray]]:
    """Reads a policy file written by `save_policy`; returns (policy, remaining metadata arrays)."""
    if not os.path.isfile(path):
        raise DataError(f"expert parameter file not found: {path}")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    kind = str(arrays.pop("kind", ""))
    if kind == "linear":
        policy = LinearPolicy(arrays.pop("weights"), arrays.pop("obs_mean"), arrays.pop("obs_std"))
    elif kind == "reacher_pd":
        policy = ReacherPDPolicy(float(arrays.pop("kp")), float(arrays.pop("kd")),
                                 float(arrays.pop("link1")), float(arrays.pop("link2")))
    else:
        raise DataError(f"{path}: unknown expert kind {kind!r}; expected 'linear' or 'reacher_pd'")
    return policy, arrays
