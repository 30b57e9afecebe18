"""The accelerator check (issue 19): one command that, on a GPU or TPU, in at most 8 minutes,
1. runs the backend-sensitive tests on that backend (the CPU-only rewrites off, the metrics'
   numerics, the mesh and sweep paths);
2. measures `Trainer.train_chunk` throughput for K = 1, 5, 15 sweep members at Swimmer (1,000 x 8
   -> 2) and Hopper (10,000 x 11 -> 3) sizes: model-epochs/s, evaluation time, and the share of
   the device's measured f32 matmul peak (jitted `jnp.dot` at the default precision, which the
   training uses too);
3. projects the paper's full MuJoCo grid (Swimmer, Reacher, Hopper x 5 weight decays x 3 seeds at
   the paper's epochs, an evaluation every 1/1000 of the run) from those figures;
and writes a markdown report (results/bench_gpu.md on a GPU, results/bench_tpu.md on a TPU).

    pip install -e '.[test]' 'jax[cuda12]'       # on a GPU machine (as launch/gpu.sh says)
    python benchmarks/device_check.py            # on the accelerator machine
    python benchmarks/device_check.py --dry      # a short version anywhere (the default on a CPU)

On a CPU it runs the dry version: tiny row counts, K = 1 and 5, only the backend-choice tests, and
no report file unless --out is given. Needs no PyTorch.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The test run is a second process on the same device: neither may take most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402

import bench  # noqa: E402  (timing helpers and FLOP counts; imports no torch)

# The tests whose outcome depends on the backend: which ops the engine picks, float32 numerics of
# the metrics (TF32 matmuls on GPUs), the sweep and mesh paths. Multi-device tests skip below 4 devices.
BACKEND_TESTS = ["tests/test_models.py", "tests/test_metrics.py",
                 "tests/test_train.py::test_shuffle_follows_the_backend",
                 "tests/test_train.py::test_shuffled_indices_is_a_seeded_permutation",
                 "tests/test_train.py::test_end_to_end_outputs_and_no_recompilation",
                 "tests/test_train.py::test_sweep_matches_separate_runs",
                 "tests/test_train.py::test_four_devices_match_one",
                 "tests/test_train.py::test_sweep_members_on_a_2d_mesh_match_one_device"]
DRY_TESTS = ["tests/test_models.py::test_cpu_rewrites_follow_the_backend",
             "tests/test_models.py::test_head_path_follows_the_backend_and_gradients_agree",
             "tests/test_train.py::test_shuffle_follows_the_backend"]
MEMBERS = (1, 5, 15)
GRID_MEMBERS = 15  # 5 weight decays x 3 seeds per data set
EVALS_PER_RUN = 1000  # configs/mujoco.py: an evaluation every 1/1000 of the run


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures: sizes (name -> Size), member counts, timing targets."""
    sizes: dict[str, bench.Size]
    members: tuple[int, ...]
    peak_sizes: tuple[int, ...]
    tests: list[str]
    target_s: float        # seconds of training between the short and the long chunk
    repeats: int


FULL = Plan(sizes={"swimmer": bench.SIZES["swimmer"], "hopper": bench.SIZES["hopper"]}, members=MEMBERS,
            peak_sizes=(2048, 4096, 8192), tests=BACKEND_TESTS, target_s=1.0, repeats=3)
DRY = Plan(sizes={"swimmer": bench.Size("swimmer", 256, 8, 2), "hopper": bench.Size("hopper", 512, 11, 3)},
           members=(1, 5), peak_sizes=(128, 256), tests=DRY_TESTS, target_s=0.05, repeats=1)


def platform() -> str:
    """'gpu', 'tpu' or 'cpu': the backend the engine runs on."""
    return jax.default_backend()


def device_description() -> dict[str, str]:
    """The device named: kind, count, platform, JAX version."""
    devices = jax.devices()
    return {"device": devices[0].device_kind, "devices": str(len(devices)), "platform": platform(),
            "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_tests(nodes: list[str], timeout_s: float) -> dict[str, Any]:
    """pytest on `nodes` in a fresh process on this machine's default backend (not the suite's CPU)."""
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),  # "": JAX picks the accelerator
           "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nodes]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        rc, output = "timeout", e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    lines = [line for line in output.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    print(f"[tests] {summary} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {"command": "python -m pytest -q " + " ".join(nodes), "rc": rc, "summary": summary,
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20],
            "seconds": time.perf_counter() - start}


