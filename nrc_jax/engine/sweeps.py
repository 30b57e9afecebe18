"""Sweep expansion: the K models one run trains side by side (vmapped), from `config.sweep`.

Configs start from `default_sweep_config()`; every metrics row and TensorBoard folder carries its
member's swept values (`member_label`).
"""
from __future__ import annotations

import itertools

import ml_collections

from nrc_jax.errors import ConfigError

SWEEP_FIELDS = ("seed", "lr", "weight_decay", "lambda_h", "lambda_w")


def default_sweep_config() -> ml_collections.ConfigDict:
    """Empty tuples: not swept. mode "product" (Cartesian, in SWEEP_FIELDS order) or "zip"."""
    return ml_collections.ConfigDict({
        "mode": "product", "seed": (), "lr": (), "weight_decay": (), "lambda_h": (), "lambda_w": ()})


def sweep_members(config: ml_collections.ConfigDict) -> list[dict]:
    """The K models of a run: [{"seed", "lr", "weight_decay", "lambda_h", "lambda_w", "sweep"}].

    Unswept fields take config.seed / config.optim.*; "sweep" holds only the swept ones.
    """
    base = {"seed": int(config.seed), "lr": float(config.optim.lr),
            "weight_decay": float(config.optim.weight_decay), "lambda_h": float(config.optim.lambda_h),
            "lambda_w": float(config.optim.lambda_w)}
    swept = {f: tuple(config.sweep[f]) for f in SWEEP_FIELDS if len(config.sweep[f])}
    if config.sweep.mode == "product":
        combos = [dict(zip(swept, values)) for values in itertools.product(*swept.values())]
    elif config.sweep.mode == "zip":
        lengths = {f: len(v) for f, v in swept.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"sweep.mode='zip' needs sweep tuples of one length, got {lengths}")
        combos = [dict(zip(swept, values)) for values in zip(*swept.values())] or [{}]
    else:
        raise ConfigError(f"sweep.mode={config.sweep.mode!r}: allowed 'product', 'zip'")
    members = []
    for combo in combos:
        combo = {f: (int(v) if f == "seed" else float(v)) for f, v in combo.items()}
        members.append({**base, **combo, "sweep": combo})
    return members


def member_label(member: dict) -> str:
    """"weight_decay=0.01,seed=1" from a member's (or a row's) `sweep` values; "run" when unswept."""
    return ",".join(f"{k}={v}" for k, v in member["sweep"].items()) or "run"
