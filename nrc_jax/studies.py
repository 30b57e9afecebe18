"""Follow-up studies: target preprocessing and single-task vs multi-task training, each measured
training MSE shown beside the UFM closed-form prediction (`nrc_jax.core.ufm.optimum`).

    python -m nrc_jax.studies --config=configs/studies.py:preprocessing [--config.x=y ...] [--out results/studies]
    python -m nrc_jax.studies --config=configs/studies.py:multitask [--workdir DIR]

The settings (the training config `run`, `lambdas`, `decays`, `transforms`) are configs/studies.py.

UFM prediction. A UFM-regularized network (`optim.regularizer='ufm'`, no decay on the body, the
ReLU before the features removed) minimizes exactly the UFM loss of the spec with its features in
place of the free H, so when the body is expressive enough to realize the UFM optimum its training
MSE is the closed form `sum_j min(lambda_j, c)`, c = lambda_H * lambda_W, lambda_j the eigenvalues
of the covariance of the targets it is trained on (after the transform). For weight-decay runs
(`optim.regularizer='weight_decay'`, 0.5*wd*||theta||^2 on every parameter) the mapping used is
lambda_H = lambda_W = wd, so c = wd^2: the head's penalty is exactly lambda_W = wd, but the body's
weight decay only penalizes the features indirectly, so this is an APPROXIMATION (reported as
`mapping: "approx c = wd^2"`).

Single task vs multi task: the multi-task network is trained on all n targets (prediction
`sum_j min(lambda_j(Sigma), c)`); the single-task networks, one per target dimension j, on Y[:, j]
alone (prediction `sum_j min(Sigma_jj, c)`). The two differ when the targets are correlated: the
shared network fits the low-variance direction of Sigma only at cost c, the separate ones pay c
on every dimension.

Every run is an ordinary `nrc_jax.engine.train.train_and_evaluate` run in `<workdir>/<study>/<name>` (one
compiled program per run, the lambda values as a vmapped sweep); the measured MSE is the final
training MSE (in the units of the transformed targets, which is what the network fits). Each study
writes `<out>/<study>_<dataset>.json` (every number), `.md` (the table) and `.png` (the figure).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from typing import Callable, Sequence

import ml_collections
import numpy as np

from nrc_jax.errors import ConfigError, UserError


# ----------------------------------------------------------------------------- configuration
def run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The study's training config `config.run` as a plain (unlocked) copy, references resolved."""
    return ml_collections.ConfigDict(config.run.to_dict())


def with_ufm_sweep(config: ml_collections.ConfigDict, lambdas: Sequence[float]) -> ml_collections.ConfigDict:
    """UFM-regularized networks, lambda_H = lambda_W = each of `lambdas` (a zip sweep)."""
    config = copy.deepcopy(config)
    config.model.feature_activation = False
    config.optim.update(regularizer="ufm", weight_decay=0.0, lambda_h=float(lambdas[0]), lambda_w=float(lambdas[0]))
    config.sweep.update(mode="zip", lambda_h=tuple(map(float, lambdas)), lambda_w=tuple(map(float, lambdas)))
    return config


def with_weight_decay_sweep(config: ml_collections.ConfigDict, decays: Sequence[float]) -> ml_collections.ConfigDict:
    """The paper's regularizer, 0.5*wd*||theta||^2 on every parameter, for each of `decays`."""
    config = copy.deepcopy(config)
    config.optim.update(regularizer="weight_decay", lambda_h=0.0, lambda_w=0.0, weight_decay=float(decays[0]))
    config.sweep.update(mode="product", weight_decay=tuple(map(float, decays)))
    return config


def _check_values(lambdas: Sequence[float], decays: Sequence[float]) -> None:
    for name, values in (("lambdas", lambdas), ("decays", decays)):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0 for v in values):
            raise ConfigError(f"{name} must be numbers >= 0 (e.g. --config.{name}=\"(0.1, 1.0)\"), got {list(values)}")
    if not len(lambdas) and not len(decays):
        raise ConfigError("lambdas and decays are both empty: nothing to run")


# ----------------------------------------------------------------------------- predictions
def ufm_mse(targets: np.ndarray, lam_h: float, lam_w: float) -> float:
    """The UFM closed-form training MSE sum_j min(lambda_j, lam_h*lam_w) of targets (M, n)."""
    import jax

    from nrc_jax.core import ufm

    with jax.enable_x64(True):
        if lam_h == 0.0 or lam_w == 0.0:
            return 0.0  # c = 0: every direction is fit exactly
        return float(ufm.optimum(np.asarray(targets, np.float64), lam_h, lam_w)["mse"])


def member_prediction(targets: np.ndarray, member: dict, regularizer: str) -> tuple[float, str]:
    """(predicted training MSE, mapping) of one sweep member (a row's `sweep` plus its values)."""
    if regularizer == "ufm":
        return ufm_mse(targets, member["lambda_h"], member["lambda_w"]), "exact c = lambda_H*lambda_W"
    wd = member["weight_decay"]
    return ufm_mse(targets, wd, wd), "approx c = wd^2"


