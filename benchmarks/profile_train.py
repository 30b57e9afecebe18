"""Micro-benchmark of nrc_jax's compiled training (issue 7): marginal ms/epoch and ms/evaluation.

    .venv/bin/python benchmarks/profile_train.py [--sizes swimmer,hopper] [--repeats 5]
        [--epochs 10,40] [--set metrics.pca_iters=10 ...] [--matmul] [--ops EPOCHS]

Calls `Trainer.train_chunk` directly on random data of the paper's shapes. The per-epoch time is
marginal, (t(long chunk) - t(short chunk)) / (long - short), chunks interleaved so a drift of the
shared machine's load hits both; the evaluation time is `Trainer.evaluate`. Every number is given
as wall and as CPU time of this process (`time.process_time`), medians of `--repeats`.
Process-level settings (XLA_FLAGS, thread counts) are read at start-up: compare them by running
this script several times side by side.
"""
from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from bench import mlp_config  # noqa: E402  (configs/mlp.py with dotted overrides)
import numpy as np  # noqa: E402

SIZES = {"swimmer": (1000, 8, 2), "hopper": (10000, 11, 3)}
HIDDEN = (256, 256, 256)


def timed(fn) -> tuple[float, float]:
    """(wall, cpu) seconds of one call of `fn`, its result fetched to the host."""
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - wall, time.process_time() - cpu


STAT = statistics.median  # --stat min: the least-disturbed run, closer to a quiet machine


