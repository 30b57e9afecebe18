"""UFM study (the I/O edge of `nrc_jax.core.ufm`): sweep c / lambda_min, closed form vs gradient descent.

For each sweep point (lam_h = lam_w = sqrt(c), c = ratio * lambda_min) the closed-form minimizer and
the gradient-descent solution are measured with `nrc_jax.core.metrics` (NRC1, NRC2, NRC3 at gamma = c,
train MSE, ||W||_F, RMS feature norm). Writes to `config.out_dir`:
  nrc_vs_c.png      NRC1, NRC2, NRC3(gamma=c), MSE, ||W||_F and ||H||_F/sqrt(M) against c/lambda_min
                    (closed form as lines, gradient descent as markers)
  trajectories.png  loss gap, NRC1, NRC2, NRC3 against iteration of plain gradient descent (no
                    balancing move, no momentum) for a lambda > 0 run and a lambda = 0 run
  gaps.csv, gaps.md gradient descent minus closed form, per sweep point
  summary.json      the target statistics, every sweep row and both trajectories

Command line: `python -m nrc_jax.ufm --config=configs/ufm.py [--config.x=y ...]`.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nrc_jax.core import metrics, ufm
from nrc_jax.errors import ConfigError, UserError

GAP_COLUMNS = ("ratio", "c", "lam", "loss_opt", "loss_rel_gap", "wwt_rel_gap", "mse_opt", "mse_gap",
               "gd_nrc1", "gd_nrc2", "gd_iterations", "gd_converged", "gd_time_s")


# ----------------------------------------------------------------------------------------------
# Targets.


def synthetic_targets(num_samples: int, eigenvalues: Sequence[float], mean: float,
                      seed: int) -> np.ndarray:
    """Gaussian targets (M, n) whose sample covariance has exactly the given eigenvalues.

    Rows are whitened to an identity sample covariance, then mapped by V diag(sqrt(lambda)) with V a
    random rotation, so Sigma = V diag(lambda) V^T up to float64 rounding.
    """
    values = np.asarray(eigenvalues, np.float64)
    n = values.size
    if n < 1 or np.any(values <= 0) or not np.all(np.isfinite(values)):
        raise ConfigError(f"synthetic.eigenvalues must be positive and finite; got {list(values)}")
    if num_samples <= n:
        raise ConfigError(f"synthetic.num_samples must exceed n={n}; got {num_samples}")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_samples, n))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(z.T @ z / num_samples)
    white = np.linalg.solve(chol, z.T).T
    rotation, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return mean + white @ (np.sqrt(values)[:, None] * rotation.T)


def load_targets(config: ml_collections.ConfigDict) -> np.ndarray:
    """The study's targets (M, n) float64, as named by `config.targets`."""
    if config.targets == "synthetic":
        s = config.synthetic
        return synthetic_targets(int(s.num_samples), tuple(s.eigenvalues), float(s.mean),
                                 int(config.seed))
    raise ConfigError(f"targets={config.targets!r} is not known; available: 'synthetic'")


# ----------------------------------------------------------------------------------------------
# Measurements.


def measure(H, W, b, targets, sigma, gamma) -> dict[str, float]:
    """NRC1/2/3(gamma), train MSE and norms of a UFM point, all from `nrc_jax.core.metrics`."""
    n = targets.shape[1]
    out = {
        "nrc1": metrics.nrc1(H, n),
        "nrc2": metrics.nrc2(H, W),
        "nrc3": metrics.nrc3(W, sigma, gamma),
        "mse": metrics.mse(targets, H @ W.T + b[None, :]),
        "w_norm": jnp.linalg.norm(W),
        "h_rms": jnp.sqrt(jnp.mean(jnp.sum(H**2, axis=1))),
    }
    return {k: float(v) for k, v in out.items()}


