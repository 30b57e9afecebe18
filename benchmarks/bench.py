"""Benchmarks (issues 7 and 19): nrc_jax against two PyTorch loops on this machine, in one run.

    .venv/bin/python benchmarks/bench.py [--quick | --dry] [--out results/bench.md] [--sections ...]

The two references: "published" (`torch_reference.py`, the paper's DataLoader loop, sklearn PCA,
Gram-Schmidt, a Python gamma loop) and "competent" (`torch_competent.py`, the data set as tensors,
index batches, torch eigh, the gamma grid at once). The ceiling: the matmul-peak bound, the model's
matmul FLOPs at the measured peak rate. Every ratio in the report names its reference.

Sections (each prints its raw numbers; the markdown report collects them):
  peak     f32 matmul rate of this machine with the same JAX (jitted jnp.dot, square matrices).
  metrics  the NRC computation alone on the same features: nrc_jax.core.metrics vs the published
           reference's sklearn PCA + Gram-Schmidt + gamma loop and the competent one's torch eigh.
  train    ms/epoch of training: marginal time per epoch of nrc_jax's compiled `train_chunk`
           (difference of two chunk lengths, so evaluation and dispatch cancel) vs both reference
           loops; fraction of the matmul peak reached.
  eval     full NRC evaluations per second (forward over train and test sets + every metric).
  e2e      end-to-end epochs/s with an evaluation every 10 epochs.
  sweep    K = 1, 4, 8 models trained in one vmapped program, model-epochs/s.
  cli      whole processes: marginal time per epoch of `python -m nrc_jax.main
           --config=configs/mlp.py` (two run lengths) vs both reference scripts, on a temp .npz.

`--dry` runs every section at a tiny size in about a minute (a test of the script, not a report:
nothing is written unless --out is given).

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


SIZES = {"swimmer": Size("swimmer", 1000, 8, 2), "hopper": Size("hopper", 10000, 11, 3),
         "tiny": Size("tiny", 300, 4, 2)}  # tiny: --dry only
REFERENCES = {"published": "torch_reference", "competent": "torch_competent"}  # label -> module in benchmarks/
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


def train_floor_ms(size: Size, peak_gflops: float) -> float:
    """ms per epoch of the training matmuls at the matmul peak (`train_flops_per_sample`)."""
    return size.train * train_flops_per_sample(size.in_dim, size.out_dim) / (peak_gflops * 1e6)


def eval_floor_ms(size: Size, peak_gflops: float) -> float:
    """ms per evaluation of `eval_flops` at the matmul peak."""
    return eval_flops(size) / (peak_gflops * 1e6)


def e2e_ceiling(size: Size, peak_gflops: float) -> float:
    """Epochs/s end to end (evaluation every EVAL_EVERY epochs) with every matmul at the peak."""
    return EVAL_EVERY / ((EVAL_EVERY * train_floor_ms(size, peak_gflops) + eval_floor_ms(size, peak_gflops)) * 1e-3)


# ----------------------------------------------------------------------------- the references
def reference_run(size: Size, seed: int = 0, loop: str = "published"):
    """A run of the reference `loop` (a key of REFERENCES) on random data of `size`."""
    import torch_reference
    module = importlib.import_module(REFERENCES[loop])
    return module.make_run(*torch_reference.random_regression_data(size.train, size.in_dim, size.out_dim, seed))


def bench_reference(size: Size, repeats: int, e2e_blocks: int, loop: str = "published",
                    threads: tuple[int, ...] = ()) -> dict[str, Any]:
    """The reference at its best torch thread count among `threads` (() = the current setting):
    the row of `reference_at` with the most end-to-end epochs/s, plus `by_threads`."""
    import torch

    before = torch.get_num_threads()
    rows = {}
    for t in threads or (before,):
        torch.set_num_threads(t)
        rows[t] = reference_at(size, repeats, e2e_blocks, loop)
    torch.set_num_threads(before)
    best = max(rows, key=lambda t: rows[t]["e2e_epochs_per_s"])
    return {**rows[best], "torch_threads": best,
            "by_threads": {str(t): {k: r[k] for k in ("epoch_ms", "eval_ms", "e2e_epochs_per_s")} for t, r in rows.items()}}


def reference_at(size: Size, repeats: int, e2e_blocks: int, loop: str) -> dict[str, float]:
    """Reference ms/epoch, ms/evaluation and end-to-end epochs/s (evaluation every 10 epochs)."""
    import torch

    run = reference_run(size, loop=loop)
    epoch = median_time(run.train_epoch, repeats)
    evaluation = median_time(run.evaluate, repeats)
    blocks = median_time(lambda: run.run(EVAL_EVERY, EVAL_EVERY), e2e_blocks, warmup=0)
    out = {"epoch_ms": epoch[0] * 1e3, "epoch_cpu_ms": epoch[1] * 1e3,
           "eval_ms": evaluation[0] * 1e3, "eval_cpu_ms": evaluation[1] * 1e3,
           "e2e_epochs_per_s": EVAL_EVERY / blocks[0], "e2e_epochs_per_cpu_s": EVAL_EVERY / blocks[1]}
    print(f"[{loop} reference, {torch.get_num_threads()} torch threads] {size.name}: {out['epoch_ms']:.1f} ms/epoch, {out['eval_ms']:.1f} ms/evaluation, "
          f"{out['e2e_epochs_per_s']:.1f} epochs/s end to end (CPU: {out['epoch_cpu_ms']:.1f} ms/epoch, "
          f"{out['eval_cpu_ms']:.1f} ms/evaluation)", flush=True)
    return out


# ----------------------------------------------------------------------------- NRC computation alone
def bench_metrics(size: Size, repeats: int) -> dict[str, Any]:
    """The NRC computation alone on the same features (the reference model's, after 2 epochs)."""
    import torch
    import torch_competent
    import torch_reference
    from nrc_jax.core import metrics

    run = reference_run(size)
    for _ in range(2):
        run.train_epoch()
    h, pred, y = torch_reference.gather(run.model, run.train_loader, torch_reference.MAX_EVAL_BATCHES)
    w = run.model.head.weight.detach().numpy()
    ref_fn = lambda: torch_reference.nrc_from_features(h, w, run.sigma_sqrt, run.lambda_min)  # noqa: E731
    ref_time = median_time(ref_fn, repeats)
    h_torch, w_torch = torch.as_tensor(h), run.model.head.weight.detach()
    competent_fn = lambda: torch_competent.nrc_from_features(h_torch, w_torch, run.sigma_sqrt, run.lambda_min)  # noqa: E731
    competent_time = median_time(competent_fn, repeats)

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
           "competent_ms": competent_time[0] * 1e3, "competent_cpu_ms": competent_time[1] * 1e3,
           "competent_values": {k: competent_fn()[k] for k in keys},
           "reference_values": {k: ref_fn()[k] for k in keys},
           "nrc_jax_values": {k: float(v) for k, v in full_fn(hj, yj, pj, wj, sigma).items() if k in keys},
           "nrc_jax_warm_values": {k: float(v) for k, v in features_warm(hj, yj, pj, wj, sigma, basis).items()
                                   if k in keys}}
    print(f"[metrics] {size.name}: published reference {out['reference_ms']:.1f} ms; competent "
          f"{out['competent_ms']:.2f} ms; "
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
    from nrc_jax.data import RegressionData
    from nrc_jax.engine import learner, memory, sweeps

    config = mlp_config({"train.eval_every": EVAL_EVERY, **(overrides or {})})
    if num_members > 1:
        config.sweep.seed = tuple(range(num_members))
    data = RegressionData(size.name, *torch_reference.random_regression_data(size.train, size.in_dim, size.out_dim))
    mesh = learner.make_mesh(-1)  # one CPU device unless XLA_FLAGS forces more (an env variant)
    trainer = memory.Trainer(config, mesh, data.input_shape, data.target_dim)
    device_data = memory.put_data(data, mesh, config.train.eval_chunk)
    return Engine(trainer, device_data, trainer.create_state(sweeps.sweep_members(config)), num_members)


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


def reference_command(npz: str, epochs: int, loop: str = "published") -> list[str]:
    return [sys.executable, os.path.join(ROOT, "benchmarks", f"{REFERENCES[loop]}.py"), f"--npz={npz}",
            f"--epochs={epochs}", f"--eval-every={EVAL_EVERY}"]


def process_seconds(command: list[str]) -> float:
    """Wall seconds of a whole process (start-up, compilation, training, evaluation, writing)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def bench_cli(size: Size, epochs: dict[str, tuple[int, int]], repeats: int) -> dict[str, Any]:
    """Marginal seconds per epoch of whole runs: (T(long) - T(short)) / (long - short), medians.

    `epochs`: the two run lengths of "nrc_jax" and of each reference loop ("published", "competent").
    """
    commands: dict[str, Callable[[str, int, str], list[str]]] = {
        "nrc_jax": lambda npz, e, workdir: nrc_jax_command(npz, e, workdir),
        **{loop: (lambda npz, e, workdir, loop=loop: reference_command(npz, e, loop)) for loop in REFERENCES}}
    with tempfile.TemporaryDirectory(prefix="nrc_bench_") as tmp:
        npz = write_npz(size, tmp)
        times: dict[str, dict[int, list[float]]] = {name: {} for name in commands}
        for r in range(repeats):  # interleaved, so drifts of the machine's load hit every program alike
            for name, command in commands.items():
                for e in epochs[name]:
                    workdir = os.path.join(tmp, f"{name}_{e}_{r}")
                    times[name].setdefault(e, []).append(process_seconds(command(npz, e, workdir)))
    out: dict[str, Any] = {}
    for name in commands:
        t = {e: statistics.median(times[name][e]) for e in epochs[name]}
        short, long = epochs[name]
        out[name] = {"epoch_ms": (t[long] - t[short]) / (long - short) * 1e3, "seconds": {str(e): t[e] for e in t},
                     "command": " ".join(commands[name]("DATA.npz", long, "WORKDIR")[1:]).replace(ROOT + os.sep, "")}
    out["speedup"] = {loop: out[loop]["epoch_ms"] / out["nrc_jax"]["epoch_ms"] for loop in REFERENCES}
    print(f"[cli] {size.name}: nrc_jax.main {out['nrc_jax']['epoch_ms']:.2f} ms/epoch marginal; "
          + "; ".join(f"{loop} reference {out[loop]['epoch_ms']:.1f} ms/epoch ({out['speedup'][loop]:.1f}x)"
                      for loop in REFERENCES), flush=True)
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


def _threads(row: dict[str, Any]) -> str:
    """'1 thread (1: 96.8, 2: 8.4 epochs/s)': the thread count used and each one's end-to-end rate."""
    rates = ", ".join(f"{t}: {r['e2e_epochs_per_s']:.1f}" for t, r in row.get("by_threads", {}).items())
    return f"{row.get('torch_threads', '?')} thread(s) ({rates} epochs/s)"


def _ratio(num: float, den: float, digits: int = 1) -> str:
    return f"{num / den:.{digits}f}x"


def render_headlines(results: dict[str, Any], sizes: list[str], eng: dict, refs: dict[str, dict],
                     peak_gflops: float | None) -> list[str]:
    """The headline table: end to end against each reference and against the matmul-peak bound."""
    rows = [n for n in sizes if n in eng and all(n in r for r in refs.values())]
    if not rows:
        return []
    lines = ["### Headlines (default config, evaluation every 10 epochs, wall-clock medians)", "",
             "| size | end to end vs the published loop (issue 7: >= 5x) | end to end vs the competent loop "
             "| end to end: time over the matmul-peak bound (issue 19: <= 1.4x) | training: % of the matmul peak |",
             "|---|---|---|---|---|"]
    for n in rows:
        e = eng[n]
        vs = {loop: _ratio(e["e2e_epochs_per_s"], refs[loop][n]["e2e_epochs_per_s"]) for loop in refs}
        if peak_gflops:
            bound = e2e_ceiling(SIZES[n], peak_gflops) / e["e2e_epochs_per_s"]
            ceiling = f"{bound:.2f}x ({'met' if bound <= 1.4 else '**not met**'})"
            pct = f"{100 * training_gflops(SIZES[n], e['epoch_ms']) / peak_gflops:.0f}%"
        else:
            ceiling = pct = "- (no peak section)"
        lines.append(f"| {n} | {vs['published']} | {vs['competent']} | {ceiling} | {pct} |")
    if results.get("cli"):
        lines += ["", "Whole processes (`python -m nrc_jax.main` against each reference script, table at the end): "
                  + "; ".join(f"{n} {c['speedup']['published']:.1f}x vs published, {c['speedup']['competent']:.1f}x "
                              "vs competent" for n, c in results["cli"].items()) + "."]
    return lines + [""]


def render_parts(sizes: list[str], eng: dict, refs: dict[str, dict], peak_gflops: float | None) -> list[str]:
    """Training, evaluation and end to end, each against both references and the matmul-peak bound."""
    rows = [n for n in sizes if n in eng and all(n in r for r in refs.values())]
    if not rows:
        return []
    pub, comp = refs["published"], refs["competent"]
    dash = "-"
    lines = ["### (a) training, ms per epoch (nrc_jax: marginal time per epoch of one compiled chunk)", "",
             "| size | nrc_jax | published | vs published | competent | vs competent | bound at the matmul peak "
             "| nrc_jax over the bound | nrc_jax GFLOP/s | CPU ms/epoch nrc_jax / published / competent | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in rows:
        size, e = SIZES[n], eng[n]
        floor = train_floor_ms(size, peak_gflops) if peak_gflops else None
        lines.append(
            f"| {n} ({size.train} x {size.in_dim} -> {size.out_dim}) | {fmt(e['epoch_ms'], 2)} | {fmt(pub[n]['epoch_ms'])} | "
            f"**{_ratio(pub[n]['epoch_ms'], e['epoch_ms'])}** | {fmt(comp[n]['epoch_ms'], 2)} | "
            f"**{_ratio(comp[n]['epoch_ms'], e['epoch_ms'])}** | {fmt(floor, 2) if floor else dash} | "
            f"{_ratio(e['epoch_ms'], floor, 2) if floor else dash} | {fmt(training_gflops(size, e['epoch_ms']))} | "
            f"{fmt(e['epoch_cpu_ms'], 2)} / {fmt(pub[n]['epoch_cpu_ms'])} / {fmt(comp[n]['epoch_cpu_ms'], 2)} | "
            f"{e['compile_s']:.1f} |")
    flops = {n: train_flops_per_sample(SIZES[n].in_dim, SIZES[n].out_dim) for n in rows}
    lines += ["", "Each reference at its best torch thread count by end-to-end epochs/s (the scripts of the "
              "whole-process table run with torch's default): "
              + "; ".join(f"{n}: published {_threads(pub[n])}, competent {_threads(comp[n])}" for n in rows) + "."]
    lines += ["", "FLOPs counted from the model: forward = 2 * sum(fan_in * fan_out) over the four dense layers, "
              "training = 3 x forward per sample (biases, ReLU, loss and the update ignored): "
              + ", ".join(f"{n} {flops[n] / 1e6:.3f} MFLOP/sample" for n in rows)
              + ". The bound is those FLOPs at the measured matmul peak.", ""]
    lines += ["### (b) full NRC evaluation (forward over train + test, every metric), ms", "",
              "| size | nrc_jax | published | vs published | competent | vs competent | floor at the matmul peak "
              "| nrc_jax over the floor | largest possible speed-up vs published / competent |",
              "|---|---|---|---|---|---|---|---|---|"]
    for n in rows:
        e = eng[n]
        floor = eval_floor_ms(SIZES[n], peak_gflops) if peak_gflops else None
        best = (f"{_ratio(pub[n]['eval_ms'], floor, 0)} / {_ratio(comp[n]['eval_ms'], floor, 0)}" if floor else dash)
        lines.append(f"| {n} | {fmt(e['eval_ms'], 2)} | {fmt(pub[n]['eval_ms'])} | **{_ratio(pub[n]['eval_ms'], e['eval_ms'], 0)}** | "
                     f"{fmt(comp[n]['eval_ms'], 2)} | **{_ratio(comp[n]['eval_ms'], e['eval_ms'])}** | "
                     f"{fmt(floor, 2) if floor else dash} | {_ratio(e['eval_ms'], floor, 2) if floor else dash} | {best} |")
    lines += ["", "The floor is `eval_flops`: the forward pass over train + test rows plus the one d x d product "
              "of the features, at the matmul peak; both references do the same forward pass, so no "
              "implementation on this machine can beat the last column. The published reference evaluates "
              "with sklearn PCA, Gram-Schmidt and a Python gamma loop; the competent one with torch eigh, QR "
              "and the gamma grid at once.", ""]
    lines += ["### (e) end to end, evaluation every 10 epochs, epochs/s", "",
              "| size | nrc_jax | published | vs published | competent | vs competent | ceiling at the matmul peak "
              "| nrc_jax time over the bound |", "|---|---|---|---|---|---|---|---|"]
    for n in rows:
        e = eng[n]
        ceiling = e2e_ceiling(SIZES[n], peak_gflops) if peak_gflops else None
        lines.append(f"| {n} | {fmt(e['e2e_epochs_per_s'])} | {fmt(pub[n]['e2e_epochs_per_s'])} | "
                     f"**{_ratio(e['e2e_epochs_per_s'], pub[n]['e2e_epochs_per_s'])}** | {fmt(comp[n]['e2e_epochs_per_s'])} | "
                     f"**{_ratio(e['e2e_epochs_per_s'], comp[n]['e2e_epochs_per_s'])}** | "
                     f"{fmt(ceiling) if ceiling else dash} | {_ratio(ceiling, e['e2e_epochs_per_s'], 2) if ceiling else dash} |")
    return lines + [""]


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
    eng = results.get("nrc_jax", {})
    refs = {loop: results.get("reference" if loop == "published" else loop, {}) for loop in REFERENCES}
    peak_gflops = peak["peak_gflops"] if peak else None
    lines += render_headlines(results, sizes, eng, refs, peak_gflops)
    lines += render_parts(sizes, eng, refs, peak_gflops)
    for label, rows in results.get("variants", {}).items():
        lines += [f"### config variant: {label}", "",
                  "| size | ms/epoch | ms/evaluation | epochs/s end to end | e2e vs default config | "
                  "evaluation vs published reference | e2e vs published reference |", "|---|---|---|---|---|---|---|"]
        for n, v in rows.items():
            vs_default = f"{v['e2e_epochs_per_s'] / eng[n]['e2e_epochs_per_s']:.2f}x" if n in eng else "-"
            ref = refs["published"]
            vs_ref = (f"{ref[n]['eval_ms'] / v['eval_ms']:.0f}x | {v['e2e_epochs_per_s'] / ref[n]['e2e_epochs_per_s']:.1f}x"
                      if n in ref else "- | -")
            lines.append(f"| {n} | {fmt(v['epoch_ms'], 2)} | {fmt(v['eval_ms'], 2)} | {fmt(v['e2e_epochs_per_s'])} | "
                         f"{vs_default} | {vs_ref} |")
        lines.append("")
    if results.get("metrics"):
        lines += ["### NRC computation alone, same features (M x 256 float32)", "",
                  "| size | case | ms | CPU ms | compile s |", "|---|---|---|---|---|"]
        for name, m in results["metrics"].items():
            lines.append(f"| {name} | published reference: sklearn PCA + Gram-Schmidt + gamma loop | {fmt(m['reference_ms'], 2)} | "
                         f"{fmt(m['reference_cpu_ms'], 2)} | - |")
            if "competent_ms" in m:
                lines.append(f"| {name} | competent reference: torch eigh + QR + the gamma grid at once | "
                             f"{fmt(m['competent_ms'], 3)} | {fmt(m['competent_cpu_ms'], 3)} | - |")
            lines += [f"| {name} | nrc_jax {case} | {fmt(v['ms'], 3)} | {fmt(v['cpu_ms'], 3)} | {v['compile_s']:.1f} |"
                      for case, v in m["cases"].items()]
        lines += [""] + [f"- {name}: published reference {m['reference_values']}; competent reference "
                         f"{m.get('competent_values', '-')}; nrc_jax (eigh) {m['nrc_jax_values']}; "
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
                  "| setting | size | nrc_jax ms/epoch | nrc_jax ms/evaluation | nrc_jax epochs/s e2e | published reference ms/epoch "
                  "| published reference ms/evaluation | matmul peak GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
        for label, sub in results["env"].items():
            for name, e in sub.get("nrc_jax", {}).items():
                r = sub["reference"][name]
                lines.append(f"| {label} | {name} | {fmt(e['epoch_ms'], 2)} | {fmt(e['eval_ms'], 2)} | "
                             f"{fmt(e['e2e_epochs_per_s'])} | {fmt(r['epoch_ms'])} | {fmt(r['eval_ms'])} | "
                             f"{fmt(sub['peak']['peak_gflops']) if sub.get('peak') else '-'} |")
        lines.append("")
    if results.get("cli"):
        lines += ["### Whole processes, marginal time per epoch (evaluation every 10 epochs included)", "",
                  "| size | `nrc_jax.main` ms/epoch | published script ms/epoch | vs published | competent script "
                  "ms/epoch | vs competent | run seconds (nrc_jax; published; competent) |", "|---|---|---|---|---|---|---|"]
        for name, c in results["cli"].items():
            lines.append(f"| {name} | {fmt(c['nrc_jax']['epoch_ms'], 2)} | {fmt(c['published']['epoch_ms'])} | "
                         f"**{c['speedup']['published']:.1f}x** | {fmt(c['competent']['epoch_ms'], 2)} | "
                         f"**{c['speedup']['competent']:.1f}x** | {c['nrc_jax']['seconds']}; "
                         f"{c['published']['seconds']}; {c['competent']['seconds']} |")
        c = next(iter(results["cli"].values()))
        lines += ["", "Commands (each at two lengths, fresh workdir per run, medians): "
                  + ", ".join(f"`python {c[name]['command']}`" for name in ("nrc_jax", *REFERENCES)), ""]
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
    cli_epochs: dict[str, dict[str, tuple[int, int]]]  # size -> program (nrc_jax, published, competent) -> lengths
    cli_repeats: int
    peak_sizes: tuple[int, ...] = (256, 1024, 2048)
    sweep_ks: str = "1,4,8"


FULL = Plan(repeats=5, reference_blocks=3,
            engine_epochs={"swimmer": (10, 60), "hopper": (2, 12)},
            sweep_epochs={"swimmer": (5, 25), "hopper": (1, 4)},
            # whole processes start in 8-16 s with +-1 s of jitter: the runs differ by >= 20 s of training
            cli_epochs={"swimmer": {"nrc_jax": (100, 2100), "published": (10, 410), "competent": (100, 3100)},
                        "hopper": {"nrc_jax": (10, 410), "published": (10, 70), "competent": (10, 310)}},
            cli_repeats=3)
QUICK = Plan(repeats=3, reference_blocks=1,
             engine_epochs={"swimmer": (5, 25), "hopper": (1, 4)},
             sweep_epochs={"swimmer": (2, 8), "hopper": (1, 2)},
             cli_epochs={"swimmer": {"nrc_jax": (20, 220), "published": (10, 30), "competent": (20, 220)},
                         "hopper": {"nrc_jax": (10, 30), "published": (10, 20), "competent": (10, 30)}},
             cli_repeats=1)
DRY = Plan(repeats=1, reference_blocks=1, engine_epochs={"tiny": (1, 3)}, sweep_epochs={"tiny": (1, 2)},
           cli_epochs={"tiny": {"nrc_jax": (10, 20), "published": (10, 20), "competent": (10, 20)}},
           cli_repeats=1, peak_sizes=(64, 128), sweep_ks="1,2")
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
    parser.add_argument("--dry", action="store_true",
                        help="a test of the script: size 'tiny', one repeat, no report unless --out is given")
    parser.add_argument("--sizes", default="", help="comma-separated subset of swimmer,hopper (default both; "
                        "--dry: tiny)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} plus 'variants' (config candidates), 'env' (process-setting candidates)")
    parser.add_argument("--sweep-ks", default="", help="comma-separated K (default 1,4,8; --dry: 1,2)")
    parser.add_argument("--out", default=None, help="report path; '' = none (default results/bench.md; --dry: none)")
    parser.add_argument("--json", default="", help="also write the raw numbers here")
    parser.add_argument("--torch-threads", default="",
                        help="comma-separated torch thread counts to measure each reference at in-process, the "
                             "best one reported (default: torch's own; e.g. 1,2); scripts run with torch's default")
    parser.add_argument("--merge", action="store_true",
                        help="start from the numbers already in --json (rerun only some sections, report all)")
    args = parser.parse_args(argv)
    plan = DRY if args.dry else QUICK if args.quick else FULL
    if args.out is None:
        args.out = "" if args.dry else os.path.join(ROOT, "results", "bench.md")
    args.sizes = args.sizes or ",".join(plan.engine_epochs)
    threads = tuple(int(t) for t in args.torch_threads.split(",") if t)
    if threads:  # also for the sections that time one reference call (metrics)
        import torch
        torch.set_num_threads(threads[0])
    sizes = [s for s in args.sizes.split(",") if s]
    sections = set(args.sections.split(","))
    unknown = [s for s in sizes if s not in plan.engine_epochs] + [s for s in sections if s not in (*SECTIONS, "variants", "env")]
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
        results["peak"] = matmul_peak(plan.peak_sizes, repeats=plan.repeats + 2)
    if "metrics" in sections:
        put("metrics", {n: bench_metrics(SIZES[n], plan.repeats) for n in sizes})
    if sections & {"train", "eval", "e2e"}:
        put("reference", {n: bench_reference(SIZES[n], plan.repeats, plan.reference_blocks, "published", threads)
                          for n in sizes})
        put("competent", {n: bench_reference(SIZES[n], plan.repeats, plan.reference_blocks, "competent", threads)
                          for n in sizes})
        put("nrc_jax", {n: bench_engine(SIZES[n], plan.repeats, plan.engine_epochs[n]) for n in sizes})
    if "variants" in sections:
        put("variants", {label: {n: bench_engine(SIZES[n], plan.repeats, plan.engine_epochs[n], overrides(SIZES[n]),
                                                 label[:40]) for n in sizes}
                         for label, overrides in VARIANTS.items()})
    if "sweep" in sections:
        ks = tuple(int(k) for k in (args.sweep_ks or plan.sweep_ks).split(","))
        put("sweep", {n: bench_sweep(SIZES[n], ks, plan.repeats, plan.sweep_epochs[n]) for n in sizes})
    if "env" in sections:
        sub_args = (["--sections=peak,train", f"--sizes={args.sizes}"] + (["--quick"] if args.quick else [])
                    + (["--dry"] if args.dry else []))
        put("env", {label: bench_in_subprocess(env, sub_args) for label, env in ENV_VARIANTS.items()})
    if "cli" in sections:
        put("cli", {n: bench_cli(SIZES[n], plan.cli_epochs[n], plan.cli_repeats) for n in sizes})
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
