"""The main job behind `make run`: the quick reproduction of the paper on the embedded data.

    python -m nrc_jax.reproduce [--out results/quick] [--workdirs workdirs/quick] [--fresh]
                                [--only STAGE ...] [--config=configs/reproduce.py] [--config.x=y ...]

The stages (which config each runs, in which order, their expected times) are configs/reproduce.py:
the MuJoCo weight-decay runs, the UFM-regularized MLP, the image set through the ResNet18 path and
the UFM study. Then the figures (`nrc_jax.plot.plot_workdirs`, one call so colours agree), Table 1
(`table1.md`) and `summary.md` (the key final numbers and the stage timings) go to `--out`.

Workdirs live under `--workdirs` (gitignored): a rerun reuses finished stages and resumes
interrupted ones from their checkpoints; a stage whose config changed starts over; `--fresh`
starts every stage over. `--config.epochs_scale=F` multiplies every training stage's epochs and the
UFM study's gradient-descent iterations (tests use a tiny value). User errors print one line and
exit 2.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from nrc_jax.errors import ConfigError, UserError

DONE_FILE = "reproduce_done.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a configs/reproduce.py config; its workdir is `<workdirs>/<name>`."""

    name: str
    kind: str                         # 'train' (a nrc_jax.engine.train run) or 'ufm_study'
    expected_s: float                 # rough wall time on a quiet 2-core CPU (for the ETA)
    what: str
    config: ml_collections.ConfigDict  # the run's config (configs/paper.py or configs/ufm.py)


KINDS = ("train", "ufm_study")


def stages_of(config: ml_collections.ConfigDict, only: Sequence[str] = ()) -> list[Stage]:
    """The stages of `config` (configs/reproduce.py) in `config.order`, only those named in `only`
    when given."""
    known = list(config.order)
    unknown = sorted(set(only) - set(known))
    if unknown:
        raise ConfigError(f"--only {' '.join(unknown)}: unknown stage; stages are {', '.join(known)}")
    missing = [name for name in known if name not in config.stages]
    if missing:
        raise ConfigError(f"order names {', '.join(missing)}, which stages does not define")
    stages = [Stage(name, s.kind, s.expected_s, s.what, s.config)
              for name, s in ((name, config.stages[name]) for name in known) if not only or name in only]
    for stage in stages:
        if stage.kind not in KINDS:
            raise ConfigError(f"stages.{stage.name}.kind={stage.kind!r}: allowed {', '.join(KINDS)}")
    return stages