def solve_point(targets, sigma, ratio: float, lambda_min: float, d: int, key,
                gd_options: dict) -> dict[str, Any]:
    """Closed form and gradient descent at c = ratio * lambda_min, lam_h = lam_w = sqrt(c)."""
    c = ratio * lambda_min
    lam = math.sqrt(c)
    key_cf, key_gd = jax.random.split(key)
    opt = ufm.optimum(targets, lam, lam)
    cf = ufm.closed_form(targets, lam, lam, d, key_cf)
    start = time.perf_counter()
    H, W, b, history = ufm.gradient_descent(targets, lam, lam, d, key_gd, gd_options)
    jax.block_until_ready(H)
    elapsed = time.perf_counter() - start
    wwt_opt = opt["wwt"]
    wwt_gap = float(jnp.linalg.norm(W @ W.T - wwt_opt))
    wwt_scale = float(jnp.linalg.norm(wwt_opt))
    loss_gd = float(ufm.loss(H, W, b, targets, lam, lam))
    closed = measure(*cf, targets, sigma, c)
    gd = measure(H, W, b, targets, sigma, c)
    return {
        "ratio": ratio, "c": c, "lam": lam,
        "loss_opt": float(opt["loss"]), "loss_gd": loss_gd,
        "loss_rel_gap": (loss_gd - float(opt["loss"])) / float(opt["loss"]),
        # relative to ||W*W*^T||_F, absolute where W* = 0 (c >= lambda_max)
        "wwt_rel_gap": wwt_gap / wwt_scale if wwt_scale > 0 else wwt_gap,
        "mse_opt": float(opt["mse"]), "mse_gap": gd["mse"] - float(opt["mse"]),
        "gd_nrc1": gd["nrc1"], "gd_nrc2": gd["nrc2"],
        "gd_iterations": int(history["iterations"]), "gd_converged": bool(history["converged"]),
        "gd_time_s": elapsed,
        "closed_form": closed, "gd": gd,
        "history": _history_lists(history),
    }


def _history_lists(history: dict) -> dict[str, list[float]]:
    return {k: np.asarray(history[k]).tolist() for k in ufm.HISTORY_KEYS}


# ----------------------------------------------------------------------------------------------
# Outputs.