def random_data(size: bench.Size, seed: int = 0):
    """RegressionData of `size` (test split 20%): float32 inputs, targets a noisy smooth function."""
    from nrc_jax.data import RegressionData

    rng = np.random.default_rng(seed)
    rows = size.train + max(1, size.train // 5)
    x = rng.standard_normal((rows, size.in_dim)).astype(np.float32)
    mixing = rng.standard_normal((size.in_dim, size.out_dim)) / np.sqrt(size.in_dim)
    y = (np.tanh(x @ mixing) + 0.1 * rng.standard_normal((rows, size.out_dim))).astype(np.float32)
    return RegressionData(size.name, x[:size.train], y[:size.train], x[size.train:], y[size.train:])


def make_engine(size: bench.Size, num_members: int) -> bench.Engine:
    """configs/mlp.py's trainer with `num_members` sweep members on one device, data on the device."""
    from nrc_jax.engine import learner, memory, sweeps

    config = bench.mlp_config({"train.eval_every": bench.EVAL_EVERY})
    if num_members > 1:
        config.sweep.seed = tuple(range(num_members))
    data = random_data(size)
    mesh = learner.make_mesh(1)
    trainer = memory.Trainer(config, mesh, data.input_shape, data.target_dim)
    return bench.Engine(trainer, memory.put_data(data, mesh, config.train.eval_chunk),
                        trainer.create_state(sweeps.sweep_members(config)), num_members)


def chunk_lengths(engine: bench.Engine, target_s: float) -> tuple[int, int]:
    """(short, long) epochs whose difference trains for about `target_s` seconds.

    Probes chunks of 2, 8, 32, ... epochs until one takes a tenth of the target beyond a 0-epoch
    chunk (the evaluation and dispatch), so a noisy first probe cannot inflate the long chunk.
    """
    engine.chunk(1)  # compiles
    base = bench.timed(lambda: engine.chunk(0))[0]
    probe = 2
    while True:
        elapsed = bench.timed(lambda: engine.chunk(probe))[0] - base
        if elapsed >= 0.1 * target_s or probe >= 2**16:
            break
        probe *= 4
    per_epoch = max(elapsed, 1e-9) / probe
    return 1, 1 + max(2, min(int(target_s / per_epoch), 2**20))


def measure(size: bench.Size, num_members: int, plan: Plan, peak_gflops: float) -> dict[str, float]:
    """Throughput of K = `num_members` at `size`: marginal epoch, evaluation, share of the peak."""
    start = time.perf_counter()
    engine = make_engine(size, num_members)
    short, long = chunk_lengths(engine, plan.target_s)
    row = bench.marginal_epoch(engine, short, long, plan.repeats)
    evaluation = bench.median_time(engine.evaluate, plan.repeats)[0]
    flops = num_members * size.train * bench.train_flops_per_sample(size.in_dim, size.out_dim)
    out = {"members": num_members, "epoch_ms": row["epoch_s"] * 1e3, "model_epochs_per_s": num_members / row["epoch_s"],
           "eval_ms": evaluation * 1e3, "gflops": flops / row["epoch_s"] / 1e9,
           "peak_pct": 100 * flops / row["epoch_s"] / 1e9 / peak_gflops, "epochs": [short, long],
           "seconds": time.perf_counter() - start}
    print(f"[throughput] {size.name} K={num_members}: {out['model_epochs_per_s']:.1f} model-epochs/s "
          f"({out['epoch_ms']:.3f} ms per epoch of all K, evaluation {out['eval_ms']:.2f} ms, "
          f"{out['peak_pct']:.1f}% of the matmul peak; {out['seconds']:.0f} s)", flush=True)
    return out


def project_grid(throughput: dict[str, list[dict]], sizes: dict[str, bench.Size]) -> list[dict[str, Any]]:
    """Hours for each data set of the paper's grid (15 members) at each measured K, one card.

    Reacher (1,000 x 10 -> 2) runs at the Swimmer-size figures, scaled by its FLOPs per sample.
    15 members take ceil(15 / K) programs of K members one after the other.
    """
    from configs import mujoco

    rows = []
    for name, (epochs, _, _) in mujoco.PAPER.items():
        measured = "hopper" if name == "hopper" else "swimmer"
        size = sizes[measured]
        scale = 1.0
        if name == "reacher":
            scale = bench.train_flops_per_sample(10, 2) / bench.train_flops_per_sample(size.in_dim, size.out_dim)
        for r in throughput.get(measured, []):
            programs = -(-GRID_MEMBERS // r["members"])
            seconds = programs * scale * (epochs * r["epoch_ms"] + EVALS_PER_RUN * r["eval_ms"]) / 1e3
            rows.append({"data set": name, "epochs": epochs, "members": r["members"], "programs": programs,
                         "measured at": f"{measured} ({size.train} x {size.in_dim} -> {size.out_dim})",
                         "hours": seconds / 3600})
    return rows


def render(device: dict[str, str], tests: dict | None, peak: dict | None, throughput: dict[str, list[dict]],
           grid: list[dict], plan: Plan, dry: bool, seconds: float) -> str:
    """The markdown report; every figure comes from this run's measurements."""
    lines = [f"# Accelerator check{' (dry run: tiny sizes, not a measurement)' if dry else ''}", "",
             f"Generated by `python benchmarks/device_check.py{' --dry' if dry else ''}` on {device['date']} "
             f"in {seconds:.0f} s.", "", "| device | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in device.items()] + [""]
    if tests is not None:
        lines += ["## Backend-sensitive tests", "", f"`{tests['command']}`: **{tests['summary'] or tests['rc']}** "
                  f"(exit {tests['rc']}, {tests['seconds']:.0f} s)", ""]
        lines += [f"- {line}" for line in tests["failures"]] + ([""] if tests["failures"] else [])
    if peak:
        lines += ["## f32 matmul peak (jitted `jnp.dot`, default precision)", "", "| N | GFLOP/s | ms |", "|---|---|---|"]
        lines += [f"| {n} | {r['gflops']:,.0f} | {r['ms']:.3f} |" for n, r in peak["by_size"].items()]
        lines += ["", f"Peak used below: **{peak['peak_gflops']:,.0f} GFLOP/s**.", ""]
    lines += ["## train_chunk throughput (configs/mlp.py, evaluation every 10 epochs, one device)", "",
              "| size | K | ms per epoch (all K) | model-epochs/s | vs K = 1 | ms per evaluation (all K) "
              "| training GFLOP/s | % of the matmul peak | chunk lengths |", "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in throughput.items():
        size = plan.sizes[name]
        base = rows[0]["model_epochs_per_s"] if rows else 1.0
        lines += [f"| {name} ({size.train} x {size.in_dim} -> {size.out_dim}) | {r['members']} | {r['epoch_ms']:.3f} | "
                  f"{r['model_epochs_per_s']:,.1f} | {r['model_epochs_per_s'] / base:.2f}x | {r['eval_ms']:.2f} | "
                  f"{r['gflops']:,.1f} | {r['peak_pct']:.1f}% | {r['epochs'][0]}, {r['epochs'][1]} |" for r in rows]
    lines += ["", "Marginal time per epoch: (t(long chunk) - t(short chunk)) / (long - short), medians of "
              f"{plan.repeats}; FLOPs as in bench.py (3 x forward matmuls per sample).", ""]
    if grid:
        lines += ["## Projection: the paper's MuJoCo grid on one such device", "",
                  "3 data sets x 5 weight decays x 3 seeds (15 members each) at the paper's epochs, an evaluation "
                  "every 1/1000 of the run; K members per program, ceil(15 / K) programs one after the other.", "",
                  "| data set | epochs | K per program | programs | measured at | hours |", "|---|---|---|---|---|---|"]
        lines += [f"| {g['data set']} | {g['epochs']:,} | {g['members']} | {g['programs']} | {g['measured at']} | "
                  f"{g['hours']:,.2f} |" for g in grid]
        best = {}
        for g in grid:
            best[g["data set"]] = min(best.get(g["data set"], float("inf")), g["hours"])
        lines += ["", "Whole grid at the best K per data set, one data set after the other: "
                  f"**{sum(best.values()):,.1f} h** ("
                  + ", ".join(f"{k} {v:,.2f} h" for k, v in best.items()) + ")."
                  + (" Dry run: tiny sizes, so these hours mean nothing." if dry else ""), ""]
    return "\n".join(lines)


def default_out(backend: str, dry: bool) -> str:
    """results/bench_<gpu|tpu>.md for a full run on an accelerator; no file otherwise."""
    if dry or backend == "cpu":
        return ""
    return os.path.join(ROOT, "results", f"bench_{backend}.md")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="tiny sizes, K = 1 and 5 (the default on a CPU)")
    parser.add_argument("--full", action="store_true", help="the full plan even on a CPU (slow)")
    parser.add_argument("--no-tests", action="store_true", help="skip the pytest run")
    parser.add_argument("--out", default=None, help="report path ('' = print only; default: see module doc)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="stop measuring new configurations after this many seconds (the report says which)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    backend = platform()
    dry = args.dry or (backend == "cpu" and not args.full)
    plan = DRY if dry else FULL
    device = device_description()
    print(device, flush=True)
    tests = None if args.no_tests else run_tests(plan.tests, timeout_s=max(60.0, 0.4 * args.budget_s))
    peak = bench.matmul_peak(plan.peak_sizes, repeats=plan.repeats + 2)
    throughput: dict[str, list[dict]] = {}
    skipped = []
    for name, size in plan.sizes.items():
        for k in plan.members:
            if time.perf_counter() - start > args.budget_s:
                skipped.append(f"{name} K={k}")
                continue
            throughput.setdefault(name, []).append(measure(size, k, plan, peak["peak_gflops"]))
    grid = project_grid(throughput, plan.sizes)
    report = render(device, tests, peak, throughput, grid, plan, dry, time.perf_counter() - start)
    if skipped:
        report += f"\nNot measured (over the {args.budget_s:.0f} s budget): {', '.join(skipped)}.\n"
    out = default_out(backend, dry) if args.out is None else args.out
    if out:
        with open(out, "w") as f:
            f.write(report + "\n")
        print(f"wrote {out}")
    else:
        print(report)
    if tests is not None and tests["rc"] != 0:
        print("error: backend-sensitive tests failed (see the report)", file=sys.stderr)
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
