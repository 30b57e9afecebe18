"""Look into a run directory without training.

  python -m nrc_jax.inspect DIR [--step N] [--json] [--member K] [--export OUT.npz] [--float64]

Prints the config, the saved checkpoint steps, the parameter shapes (leading axis: sweep members),
the latest logged metrics and W W^T of every member at the chosen step (default: the newest
readable one; unreadable newer steps are named on stderr, as `main` skips them on resume).
`--export` also loads the data set and writes, for sweep member K (default 0), the train-set
`features` (M, d), `weights` (n, d), `bias` (n,), `targets` (M, n), `predictions` (M, n) and, when
the run had `metrics.per_layer`, `layer_features_<i>` (M, d_i) for each hidden layer.
`--float64` recomputes every member's train-set metrics from the checkpoint twice, from the same
float32 features: in float32 (as training logs them) and in float64. Where the logged NRC values
stop falling near 1e-10, this tells the collapse apart from float32's rounding floor.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np


def _load_config(workdir: str):
    import ml_collections

    from nrc_jax.errors import DataError
    from nrc_jax.io import run_files

    config = run_files.read_config(workdir)
    if config is None:
        raise DataError(f"{workdir} is not a run directory: no {run_files.CONFIG_FILE} in it")
    return ml_collections.ConfigDict(config)


def _tuples(config):
    """config.json stores tuples as lists; the model code wants tuples (hashable module fields)."""
    for key in ("widths", "channels"):
        if key in config.model:
            config.model[key] = tuple(config.model[key])
    return config


def _read_step(ckpt, config, step: int) -> tuple[dict, Any, Any]:
    """(meta, trainer, state) of one checkpoint step; raises whatever Orbax raises for a bad one."""
    from nrc_jax.engine import learner, memory

    meta = ckpt.restore_meta(step)
    trainer = memory.Trainer(config, learner.make_mesh(1), tuple(meta["input_shape"]), meta["out_dim"])
    return meta, trainer, ckpt.restore_state(step, trainer.abstract_state(meta["members"]))


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}"


def load_run(workdir: str, step: int | None = None) -> dict[str, Any]:
    """The run at `step` (default: the newest readable step): config, steps, meta, host state, rows,
    the Trainer and `skipped`, [(step, reason)] of newer steps that failed to read."""
    from nrc_jax.errors import DataError
    from nrc_jax.io import checkpoints, run_files

    config = _tuples(_load_config(workdir))
    ckpt = checkpoints.Checkpoints(workdir, meta={}, max_to_keep=config.train.max_to_keep, read_only=True)
    skipped: list[tuple[int, str]] = []
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise DataError(f"{ckpt.directory} holds no checkpoint")
        if step is not None and step not in steps:
            raise DataError(f"--step {step}: no checkpoint of that epoch in {ckpt.directory}; saved steps: {steps}")
        for candidate in ([step] if step is not None else reversed(steps)):
            try:
                meta, trainer, state = _read_step(ckpt, config, candidate)
                step = candidate
                break
            except Exception as e:  # noqa: BLE001 - any unreadable step: say which and why, try the next
                skipped.append((candidate, _reason(e)))
        else:
            tried = "; ".join(f"{ckpt.directory}/{s}: {reason}" for s, reason in skipped)
            raise DataError(f"no readable checkpoint in {ckpt.directory} ({tried})")
    finally:
        ckpt.close()
    rows = run_files.read_metrics(workdir)
    return {"config": config, "steps": steps, "step": step, "meta": meta, "state": state,
            "trainer": trainer, "rows": rows, "skipped": skipped}


def describe(run: dict) -> dict:
    """JSON-ready description: config, steps, parameter shapes, latest metrics, W W^T per member."""
    import jax

    from nrc_jax.engine import models

    state = run["state"]
    shapes = {jax.tree_util.keystr(path): list(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
    weights = np.asarray(jax.vmap(lambda p: models.head_params(p)[0])(state.params))
    latest_epoch = max((r["epoch"] for r in run["rows"] if r["epoch"] <= run["step"]), default=None)
    return {
        "config": run["config"].to_dict(),
        "steps": run["steps"],
        "step": run["step"],
        "skipped_unreadable": [{"step": s, "reason": r} for s, r in run.get("skipped", [])],
        "members": run["meta"]["members"],
        "param_shapes": shapes,
        "num_params_per_member": int(sum(np.prod(s[1:]) for s in shapes.values())),
        "latest_metrics": [r for r in run["rows"] if r["epoch"] == latest_epoch],
        "wwt": [(w @ w.T).tolist() for w in weights],
    }


def _train_set(run: dict):
    """(RegressionData, its device copy) of the run's data set, as training evaluates it."""
    from nrc_jax.data import load_dataset
    from nrc_jax.engine import memory

    data = load_dataset(run["config"].data)
    return data, memory.put_data(data, run["trainer"].mesh, run["config"].train.eval_chunk)


def _member_outputs(run: dict, device_data, member: int):
    """(predictions (M, n), features (M, d), hidden list, W (n, d), b (n,)) of one member, train set."""
    import jax

    from nrc_jax.engine import models

    predictions, features, hidden = run["trainer"].features(run["state"], device_data, member)
    w, b = models.head_params(jax.tree.map(lambda a: a[member], run["state"].params))
    return predictions, features, hidden, np.asarray(w), np.asarray(b)


