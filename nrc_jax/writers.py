"""Run outputs (written by process 0 only): config.json, metrics.jsonl, TensorBoard, summary.json,
and the console progress bar. Also the sweep expansion, since every row carries its sweep values.

metrics.jsonl holds one JSON object per evaluation and sweep member; each batch of rows is written
whole, flushed and fsync'ed, so a kill leaves at most one torn last line, which `read_metrics`
ignores. The writer also keeps every row logged so far (`RunWriter.history`); it travels with each
checkpoint, so on resume metrics.jsonl and the TensorBoard scalars are rewritten to exactly the rows
up to the restored epoch (a deleted, truncated or edited file is repaired). Checkpoints made before
the history existed fall back to the file's own rows up to that epoch. A file that vanishes during
the run is re-created, with every row so far, at the next write (with a warning).
"""
from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging as absl_logging

from nrc_jax import deep, metrics
from nrc_jax.errors import ConfigError

SWEEP_FIELDS = ("seed", "lr", "weight_decay", "lambda_h", "lambda_w")
METRICS_FILE, SUMMARY_FILE, CONFIG_FILE = "metrics.jsonl", "summary.json", "config.json"

log = logging.getLogger(__name__)
# Columns `RunWriter.finish` rewrites in every row (at the final best gamma).
FINAL_REWRITTEN = ("nrc3", "nrc3_gamma")


# --------------------------------------------------------------------- sweeps
def default_sweep_config() -> ml_collections.ConfigDict:
    """Empty tuples: not swept. mode "product" (Cartesian, in SWEEP_FIELDS order) or "zip"."""
    return ml_collections.ConfigDict({
        "mode": "product", "seed": (), "lr": (), "weight_decay": (), "lambda_h": (), "lambda_w": ()})


def sweep_members(config: ml_collections.ConfigDict) -> list[dict]:
    """The K models of a run: [{"seed", "lr", "weight_decay", "lambda_h", "lambda_w", "sweep"}].

    Unswept fields take config.seed / config.optim.*; "sweep" holds only the swept ones.
    """
    base = {"seed": int(config.seed), "lr": float(config.optim.lr),
            "weight_decay": float(config.optim.weight_decay), "lambda_h": float(config.optim.lambda_h),
            "lambda_w": float(config.optim.lambda_w)}
    swept = {f: tuple(config.sweep[f]) for f in SWEEP_FIELDS if len(config.sweep[f])}
    if config.sweep.mode == "product":
        combos = [dict(zip(swept, values)) for values in itertools.product(*swept.values())]
    elif config.sweep.mode == "zip":
        lengths = {f: len(v) for f, v in swept.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"sweep.mode='zip' needs sweep tuples of one length, got {lengths}")
        combos = [dict(zip(swept, values)) for values in zip(*swept.values())] or [{}]
    else:
        raise ConfigError(f"sweep.mode={config.sweep.mode!r}: allowed 'product', 'zip'")
    members = []
    for combo in combos:
        combo = {f: (int(v) if f == "seed" else float(v)) for f, v in combo.items()}
        members.append({**base, **combo, "sweep": combo})
    return members


# --------------------------------------------------------------------- rows
def _plain(x: Any) -> Any:
    a = np.asarray(x)
    return a.item() if a.ndim == 0 else a.tolist()


