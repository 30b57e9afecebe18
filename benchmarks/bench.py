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
# Every timing is a pair (wall seconds, CPU seconds of this process). On a machine shared with
# other jobs the wall clock also measures the neighbours; the CPU time much less so.
def block(tree: Any) -> Any:
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, cpu) seconds of one call of `fn`, its result blocked on."""
    wall, cpu = time.perf_counter(), time.process_time()
    block(fn())
    return time.perf_counter() - wall, time.process_time() - cpu


def medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median (wall, cpu) seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        block(fn())
    return medians([timed(fn) for _ in range(repeats)])


def train_flops_per_sample(in_dim: int, out_dim: int, hidden=HIDDEN) -> int:
    """3 x forward, forward = 2 * sum(fan_in * fan_out) over the dense layers (biases ignored)."""
    widths = (in_dim, *hidden, out_dim)
    forward = 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 3 * forward


def training_gflops(size: Size, epoch_ms: float) -> float:
    """GFLOP/s of training at `epoch_ms` per epoch (FLOPs from `train_flops_per_sample`)."""
    return size.train * train_flops_per_sample(size.in_dim, size.out_dim) / (epoch_ms * 1e-3) / 1e9


def eval_flops(size: Size, hidden=HIDDEN) -> int:
    """The work no evaluation can skip: the forward pass over train + test rows (test = 20%) and
    the one d x d product of the features whose principal directions NRC1 needs."""
    rows = size.train + max(1, size.train // 5)
    return rows * train_flops_per_sample(size.in_dim, size.out_dim, hidden) // 3 + 2 * size.train * hidden[-1] ** 2


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
        compile_s = timed(lambda: dot(a, b))[0]
        wall, cpu = median_time(lambda: dot(a, b), repeats)
        flops = 2 * n**3
        rows[n] = {"gflops": flops / wall / 1e9, "gflops_per_cpu_s": flops / cpu / 1e9, "ms": wall * 1e3,
                   "compile_s": compile_s}
        print(f"[peak] {n}x{n} f32 matmul: {rows[n]['gflops']:.1f} GFLOP/s wall, "
              f"{rows[n]['gflops_per_cpu_s']:.1f} GFLOP per CPU-second ({rows[n]['ms']:.2f} ms)", flush=True)
    return {"by_size": rows, "peak_gflops": max(r["gflops"] for r in rows.values()),
            "peak_gflops_per_cpu_s": max(r["gflops_per_cpu_s"] for r in rows.values())}


# ----------------------------------------------------------------------------- the reference
def reference_run(size: Size, seed: int = 0):
    import torch_reference
    return torch_reference.make_run(*torch_reference.random_regression_data(size.train, size.in_dim, size.out_dim, seed))


def bench_reference(size: Size, repeats: int, e2e_blocks: int) -> dict[str, float]:
    """Reference ms/epoch, ms/evaluation and end-to-end epochs/s (evaluation every 10 epochs)."""
    run = reference_run(size)
    epoch = median_time(run.train_epoch, repeats)
    evaluation = median_time(run.evaluate, repeats)
    blocks = median_time(lambda: run.run(EVAL_EVERY, EVAL_EVERY), e2e_blocks, warmup=0)
    out = {"epoch_ms": epoch[0] * 1e3, "epoch_cpu_ms": epoch[1] * 1e3,
           "eval_ms": evaluation[0] * 1e3, "eval_cpu_ms": evaluation[1] * 1e3,
           "e2e_epochs_per_s": EVAL_EVERY / blocks[0], "e2e_epochs_per_cpu_s": EVAL_EVERY / blocks[1]}
    print(f"[reference] {size.name}: {out['epoch_ms']:.1f} ms/epoch, {out['eval_ms']:.1f} ms/evaluation, "
          f"{out['e2e_epochs_per_s']:.1f} epochs/s end to end (CPU: {out['epoch_cpu_ms']:.1f} ms/epoch, "
          f"{out['eval_cpu_ms']:.1f} ms/evaluation)", flush=True)
    return out


# ----------------------------------------------------------------------------- NRC computation alone
def bench_metrics(size: Size, repeats: int) -> dict[str, Any]:
    """The NRC computation alone on the same features (the reference model's, after 2 epochs)."""
    import torch_reference
    from nrc_jax import metrics

    run = reference_run(size)
    for _ in range(2):
        run.train_epoch()
    h, pred, y = torch_reference.gather(run.model, run.train_loader, torch_reference.MAX_EVAL_BATCHES)
    w = run.model.head.weight.detach().numpy()
    ref_fn = lambda: torch_reference.nrc_from_features(h, w, run.sigma_sqrt, run.lambda_min)  # noqa: E731
    ref_time = median_time(ref_fn, repeats)

    hj, yj, pj, wj = (jnp.asarray(a) for a in (h, y, pred, w))
    sigma = jnp.asarray(np.cov(y, rowvar=False, bias=True), jnp.float32)
    basis0 = metrics.pca_basis_init(h.shape[1], size.out_dim)
    # sigma is an argument, not a closed-over constant: metrics' finiteness check of a concrete
    # array would run jnp ops on it under the trace.
    stats_fn = jax.jit(metrics.feature_stats)
    full_fn = jax.jit(lambda h, y, p, w, s: metrics.metrics_from_stats(metrics.feature_stats(h, y, p), w, sigma=s))
    warm_fn = jax.jit(lambda h, y, p, w, s, b: metrics.metrics_from_stats(
        metrics.feature_stats(h, y, p), w, sigma=s, pca_init=b))
    features_warm = jax.jit(lambda h, y, p, w, s, b: metrics.metrics_from_features(h, y, p, w, sigma=s, pca_init=b))
    from_stats_eigh = jax.jit(lambda st, w, s: metrics.metrics_from_stats(st, w, sigma=s))
    from_stats_warm = jax.jit(lambda st, w, s, b: metrics.metrics_from_stats(st, w, sigma=s, pca_init=b))
    eigh_fn = jax.jit(jnp.linalg.eigh)
    stats = stats_fn(hj, yj, pj)
    cov = stats.sum_hh / stats.count
    basis = warm_fn(hj, yj, pj, wj, sigma, basis0)["pca_basis"]  # warm start, as in training
    cases = {
        "jnp.linalg.eigh (256x256)": lambda: eigh_fn(cov),
        "feature_stats": lambda: stats_fn(hj, yj, pj),
        "metrics_from_stats (eigh)": lambda: from_stats_eigh(stats, wj, sigma),
        "metrics_from_stats (warm subspace, 10 its)": lambda: from_stats_warm(stats, wj, sigma, basis),
        "stats + metrics (eigh)": lambda: full_fn(hj, yj, pj, wj, sigma),
        "stats + metrics (warm subspace)": lambda: warm_fn(hj, yj, pj, wj, sigma, basis),
        "metrics_from_features (warm subspace; the trainer's path)": lambda: features_warm(hj, yj, pj, wj, sigma,
                                                                                            basis),
    }
    rows = {}
    for name, fn in cases.items():
        compile_s = timed(fn)[0]
        wall, cpu = median_time(fn, repeats * 3)
        rows[name] = {"ms": wall * 1e3, "cpu_ms": cpu * 1e3, "compile_s": compile_s}
    keys = ("nrc1", "nrc2", "nrc3", "nrc3_gamma")
    out = {"reference_ms": ref_time[0] * 1e3, "reference_cpu_ms": ref_time[1] * 1e3, "cases": rows,
           "reference_values": {k: ref_fn()[k] for k in keys},
           "nrc_jax_values": {k: float(v) for k, v in full_fn(hj, yj, pj, wj, sigma).items() if k in keys},
           "nrc_jax_warm_values": {k: float(v) for k, v in features_warm(hj, yj, pj, wj, sigma, basis).items()
                                   if k in keys}}
    print(f"[metrics] {size.name}: reference {out['reference_ms']:.1f} ms; "
          + "; ".join(f"{k} {v['ms']:.3f} ms" for k, v in rows.items()), flush=True)
    print(f"[metrics] {size.name}: reference {out['reference_values']}\n          nrc_jax {out['nrc_jax_values']}"
          f"\n          warm {out['nrc_jax_warm_values']}", flush=True)
    return out


# ----------------------------------------------------------------------------- nrc_jax engine
def mlp_config(overrides: dict[str, Any] | None = None):
    """configs/mlp.py's default config with dotted-name `overrides` ({"metrics.pca_iters": 10})."""
    spec = importlib.util.spec_from_file_location("bench_mlp_config", os.path.join(ROOT, "configs", "mlp.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update_from_flattened_dict(overrides or {})
    return config


@dataclasses.dataclass
class Engine:
    """An nrc_jax Trainer on one device with K members and the data set on the device."""
    trainer: Any
    data: Any
    state: Any
    num_members: int

    def chunk(self, epochs: int):
        """One compiled call, as the driver makes it: `epochs` epochs, an evaluation, metrics to the host."""
        self.state, out = self.trainer.train_chunk(self.state, self.data, jnp.asarray(epochs, jnp.int32))
        return jax.device_get(out)

    def evaluate(self):
        return self.trainer.evaluate(self.state, self.data)


def make_engine(size: Size, num_members: int = 1, overrides: dict[str, Any] | None = None) -> Engine:
    import torch_reference  # for its random data: the reference trains on the same arrays
    from nrc_jax import train, writers
    from nrc_jax.data import RegressionData

    config = mlp_config({"train.eval_every": EVAL_EVERY, **(overrides or {})})
    if num_members > 1:
        config.sweep.seed = tuple(range(num_members))
    data = RegressionData(size.name, *torch_reference.random_regression_data(size.train, size.in_dim, size.out_dim))
    mesh = train.make_mesh(-1)  # one CPU device unless XLA_FLAGS forces more (an env variant)
    trainer = train.Trainer(config, mesh, data.input_shape, data.target_dim)
    device_data = train.put_data(data, mesh, config.train.eval_chunk)
    return Engine(trainer, device_data, trainer.create_state(writers.sweep_members(config)), num_members)


def marginal_epoch(engine: Engine, short: int, long: int, repeats: int) -> dict[str, float]:
    """Per-epoch (wall, cpu) of `train_chunk` as (median t(long) - median t(short)) / (long - short).

    Evaluation, dispatch and the host fetch are the same in both lengths and cancel.
    """
    first = timed(lambda: engine.chunk(short))[0]
    t_short, t_long = [], []
    for _ in range(repeats):  # interleaved, so drifts of the machine's load hit both lengths alike
        t_short.append(timed(lambda: engine.chunk(short)))
        t_long.append(timed(lambda: engine.chunk(long)))
    (short_wall, short_cpu), (long_wall, long_cpu) = medians(t_short), medians(t_long)
    return {"epoch_s": (long_wall - short_wall) / (long - short), "epoch_cpu_s": (long_cpu - short_cpu) / (long - short),
            "compile_s": first - short_wall}


def bench_engine(size: Size, repeats: int, epochs: tuple[int, int], overrides: dict[str, Any] | None = None,
                 label: str = "nrc_jax") -> dict[str, float]:
    """nrc_jax ms/epoch (marginal), ms/evaluation and end-to-end epochs/s with evaluation every 10 epochs."""
    engine = make_engine(size, 1, overrides)
    row = marginal_epoch(engine, *epochs, repeats)
    eval_first = timed(engine.evaluate)[0]
    evaluation = median_time(engine.evaluate, repeats)
    blocks = median_time(lambda: engine.chunk(EVAL_EVERY), repeats, warmup=0)
    out = {"epoch_ms": row["epoch_s"] * 1e3, "epoch_cpu_ms": row["epoch_cpu_s"] * 1e3,
           "eval_ms": evaluation[0] * 1e3, "eval_cpu_ms": evaluation[1] * 1e3,
           "e2e_epochs_per_s": EVAL_EVERY / blocks[0], "e2e_epochs_per_cpu_s": EVAL_EVERY / blocks[1],
           "compile_s": row["compile_s"], "eval_compile_s": eval_first - evaluation[0]}
    print(f"[{label}] {size.name}: {out['epoch_ms']:.2f} ms/epoch, {out['eval_ms']:.2f} ms/evaluation, "
          f"{out['e2e_epochs_per_s']:.1f} epochs/s end to end (CPU: {out['epoch_cpu_ms']:.2f} ms/epoch, "
          f"{out['eval_cpu_ms']:.2f} ms/evaluation; compile {out['compile_s']:.1f} s + {out['eval_compile_s']:.1f} s)",
          flush=True)
    return out


def bench_sweep(size: Size, ks: tuple[int, ...], repeats: int, epochs: tuple[int, int],
                overrides: dict[str, Any] | None = None) -> dict[int, dict[str, float]]:
    """Model-epochs/s of K members trained in one vmapped program (marginal time per epoch)."""
    rows = {}
    for k in ks:
        row = marginal_epoch(make_engine(size, k, overrides), *epochs, repeats)
        rows[k] = {"model_epochs_per_s": k / row["epoch_s"], "model_epochs_per_cpu_s": k / row["epoch_cpu_s"],
                   "epoch_ms": row["epoch_s"] * 1e3, "compile_s": row["compile_s"]}
        print(f"[sweep] {size.name} K={k}: {rows[k]['model_epochs_per_s']:.1f} model-epochs/s "
              f"({rows[k]['epoch_ms']:.2f} ms per epoch of all K; "
              f"{rows[k]['model_epochs_per_cpu_s']:.1f} per CPU-second)", flush=True)
    return rows


# ----------------------------------------------------------------------------- the CLI check
def write_npz(size: Size, directory: str) -> str:
    import torch_reference
    path = os.path.join(directory, f"{size.name}_like.npz")
    x_train, y_train, x_test, y_test = torch_reference.random_regression_data(size.train, size.in_dim, size.out_dim)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def nrc_jax_command(npz: str, epochs: int, workdir: str) -> list[str]:
    return [sys.executable, "-m", "nrc_jax.main", "--config=configs/mlp.py", f"--workdir={workdir}",
            "--config.data.name=npz", f"--config.data.path={npz}", f"--config.train.epochs={epochs}",
            f"--config.train.eval_every={EVAL_EVERY}", "--config.train.progress_bar=False"]


def reference_command(npz: str, epochs: int) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "benchmarks", "torch_reference.py"), f"--npz={npz}",
            f"--epochs={epochs}", f"--eval-every={EVAL_EVERY}"]


def process_seconds(command: list[str]) -> float:
    """Wall seconds of a whole process (start-up, compilation, training, evaluation, writing)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def bench_cli(size: Size, nrc_epochs: tuple[int, int], reference_epochs: tuple[int, int], repeats: int
              ) -> dict[str, Any]:
    """Marginal seconds per epoch of whole runs: (T(long) - T(short)) / (long - short), medians."""
    with tempfile.TemporaryDirectory(prefix="nrc_bench_") as tmp:
        npz = write_npz(size, tmp)
        times: dict[str, dict[int, list[float]]] = {"nrc_jax": {}, "reference": {}}
        for r in range(repeats):
            for epochs in nrc_epochs:
                workdir = os.path.join(tmp, f"run_{epochs}_{r}")
                times["nrc_jax"].setdefault(epochs, []).append(process_seconds(nrc_jax_command(npz, epochs, workdir)))
            for epochs in reference_epochs:
                times["reference"].setdefault(epochs, []).append(process_seconds(reference_command(npz, epochs)))
    out = {}
    for name, lengths in (("nrc_jax", nrc_epochs), ("reference", reference_epochs)):
        t = {e: statistics.median(times[name][e]) for e in lengths}
        short, long = lengths
        out[name] = {"epoch_ms": (t[long] - t[short]) / (long - short) * 1e3,
                     "seconds": {str(e): t[e] for e in lengths}}
    out["command"] = " ".join(nrc_jax_command("DATA.npz", nrc_epochs[1], "WORKDIR")[1:])
    out["reference_command"] = " ".join(reference_command("DATA.npz", reference_epochs[1])[1:])
    out["speedup"] = out["reference"]["epoch_ms"] / out["nrc_jax"]["epoch_ms"]
    print(f"[cli] {size.name}: nrc_jax.main {out['nrc_jax']['epoch_ms']:.2f} ms/epoch marginal "
          f"({out['nrc_jax']['seconds']}), reference {out['reference']['epoch_ms']:.1f} ms/epoch "
          f"({out['reference']['seconds']}): {out['speedup']:.1f}x", flush=True)
    return out


# ----------------------------------------------------------------------------- variants (threads)
def bench_in_subprocess(extra_env: dict[str, str], args: list[str]) -> dict[str, Any]:
    """Runs this script in a fresh process (XLA reads its flags at start-up) and returns its JSON."""
    with tempfile.TemporaryDirectory(prefix="nrc_bench_") as tmp:
        out = os.path.join(tmp, "out.json")
        env = {**os.environ, **extra_env}
        subprocess.run([sys.executable, os.path.abspath(__file__), *args, f"--json={out}", "--out="],
                       cwd=ROOT, env=env, check=True)
        with open(out) as f:
            return json.load(f)


# ----------------------------------------------------------------------------- report
BEGIN, END = "<!-- bench.py:begin -->", "<!-- bench.py:end -->"


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def render(results: dict[str, Any]) -> str:
    """The generated part of results/bench.md."""
    lines = [BEGIN, "", f"Generated by `{results['command']}` at {results['date']}.", ""]
    lines += ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in results["machine"].items()] + [""]
    peak = results.get("peak")
    if peak:
        lines += ["### (c) f32 matmul peak (jitted `jnp.dot`, same JAX)", "",
                  "| N | GFLOP/s (wall) | GFLOP per CPU-second | ms |", "|---|---|---|---|"]
        lines += [f"| {n} | {fmt(r['gflops'])} | {fmt(r['gflops_per_cpu_s'])} | {fmt(r['ms'], 2)} |"
                  for n, r in peak["by_size"].items()]
        lines += ["", f"Peak used below: **{fmt(peak['peak_gflops'])} GFLOP/s**.", ""]
    sizes = results["sizes"]
    ref, eng = results.get("reference", {}), results.get("nrc_jax", {})
    if ref and eng and peak:
        lines += ["### Targets of issue 7 (default config; wall-clock medians)", "",
                  "| size | end to end vs reference (>= 5x) | training % of matmul peak (>= 60%) | "
                  "full evaluation vs reference (>= 50x) |", "|---|---|---|---|"]
        for name in sizes:
            if name in ref and name in eng:
                size, e, r = SIZES[name], eng[name], ref[name]
                e2e = e["e2e_epochs_per_s"] / r["e2e_epochs_per_s"]
                pct = 100 * training_gflops(size, e["epoch_ms"]) / peak["peak_gflops"]
                ev = r["eval_ms"] / e["eval_ms"]
                mark = lambda ok: "met" if ok else "**not met**"  # noqa: E731
                lines.append(f"| {name} | {e2e:.1f}x ({mark(e2e >= 5)}) | {pct:.0f}% ({mark(pct >= 60)}) | "
                             f"{ev:.0f}x ({mark(ev >= 50)}) |")
        lines.append("")
    if ref and eng:
        lines += ["### (a) training, ms per epoch (nrc_jax: marginal time per epoch of one compiled chunk)", "",
                  "| size | nrc_jax ms/epoch | reference ms/epoch | speed-up | nrc_jax GFLOP/s | % of matmul peak "
                  "| CPU ms/epoch nrc_jax / reference | compile s |", "|---|---|---|---|---|---|---|---|"]
        for name in sizes:
            if name in ref and name in eng:
                size, e, r = SIZES[name], eng[name], ref[name]
                gflops = training_gflops(size, e["epoch_ms"])
                pct = f"{100 * gflops / peak['peak_gflops']:.0f}%" if peak else "-"
                lines.append(f"| {name} ({size.train} x {size.in_dim} -> {size.out_dim}) | {fmt(e['epoch_ms'], 2)} | "
                             f"{fmt(r['epoch_ms'])} | **{r['epoch_ms'] / e['epoch_ms']:.1f}x** | {fmt(gflops)} | {pct} | "
                             f"{fmt(e['epoch_cpu_ms'], 2)} / {fmt(r['epoch_cpu_ms'])} | {e['compile_s']:.1f} |")
        flops = {n: train_flops_per_sample(SIZES[n].in_dim, SIZES[n].out_dim) for n in sizes}
        lines += ["", "FLOPs counted from the model: forward = 2 * sum(fan_in * fan_out) over the four dense layers, "
                  "training = 3 x forward per sample (biases, ReLU, loss and the update ignored): "
                  + ", ".join(f"{n} {flops[n] / 1e6:.3f} MFLOP/sample" for n in sizes) + ".", ""]
        lines += ["### (b) full NRC evaluation (forward over train + test, every metric)", "",
                  "| size | nrc_jax ms | reference ms | speed-up | nrc_jax evals/s | reference evals/s "
                  "| floor at the matmul peak (ms) | largest possible speed-up |", "|---|---|---|---|---|---|---|---|"]
        for name in sizes:
            if name in ref and name in eng:
                e, r = eng[name], ref[name]
                floor = f"{eval_flops(SIZES[name]) / (peak['peak_gflops'] * 1e6):.2f}" if peak else "-"
                bound = f"{r['eval_ms'] / float(floor):.0f}x" if peak else "-"
                lines.append(f"| {name} | {fmt(e['eval_ms'], 2)} | {fmt(r['eval_ms'])} | **{r['eval_ms'] / e['eval_ms']:.0f}x** | "
                             f"{fmt(1e3 / e['eval_ms'])} | {fmt(1e3 / r['eval_ms'], 2)} | {floor} | {bound} |")
        lines += ["", "The floor is `eval_flops`: the forward pass over train + test rows plus the one d x d product "
                  "of the features, at the matmul peak above; the reference's evaluation does the same forward "
                  "pass, so no implementation on this machine can beat the last column."]
        lines += ["", "### (e) end to end, evaluation every 10 epochs (target >= 5x)", "",
                  "| size | nrc_jax epochs/s | reference epochs/s | speed-up |", "|---|---|---|---|"]
        for name in sizes:
            if name in ref and name in eng:
                e, r = eng[name], ref[name]
                lines.append(f"| {name} | {fmt(e['e2e_epochs_per_s'])} | {fmt(r['e2e_epochs_per_s'])} | "
                             f"**{e['e2e_epochs_per_s'] / r['e2e_epochs_per_s']:.1f}x** |")
        lines.append("")
    for label, rows in results.get("variants", {}).items():
        lines += [f"### config variant: {label}", "",
                  "| size | ms/epoch | ms/evaluation | epochs/s end to end | e2e vs default config | "
                  "evaluation vs reference | e2e vs reference |", "|---|---|---|---|---|---|---|"]
        for n, v in rows.items():
            vs_default = f"{v['e2e_epochs_per_s'] / eng[n]['e2e_epochs_per_s']:.2f}x" if n in eng else "-"
            vs_ref = (f"{ref[n]['eval_ms'] / v['eval_ms']:.0f}x | {v['e2e_epochs_per_s'] / ref[n]['e2e_epochs_per_s']:.1f}x"
                      if n in ref else "- | -")
            lines.append(f"| {n} | {fmt(v['epoch_ms'], 2)} | {fmt(v['eval_ms'], 2)} | {fmt(v['e2e_epochs_per_s'])} | "
                         f"{vs_default} | {vs_ref} |")
        lines.append("")
    if results.get("metrics"):
        lines += ["### NRC computation alone, same features (M x 256 float32)", "",
                  "| size | case | ms | CPU ms | compile s |", "|---|---|---|---|---|"]
        for name, m in results["metrics"].items():
            lines.append(f"| {name} | reference: sklearn PCA + Gram-Schmidt + gamma loop | {fmt(m['reference_ms'], 2)} | "
                         f"{fmt(m['reference_cpu_ms'], 2)} | - |")
            lines += [f"| {name} | nrc_jax {case} | {fmt(v['ms'], 3)} | {fmt(v['cpu_ms'], 3)} | {v['compile_s']:.1f} |"
                      for case, v in m["cases"].items()]
        lines += [""] + [f"- {name}: reference {m['reference_values']}; nrc_jax (eigh) {m['nrc_jax_values']}; "
                         f"nrc_jax (warm subspace, metrics_from_features) {m['nrc_jax_warm_values']}" for name, m in results["metrics"].items()]
        lines.append("")
    if results.get("sweep"):
        lines += ["### (d) sweep throughput: K models in one vmapped program", "",
                  "| size | K | ms per epoch (all K) | model-epochs/s | vs K=1 |", "|---|---|---|---|---|"]
        for name, rows in results["sweep"].items():
            base = rows[min(rows, key=int)]["model_epochs_per_s"]
            lines += [f"| {name} | {k} | {fmt(v['epoch_ms'], 2)} | {fmt(v['model_epochs_per_s'])} | "
                      f"{v['model_epochs_per_s'] / base:.2f}x |" for k, v in rows.items()]
        lines.append("")
    if results.get("env"):
        lines += ["### Process settings (each in a fresh process; compare with the tables above)", "",
                  "| setting | size | nrc_jax ms/epoch | nrc_jax ms/evaluation | nrc_jax epochs/s e2e | reference ms/epoch "
                  "| reference ms/evaluation | matmul peak GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
        for label, sub in results["env"].items():
            for name, e in sub.get("nrc_jax", {}).items():
                r = sub["reference"][name]
                lines.append(f"| {label} | {name} | {fmt(e['epoch_ms'], 2)} | {fmt(e['eval_ms'], 2)} | "
                             f"{fmt(e['e2e_epochs_per_s'])} | {fmt(r['epoch_ms'])} | {fmt(r['eval_ms'])} | "
                             f"{fmt(sub['peak']['peak_gflops']) if sub.get('peak') else '-'} |")
        lines.append("")
    if results.get("cli"):
        lines += ["### The issue's check: whole processes, marginal time per epoch", "",
                  "| size | `nrc_jax.main` ms/epoch | reference script ms/epoch | speed-up | run seconds (nrc_jax; reference) |",
                  "|---|---|---|---|---|"]
        for name, c in results["cli"].items():
            lines.append(f"| {name} | {fmt(c['nrc_jax']['epoch_ms'], 2)} | {fmt(c['reference']['epoch_ms'])} | "
                         f"**{c['speedup']:.1f}x** | {c['nrc_jax']['seconds']}; {c['reference']['seconds']} |")
        c = next(iter(results["cli"].values()))
        lines += ["", f"Commands: `python {c['command']}` and `python {c['reference_command']}` "
                  "(each at two lengths, fresh workdir per run, medians)", ""]
    lines.append(END)
    return "\n".join(lines)


def write_report(path: str, generated: str) -> None:
    """Replaces the generated block of `path` (between the markers), keeping the hand-written text."""
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + generated + text[text.index(END) + len(END):]
    else:
        text = (text or "# Benchmarks (issue 7)\n\n") + "\n" + generated + "\n"
    with open(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- main
@dataclasses.dataclass(frozen=True)
class Plan:
    repeats: int
    reference_blocks: int
    engine_epochs: dict[str, tuple[int, int]]
    sweep_epochs: dict[str, tuple[int, int]]
    cli_nrc_epochs: dict[str, tuple[int, int]]
    cli_reference_epochs: dict[str, tuple[int, int]]
    cli_repeats: int


FULL = Plan(repeats=5, reference_blocks=3,
            engine_epochs={"swimmer": (10, 60), "hopper": (2, 12)},
            sweep_epochs={"swimmer": (5, 25), "hopper": (1, 4)},
            # whole processes start in 8-16 s with +-1 s of jitter: the runs differ by >= 20 s of training
            cli_nrc_epochs={"swimmer": (100, 2100), "hopper": (10, 410)},
            cli_reference_epochs={"swimmer": (10, 410), "hopper": (10, 70)}, cli_repeats=3)
QUICK = Plan(repeats=3, reference_blocks=1,
             engine_epochs={"swimmer": (5, 25), "hopper": (1, 4)},
             sweep_epochs={"swimmer": (2, 8), "hopper": (1, 2)},
             cli_nrc_epochs={"swimmer": (20, 220), "hopper": (10, 30)},
             cli_reference_epochs={"swimmer": (10, 30), "hopper": (10, 20)}, cli_repeats=1)
# Candidate changes that a config can express, measured in this process: label -> size -> overrides.
VARIANTS: dict[str, Callable[[Size], dict[str, Any]]] = {
    "metrics.pca_iters=0 (a full 256 x 256 eigh per evaluation instead of the default warm-started "
    "subspace iteration)": lambda size: {"metrics.pca_iters": 0},
}
# Candidate process settings (read at start-up, so measured in fresh processes): label -> env.
ENV_VARIANTS: dict[str, dict[str, str]] = {
    "XLA single thread": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
    "OPENBLAS_NUM_THREADS=1 (LAPACK eigh/svd of jax and numpy)": {"OPENBLAS_NUM_THREADS": "1"},
    "2 host devices, data-parallel mesh (128 rows per device per step)":
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and epochs (iteration, not reports)")
    parser.add_argument("--sizes", default="swimmer,hopper", help="comma-separated subset of swimmer,hopper")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} plus 'variants' (config candidates), 'env' (process-setting candidates)")
    parser.add_argument("--sweep-ks", default="1,4,8")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench.md"), help="report path; '' = none")
    parser.add_argument("--json", default="", help="also write the raw numbers here")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads for the reference (0: torch's default, as published)")
    parser.add_argument("--merge", action="store_true",
                        help="start from the numbers already in --json (rerun only some sections, report all)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)
    sizes = [s for s in args.sizes.split(",") if s]
    sections = set(args.sections.split(","))
    unknown = [s for s in sizes if s not in SIZES] + [s for s in sections if s not in (*SECTIONS, "variants", "env")]
    if unknown:
        parser.error(f"unknown sizes/sections {unknown}")
    results: dict[str, Any] = {
        "command": "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_description(),
        "sizes": sizes}
    if args.merge and args.json and os.path.exists(args.json):
        with open(args.json) as f:
            previous = json.load(f)
        results = {**previous, **{k: v for k, v in results.items() if k not in ("sizes", "command")},
                   "command": previous["command"] + " ; " + results["command"],
                   "sizes": list(dict.fromkeys(previous["sizes"] + sizes))}
    print(json.dumps(results["machine"]), flush=True)

    def put(section: str, value: dict) -> None:
        """Stores a section's numbers, keeping those of sizes/labels not rerun in a merged run."""
        results[section] = {**results.get(section, {}), **value}

    if "peak" in sections:
        results["peak"] = matmul_peak(repeats=plan.repeats + 2)
    if "metrics" in sections:
        put("metrics", {n: bench_metrics(SIZES[n], plan.repeats) for n in sizes})
    if sections & {"train", "eval", "e2e"}:
        put("reference", {n: bench_reference(SIZES[n], plan.repeats, plan.reference_blocks) for n in sizes})
        put("nrc_jax", {n: bench_engine(SIZES[n], plan.repeats, plan.engine_epochs[n]) for n in sizes})
    if "variants" in sections:
        put("variants", {label: {n: bench_engine(SIZES[n], plan.repeats, plan.engine_epochs[n], overrides(SIZES[n]),
                                                 label[:40]) for n in sizes}
                         for label, overrides in VARIANTS.items()})
    if "sweep" in sections:
        ks = tuple(int(k) for k in args.sweep_ks.split(","))
        put("sweep", {n: bench_sweep(SIZES[n], ks, plan.repeats, plan.sweep_epochs[n]) for n in sizes})
    if "env" in sections:
        sub_args = ["--sections=peak,train", f"--sizes={args.sizes}"] + (["--quick"] if args.quick else [])
        put("env", {label: bench_in_subprocess(env, sub_args) for label, env in ENV_VARIANTS.items()})
    if "cli" in sections:
        put("cli", {n: bench_cli(SIZES[n], plan.cli_nrc_epochs[n], plan.cli_reference_epochs[n], plan.cli_repeats)
                    for n in sizes})
    results["machine"]["load average at end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if args.out:
        write_report(args.out, render(results))
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