# ----------------------------------------------------------------------------- running
def _run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Trains `config` in `workdir` (resuming a finished run costs nothing) and returns the final
    row of every sweep member with its swept values filled in."""
    from nrc_jax.engine import sweeps, train

    out = train.train_and_evaluate(config, workdir)
    members = sweeps.sweep_members(config)
    return [{**row, "member": {k: members[i][k] for k in sweeps.SWEEP_FIELDS}}
            for i, row in enumerate(out["members"])]


def _regimes(config, lambdas, decays):
    if lambdas:
        yield "ufm", with_ufm_sweep(config, lambdas)
    if decays:
        yield "weight_decay", with_weight_decay_sweep(config, decays)


def _c(member: dict, regularizer: str) -> float:
    return member["lambda_h"] * member["lambda_w"] if regularizer == "ufm" else member["weight_decay"] ** 2


def preprocessing_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs `config.run` with each of `config.transforms` (UFM sweep over `config.lambdas`,
    weight-decay sweep over `config.decays`; configs/studies.py:preprocessing) and returns
    {"rows": [{transform, regularizer, c, predicted_mse, measured_mse, ...}]}."""
    from nrc_jax.data import load_dataset

    lambdas, decays = tuple(config.lambdas), tuple(config.decays)
    _check_values(lambdas, decays)
    run = run_config(config)
    rows = []
    for kind in config.transforms:
        base = copy.deepcopy(run)
        base.data.target_transform = kind
        y_train = load_dataset(base.data).y_train
        eigenvalues = np.linalg.eigvalsh(np.cov(np.asarray(y_train, np.float64).T, bias=True).reshape(
            y_train.shape[1], y_train.shape[1]))[::-1]
        for regularizer, regime_config in _regimes(base, lambdas, decays):
            for final in _run(regime_config, os.path.join(workdir, "preprocessing", f"{kind}_{regularizer}")):
                predicted, mapping = member_prediction(y_train, final["member"], regularizer)
                rows.append({"transform": kind, "regularizer": regularizer, "sweep": final["sweep"],
                             "c": _c(final["member"], regularizer), "mapping": mapping,
                             "eigenvalues": eigenvalues.tolist(), "predicted_mse": predicted,
                             "measured_mse": final["train_mse"], "test_mse": final["test_mse"],
                             "nrc1": final["nrc1"], "nrc2": final["nrc2"], "epoch": final["epoch"]})
    return {"study": "preprocessing", "dataset": run.data.name, "epochs": run.train.epochs, "rows": rows}


def _write_npz(path: str, data, columns: Sequence[int]) -> None:
    cols = list(columns)
    np.savez(path, x_train=data.x_train, y_train=data.y_train[:, cols], x_test=data.x_test,
             y_test=data.y_test[:, cols])


def multitask_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """One network on all n targets vs n networks on one target each (same data, same settings:
    `config.run`, `config.lambdas`, `config.decays`; configs/studies.py:multitask).

    Returns {"rows": [{regularizer, c, multi: {predicted_mse, measured_mse, measured_per_dim},
    single: {predicted_mse, measured_mse, measured_per_dim}}]}; single-task values are summed over
    the n networks (the same total-MSE convention as the multi-task one).
    """
    from nrc_jax.data import load_dataset

    lambdas, decays = tuple(config.lambdas), tuple(config.decays)
    _check_values(lambdas, decays)
    run = run_config(config)
    data = load_dataset(run.data)
    n = data.y_train.shape[1]
    if n < 2:
        raise ConfigError(f"data set {run.data.name!r} has n={n} target; the multi-task study needs n >= 2")
    data_dir = os.path.join(workdir, "multitask", "data")
    os.makedirs(data_dir, exist_ok=True)
    tasks = {"multi": list(range(n)), **{f"single_{j}": [j] for j in range(n)}}
    runs = {}
    for name, columns in tasks.items():
        path = os.path.join(data_dir, f"{name}.npz")
        _write_npz(path, data, columns)
        task_config = copy.deepcopy(run)
        task_config.data.update(name="npz", path=path, target_transform="none")
        for regularizer, regime_config in _regimes(task_config, lambdas, decays):
            runs[name, regularizer] = _run(regime_config, os.path.join(workdir, "multitask", f"{name}_{regularizer}"))
    y = np.asarray(data.y_train, np.float64)
    rows = []
    for regularizer, _ in _regimes(run, lambdas, decays):
        for k, multi in enumerate(runs["multi", regularizer]):
            singles = [runs[f"single_{j}", regularizer][k] for j in range(n)]
            rows.append({
                "regularizer": regularizer, "sweep": multi["sweep"], "c": _c(multi["member"], regularizer),
                "mapping": member_prediction(y, multi["member"], regularizer)[1],
                "multi": {"predicted_mse": member_prediction(y, multi["member"], regularizer)[0],
                          "measured_mse": multi["train_mse"], "measured_per_dim": multi["train_mse_per_dim"]},
                "single": {"predicted_mse": sum(member_prediction(y[:, [j]], s["member"], regularizer)[0]
                                                for j, s in enumerate(singles)),
                           "measured_mse": sum(s["train_mse"] for s in singles),
                           "measured_per_dim": [s["train_mse"] for s in singles]},
            })
    sigma = np.cov(y.T, bias=True)
    return {"study": "multitask", "dataset": run.data.name, "epochs": run.train.epochs,
            "sigma": sigma.tolist(), "eigenvalues": np.linalg.eigvalsh(sigma)[::-1].tolist(), "rows": rows}