def _nan_to_none(x: Any) -> Any:
    """Non-finite floats become null so every metrics.jsonl line is strict JSON (jq, pandas)."""
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def _none_to_nan(x: Any) -> Any:
    if x is None:
        return float("nan")
    if isinstance(x, dict):
        return {k: v if k == "sweep" else _none_to_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return x


def json_line(row: dict) -> str:
    return json.dumps(_nan_to_none(row), allow_nan=False) + "\n"


def rows_to_json(rows: list[dict]) -> list[dict]:
    """Rows as strict-JSON values (non-finite floats null), as the checkpoint's history item holds them."""
    return [_nan_to_none(r) for r in rows]


def rows_from_json(rows: list[dict]) -> list[dict]:
    """The inverse of `rows_to_json` (null back to NaN), as `read_metrics` returns rows."""
    return [_none_to_nan(r) for r in rows]


# NRC3 with gamma searched at each evaluation's own weights; the spec's `nrc3` uses the gamma that is
# best at the final weights for every epoch, so it is added to the rows when the run finishes.
EPOCH_BEST_NRC3 = {"nrc3": "nrc3_epoch_best", "nrc3_gamma": "nrc3_epoch_best_gamma"}


def metric_rows(out: dict, members: list[dict], lambda_min: float, time_s: float, *,
                gamma_searched: bool = True) -> list[dict]:
    """One row per sweep member from the host copy of `Trainer.evaluate`'s (K, ...) arrays.

    gamma_searched: NRC3's gamma was searched per evaluation (weight-decay runs): its columns are
      named nrc3_epoch_best*; False (UFM-regularized runs, gamma = lambda_H*lambda_W) keeps `nrc3`.
    """
    rename = EPOCH_BEST_NRC3 if gamma_searched else {}
    rows = []
    for k, member in enumerate(members):
        row = {"epoch": int(out["epoch"][k]), "sweep_index": k, "sweep": member["sweep"]}
        row.update({rename.get(key, key): _plain(v[k]) for key, v in sorted(out.items())
                    if key not in ("epoch", "pca_basis", "layers")})
        if "layers" in out:  # metrics.per_layer: [{"layer": i, "width": d_i, ...}, ...]
            row["layers"] = deep.layer_rows({key: v[k] for key, v in out["layers"].items()})
        row["lambda_min"] = lambda_min
        row["time_s"] = round(time_s, 3)
        rows.append(row)
    return rows


def read_metrics(workdir: str) -> list[dict]:
    """Every complete row of workdir/metrics.jsonl (a torn last line is skipped)."""
    path = os.path.join(workdir, METRICS_FILE)
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(_none_to_nan(json.loads(line)))
                except json.JSONDecodeError:
                    continue
    return rows


def _replace_atomic(path: str, text: str) -> None:
    """Writes `text` to path + ".tmp", fsyncs and renames it over `path`; a failed write (a full
    disk) removes the temporary file and leaves `path` as it was."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj: Any) -> None:
    _replace_atomic(path, json.dumps(_nan_to_none(obj), indent=1))


def _write_lines_atomic(path: str, rows: list[dict]) -> None:
    _replace_atomic(path, "".join(json_line(r) for r in rows))


def _scalars(row: dict) -> dict[str, float]:
    """TensorBoard scalars of a row: numbers, and list entries as name/i (or name/i_j)."""
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

    return Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in _scalars(row).items()])


def member_label(member: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in member["sweep"].items()) or "run"


# --------------------------------------------------------------------- the writer
class RunWriter:
    """All file outputs of a run; a no-op on processes other than 0 (`enabled=False`), which still
    keep `history` (every process saves it with its checkpoints)."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, members: list[dict], *,
                 resume_epoch: int = 0, enabled: bool = True, history: list[dict] | None = None):
        """`history`: the rows saved with the checkpoint resumed from (`rows_to_json` form), or None
        (a fresh start, or a checkpoint without history: the file's rows up to `resume_epoch`)."""
        self.workdir, self.members, self.enabled = workdir, members, enabled
        self.config = config
        self._tb, self._bar, self._file = [], None, None
        self.path = os.path.join(workdir, METRICS_FILE)
        if history is not None:
            self.history = [r for r in rows_from_json(history) if r["epoch"] <= resume_epoch]
        else:
            self.history = [r for r in read_metrics(workdir) if r["epoch"] <= resume_epoch] if resume_epoch else []
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json_best_effort()))
        self._warn_if_repaired(resume_epoch)
        _write_lines_atomic(self.path, self.history)
        self._file = open(self.path, "a")
        self._tb = _tensorboard_writers(workdir, members, config)
        self._log_tensorboard(self.history)
        if config.train.progress_bar:
            self._bar = progress_reporter(config.train.epochs, resume_epoch)

    def _warn_if_repaired(self, resume_epoch: int) -> None:
        """Says so when metrics.jsonl did not hold exactly the rows of the checkpoint resumed from."""
        if not resume_epoch:
            return
        def comparable(rows: list[dict]) -> list[str]:  # without the columns a finished run rewrites
            return [json_line({k: v for k, v in r.items() if k not in FINAL_REWRITTEN}) for r in rows]

        on_file = [r for r in read_metrics(self.workdir) if r["epoch"] <= resume_epoch]
        if comparable(on_file) != comparable(self.history):
            log.warning("%s held %d rows up to epoch %d where the checkpoint holds %d: rewritten from the "
                        "checkpoint", self.path, len(on_file), resume_epoch, len(self.history))

    def write(self, rows: list[dict]) -> None:
        """Appends the rows of one evaluation (all members) and logs them to TensorBoard."""
        self.history.extend(rows)
        if not self.enabled:
            return
        if self._reopen_if_vanished(len(rows)):
            return  # re-created with the whole history, these rows included
        self._file.write("".join(json_line(r) for r in rows))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._log_tensorboard(rows)
        if self._bar is not None:
            self._bar.report(rows[0])

    def _log_tensorboard(self, rows: list[dict]) -> None:
        for row in rows:
            _add_row(self._tb[row["sweep_index"]], row)
        for tb in self._tb:
            tb.flush()

    def _reopen_if_vanished(self, new_rows: int) -> bool:
        """Re-creates metrics.jsonl or a TensorBoard event file deleted during the run, from the
        history (whose last `new_rows` rows are not written yet); True if metrics.jsonl was."""
        logged = self.history[:len(self.history) - new_rows]
        for k, tb in enumerate(self._tb):
            if _event_file_present(tb):
                continue
            earlier = [r for r in logged if r["sweep_index"] == k]
            log.warning("the TensorBoard events of %s vanished during the run; re-created with the %d rows "
                        "logged so far", tb.logdir, len(earlier))
            tb.close()
            self._tb[k] = _tensorboard_writers(self.workdir, [self.members[k]], self.config)[0]
            for row in earlier:
                _add_row(self._tb[k], row)
        try:
            same = os.path.samestat(os.fstat(self._file.fileno()), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if same:
            return False
        log.warning("%s vanished during the run; re-created with the %d rows logged so far", self.path,
                    len(self.history))
        self._file.close()
        _write_lines_atomic(self.path, self.history)
        self._file = open(self.path, "a")
        self._log_tensorboard(self.history[len(self.history) - new_rows:])
        return True

    def finish(self, weights: np.ndarray, sigma: np.ndarray, lambda_min: float, *, ufm: bool) -> dict | None:
        """Writes summary.json from the final head weights (K, n, d) and the logged rows."""
        if not self.enabled:
            return None
        rows = [dict(r) for r in self.history]  # finish rewrites nrc3 in these, not in the rows returned
        summary = {"members": [member_summary(k, weights[k], sigma, lambda_min, member,
                                              [r for r in rows if r["sweep_index"] == k], ufm=ufm)
                               for k, member in enumerate(self.members)]}
        summary["data"] = target_block(sigma)
        if not ufm:
            self._add_final_gamma_nrc3(rows, summary["members"])
        write_json_atomic(os.path.join(self.workdir, SUMMARY_FILE), summary)
        return summary

    def _add_final_gamma_nrc3(self, rows: list[dict], members: list[dict]) -> None:
        """Rewrites metrics.jsonl with `nrc3` (and `nrc3_gamma`) at each member's final best gamma."""
        at_final = {(m["sweep_index"], e): v for m in members for e, v in zip(m["epochs"], m["nrc3_over_epochs"])}
        for row in rows:
            row["nrc3"] = at_final.get((row["sweep_index"], row["epoch"]))
            row["nrc3_gamma"] = members[row["sweep_index"]]["best_gamma"]
        for m in members:
            if m["final"] is not None:
                m["final"] = next(r for r in reversed(rows) if r["sweep_index"] == m["sweep_index"])
        if self._file is not None:
            self._file.close()
            self._file = None
        _write_lines_atomic(os.path.join(self.workdir, METRICS_FILE), rows)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for tb in self._tb:
            tb.close()
        if self._bar is not None:
            self._bar.close()


def _tensorboard_writers(workdir: str, members: list[dict], config: ml_collections.ConfigDict | None = None) -> list:
    """A fresh event file per member; older event files there are removed (the writer logs the
    history again, so the scalars are exactly the rows of metrics.jsonl). With `config`, each
    starts with the run's config as text and the member's hyperparameters (HParams tab)."""
    from tensorboardX import SummaryWriter  # TensorBoard event files without TensorFlow

    writers = []
    for m in members:
        logdir = os.path.join(workdir, "tensorboard", member_label(m))
        for old in glob.glob(os.path.join(glob.escape(logdir), "events.out.tfevents.*")):
            os.remove(old)
        writers.append(SummaryWriter(logdir))
        if config is not None:
            _describe_run(writers[-1], config, m)
    return writers


HPARAM_METRICS = ("train_mse", "test_mse", "nrc1", "nrc2", "nrc3", "loss")


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


def _add_row(tb, row: dict) -> None:
    # One event with every scalar: 0.7 ms per row, where 36 add_scalar calls took 6-8 ms.
    tb._get_file_writer().add_summary(_summary(row), global_step=row["epoch"])  # noqa: SLF001


def _event_file_present(tb) -> bool:
    """False when the writer's event file (or its folder) was deleted under it."""
    try:
        return os.path.exists(tb._get_file_writer().event_writer._ev_writer._file_name)  # noqa: SLF001
    except AttributeError:  # another tensorboardX layout: the folder at least
        return os.path.isdir(tb.logdir)


class BarProgress:
    """tqdm on a terminal: epochs done, rate, time left, and the first member's key metrics."""

    def __init__(self, total: int, initial: int):
        import tqdm

        self._bar = tqdm.tqdm(total=total, initial=initial, unit="epoch", dynamic_ncols=True, mininterval=1.0)

    def report(self, row: dict) -> None:
        self._bar.update(row["epoch"] - self._bar.n)
        self._bar.set_postfix(train_mse=f"{row['train_mse']:.4g}", nrc1=f"{row['nrc1']:.3g}",
                              nrc2=f"{row['nrc2']:.3g}", refresh=False)

    def close(self) -> None:
        self._bar.close()


class LogProgress:
    """Without a terminal (output to a file, a batch job): an absl INFO line per evaluation, at
    most every `interval_s` seconds (and always at the last epoch), instead of tqdm's carriage returns:
    `epoch 120/1000 (12%): train_mse 0.0123, test_mse 0.0145, nrc1 0.412, nrc2 0.0871; 48.1 epochs/s, ETA 18s`."""

    def __init__(self, total: int, initial: int, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.total, self.interval_s, self._clock = total, interval_s, clock
        self._last_epoch, self._last_time, self._last_line = initial, clock(), None

    def report(self, row: dict) -> None:
        now, epoch = self._clock(), row["epoch"]
        if epoch < self.total and self._last_line is not None and now - self._last_line < self.interval_s:
            return
        rate = (epoch - self._last_epoch) / max(now - self._last_time, 1e-9)
        eta = ("done" if epoch >= self.total else f"ETA {_duration((self.total - epoch) / rate)}" if rate > 0
               else "starting")
        metrics_text = ", ".join(f"{k} {row[k]:.4g}" for k in ("train_mse", "test_mse", "nrc1", "nrc2")
                                 if isinstance(row.get(k), (int, float)))
        absl_logging.info("epoch %d/%d (%d%%): %s; %.3g epochs/s, %s", epoch, self.total,
                          100 * epoch // max(self.total, 1), metrics_text, rate, eta)
        self._last_epoch, self._last_time, self._last_line = epoch, now, now

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_reporter(total: int, initial: int, stream: Any = None) -> BarProgress | LogProgress:
    """tqdm when `stream` (default stderr, where both write) is a terminal, else log lines."""
    stream = sys.stderr if stream is None else stream
    return BarProgress(total, initial) if stream.isatty() else LogProgress(total, initial)


# --------------------------------------------------------------------- summary
def target_block(sigma: np.ndarray) -> dict:
    """summary.json's `data` block: n, the eigenvalues of the target covariance (n, n), descending,
    lambda_min and lambda_max (what the plots' UFM predictions and Table 1 read)."""
    eigenvalues = np.linalg.eigvalsh(0.5 * (sigma + sigma.T))[::-1]
    return {"n": int(sigma.shape[0]), "eigenvalues": eigenvalues.tolist(),
            "lambda_min": float(eigenvalues[-1]), "lambda_max": float(eigenvalues[0])}


def _psd_root(wwt: np.ndarray) -> np.ndarray:
    """An (n, n) matrix R with R R^T = wwt (NRC3 depends on W only through W W^T)."""
    values, vectors = np.linalg.eigh(0.5 * (wwt + wwt.T))
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def member_summary(index: int, weights: np.ndarray, sigma: np.ndarray, lambda_min: float, member: dict,
                   rows: list[dict], *, ufm: bool) -> dict:
    """NRC3-vs-gamma at the final W (n, d); the best gamma (UFM-regularized: lambda_H * lambda_W,
    not searched); NRC3 of every logged epoch recomputed at that gamma from the logged W W^T."""
    gammas, curve = metrics.nrc3_curve(weights, sigma)
    if ufm:
        gamma = member["lambda_h"] * member["lambda_w"]
        value = float(metrics.nrc3(weights, sigma, gamma))
    else:
        gamma, value = (float(v) for v in metrics.best_gamma(weights, sigma))
    if rows:
        roots = jnp.asarray(np.stack([_psd_root(np.asarray(r["wwt"], float)) for r in rows]), jnp.float32)
        over_epochs = jax.vmap(metrics.nrc3, in_axes=(0, None, None))(roots, jnp.asarray(sigma, jnp.float32),
                                                                         jnp.asarray(gamma, jnp.float32))
    else:
        over_epochs = []
    return {
        "sweep_index": index,
        "sweep": member["sweep"],
        "gammas": np.asarray(gammas).tolist(),
        "nrc3_curve": np.asarray(curve).tolist(),
        "best_gamma": float(gamma),
        "best_gamma_over_lambda_min": float(gamma) / lambda_min if lambda_min > 0 else None,
        "best_nrc3": value,
        "epochs": [r["epoch"] for r in rows],
        "nrc3_over_epochs": np.asarray(over_epochs).tolist(),
        "final": rows[-1] if rows else None,
    }


__all__ = ["sweep_members", "default_sweep_config", "metric_rows", "read_metrics", "RunWriter",
           "member_summary", "write_json_atomic", "SWEEP_FIELDS"]
