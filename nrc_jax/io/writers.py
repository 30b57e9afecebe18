"""Run outputs (written by process 0 only): config.json, metrics.jsonl, TensorBoard (`tensorboard`),
summary.json (`summary`) and the console progress (`progress`); file formats in `run_files`.

metrics.jsonl holds one JSON object per evaluation and sweep member; each batch of rows is written
whole, flushed and fsync'ed, so a kill leaves at most one torn last line, which
`run_files.read_metrics` ignores. The writer also keeps every row logged so far (`RunWriter.history`);
it travels with each checkpoint, so on resume metrics.jsonl and the TensorBoard scalars are
rewritten to exactly the rows up to the restored epoch (a deleted, truncated or edited file is
repaired). Checkpoints made before the history existed fall back to the file's own rows up to that
epoch. A file that vanishes during the run is re-created, with every row so far, at the next write
(with a warning).

On an object store (gs://, s3://) an object cannot be appended to, so metrics.jsonl is uploaded
whole at each evaluation (one upload is atomic, so a kill loses no row already logged; buffering
would lose the rows since the last upload when a TPU VM is preempted); its size grows with the
rows, which stay small next to a checkpoint. TensorBoard events go there only when tensorboardX's
client for that store is installed (`tensorboard.event_writers`).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from nrc_jax.core import deep
from nrc_jax.io import run_files, summary, tensorboard
from nrc_jax.io.progress import progress_reporter
from nrc_jax.io.run_files import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, json_line

log = logging.getLogger(__name__)


def _plain(x: Any) -> Any:
    a = np.asarray(x)
    return a.item() if a.ndim == 0 else a.tolist()


def metric_rows(out: dict, members: list[dict], lambda_min: float, time_s: float, *,
                gamma_searched: bool = True) -> list[dict]:
    """One row per sweep member from the host copy of `Trainer.evaluate`'s (K, ...) arrays.

    gamma_searched: NRC3's gamma was searched per evaluation (weight-decay runs): its columns are
      named nrc3_epoch_best*; False (UFM-regularized runs, gamma = lambda_H*lambda_W) keeps `nrc3`.
    """
    rename = summary.EPOCH_BEST_NRC3 if gamma_searched else {}
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
        self.path = run_files.workdir_path(workdir) / METRICS_FILE
        self.on_object_store = run_files.is_url(workdir)
        if history is not None:
            self.history = [r for r in run_files.rows_from_json(history) if r["epoch"] <= resume_epoch]
        else:
            self.history = [r for r in run_files.read_metrics(workdir) if r["epoch"] <= resume_epoch] if resume_epoch else []
        if not enabled:
            return
        if not self.on_object_store:  # a store has no folders (and gcsfs would create a missing bucket)
            run_files.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
        run_files.write_json_atomic(run_files.workdir_path(workdir) / CONFIG_FILE,
                                    json.loads(config.to_json_best_effort()))
        self._warn_if_repaired(resume_epoch)
        run_files.write_lines_atomic(self.path, self.history)
        if not self.on_object_store:
            self._file = self.path.open("a")
        self._tb = tensorboard.event_writers(workdir, members, config)
        self._log_tensorboard(self.history)
        if config.train.progress_bar:
            self._bar = progress_reporter(config.train.epochs, resume_epoch)

    def _warn_if_repaired(self, resume_epoch: int) -> None:
        """Says so when metrics.jsonl did not hold exactly the rows of the checkpoint resumed from."""
        if not resume_epoch:
            return
        def comparable(rows: list[dict]) -> list[str]:  # without the columns a finished run rewrites
            return [json_line({k: v for k, v in r.items() if k not in summary.FINAL_REWRITTEN}) for r in rows]

        on_file = [r for r in run_files.read_metrics(self.workdir) if r["epoch"] <= resume_epoch]
        if comparable(on_file) != comparable(self.history):
            log.warning("%s held %d rows up to epoch %d where the checkpoint holds %d: rewritten from the "
                        "checkpoint", self.path, len(on_file), resume_epoch, len(self.history))

    def write(self, rows: list[dict]) -> None:
        """Appends the rows of one evaluation (all members) and logs them to TensorBoard (on an
        object store: uploads metrics.jsonl again, whole)."""
        self.history.extend(rows)
        if not self.enabled:
            return
        if self.on_object_store:
            run_files.write_lines_atomic(self.path, self.history)
        elif self._reopen_if_vanished(len(rows)):
            return  # re-created with the whole history, these rows included
        else:
            self._file.write("".join(json_line(r) for r in rows))
            self._file.flush()
            os.fsync(self._file.fileno())
        self._log_tensorboard(rows)
        if self._bar is not None:
            self._bar.report(rows[0])

    def _log_tensorboard(self, rows: list[dict]) -> None:
        if not self._tb:  # an object store tensorboardX cannot write to (warned at the start)
            return
        for row in rows:
            tensorboard.add_row(self._tb[row["sweep_index"]], row)
        for tb in self._tb:
            tb.flush()

    def _reopen_if_vanished(self, new_rows: int) -> bool:
        """Re-creates metrics.jsonl or a TensorBoard event file deleted during the run, from the
        history (whose last `new_rows` rows are not written yet); True if metrics.jsonl was."""
        logged = self.history[:len(self.history) - new_rows]
        for k, tb in enumerate(self._tb):
            if tensorboard.event_file_present(tb):
                continue
            earlier = [r for r in logged if r["sweep_index"] == k]
            log.warning("the TensorBoard events of %s vanished during the run; re-created with the %d rows "
                        "logged so far", tb.logdir, len(earlier))
            tb.close()
            self._tb[k] = tensorboard.event_writers(self.workdir, [self.members[k]], self.config)[0]
            for row in earlier:
                tensorboard.add_row(self._tb[k], row)
        try:
            same = os.path.samestat(os.fstat(self._file.fileno()), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if same:
            return False
        log.warning("%s vanished during the run; re-created with the %d rows logged so far", self.path,
                    len(self.history))
        self._file.close()
        run_files.write_lines_atomic(self.path, self.history)
        self._file = self.path.open("a")
        self._log_tensorboard(self.history[len(self.history) - new_rows:])
        return True

    def finish(self, weights: np.ndarray, sigma: np.ndarray, lambda_min: float, *, ufm: bool) -> dict | None:
        """Writes summary.json from the final head weights (K, n, d) and the logged rows; weight-decay
        runs also rewrite metrics.jsonl with `nrc3` at the final best gamma (`summary.run_summary`)."""
        if not self.enabled:
            return None
        rows = [dict(r) for r in self.history]  # nrc3 is rewritten in these, not in the rows returned
        doc = summary.run_summary(rows, self.members, weights, sigma, lambda_min, ufm=ufm)
        if not ufm:
            if self._file is not None:
                self._file.close()
                self._file = None
            run_files.write_lines_atomic(self.path, rows)
        run_files.write_json_atomic(run_files.workdir_path(self.workdir) / SUMMARY_FILE, doc)
        return doc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for tb in self._tb:
            tb.close()
        if self._bar is not None:
            self._bar.close()


