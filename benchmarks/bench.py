"""Issue 7 benchmark: nrc_jax against the published-style PyTorch loop, on this machine, in one run.

    .venv/bin/python benchmarks/bench.py [--quick] [--out results/bench.md] [--sections ...]

Sections (each prints its raw numbers; the markdown report collects them):
  peak     f32 matmul rate of this machine with the same JAX (jitted jnp.dot, square matrices).
  metrics  the NRC computation alone on the same features: nrc_jax.metrics vs the reference's
           sklearn PCA + Gram-Schmidt + gamma loop.
  train    ms/epoch of training: marginal time per epoch of nrc_jax's compiled `train_chunk`
           (difference of two chunk lengths, so evaluation and dispatch cancel) vs the reference
           DataLoader loop; fraction of the matmul peak reached.
  eval     full NRC evaluations per second (forward over train and test sets + every metric).
  e2e      end-to-end epochs/s with an evaluation every 10 epochs.
  sweep    K = 1, 4, 8 models trained in one vmapped program, model-epochs/s.
  cli      the issue's check: marginal time per epoch of `python -m nrc_jax.main
           --config=configs/mlp.py` (two run lengths) vs the reference script, on a temp .npz.

Timings are medians of repeated runs; the first call of every compiled function is timed apart
as "compile". FLOPs are counted from the model: a dense layer costs 2*fan_in*fan_out per sample
forward and twice that backward, so training costs 3x the forward FLOPs per sample.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

SECTIONS = ("peak", "metrics", "train", "eval", "e2e", "sweep", "cli")


@dataclasses.dataclass(frozen=True)
class Size:
    """A MuJoCo-sized regression problem: `train` samples of `in_dim` inputs and `out_dim` targets."""
    name: str
    train: int
    in_dim: int
    out_dim: int


SIZES = {"swimmer": Size("swimmer", 1000, 8, 2), "hopper": Size("hopper", 10000, 11, 3)}
HIDDEN = (256, 256, 256)
EVAL_EVERY = 10


# ----------------------------------------------------------------------------- timing helpers
def block(tree: Any) -> Any:
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of one call of `fn` (its result blocked on)."""
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median seconds of `repeats` calls after `warmup` untimed ones, and all the samples."""
    for _ in range(warmup):
        block(fn())
    samples = [timed(fn) for _ in range(repeats)]
    return statistics.median(samples), samples


def train_flops_per_sample(in_dim: int, out_dim: int, hidden=HIDDEN) -> int:
    """3 x forward, forward = 2 * sum(fan_in * fan_out) over the dense layers (biases ignored)."""
    widths = (in_dim, *hidden, out_dim)
    forward = 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 3 * forward


# ----------------------------------------------------------------------------- machine
def machine_description() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    torch_version = "absent"
    with contextlib.suppress(ImportError):
        import torch
        torch_version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    return {
        "cpu": model, "cores": str(os.cpu_count()), "python": platform.python_version(),
        "jax": jax.__version__, "jax devices": str(jax.devices()), "torch": torch_version,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


# ----------------------------------------------------------------------------- (c) matmul peak
def matmul_peak(sizes=(256, 1024, 2048), repeats: int = 7) -> dict[str, Any]:
    """GFLOP/s of a jitted f32 jnp.dot of two square N x N matrices, median per N; peak = the max."""
    rows = {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        dot = jax.jit(jnp.dot)
        compile_s = timed(lambda: dot(a, b))
        seconds, _ = median_time(lambda: dot(a, b), repeats)
        rows[n] = {"gflops": 2 * n**3 / seconds / 1e9, "ms": seconds * 1e3, "compile_s": compile_s}
        print(f"[peak] {n}x{n} f32 matmul: {rows[n]['gflops']:.1f} GFLOP/s ({rows[n]['ms']:.2f} ms)", flush=True)
    return {"by_size": rows, "peak_gflops": max(r["gflops"] for r in rows.values())}


# ----------------------------------------------------------------------------- the reference
def reference_run(size: Size, seed: int = 0):
    import torch_reference
    return torch_reference.make_run(*torch_reference.random_regression_data(size.train, size.in_dim, size.out_dim, seed))


def bench_reference(size: Size, repeats: int, e2e_blocks: int) -> dict[str, float]:
    """Reference ms/epoch, ms/evaluation and end-to-end epochs/s (evaluation every 10 epochs)."""
    run = reference_run(size)
    epoch_s, _ = median_time(run.train_epoch, repeats)
    eval_s, _ = median_time(run.evaluate, repeats)
    block_s, _ = median_time(lambda: run.run(EVAL_EVERY, EVAL_EVERY), e2e_blocks, warmup=0)
    out = {"epoch_ms": epoch_s * 1e3, "eval_ms": eval_s * 1e3, "e2e_epochs_per_s": EVAL_EVERY / block_s}
    print(f"[reference] {size.name}: {out['epoch_ms']:.1f} ms/epoch, {out['eval_ms']:.1f} ms/evaluation, "
          f"{out['e2e_epochs_per_s']:.1f} epochs/s end to end", flush=True)
    return out


# ----------------------------------------------------------------------------- NRC computation alone
def bench_metrics(size: Size, repeats: int) -> dict[str, Any]:
    """The NRC computation on the same features (the reference model's, after 2 epochs)."""
    import torch_reference
    from nrc_jax import metrics

    run = reference_run(size)
    for _ in range(2):
        run.train_epoch()
    h, pred, y = torch_reference.gather(run.model, run.train_loader, torch_reference.MAX_EVAL_BATCHES)
    w = run.model.head.weight.detach().numpy()
    ref_s, _ = median_time(lambda: torch_reference.nrc_from_features(h, w, run.sigma_sqrt, run.lambda_min), repeats)
    ref = torch_reference.nrc_from_features(h, w, run.sigma_sqrt, run.lambda_min)

    hj, yj, pj, wj = (jnp.asarray(a) for a in (h, y, pred, w))
    sigma = jnp.asarray(np.cov(y, rowvar=False, bias=True), jnp.float32)
    basis0 = metrics.pca_basis_init(h.shape[1], size.out_dim)

    # sigma is passed as an argument: metrics' finiteness check cannot run on a closed-over
    # constant under jit (it is concrete but jnp ops on it are traced).
    stats_fn = jax.jit(metrics.feature_stats)
    full_fn = jax.jit(lambda h, y, p, w, s: metrics.metrics_from_stats(metrics.feature_stats(h, y, p), w, sigma=s))
    warm_fn = jax.jit(lambda h, y, p, w, s, b: metrics.metrics_from_stats(
        metrics.feature_stats(h, y, p), w, sigma=s, pca_init=b))
    stats = stats_fn(hj, yj, pj)
    from_stats_eigh = jax.jit(lambda st, w, s: metrics.metrics_from_stats(st, w, sigma=s))
    from_stats_warm = jax.jit(lambda st, w, s, b: metrics.metrics_from_stats(st, w, sigma=s, pca_init=b))
    basis = warm_fn(hj, yj, pj, wj, sigma, basis0)["pca_basis"]  # warm start as in training
    cases = {
        "feature_stats": lambda: stats_fn(hj, yj, pj),
        "metrics_from_stats (eigh)": lambda: from_stats_eigh(stats, wj, sigma),
        "metrics_from_stats (warm subspace)": lambda: from_stats_warm(stats, wj, sigma, basis),
        "stats + metrics (eigh)": lambda: full_fn(hj, yj, pj, wj, sigma),
        "stats + metrics (warm subspace)": lambda: warm_fn(hj, yj, pj, wj, sigma, basis),
    }
    rows = {}
    for name, fn in cases.items():
        compile_s = timed(fn)
        seconds, _ = median_time(fn, repeats * 3)
        rows[name] = {"ms": seconds * 1e3, "compile_s": compile_s}
    ours = {k: float(v) for k, v in full_fn(hj, yj, pj, wj, sigma).items() if k in ("nrc1", "nrc2", "nrc3", "nrc3_gamma")}
    warm = {k: float(v) for k, v in warm_fn(hj, yj, pj, wj, sigma, basis).items() if k in ("nrc1", "nrc2", "nrc3")}
    out = {"reference_ms": ref_s * 1e3, "cases": rows, "reference_values": ref, "nrc_jax_values": ours,
           "nrc_jax_warm_values": warm}
    print(f"[metrics] {size.name}: reference {ref_s * 1e3:.1f} ms; "
          + "; ".join(f"{k} {v['ms']:.3f} ms" for k, v in rows.items()), flush=True)
    print(f"[metrics] {size.name}: values reference {ref} nrc_jax {ours} warm {warm}", flush=True)
    return out