def _json_safe(x: Any) -> Any:
    """Nested dicts/lists with NaN/inf replaced by None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_tables(rows: list[dict], out_dir: str) -> None:
    with open(os.path.join(out_dir, "gaps.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(GAP_COLUMNS)
        for row in rows:
            writer.writerow([row[k] for k in GAP_COLUMNS])
    header = ("| c/lambda_min | c | lam_h = lam_w | loss* | loss rel gap | WW^T rel gap (Frobenius) "
              "| MSE* | MSE gap | GD NRC1 | GD NRC2 | GD iters | converged | GD time (s) |")
    lines = [
        "# UFM: gradient descent vs closed form",
        "",
        "Gaps are GD minus the closed-form optimum. The WW^T gap is ||WW^T - W*W*^T||_F relative to "
        "||W*W*^T||_F, absolute where W* = 0 (c >= lambda_max). The first GD time includes "
        "compilation.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['ratio']:g} | {r['c']:.3g} | {r['lam']:.3g} | {r['loss_opt']:.6g} "
            f"| {r['loss_rel_gap']:.2e} | {r['wwt_rel_gap']:.2e} | {r['mse_opt']:.6g} "
            f"| {r['mse_gap']:.2e} | {r['gd_nrc1']:.2e} | {r['gd_nrc2']:.2e} | {r['gd_iterations']} "
            f"| {r['gd_converged']} | {r['gd_time_s']:.2f} |")
    with open(os.path.join(out_dir, "gaps.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_sweep(rows: list[dict], stats: dict, out_path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = np.array([r["ratio"] for r in rows])
    panels = [("nrc1", "NRC1"), ("nrc2", "NRC2"), ("nrc3", "NRC3 (gamma = c)"),
              ("mse", "train MSE"), ("w_norm", "||W||_F"), ("h_rms", "||H||_F / sqrt(M)")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
    eig_ratios = np.asarray(stats["eigenvalues"]) / float(stats["lambda_min"])
    for ax, (key, label) in zip(axes.flat, panels):
        closed = np.array([r["closed_form"][key] for r in rows], float)
        gd = np.array([r["gd"][key] for r in rows], float)
        if key == "nrc3":
            # W* = 0 for c >= lambda_max: WW^T/||WW^T|| is 0/0 there. The closed form's exact 0 reads
            # 1 by the metric's convention; GD's W is tiny but not 0, so its normalized WW^T is an
            # arbitrary PSD direction against the negative definite A_c: 2 < NRC3 <= 4. Not drawn.
            undefined = ratios * float(stats["lambda_min"]) >= float(np.max(stats["eigenvalues"]))
            closed[undefined], gd[undefined] = np.nan, np.nan
        ax.plot(ratios, closed, "-", color="C0", label="closed form")
        ax.plot(ratios, gd, "o", color="C1", mfc="none", label="gradient descent")
        if key == "mse":
            ax.plot(ratios, [r["mse_opt"] for r in rows], ":", color="k",
                    label="sum_j min(lambda_j, c)")
        for e in eig_ratios:
            ax.axvline(e, color="0.8", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel("c / lambda_min  (c = lam_h lam_w, lam_h = lam_w)")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.suptitle("UFM optimum vs c / lambda_min (grey lines: lambda_j / lambda_min). For c > lambda_min, A_c = "
                 "Sigma^1/2 - sqrt(c) I has negative eigenvalues that W*W*^T sets to 0,\nso NRC3(gamma = c) > 0 at "
                 "the optimum too. For c > lambda_max, H* = 0 and W* = 0: NRC1 = NRC2 = 0 by the metrics' zero "
                 "conventions, NRC3 (0/0) is not drawn", fontsize=10)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def plot_trajectories(runs: list[tuple[str, dict, float]], out_path: str) -> None:
    """runs: (label, history lists, optimal loss) per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4), constrained_layout=True)
    for i, (label, history, loss_opt) in enumerate(runs):
        it = np.asarray(history["iteration"])
        it = np.maximum(it, 1)  # log axis: the start is drawn at iteration 1
        gap = np.abs(np.asarray(history["loss"]) - loss_opt)
        floor = max(1e-15 * loss_opt, 1e-32)  # float64 rounding of the loss: the gap's resolution
        axes[0].plot(it, np.maximum(gap, floor), color=f"C{i}", label=label)
        for ax, key in zip(axes[1:], ("nrc1", "nrc2", "nrc3")):
            ax.plot(it, history[key], color=f"C{i}", label=label)
    for ax, name in zip(axes, ("|loss - optimal loss| (floored at rounding)", "NRC1", "NRC2",
                                 "NRC3 (gamma = lam_h lam_w)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.suptitle("UFM, plain gradient descent (no balancing, no momentum) from a random start: with "
                 "lambda > 0 the features collapse, with lambda = 0 they do not", fontsize=11)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The study.


def _check_config(config: ml_collections.ConfigDict, n: int) -> None:
    if not config.ratios or any(not (float(r) > 0 and np.isfinite(r)) for r in config.ratios):
        raise ConfigError(f"ratios must be a non-empty list of positive numbers; got {config.ratios}")
    if int(config.d) < n:
        raise ConfigError(f"d={config.d} must be >= n={n} (the number of eigenvalues)")
    iters = config.get("zero_lambda_iters")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"zero_lambda_iters must be an int >= 1; got {iters!r}")
    if config.trajectory_ratio not in tuple(config.ratios):
        raise ConfigError(f"trajectory_ratio={config.trajectory_ratio} must be one of ratios "
                          f"{tuple(config.ratios)}")


def solver_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The sweep's `ufm.gradient_descent` options: configs/ufm.py's `solver_config()` (the solver's
    defaults) with the study's `gd` changes."""
    from nrc_jax.io.config_files import repository_config

    return {**repository_config("ufm").solver_config(), **config.gd}


def run_study(config: ml_collections.ConfigDict) -> dict:
    """Run the sweep, write the figures and tables to `config.out_dir`; returns the summary dict."""
    with jax.enable_x64(True):
        return _run_study(config)