def export(run: dict, out_path: str, member: int = 0) -> dict[str, np.ndarray]:
    """Writes the train-set features etc. of one sweep member at the run's step to `out_path`."""
    from nrc_jax.errors import ConfigError

    members = run["meta"]["members"]
    if not 0 <= member < len(members):
        raise ConfigError(f"--member {member}: the run has {len(members)} sweep members (0..{len(members) - 1})")
    data, device_data = _train_set(run)
    predictions, features, hidden, w, b = _member_outputs(run, device_data, member)
    arrays = {"features": features, "weights": w, "bias": b, "targets": np.asarray(data.y_train),
              "predictions": predictions, "epoch": np.asarray(run["step"])}
    if run["config"].metrics.per_layer:
        arrays.update({f"layer_features_{i}": h for i, h in enumerate(hidden)})
    np.savez(out_path, **arrays)
    return arrays


PRECISION_KEYS = ("nrc1", "nrc1_centered", "nrc1_unnormalized", "nrc2", "nrc2_centered", "nrc2_w_pca",
                  "nrc3", "train_mse")


def precision_check(run: dict) -> list[dict]:
    """Per member: {"member", "sweep", "float32": {key: value}, "float64": {key: value}} of the
    PRECISION_KEYS, from the train-set features (M, d) of the checkpoint's float32 forward pass."""
    import jax

    data, device_data = _train_set(run)
    checks = []
    for member, info in enumerate(run["meta"]["members"]):
        predictions, features, _, w, _ = _member_outputs(run, device_data, member)
        arrays = (features, np.asarray(data.y_train), predictions, w)
        values = {"float32": _train_metrics(*arrays)}
        with jax.enable_x64(True):  # only for these calls: training code stays float32
            values["float64"] = _train_metrics(*(a.astype(np.float64) for a in arrays))
        checks.append({"member": member, "sweep": info.get("sweep", {}), **values})
    return checks


def _train_metrics(features, targets, predictions, weights) -> dict[str, float]:
    from nrc_jax.core import metrics

    sigma = metrics.target_stats(targets)["sigma"]
    out = metrics.metrics_from_features(features, targets, predictions, weights, sigma=sigma)
    out["train_mse"] = out["mse"]
    return {key: float(out[key]) for key in PRECISION_KEYS}


def _print_precision(checks: list[dict]) -> None:
    for check in checks:
        print(f"member {check['member']} {check['sweep']}: train-set metrics in float32 / float64")
        for key in PRECISION_KEYS:
            print(f"  {key}: {check['float32'][key]:.6g} / {check['float64'][key]:.6g}")


def _print_text(info: dict) -> None:
    print("config:")
    print(json.dumps(info["config"], indent=1))
    print(f"saved steps (epochs): {info['steps']}; showing step {info['step']}")
    print(f"parameters ({info['num_params_per_member']} per member; leading axis = sweep members):")
    for name, shape in info["param_shapes"].items():
        print(f"  {name}: {tuple(shape)}")
    for row in info["latest_metrics"]:
        keys = ("train_mse", "test_mse", "train_r2", "test_r2", "nrc1", "nrc2", "nrc3", "nrc3_gamma")
        print(f"epoch {row['epoch']} member {row['sweep_index']} {row['sweep']}: "
              + ", ".join(f"{k}={row[k]:.6g}" for k in keys if k in row))
    for k, wwt in enumerate(info["wwt"]):
        print(f"member {k} W W^T at step {info['step']}: {np.array2string(np.asarray(wwt), precision=5)}")


def _define_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_integer("step", None, "checkpoint epoch (default: latest)", flag_values=fv)
    flags.DEFINE_boolean("json", False, "print one JSON object", flag_values=fv)
    flags.DEFINE_string("export", None, "OUT.npz: write train-set features etc.", flag_values=fv)
    flags.DEFINE_integer("member", 0, "sweep member for --export", flag_values=fv)
    flags.DEFINE_boolean("float64", False, "recompute every member's train-set metrics in float32 and "
                         "float64 from the checkpoint's features", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    from nrc_jax import cli

    fv, (workdir,) = cli.parse(argv, _define_flags, prog="python -m nrc_jax.inspect", usage="WORKDIR [flags]",
                               doc=__doc__, num_args=(1, 1))
    args = cli.namespace(fv, workdir=workdir)
    from absl import logging as absl_logging

    from nrc_jax.errors import UserError
    from nrc_jax.io import checkpoints

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about read-only managers
    checkpoints.silence_async_noise()
    try:
        run = load_run(args.workdir, args.step)
        for step, reason in run["skipped"]:
            print(f"warning: checkpoint of epoch {step} is unreadable ({reason}); read the checkpoint of "
                  f"epoch {run['step']} instead", file=sys.stderr)
        info = describe(run)
        if args.export:
            export(run, args.export, args.member)
            info["exported"] = os.path.abspath(args.export)
        if args.float64:
            info["precision_check"] = precision_check(run)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
    else:
        _print_text(info)
        if args.float64:
            _print_precision(info["precision_check"])
        if args.export:
            print(f"exported member {args.member} at step {info['step']} to {info['exported']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
