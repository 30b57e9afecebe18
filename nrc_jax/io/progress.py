"""Console progress of a training run: a tqdm bar on a terminal, absl log lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

from absl import logging as absl_logging


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