def _run_study(config: ml_collections.ConfigDict) -> dict:
    targets_np = load_targets(config)
    M, n = targets_np.shape
    _check_config(config, n)
    targets = jnp.asarray(targets_np)
    stats = {k: np.asarray(v) for k, v in metrics.target_stats(targets).items()}
    lambda_min = float(stats["lambda_min"])
    d = int(config.d)
    gd_options = solver_options(config)
    key = jax.random.key(int(config.seed))
    os.makedirs(config.out_dir, exist_ok=True)
    print(f"UFM study: targets={config.targets} M={M} n={n} d={d} eigenvalues="
          f"{np.round(stats['eigenvalues'], 6).tolist()} -> {config.out_dir}", flush=True)
    rows = []
    for i, ratio in enumerate(config.ratios):
        row = solve_point(targets, stats["sigma"], float(ratio), lambda_min, d,
                          jax.random.fold_in(key, i), gd_options)
        rows.append(row)
        print(f"  [{i + 1}/{len(config.ratios)}] c/lambda_min={ratio:g} lam={row['lam']:.3g}: "
              f"loss rel gap {row['loss_rel_gap']:.1e}, WW^T gap {row['wwt_rel_gap']:.1e}, "
              f"{row['gd_iterations']} iters in {row['gd_time_s']:.1f}s", flush=True)
    shown = rows[list(config.ratios).index(config.trajectory_ratio)]
    plain_opts = {**gd_options, **dict(config.trajectory), "tol": 0.0, "atol": 0.0,
                  "max_iters": int(config.zero_lambda_iters)}
    _, _, _, plain_history = ufm.gradient_descent(targets, shown["lam"], shown["lam"], d,
                                                  jax.random.fold_in(key, 10**6 + 1), plain_opts)
    plain = _history_lists(plain_history)
    _, _, _, zero_history = ufm.gradient_descent(targets, 0.0, 0.0, d,
                                                 jax.random.fold_in(key, 10**6), plain_opts)
    zero = _history_lists(zero_history)
    print(f"  plain GD at lam={shown['lam']:.3g}: {int(plain_history['iterations'])} iters, final loss gap "
          f"{plain['loss'][-1] - shown['loss_opt']:.2e}, NRC1 {plain['nrc1'][-1]:.2e}, NRC2 {plain['nrc2'][-1]:.2e}",
          flush=True)
    print(f"  lambda = 0 run: {int(zero_history['iterations'])} iters, final loss "
          f"{zero['loss'][-1]:.2e}, NRC1 {zero['nrc1'][-1]:.3f}, NRC2 {zero['nrc2'][-1]:.3f}",
          flush=True)
    plot_sweep(rows, stats, os.path.join(config.out_dir, "nrc_vs_c.png"))
    plot_trajectories([(f"lam_h = lam_w = {shown['lam']:.3g} (c/lambda_min = {shown['ratio']:g})",
                        plain, shown["loss_opt"]),
                       ("lam_h = lam_w = 0", zero, 0.0)],
                      os.path.join(config.out_dir, "trajectories.png"))
    write_tables(rows, config.out_dir)
    summary = {
        "config": json.loads(config.to_json()),
        "target_stats": {k: np.asarray(v).tolist() for k, v in stats.items()},
        "sweep": rows,
        "plain_gd_history": plain,
        "zero_lambda_history": zero,
    }
    with open(os.path.join(config.out_dir, "summary.json"), "w") as f:
        json.dump(_json_safe(summary), f, indent=1)
    print(f"wrote nrc_vs_c.png, trajectories.png, gaps.csv, gaps.md, summary.json to "
          f"{config.out_dir}", flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m nrc_jax.ufm [--config=configs/ufm.py[:quick]] [--config.x=y ...]`;
    `argv` without the program name (default: sys.argv[1:]). Returns the exit status."""
    from absl import logging

    from nrc_jax import cli
    from nrc_jax.io.config_files import repository_config_path

    fv, _ = cli.parse(argv, lambda fv: None, prog="python -m nrc_jax.ufm", usage="[--config=configs/ufm.py[:quick]] "
                      "[--config.x=y ...]", doc=__doc__, config=repository_config_path("ufm"))
    logging.set_verbosity(logging.WARNING)
    try:
        run_study(fv["config"].value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
