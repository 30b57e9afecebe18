"""nrc_jax against a PyTorch replica of the authors' training loop, side by side on the same data.

    python benchmarks/compare_torch.py                      # Swimmer 20,000 and Hopper 2,000 epochs, 3 seeds
    python benchmarks/compare_torch.py --quick --out /tmp/tc   # a few minutes: 200 / 20 epochs
    python benchmarks/compare_torch.py --only=hopper:torch      # one side of one set (parallel processes)

Each finished (set, side) is kept in `--out`/parts/<set>_<side>.json (the PyTorch side per seed),
so an interrupted run resumes where it stopped and the sides can run as parallel processes; the
table and figures are written once every part is there.

Both sides run the authors' recipe: PyTorch's default initialization, the loss
0.5 * mean-over-samples-and-dims MSE + 0.5 * wd * sum ||theta||^2 (all parameters), plain SGD at the
paper's lr and weight decay, shuffled minibatches of 256 (the last one partial). The PyTorch side
indexes shuffled batches from whole-set tensors, which draws the same batches as a shuffled
DataLoader. Both evaluate every `epochs/20` epochs on the whole train split, and both sides' metrics
are computed by the same float64 numpy functions below from each side's features and head weights,
so any difference is the training's, not the metric code's. The seeds differ between the two
libraries (different random streams), so the check is whether the seed means agree within the
seeds' spread.

Writes to --out (default results/torch_check/): `<set>.png` (curves, mean and min-max band per
side), `table.md` (final values and the agreement at every evaluation), `runs.json` (every
evaluation of every seed, both sides) and the runtime of each side.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("train_mse", "nrc1", "nrc1_centered", "nrc1_unnormalized", "nrc1_unnormalized_md", "nrc1_variance",
           "nrc2", "nrc2_w_pca", "evr1", "h_norm_sq")
LOG_METRICS = {"train_mse", "nrc1", "nrc1_centered", "nrc1_unnormalized", "nrc1_unnormalized_md",
               "nrc1_variance", "nrc2", "nrc2_w_pca", "h_norm_sq"}
DEFAULT_EPOCHS = {"swimmer": 20_000, "hopper": 2_000}
QUICK_EPOCHS = {"swimmer": 200, "hopper": 20}
EVALUATIONS = 20


# ----------------------------------------------------------------------------- metrics (float64)
def _pca_basis(h: np.ndarray, n: int) -> np.ndarray:
    centered = h - h.mean(axis=0)
    values, vectors = np.linalg.eigh(centered.T @ centered / len(h))
    return vectors[:, ::-1][:, :n], values[::-1]


def _residual(rows: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """||x - P x||^2 per row for P = basis basis^T (basis (d, n) orthonormal)."""
    return np.sum((rows - rows @ basis @ basis.T) ** 2, axis=1)


def nrc_metrics(h: np.ndarray, w: np.ndarray, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The compared metrics of features h (M, d), head W (n, d), targets and predictions (M, n)."""
    h, w = h.astype(np.float64), w.astype(np.float64)
    m, d = h.shape
    n = w.shape[0]
    pca, eigenvalues = _pca_basis(h, n)
    row_space = np.linalg.svd(w, full_matrices=False)[2].T
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    centered = h - h.mean(axis=0)
    unnormalized = float(np.mean(_residual(h, pca)))
    return {
        "train_mse": float(np.mean(np.sum((pred - y) ** 2, axis=1))),
        "nrc1": float(np.mean(_residual(unit, pca))),
        "nrc1_centered": float(np.mean(_residual(centered / np.linalg.norm(centered, axis=1, keepdims=True), pca))),
        "nrc1_unnormalized": unnormalized,
        "nrc1_unnormalized_md": unnormalized / d,
        "nrc1_variance": float(np.sum(_residual(centered, pca)) / np.sum(centered**2)),
        "nrc2": float(np.mean(_residual(unit, row_space))),
        "nrc2_w_pca": float(np.linalg.norm(w - w @ pca @ pca.T)),
        "evr1": float(eigenvalues[0] / eigenvalues.sum()),
        "h_norm_sq": float(np.mean(np.sum(h**2, axis=1))),
    }


