"""Writes synthetic training workdirs in the `metrics.jsonl` / `summary.json` schema of docs/architecture.md.

The curves are smooth made-up decays (collapse when the regularization is positive, a plateau at
zero), enough to exercise every figure; they are not results.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import numpy as np

EPOCHS = (0, 1, 3, 10, 30, 100, 300, 1000)


def _decay(epochs: np.ndarray, start: float, end: float, rate: float) -> np.ndarray:
    return end + (start - end) * np.exp(-rate * epochs)


def member_rows(sweep_index: int, sweep: dict, reg: float, seed: int, n: int, layers: int,
                epochs: Sequence[int], lambda_min: float) -> list[dict]:
    """Rows of one sweep member; `reg` > 0 collapses NRC towards 0, `reg` = 0 keeps a plateau."""
    rng = np.random.default_rng(1000 * sweep_index + seed)
    e = np.asarray(epochs, dtype=np.float64)
    floor = 1e-4 if reg > 0 else 0.3
    jitter = 1.0 + 0.05 * rng.standard_normal()
    train_mse = _decay(e, 1.0, 0.01 + reg, 0.01) * jitter
    nrc = _decay(e, 0.6, floor, 0.005) * jitter
    rows = []
    for t, epoch in enumerate(epochs):
        evr = np.sort(rng.dirichlet(np.ones(5) + (t * 5.0) * (np.arange(5) < n)))[::-1]
        row: dict[str, Any] = {
            "epoch": int(epoch), "sweep_index": sweep_index, "sweep": sweep,
            "train_mse": float(train_mse[t]), "test_mse": float(train_mse[t] * 1.3),
            "train_r2": float(1 - train_mse[t]), "test_r2": float(1 - 1.3 * train_mse[t]),
            "nrc1": float(nrc[t]), "nrc2": float(nrc[t] * 1.5),
            "nrc3": float(nrc[t] * 0.5) if n > 1 else None, "nrc3_gamma": 0.4 * lambda_min if n > 1 else None,
            "nrc1_centered": float(nrc[t]), "nrc1_variance": float(nrc[t]), "nrc1_unnormalized": float(nrc[t]),
            "nrc2_variance": float(nrc[t]), "nrc2_unnormalized": float(nrc[t]), "nrc2_w_pca": float(nrc[t] * 2),
            "evr": evr.tolist(), "wwt": np.eye(n).tolist(), "w_norm": 1.0, "h_norm_sq": 2.0,
            "lambda_min": lambda_min, "time_s": 0.1 * t,
        }
        if layers:
            row["layers"] = [{"layer": i, "width": 256, "nrc1_variance": float(nrc[t] * (layers - i) / layers), "nrc1": float(nrc[t]),
                              "stable_rank": 10.0 - i - t * 0.5, "weight_stable_rank": 5.0 + i,
                              "alignment": 0.5 + 0.05 * i, "cka": 0.2 + 0.1 * i,
                              "probe_mse": float(train_mse[t] * (layers - i))} for i in range(layers)]
        rows.append(row)
    return rows


def write_workdir(path: pathlib.Path, *, dataset: str = "swimmer", sweep_key: str | None = "weight_decay",
                  values: Sequence[float] = (1e-2, 0.0), seeds: Sequence[int] = (0,), n: int = 2,
                  lrs: Sequence[float] = (), layers: int = 0, ufm: bool = False, summary: bool = True, data_block: bool = True,
                  epochs: Sequence[int] = EPOCHS, lambda_min: float = 0.276) -> pathlib.Path:
    """A workdir with config.json, metrics.jsonl and (optionally) summary.json.

    Members: the product of `values` (of `sweep_key`), `lrs` (if given) and `seeds`.

    sweep_key None: one member, its setting only in the config. ufm: config optim.mode = 'ufm' and
    sweep values set lambda_h = lambda_w.
    """
    path.mkdir(parents=True, exist_ok=True)
    optim = {"weight_decay": 0.0 if ufm else float(values[0]), "regularizer": "ufm" if ufm else "weight_decay",
             "lambda_h": float(values[0]) if ufm else 0.0, "lambda_w": float(values[0]) if ufm else 0.0}
    config = {"data": {"name": dataset, "train_size": 1000, "test_size": 200}, "optim": optim,
              "train": {"epochs": int(epochs[-1])}, "seed": 0, "sweep": {}}
    members = []
    index = 0
    for value in (values if sweep_key else values[:1]):
        for lr in lrs or (None,):
            for seed in (seeds if sweep_key else seeds[:1]):
                sweep: dict[str, Any] = {}
                if sweep_key:
                    sweep = {"lambda_h": value, "lambda_w": value} if ufm else {sweep_key: value}
                    if lr is not None:
                        sweep["lr"] = lr
                    if len(seeds) > 1:
                        sweep["seed"] = seed
                members.append((index, sweep, value, seed))
                index += 1
    if sweep_key:
        config["sweep"] = {k: sorted({m[1][k] for m in members}) for k in members[0][1]}
    (path / "config.json").write_text(json.dumps(config, indent=1))
    rows = [r for i, sweep, value, seed in members
            for r in member_rows(i, sweep, value, seed, n, layers, epochs, lambda_min)]
    rows.sort(key=lambda r: (r["epoch"], r["sweep_index"]))  # the engine logs all members per evaluation
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary:
        entries = []
        for i, sweep, value, seed in members:
            gammas = np.linspace(0.0, lambda_min, 50, endpoint=False)
            best = 0.4 * lambda_min + 0.01 * seed
            curve = 0.05 + (gammas - best) ** 2
            last = [r for r in rows if r["sweep_index"] == i][-1]
            entries.append({"sweep_index": i, "sweep": sweep, "gammas": gammas.tolist(),
                            "nrc3_curve": curve.tolist(), "best_gamma": best,
                            "best_gamma_over_lambda_min": best / lambda_min, "best_nrc3": 0.05,
                            "epochs": [r["epoch"] for r in rows if r["sweep_index"] == i],
                            "nrc3_over_epochs": [r["nrc3"] for r in rows if r["sweep_index"] == i],
                            "final": last})
        doc: dict[str, Any] = {"members": entries}
        if data_block:
            pairs = [-0.244] * (n * (n - 1) // 2)  # nrc_jax.data.base.table1_row's form, plus eigenvalues
            doc["data"] = {"name": dataset, "train_size": 1000, "test_size": 200, "input_shape": [8],
                           "target_dim": n, "target_correlation": None if n == 1 else pairs[0] if n == 2 else pairs,
                           "lambda_min": lambda_min, "lambda_max": 1.5,
                           "eigenvalues": np.linspace(1.5, lambda_min, n).tolist()}
        (path / "summary.json").write_text(json.dumps(doc))
    return path
