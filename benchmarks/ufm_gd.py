"""Time `nrc_jax.core.ufm.gradient_descent` with its DEFAULT options (configs/ufm.py `solver_config()`)
against the closed form, float64.

Run (from the repository root):
  .venv/bin/python benchmarks/ufm_gd.py > results/ufm/gd_benchmark.md   # ~4 min wall under load
  .venv/bin/python benchmarks/ufm_gd.py --shapes=200x4x16      # other (M x n x d) shapes

For each shape the solver is compiled once (a warm-up solve, timed separately: the lambdas are
traced, so every corner of that shape reuses the compilation), then every (lam_h, lam_w) corner
is solved from its own random start and compared with `nrc_jax.core.ufm.optimum`:
  loss rel gap = (L_gd - L*) / L*,  wwt rel gap = ||W W^T - W* W*^T||_F / ||W* W*^T||_F,
plus iterations and wall / CPU seconds of the solve (CPU = this process, all threads). A last row
per shape runs lam_h = lam_w = 0 for a fixed number of iterations and reports NRC1/NRC2 at the
end (no collapse: they stay away from 0). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from nrc_jax.core import metrics, ufm  # noqa: E402
from nrc_jax.io.config_files import repository_config  # noqa: E402

SOLVER = repository_config("ufm").solver_config().to_dict()

EQUAL = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
UNEQUAL = ((1e-4, 1.0), (1.0, 1e-4), (1e-3, 1e-1), (1e-1, 1e-3))
ZERO_LAMBDA_ITERS = 500


def synthetic_targets(m: int, n: int, seed: int) -> np.ndarray:
    """Correlated targets (M, n) with a non-zero mean, covariance eigenvalues roughly 0.1 to 10."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(n, n)) + 1.5 * np.eye(n)
    return rng.normal(size=(m, n)) @ mix + rng.normal(size=n)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - wall, time.process_time() - cpu


def solve_row(targets, lam_h, lam_w, d, key) -> dict:
    opt = ufm.optimum(targets, lam_h, lam_w)
    (H, W, b, history), wall, cpu = timed(
        lambda: ufm.gradient_descent(targets, lam_h, lam_w, d, key, SOLVER))
    loss_gd = float(ufm.loss(H, W, b, targets, lam_h, lam_w))
    wwt_opt = np.asarray(opt["wwt"])
    wwt_gap = np.linalg.norm(np.asarray(W @ W.T) - wwt_opt) / max(np.linalg.norm(wwt_opt), 1e-300)
    return {"loss_gap": (loss_gd - float(opt["loss"])) / float(opt["loss"]), "wwt_gap": wwt_gap,
            "iters": int(history["iterations"]), "converged": bool(history["converged"]),
            "num_fit": int(opt["num_fit"]), "wall": wall, "cpu": cpu}


def zero_lambda_row(targets, d, key) -> dict:
    (H, W, b, history), wall, cpu = timed(lambda: ufm.gradient_descent(
        targets, 0.0, 0.0, d, key, {**SOLVER, "max_iters": ZERO_LAMBDA_ITERS, "tol": 0.0}))
    n = targets.shape[1]
    return {"loss": float(ufm.loss(H, W, b, targets, 0.0, 0.0)), "nrc1": float(metrics.nrc1(H, n)),
            "nrc2": float(metrics.nrc2(H, W)), "nrc1_min": float(np.min(history["nrc1"])),
            "nrc2_min": float(np.min(history["nrc2"])), "iters": int(history["iterations"]),
            "wall": wall, "cpu": cpu}


def run_shape(m: int, n: int, d: int, seed: int) -> list[str]:
    targets = jnp.asarray(synthetic_targets(m, n, seed))
    values = np.asarray(ufm.optimum(targets, 1.0, 1.0)["eigenvalues"])
    _, wall, cpu = timed(lambda: ufm.gradient_descent(targets, 1e-2, 1e-2, d, jax.random.key(999), SOLVER))
    lines = [f"\n### M={m}, n={n}, d={d}  (target eigenvalues {values.min():.3g} .. "
             f"{values.max():.3g}; first solve incl. compilation: {wall:.1f} s wall, {cpu:.1f} s CPU)\n",
             "| lam_h | lam_w | fit dirs | loss rel gap | WW^T rel gap | iterations | converged "
             "| wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|"]
    corners = [(lam, lam) for lam in EQUAL] + list(UNEQUAL)
    for i, (lam_h, lam_w) in enumerate(corners):
        r = solve_row(targets, lam_h, lam_w, d, jax.random.key(seed * 100 + i))
        lines.append(f"| {lam_h:g} | {lam_w:g} | {r['num_fit']}/{n} | {r['loss_gap']:.2e} "
                     f"| {r['wwt_gap']:.2e} | {r['iters']} | {r['converged']} | {r['wall']:.2f} "
                     f"| {r['cpu']:.2f} |")
    z = zero_lambda_row(targets, d, jax.random.key(seed * 100 + 99))
    lines.append(f"\nlam_h = lam_w = 0, {z['iters']} iterations (plain full-dimensional steps, "
                 f"incl. its compilation): loss {z['loss']:.2e}, final NRC1 {z['nrc1']:.3f}, "
                 f"NRC2 {z['nrc2']:.3f} (min over the history {z['nrc1_min']:.3f}, "
                 f"{z['nrc2_min']:.3f}); {z['wall']:.1f} s wall, {z['cpu']:.1f} s CPU")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1000x8x512,1000x8x16",
                        help="comma-separated M x n x d shapes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print("# UFM gradient descent (defaults) vs closed form, float64\n")
    print(f"Command: `.venv/bin/python benchmarks/ufm_gd.py --shapes={args.shapes}`; "
          f"jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, load average at "
          f"start {load[0]:.1f}. Solver defaults: `{SOLVER}`. Wall/CPU seconds are per "
          "solve, after the shape's compilation.")
    with jax.enable_x64(True):
        for m, n, d in shapes:
            for line in run_shape(m, n, d, args.seed):
                print(line, flush=True)


if __name__ == "__main__":
    main()