# ----------------------------------------------------------------------------- the PyTorch loop
def torch_run(x: np.ndarray, y: np.ndarray, seed: int, epochs: int, eval_epochs: list[int], lr: float,
              wd: float, batch: int, widths: tuple[int, ...]) -> list[dict]:
    """The authors' loop (PyTorch defaults, mean MSE, L2 on every parameter, SGD) on x (M, i) -> y (M, n)."""
    import torch  # the [bench] extra
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # one process per seed: intra-op threads only oversubscribe the cores
    layers, width = [], x.shape[1]
    for hidden in widths:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    body, head = nn.Sequential(*layers), nn.Linear(width, y.shape[1])
    params = list(body.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    rows = []
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(xt)).split(batch):
            pred = head(body(xt[idx]))
            loss = 0.5 * nn.functional.mse_loss(pred, yt[idx]) + 0.5 * wd * sum((p**2).sum() for p in params)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch in eval_epochs:
            with torch.no_grad():
                h = body(xt)
                pred = head(h)
            rows.append({"epoch": epoch, **nrc_metrics(h.numpy(), head.weight.detach().numpy(), y, pred.numpy())})
    return rows


# ----------------------------------------------------------------------------- the nrc_jax run
def jax_config(dataset: str, seeds: list[int], epochs: int, every: int):
    from configs import mujoco

    config = mujoco.get_config(dataset)
    config.train.update(epochs=epochs, eval_every=every, checkpoint_every=epochs, progress_bar=False)
    config.sweep.seed = tuple(seeds)
    return config


def jax_runs(dataset: str, seeds: list[int], epochs: int, every: int, workdir: str) -> dict[int, list[dict]]:
    """nrc_jax with the same recipe (config mujoco.py: init torch, mse_reduction mean), seeds vmapped;
    the metrics recomputed by `nrc_metrics` from each member's features at every evaluation."""
    import jax
    import jax.numpy as jnp

    from nrc_jax.engine import learner, memory, models, sweeps, train

    config = jax_config(dataset, seeds, epochs, every)
    data = train.load_dataset(config.data)
    mesh = learner.make_mesh(1)
    trainer = memory.get_trainer(config, mesh, data.input_shape, data.target_dim)
    members = sweeps.sweep_members(config)
    state = trainer.create_state(members)
    device_data = memory.put_data(data, mesh, config.train.eval_chunk)
    out: dict[int, list[dict]] = {s: [] for s in seeds}
    done = 0
    for target in train.eval_epochs(0, config):
        state, _ = trainer.train_chunk(state, device_data, jnp.asarray(target - done, jnp.int32))
        done = target
        for k, seed in enumerate(seeds):
            pred, h, _ = trainer.features(state, device_data, k)
            w = np.asarray(jax.device_get(models.head_params(jax.tree.map(lambda a: a[k], state.params))[0]))
            out[seed].append({"epoch": target, **nrc_metrics(h, w, data.y_train, pred)})
    del workdir
    return out


