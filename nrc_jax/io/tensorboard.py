"""TensorBoard event files of a run, through tensorboardX (no TensorFlow): one folder per sweep
member, `tensorboard/<member_label>/`, holding the config as text, the member's hyperparameters
(HParams tab) and one event per metrics row with every scalar of that row.

The scalars are exactly the rows of metrics.jsonl: `event_writers` removes older event files of a
member, and `RunWriter` logs its whole history again on resume.

A workdir on an object store gets event files only when tensorboardX's client for it is installed
(google-cloud-storage for gs://, boto3 for s3://); otherwise one warning says so and the run goes
on without TensorBoard (metrics.jsonl holds every scalar).
"""
from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from nrc_jax.engine.sweeps import SWEEP_FIELDS, member_label
from nrc_jax.io import run_files

HPARAM_METRICS = ("train_mse", "test_mse", "nrc1", "nrc2", "nrc3", "loss")
# The module tensorboardX writes each object store with, and its pip package.
STORE_CLIENTS = {"gs": ("google.cloud.storage", "google-cloud-storage"), "s3": ("boto3", "boto3")}

log = logging.getLogger(__name__)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (google.cloud)
        return False


def unwritable_reason(workdir: str) -> str | None:
    """Why tensorboardX cannot write event files under `workdir`; None when it can (a local path,
    or an object store whose client is installed)."""
    if not run_files.is_url(workdir):
        return None
    scheme = workdir.split("://", 1)[0].lower()
    if scheme not in STORE_CLIENTS:
        return f"tensorboardX cannot write {scheme}:// paths"
    module, package = STORE_CLIENTS[scheme]
    return None if _importable(module) else f"tensorboardX writes {scheme}:// through {package}, which is not installed"


def scalars(row: dict) -> dict[str, float]:
    """TensorBoard scalars of a metrics row: numbers, and list entries as name/i (or name/i_j);
    per-layer entries as layer<i>/<name>."""
    out = {}
    for key, value in row.items():
        if key in ("epoch", "sweep_index", "sweep"):
            continue
        if key == "layers":
            out.update({f"layer{layer['layer']}/{name}": float(v) for layer in value
                        for name, v in layer.items() if name not in ("layer", "width")})
            continue
        a = np.asarray(value, dtype=float)
        if a.ndim == 0:
            out[key] = float(a)
        else:
            for idx in np.ndindex(a.shape):
                out[f"{key}/{'_'.join(map(str, idx))}"] = float(a[idx])
    return out


def _summary(row: dict):
    """A TensorBoard Summary protobuf holding every scalar of one metrics row."""
    from tensorboardX.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in scalars(row).items()])


def event_writers(workdir: str, members: list[dict], config: ml_collections.ConfigDict | None = None) -> list:
    """A fresh tensorboardX SummaryWriter per member; older event files there are removed. With
    `config`, each file starts with the run's config as text and the member's hyperparameters.
    None at all, after one warning, when tensorboardX cannot write there (`unwritable_reason`)."""
    from tensorboardX import SummaryWriter

    reason = unwritable_reason(workdir)
    if reason is not None:
        log.warning("no TensorBoard events in %s: %s; training goes on (metrics.jsonl holds every row)",
                    workdir, reason)
        return []
    writers = []
    for m in members:
        logdir = os.path.join(workdir, "tensorboard", member_label(m))
        _remove_event_files(logdir)
        writers.append(SummaryWriter(logdir))
        if config is not None:
            _describe_run(writers[-1], config, m)
    return writers


def _remove_event_files(logdir: str) -> None:
    if run_files.is_url(logdir):
        for old in run_files.workdir_path(logdir).glob("events.out.tfevents.*"):
            old.unlink()
        return
    for old in glob.glob(os.path.join(glob.escape(logdir), "events.out.tfevents.*")):
        os.remove(old)


def run_hparams(config: ml_collections.ConfigDict, member: dict) -> dict[str, Any]:
    """The member's hyperparameters for TensorBoard's HParams tab: its values of SWEEP_FIELDS (so
    sweep members compare there) and the config fields that name the experiment."""
    c = config
    return {**{f: member[f] for f in SWEEP_FIELDS}, "data": str(c.data.name), "arch": str(c.model.get("arch", "mlp")),
            "optimizer": str(c.optim.name), "regularizer": str(c.optim.regularizer), "epochs": int(c.train.epochs),
            "batch_size": int(c.train.batch_size)}


def _describe_run(tb, config: ml_collections.ConfigDict, member: dict) -> None:
    """Config text and hparams at the head of a member's event file (the scalars are the metric rows)."""
    from tensorboardX.summary import hparams

    text = json.dumps(json.loads(config.to_json_best_effort()), indent=2)
    tb.add_text("config", "```\n" + text + "\n```", global_step=0)  # markdown code block: kept verbatim
    writer = tb._get_file_writer()  # noqa: SLF001 - add_hparams would open another run folder
    for summary in hparams(run_hparams(config, member), {k: 0.0 for k in HPARAM_METRICS}):
        writer.add_summary(summary)


def add_row(tb, row: dict) -> None:
    """Logs every scalar of one metrics row at its epoch, as one event."""
    # One event per row rather than one add_scalar call per scalar: an order of magnitude cheaper.
    tb._get_file_writer().add_summary(_summary(row), global_step=row["epoch"])  # noqa: SLF001


def event_file_present(tb) -> bool:
    """False when the writer's event file (or its folder) was deleted under it."""
    try:
        return os.path.exists(tb._get_file_writer().event_writer._ev_writer._file_name)  # noqa: SLF001
    except AttributeError:  # another tensorboardX layout: the folder at least
        return os.path.isdir(tb.logdir)