# ----------------------------------------------------------------------------- outputs
def _fmt(x: float) -> str:
    return f"{x:.4g}"


def markdown_table(result: dict) -> str:
    """The study's table (markdown)."""
    if result["study"] == "preprocessing":
        lines = ["| transform | regularizer | c | eigenvalues of Sigma | UFM predicted train MSE | measured train MSE |"
                 " NRC1 | NRC2 |", "|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            lines.append(f"| {r['transform']} | {r['regularizer']} ({r['mapping']}) | {_fmt(r['c'])} | "
                         f"{', '.join(map(_fmt, r['eigenvalues']))} | {_fmt(r['predicted_mse'])} | "
                         f"{_fmt(r['measured_mse'])} | {_fmt(r['nrc1'])} | {_fmt(r['nrc2'])} |")
    else:
        lines = ["| regularizer | c | multi-task predicted | multi-task measured | single-task predicted (sum) |"
                 " single-task measured (sum) |", "|---|---|---|---|---|---|"]
        for r in result["rows"]:
            lines.append(f"| {r['regularizer']} ({r['mapping']}) | {_fmt(r['c'])} | "
                         f"{_fmt(r['multi']['predicted_mse'])} | {_fmt(r['multi']['measured_mse'])} | "
                         f"{_fmt(r['single']['predicted_mse'])} | {_fmt(r['single']['measured_mse'])} |")
    return "\n".join(lines) + "\n"


def figure(result: dict):
    """Predicted (hollow) vs measured (filled) training MSE against c, one line per setting."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if result["study"] == "preprocessing":
        series = {}
        for r in result["rows"]:
            series.setdefault(f"{r['transform']}, {r['regularizer']}", []).append(
                (r["c"], r["predicted_mse"], r["measured_mse"]))
    else:
        series = {}
        for r in result["rows"]:
            for task in ("multi", "single"):
                series.setdefault(f"{task}-task, {r['regularizer']}", []).append(
                    (r["c"], r[task]["predicted_mse"], r[task]["measured_mse"]))
    for i, (label, points) in enumerate(series.items()):
        c, predicted, measured = map(np.asarray, zip(*sorted(points)))
        colour = f"C{i}"
        ax.plot(c, predicted, "--o", color=colour, mfc="none", label=f"{label}: UFM")
        ax.plot(c, measured, "-s", color=colour, label=f"{label}: measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("c = λ_H λ_W (weight decay: wd², approximate)")
    ax.set_ylabel("training MSE (transformed units)")
    ax.set_title(f"{result['dataset']}: {result['study']} (epochs {result['epochs']})", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def write_outputs(result: dict, out_dir: str) -> list[str]:
    """Writes <study>_<dataset>.json/.md/.png into out_dir; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{result['study']}_{result['dataset']}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(result))
    figure(result).savefig(stem + ".png", dpi=110)
    return [stem + ".json", stem + ".md", stem + ".png"]


# ----------------------------------------------------------------------------- CLI
STUDIES: dict[str, Callable[[ml_collections.ConfigDict, str], dict]] = {
    "preprocessing": preprocessing_study, "multitask": multitask_study}


def _define_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_string("workdir", "", "where the runs go (default: a temporary folder)", flag_values=fv)
    flags.DEFINE_string("out", "results/studies", "folder for the tables, JSON and figure", flag_values=fv)


def parse_args(argv: Sequence[str] | None):
    """The command line as a namespace: config (the locked study config), workdir, out."""
    from nrc_jax import cli

    fv, _ = cli.parse(argv, _define_flags, prog="python -m nrc_jax.studies",
                      usage="--config=configs/studies.py:{preprocessing,multitask} [--config.x=y ...] [flags]",
                      doc=__doc__, config="")
    return cli.namespace(fv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    config = args.config
    try:
        if config.study not in STUDIES:
            raise ConfigError(f"study={config.study!r}: allowed {', '.join(STUDIES)}")
        workdir = args.workdir or tempfile.mkdtemp(prefix="nrc_studies_")
        result = STUDIES[config.study](config, workdir)
        result["command"] = "python -m nrc_jax.studies " + " ".join(argv)
        paths = write_outputs(result, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(result), end="")
    print("wrote " + ", ".join(paths) + f" (runs in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