# ----------------------------------------------------------------------------- comparison
def band(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, min, max) over seeds of metric `key`."""
    values = np.asarray([[r[key] for r in run] for run in runs])
    return np.asarray([r["epoch"] for r in runs[0]]), values.mean(0), values.min(0), values.max(0)


def agreement(torch_runs: list[list[dict]], jax_runs_: list[list[dict]], key: str) -> dict:
    """Share of evaluations where the two seed means differ by no more than the larger seed range
    (plus 2% of the mean, for metrics whose seeds agree to rounding), and the final values."""
    _, mt, lt, ht = band(torch_runs, key)
    _, mj, lj, hj = band(jax_runs_, key)
    spread = np.maximum(ht - lt, hj - lj) + 0.02 * np.abs(mt)
    within = np.abs(mt - mj) <= spread
    return {"within": int(within.sum()), "points": int(within.size), "final_torch": float(mt[-1]),
            "final_jax": float(mj[-1]), "final_spread": float(spread[-1]),
            "final_rel_diff": float(abs(mt[-1] - mj[-1]) / abs(mt[-1])) if mt[-1] else 0.0}


def plot(dataset: str, torch_runs: list[list[dict]], jax_runs_: list[list[dict]], path: pathlib.Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * 5, 2.8 * 2 + 0.6), layout="constrained")
    axes = fig.subplots(2, 5).ravel()
    for ax, key in zip(axes, METRICS):
        for runs, colour, label in ((torch_runs, "tab:orange", "PyTorch (authors' loop)"), (jax_runs_, "tab:blue", "nrc_jax")):
            epochs, mean, low, high = band(runs, key)
            ax.plot(epochs, mean, color=colour, label=label)
            ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
        ax.set_title(key, fontsize=9)
        ax.set_xscale("log")
        if key in LOG_METRICS:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{dataset}: PyTorch replica of the authors' loop vs nrc_jax ({len(torch_runs)} seeds each, "
                 "mean and min-max band)", fontsize=10)
    fig.savefig(path, dpi=110)


def table(results: dict) -> str:
    lines = ["# nrc_jax vs a PyTorch replica of the authors' loop", "",
             "Made by `python benchmarks/compare_torch.py" + (" --quick" if results["quick"] else "") + "`. "
             "Same data, same recipe (PyTorch init, mean-reduced MSE, L2 on every parameter, SGD, "
             "shuffled batches of 256), different random streams; metrics by the same float64 code. "
             "`within` counts evaluations where the seed means differ by at most the larger seed "
             "range (+2% of the mean).", ""]
    for dataset, r in results["sets"].items():
        lines += [f"## {dataset}: {r['epochs']} epochs, seeds {r['seeds']}, lr {r['lr']}, wd {r['wd']}", "",
                  f"Process CPU time (the machine was shared with other work, so wall time says little): "
                  f"PyTorch {r['torch_s']:.0f} s for the {len(r['seeds'])} seeds one after another, nrc_jax "
                  f"{r['jax_s']:.0f} s (seeds vmapped in one program, compilation included).", "",
                  "| metric | PyTorch final (mean) | nrc_jax final (mean) | relative difference | seed range | within / points |",
                  "|---|---|---|---|---|---|"]
        for key, a in r["agreement"].items():
            lines.append(f"| {key} | {a['final_torch']:.4g} | {a['final_jax']:.4g} | {100 * a['final_rel_diff']:.1f}% "
                         f"| {a['final_spread']:.3g} | {a['within']} / {a['points']} |")
        lines.append("")
    return "\n".join(lines)


def _part(parts: pathlib.Path, name: str, compute) -> dict:
    """The JSON part `name` from `parts`, computed (and kept) if absent."""
    path = parts / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.process_time()
    value = {"rows": compute()}
    value["cpu_s"] = time.process_time() - t0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    print(f"{name}: {value['cpu_s']:.0f} s CPU", flush=True)
    return value


def run_side(dataset: str, side: str, seeds: list[int], quick: bool, parts: pathlib.Path) -> tuple[list, float]:
    """Every seed's evaluation rows of one side ('torch' or 'jax') and the CPU seconds they took."""
    from nrc_jax.engine import train

    epochs = (QUICK_EPOCHS if quick else DEFAULT_EPOCHS)[dataset]
    every = max(epochs // EVALUATIONS, 1)
    config = jax_config(dataset, seeds, epochs, every)
    if side == "jax":
        part = _part(parts, f"{dataset}_jax", lambda: jax_runs(dataset, seeds, epochs, every, ""))
        return [part["rows"][str(s)] if str(s) in part["rows"] else part["rows"][s] for s in seeds], part["cpu_s"]
    data = train.load_dataset(config.data)
    eval_at = train.eval_epochs(0, config)
    c = config
    done = [_part(parts, f"{dataset}_torch_seed{s}", lambda s=s: torch_run(
        data.x_train, data.y_train, s, epochs, eval_at, c.optim.lr, c.optim.weight_decay, c.train.batch_size,
        tuple(c.model.widths))) for s in seeds]
    return [d["rows"] for d in done], sum(d["cpu_s"] for d in done)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="swimmer,hopper")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="200 / 20 epochs: a smoke run")
    parser.add_argument("--only", default="", help="SET:SIDE (side torch or jax): compute that part and stop")
    parser.add_argument("--out", default=str(ROOT / "results" / "torch_check"))
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    out = pathlib.Path(args.out)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    if args.only:
        dataset, side = args.only.split(":")
        run_side(dataset, side, seeds, args.quick, parts)
        return 0
    results = {"quick": args.quick, "sets": {}}
    runs_json = {}
    for dataset in args.sets.split(","):
        config = jax_config(dataset, seeds, (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS)[dataset], 1)
        torch_rows, torch_s = run_side(dataset, "torch", seeds, args.quick, parts)
        jax_list, jax_s = run_side(dataset, "jax", seeds, args.quick, parts)
        plot(dataset, torch_rows, jax_list, out / f"{dataset}.png")
        results["sets"][dataset] = {
            "epochs": config.train.epochs, "seeds": seeds, "lr": config.optim.lr, "wd": config.optim.weight_decay,
            "torch_s": torch_s, "jax_s": jax_s,
            "agreement": {key: agreement(torch_rows, jax_list, key) for key in METRICS}}
        runs_json[dataset] = {"torch": torch_rows, "nrc_jax": jax_list}
    (out / "table.md").write_text(table(results))
    (out / "runs.json").write_text(json.dumps({"results": results, "runs": runs_json}))
    print(f"wrote {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