def median_pair(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return STAT(s[0] for s in samples), STAT(s[1] for s in samples)


def random_data(name: str, rows: int, in_dim: int, out_dim: int):
    from nrc_jax.data import RegressionData
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows + rows // 5, in_dim)).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal((in_dim, out_dim)).astype(np.float32))
    return RegressionData(name, x[:rows], y[:rows], x[rows:], y[rows:])


VARIANTS = {  # per-executable XLA options (jax.jit(compiler_options=...)), compared in one process
    "default": {},
    "eigen 1 thread": {"xla_cpu_multi_thread_eigen": False},
    "onednn": {"xla_cpu_use_onednn": True},
    "mesh of 2 devices": {},  # needs XLA_FLAGS=--xla_force_host_platform_device_count=2
}


def profile(size: str, overrides: dict, repeats: int, epochs: tuple[int, int], variants: list[str]) -> dict:
    """{variant: timings}; the variants' chunks are interleaved, so load drifts hit them alike."""
    from nrc_jax.engine import learner, memory, sweeps
    config = mlp_config(overrides)
    data = random_data(size, *SIZES[size])
    members = sweeps.sweep_members(config)
    trainers, device_data, fns, evals, states = {}, {}, {}, {}, {}
    for v in variants:
        mesh = learner.make_mesh(2 if v.startswith("mesh of 2") else 1)
        trainers[v] = memory.Trainer(config, mesh, data.input_shape, data.target_dim)
        device_data[v] = memory.put_data(data, mesh, config.train.eval_chunk)
        fns[v] = jax.jit(trainers[v]._train_chunk, donate_argnums=0, compiler_options=VARIANTS[v] or None)
        evals[v] = jax.jit(trainers[v]._evaluate, compiler_options=VARIANTS[v] or None)
        states[v] = trainers[v].create_state(members)

    def chunk(v: str, n: int):
        states[v], out = fns[v](states[v], device_data[v], jnp.asarray(n, jnp.int32))
        return jax.device_get(out)

    compile_s = {v: timed(lambda: chunk(v, epochs[0]))[0] for v in variants}
    short, long, ev = ({v: [] for v in variants} for _ in range(3))
    for _ in range(repeats):
        for v in variants:
            short[v].append(timed(lambda: chunk(v, epochs[0])))
            long[v].append(timed(lambda: chunk(v, epochs[1])))
            ev[v].append(timed(lambda: evals[v](states[v], device_data[v])))
    span = epochs[1] - epochs[0]
    flops = 3 * 2 * sum(a * b for a, b in zip((SIZES[size][1],) + HIDDEN, HIDDEN + (SIZES[size][2],)))
    out = {}
    for v in variants:
        (sw, sc), (lw, lc), (ew, ec) = median_pair(short[v]), median_pair(long[v]), median_pair(ev[v][1:] or ev[v])
        out[v] = {"epoch_ms": (lw - sw) / span * 1e3, "epoch_cpu_ms": (lc - sc) / span * 1e3,
                  "chunk10_ms": sw * 1e3, "chunk10_cpu_ms": sc * 1e3, "eval_ms": ew * 1e3, "eval_cpu_ms": ec * 1e3,
                  "compile_s": compile_s[v], "gflop_per_epoch": flops * SIZES[size][0] / 1e9}
    return out


def matmul_rates(repeats: int) -> None:
    """GFLOP/s (wall and per CPU-second) of the step's matmul shapes and of a large square one."""
    shapes = [(256, 256, 256), (256, 256, 256, "tn"), (1024, 1024, 1024), (2048, 2048, 2048)]
    for shape in shapes:
        m, k, n = shape[:3]
        a = jnp.ones((m, k), jnp.float32)  # square shapes only: the product has a's shape
        b = jnp.ones((k, n), jnp.float32)
        f = jax.jit(lambda a, b: a.T @ b) if len(shape) == 4 else jax.jit(jnp.dot)
        inner = max(1, int(2e9 // (2 * m * k * n)))
        # each product feeds the next (no loop-invariant code motion): a <- 1e-3 * f(a, b)
        loop = jax.jit(lambda a, b: jax.lax.fori_loop(0, inner, lambda i, acc: 1e-3 * f(acc, b), a))
        timed(lambda: loop(a, b))
        w, c = median_pair([timed(lambda: loop(a, b)) for _ in range(repeats)])
        flops = 2 * m * k * n * inner
        print(f"[matmul] {shape}: {flops / w / 1e9:.1f} GFLOP/s wall, {flops / c / 1e9:.1f} GFLOP per CPU-s",
              flush=True)


def _short_op_name(op_name: str) -> str:
    """'jit(f)/while/body/while/body/closed_call/transpose(jvp(MLP))/dense_1/dot_general' ->
    'step: transpose(jvp(MLP))/dense_1/dot_general': the JAX operation an instruction came from, and
    whether it runs in every minibatch step or once per epoch or evaluation ('other')."""
    where = "step" if "while/body/while/body" in op_name else "other"
    return f"{where}: {'/'.join(op_name.split('closed_call/')[-1].split('/')[-3:])}"


def op_breakdown(size: str, overrides: dict, epochs: int, top: int = 20) -> None:
    """Prints where `epochs` epochs of `train_chunk` spend their time, per compiled HLO instruction
    (ms per epoch, from a `jax.profiler` trace), with the JAX operation each instruction came from.

    XLA:CPU runs independent instructions concurrently, so the per-instruction times may add up to
    more than the wall time, and the profiler itself slows the run: they rank the costs, they do
    not partition the undisturbed time.
    """
    import collections
    import glob
    import re
    import tempfile
    from nrc_jax.engine import learner, memory, sweeps
    config = mlp_config(overrides)
    data = random_data(size, *SIZES[size])
    trainer = memory.Trainer(config, learner.make_mesh(1), data.input_shape, data.target_dim)
    device_data = memory.put_data(data, trainer.mesh, config.train.eval_chunk)
    state = trainer.create_state(sweeps.sweep_members(config))
    n = jnp.asarray(epochs, jnp.int32)
    hlo = trainer.train_chunk.lower(state, device_data, n).compile().as_text()
    origin = {m.group(1): _short_op_name(m.group(2)) for m in
              re.finditer(r'%([\w.-]+) = [^\n]*?op_name="([^"]*)"', hlo)}
    state, _ = trainer.train_chunk(state, device_data, n)  # warm-up (compiles)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory(prefix="nrc_trace_") as tmp:
        wall = time.perf_counter()
        with jax.profiler.trace(tmp):
            state, out = trainer.train_chunk(state, device_data, n)
            jax.block_until_ready((state, out))
        wall = time.perf_counter() - wall
        trace = jax.profiler.ProfileData.from_file(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)[0])
        per_op = collections.Counter()
        for plane in trace.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in origin:  # an HLO instruction (not the executor, Python or waits)
                        per_op[event.name] += event.duration_ns / 1e6 / epochs
    print(f"[ops] {size}: {epochs} epochs + 1 evaluation in {wall * 1e3:.0f} ms under the profiler; "
          f"instructions by time (ms per epoch, the evaluation included):")
    for name, ms in per_op.most_common(top):
        print(f"  {ms:7.2f}  {name:28s} {origin[name]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="swimmer,hopper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", default="10,40")
    parser.add_argument("--set", action="append", default=[], help="dotted.config=python_literal")
    parser.add_argument("--matmul", action="store_true", help="also time the step's matmul shapes")
    parser.add_argument("--matmul-only", action="store_true")
    parser.add_argument("--variants", default="default", help=f"comma-separated of {list(VARIANTS)}")
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    parser.add_argument("--ops", type=int, default=0, metavar="EPOCHS",
                        help="instead: profile EPOCHS epochs and list the compiled instructions by time")
    args = parser.parse_args()
    global STAT
    STAT = min if args.stat == "min" else statistics.median
    overrides = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in args.set)}
    epochs = tuple(int(e) for e in args.epochs.split(","))
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} overrides={overrides} load={os.getloadavg()[0]:.1f}")
    if args.ops:
        for size in args.sizes.split(","):
            op_breakdown(size, overrides, args.ops)
        return
    if args.matmul or args.matmul_only:
        matmul_rates(args.repeats)
    if args.matmul_only:
        return
    for size in args.sizes.split(","):
        for variant, r in profile(size, overrides, args.repeats, epochs, args.variants.split(",")).items():
            print(f"[{size}, {variant}] {r['epoch_ms']:.2f} ms/epoch wall, {r['epoch_cpu_ms']:.2f} CPU "
                  f"({r['gflop_per_epoch'] / r['epoch_cpu_ms'] * 1e3:.0f} GFLOP per CPU-s); "
                  f"evaluation {r['eval_ms']:.2f} ms wall, {r['eval_cpu_ms']:.2f} CPU; chunk of {epochs[0]} "
                  f"{r['chunk10_ms']:.1f} ms ({r['chunk10_cpu_ms']:.1f} CPU); compile {r['compile_s']:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