def stage_config(stage: Stage, epochs_scale: float = 1.0, num_devices: int = -1) -> ml_collections.ConfigDict:
    """The config a stage runs (a copy of `stage.config`); `epochs_scale` < 1 shortens training
    stages (eval/checkpoint cadence scaled along, at least one epoch each); `num_devices` sets the
    training mesh."""
    check_epochs_scale(epochs_scale)
    config = copy.deepcopy(stage.config)
    if stage.kind == "ufm_study":
        if epochs_scale != 1.0:
            config.gd.max_iters = max(50, round(config.gd.max_iters * epochs_scale))
        return config
    config.train.progress_bar = False
    config.mesh.num_devices = num_devices
    if epochs_scale != 1.0:
        epochs = max(1, round(config.train.epochs * epochs_scale))
        every = max(1, round(config.train.eval_every * epochs_scale))
        config.train.update(epochs=epochs, eval_every=every, checkpoint_every=every * max(1, epochs // every))
    return config


def check_epochs_scale(epochs_scale: float) -> None:
    if not epochs_scale > 0:
        raise ConfigError(f"epochs_scale={epochs_scale}: allowed a positive number")


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
    return json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)


# --------------------------------------------------------------------- running stages
def stage_is_done(workdir: pathlib.Path, fingerprint: str) -> bool:
    done = workdir / DONE_FILE
    return done.exists() and json.loads(done.read_text()).get("config") == fingerprint


def prepare_workdir(workdir: pathlib.Path, fingerprint: str, fresh: bool) -> str:
    """'reuse' (finished with this config), 'resume' or 'new'; clears a workdir whose config changed."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    if stage_is_done(workdir, fingerprint):
        return "reuse"
    saved = workdir / "config.json"
    if saved.exists():
        written = json.loads(saved.read_text())
        written.get("train", {})["progress_bar"] = False  # shown or not, the same run
        if json.dumps(written, sort_keys=True) == fingerprint:
            return "resume"
        shutil.rmtree(workdir)  # another config trained here: its checkpoints cannot be resumed
    return "new"


def run_train_stage(config: ml_collections.ConfigDict, workdir: pathlib.Path, progress: bool) -> None:
    from nrc_jax.engine import train

    if progress:
        config = ml_collections.ConfigDict(config.to_dict())
        config.train.progress_bar = True  # tqdm on stderr: epochs done, rate, time left
    train.train_and_evaluate(config, str(workdir))


def run_ufm_stage(config: ml_collections.ConfigDict, workdir: pathlib.Path, progress: bool) -> None:
    from nrc_jax import ufm_study

    config.out_dir = str(workdir)
    ufm_study.run_study(config)


def print_flushed(message: str) -> None:
    print(message, flush=True)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s"


@dataclasses.dataclass
class Timing:
    stage: str
    status: str
    wall_s: float
    cpu_s: float


def run_stages(stages: Sequence[Stage], config: ml_collections.ConfigDict, workdirs: pathlib.Path, *, fresh: bool,
               progress: bool = False, log: Callable[[str], None] = print_flushed) -> list[Timing]:
    """Runs (or reuses) each stage in order with `config`'s epochs_scale and num_devices (a
    configs/reproduce.py config), printing the stage, elapsed time and an ETA."""
    timings: list[Timing] = []
    start = time.perf_counter()
    expected_done = 0.0
    scale = epochs_scale_factor(config.epochs_scale, config.compile_share)
    for i, stage in enumerate(stages):
        run_config = stage_config(stage, config.epochs_scale, config.num_devices)
        workdir = workdirs / stage.name
        fingerprint = config_fingerprint(run_config)
        status = prepare_workdir(workdir, fingerprint, fresh)
        elapsed = time.perf_counter() - start
        remaining = sum(s.expected_s for s in stages[i:]) * scale
        pace = elapsed / expected_done if expected_done > 0 and elapsed > 5 else 1.0
        log(f"[{i + 1}/{len(stages)}] {stage.name}: {stage.what} ({status}; elapsed "
            f"{format_duration(elapsed)}, ETA {format_duration(remaining * pace)})")
        t0, c0 = time.perf_counter(), time.process_time()
        if status == "reuse":  # the times it took when it ran
            done = json.loads((workdir / DONE_FILE).read_text())
            timings.append(Timing(stage.name, "reused", done.get("wall_s", math.nan), done.get("cpu_s", math.nan)))
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            (run_train_stage if stage.kind == "train" else run_ufm_stage)(run_config, workdir, progress)
            timings.append(Timing(stage.name, status, time.perf_counter() - t0, time.process_time() - c0))
            (workdir / DONE_FILE).write_text(json.dumps({
                "config": fingerprint, "wall_s": timings[-1].wall_s, "cpu_s": timings[-1].cpu_s,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
        expected_done += stage.expected_s * scale
        log(f"      {'took' if status != 'reuse' else 'had taken'} {format_duration(timings[-1].wall_s)} wall, "
            f"{format_duration(timings[-1].cpu_s)} CPU")
    return timings


def epochs_scale_factor(epochs_scale: float, compile_share: float) -> float:
    """ETA weight of a scaled run: compilation (`compile_share` of a quick stage) does not shrink."""
    return compile_share + (1 - compile_share) * epochs_scale if epochs_scale < 1 else epochs_scale


# --------------------------------------------------------------------- tables
def write_table1(table_config: ml_collections.ConfigDict, out_path: pathlib.Path) -> None:
    """Table 1 (markdown) from loading every data set of `table_config.datasets` (train split)."""
    from nrc_jax.data import load_dataset
    from nrc_jax.data.base import table1_row
    from nrc_jax.plotting import table

    blocks = []
    for label, data_config in table_config.datasets.items():
        block = table.normalized_block(table1_row(load_dataset(data_config)))
        block["name"] = label
        blocks.append(block)
    out_path.write_text(table.table1_markdown(blocks))


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.2e}"


def sweep_label(sweep: dict) -> str:
    short = {"weight_decay": "wd", "lambda_h": "λH", "lambda_w": "λW", "seed": "seed"}
    items = dict(sweep)
    if "lambda_h" in items and items.get("lambda_w") == items["lambda_h"]:
        items = {"λH=λW": items.pop("lambda_h"), **{k: v for k, v in items.items() if k != "lambda_w"}}
    return ", ".join(f"{short.get(k, k)}={v:g}" if isinstance(v, float) else f"{short.get(k, k)}={v}"
                     for k, v in items.items()) or "run"


def training_rows(workdir: pathlib.Path) -> list[dict]:
    """Per sweep member of a training workdir: the first and final logged metrics and the summary."""
    from nrc_jax.errors import DataError
    from nrc_jax.io import run_files

    run = run_files.load(workdir)
    if not run.finished:
        raise DataError(f"{workdir} has no {run_files.SUMMARY_FILE}: the run did not finish")
    config, by_member = run.config, run.members
    out = []
    for member in run.summary["members"]:
        own = by_member[member["sweep_index"]]
        first, final = own[0], own[-1]
        n = len(final["wwt"])
        out.append({"dataset": config["data"]["name"], "label": sweep_label(member["sweep"]),
                    "epochs": final["epoch"], "first": first, "final": final, "n": n,
                    "evr_top_n": float(sum(final["evr"][:n])), "first_evr_top_n": float(sum(first["evr"][:n])),
                    "gamma_ratio": member.get("best_gamma_over_lambda_min"),
                    "best_nrc3": member.get("best_nrc3"), "lambda_min": final.get("lambda_min")})
    return out


def training_table(rows: list[dict]) -> list[str]:
    header = ("| data set | setting | epochs | train MSE | test MSE | test R² | NRC1 (start → end) "
              "| NRC2 (start → end) | NRC1 / NRC2 centered (end) | NRC3 at best γ | best γ/λmin "
              "| EVR top-n (start → end) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        f, s = r["final"], r["first"]
        lines.append(
            f"| {r['dataset']} | {r['label']} | {r['epochs']} | {_fmt(f['train_mse'])} | {_fmt(f['test_mse'])} "
            f"| {_fmt(f['test_r2'])} | {_fmt(s['nrc1'])} → {_fmt(f['nrc1'])} | {_fmt(s['nrc2'])} → {_fmt(f['nrc2'])} "
            f"| {_fmt(f.get('nrc1_centered'))} / {_fmt(f.get('nrc2_centered'))} | {_fmt(r['best_nrc3'])} | {_fmt(r['gamma_ratio'])} | {_fmt(r['first_evr_top_n'])} → "
            f"{_fmt(r['evr_top_n'])} |")
    return lines


def ufm_study_lines(summary_path: pathlib.Path) -> list[str]:
    """Key numbers of the UFM study: GD vs closed form, and collapse iff lambda > 0."""
    s = json.loads(summary_path.read_text())
    sweep, zero = s["sweep"], s["zero_lambda_history"]
    loss_gap = max(abs(r["loss_rel_gap"]) for r in sweep)
    wwt_gap = max(r["wwt_rel_gap"] for r in sweep)
    nrc_pos = max(max(r["gd_nrc1"], r["gd_nrc2"]) for r in sweep)
    converged = sum(bool(r["gd_converged"]) for r in sweep)
    return [
        f"- {len(sweep)} values of c/λmin in [{min(r['ratio'] for r in sweep):g}, {max(r['ratio'] for r in sweep):g}]"
        f" (λH = λW = sqrt(c)); gradient descent converged at {converged}/{len(sweep)}.",
        f"- largest |loss_GD - loss*| / loss*: {loss_gap:.2e}; largest ||W W^T - W* W*^T||_F (relative): {wwt_gap:.2e}.",
        f"- λH = λW > 0: largest NRC1 or NRC2 of the GD solution: {nrc_pos:.2e} (collapse).",
        f"- λH = λW = 0: after {int(zero['iteration'][-1])} GD iterations, loss {zero['loss'][-1]:.2e}, "
        f"NRC1 {zero['nrc1'][-1]:.3f}, NRC2 {zero['nrc2'][-1]:.3f} (no collapse).",
    ]


def summary_markdown(stages: Sequence[Stage], workdirs: pathlib.Path, timings: Sequence[Timing],
                     out: pathlib.Path, command: str) -> str:
    lines = ["# Quick reproduction: key final numbers", "",
             f"Generated by `{command}` from the workdirs under `{workdirs}`. Every number below is read "
             "from those runs' metrics.jsonl / summary.json (NRC metrics on the train split, paper "
             "definitions; NRC3 at the γ that minimizes it at the final weights, searched on "
             "linspace(0, λmin, 1000), or γ = λH·λW for UFM-regularized runs). \"start\" is the "
             "evaluation at initialization. \"centered\" is the spec's variant with ht from h - mean(h): "
             "the paper's NRC1/NRC2 normalize uncentered features, so the mean feature direction "
             "(large for ReLU features) keeps them high until it, too, falls into the n-dimensional "
             "subspace, which takes far longer than these quick runs.", "",
             "## Training runs (Figures 2-6)", ""]
    rows = []
    for stage in stages:
        if stage.kind == "train":
            rows += training_rows(workdirs / stage.name)
    lines += training_table(rows)
    ufm = [s for s in stages if s.kind == "ufm_study"]
    if ufm:
        lines += ["", "## UFM study (closed form vs gradient descent; figures in ufm/)", ""]
        lines += ufm_study_lines(workdirs / ufm[0].name / "summary.json")
    lines += ["", "## Stage timings (`reused`: finished by an earlier run, with the times it took then)", "",
              "| stage | status | wall | CPU (process) |", "|---|---|---|---|"]
    lines += [f"| {t.stage} | {t.status} | {format_duration(t.wall_s)} | {format_duration(t.cpu_s)} |"
              for t in timings]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- the job
def reproduce(config: ml_collections.ConfigDict, out: str | pathlib.Path = "results/quick",
              workdirs: str | pathlib.Path = "workdirs/quick", *, fresh: bool = False, only: Sequence[str] = (),
              progress: bool = False, log: Callable[[str], None] = print_flushed) -> dict:
    """Runs the stages of `config` (configs/reproduce.py), then writes figures, table1.md,
    summary.md (and ufm/) into `out`.

    Returns {"timings": [...], "written": [paths], "wall_s", "cpu_s"}.
    """
    stages = stages_of(config, only)
    check_epochs_scale(config.epochs_scale)
    out, workdirs = pathlib.Path(out), pathlib.Path(workdirs)
    t0, c0 = time.perf_counter(), time.process_time()
    timings = run_stages(stages, config, workdirs, fresh=fresh, progress=progress, log=log)
    log("figures and tables ...")
    from nrc_jax.plot import plot_workdirs

    train_dirs = [workdirs / s.name for s in stages if s.kind == "train"]
    written = plot_workdirs(train_dirs, out) if train_dirs else []
    out.mkdir(parents=True, exist_ok=True)
    write_table1(config.table1, out / "table1.md")
    for stage in stages:
        if stage.kind == "ufm_study":
            target = out / "ufm"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(workdirs / stage.name, target, ignore=shutil.ignore_patterns(DONE_FILE))
    stage_sums = (sum(t.wall_s for t in timings), sum(t.cpu_s for t in timings))
    timings.append(Timing("sum of the stages", "", *stage_sums))
    timings.append(Timing("total", "this invocation", time.perf_counter() - t0, time.process_time() - c0))
    command = "python -m nrc_jax.reproduce" + (f" --only {' '.join(only)}" if only else "") + \
        (f" --config.epochs_scale={config.epochs_scale:g}" if config.epochs_scale != 1.0 else "")
    (out / "summary.md").write_text(summary_markdown(stages, workdirs, timings, out, command))
    log(f"done in {format_duration(timings[-1].wall_s)} wall ({format_duration(timings[-1].cpu_s)} CPU): "
        f"see {out / 'summary.md'} and {out / 'index.md'}")
    return {"timings": timings, "written": written, "wall_s": timings[-1].wall_s, "cpu_s": timings[-1].cpu_s}


def _define_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_string("out", "results/quick", "folder for figures, tables and summary.md", flag_values=fv)
    flags.DEFINE_string("workdirs", "workdirs/quick", "folder of the stages' workdirs", flag_values=fv)
    flags.DEFINE_boolean("fresh", False, "start every stage over (delete its workdir)", flag_values=fv)
    flags.DEFINE_list("only", [], "STAGE,STAGE (or STAGE STAGE ...): run only these stages (the names in the "
                      "config's `order`)", flag_values=fv)


def parse_args(argv: Sequence[str] | None):
    """The command line as a namespace: config (configs/reproduce.py unless --config), out,
    workdirs, fresh, only."""
    from nrc_jax import cli
    from nrc_jax.io.config_files import repository_config_path

    fv, _ = cli.parse(argv, _define_flags, prog="python -m nrc_jax.reproduce", usage="[flags]", doc=__doc__,
                      list_flags=("only",), config=repository_config_path("reproduce"))
    return cli.namespace(fv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # TFDS announces every expert data configuration at WARNING
    try:
        reproduce(args.config, args.out, args.workdirs, fresh=args.fresh, only=args.only,
                  progress=sys.stderr.isatty())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
