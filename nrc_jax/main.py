"""Command line: `python -m nrc_jax.main --config=configs/mlp.py --workdir=DIR [--config.a.b=v ...]`.

Re-running the same command resumes from the latest checkpoint in DIR. User errors (bad config,
missing data, divergence) are printed without a traceback and exit with status 2; SIGINT/SIGTERM save a
checkpoint once the chunk of epochs in flight has been evaluated and exit with status 130.
"""
from __future__ import annotations

import logging as pylogging
import os
import sys

# LAPACK (eigh in every evaluation) runs on OpenBLAS, whose extra threads spin-wait against XLA's
# on small CPUs: one thread measured 212 vs 376 ms CPU per Hopper-size evaluation on 2 cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a python config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory (or gs:// / s3:// URL) for checkpoints, metrics and summaries.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        show_own_info_only()
    from nrc_jax.errors import UserError
    from nrc_jax.io import checkpoints, distributed

    checkpoints.silence_async_noise()

    try:
        distributed.maybe_initialize()  # multi-process start-up, before any JAX computation
        from nrc_jax.engine import train

        logging.info("workdir %s", _WORKDIR.value)
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        distributed.exit_process(2)
    except KeyboardInterrupt as e:  # SIGINT/SIGTERM: train saved a checkpoint if it was in its loop
        print(f"{e or 'interrupted'}; run the same command again to resume from the latest checkpoint",
              file=sys.stderr)
        distributed.exit_process(130)
    except Exception:  # a collective failing because a peer vanished: the peer watch says which
        distributed.wait_for_peer_watch()
        raise


class _OwnInfoOnly(pylogging.Filter):
    """Passes warnings and errors from anywhere, INFO and below only from nrc_jax."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return (record.levelno >= pylogging.WARNING or record.name.startswith("nrc_jax")
                or f"{os.sep}nrc_jax{os.sep}" in record.pathname)


def show_own_info_only() -> None:
    """absl INFO for nrc_jax's own lines (progress without a terminal, data generation), not for
    the libraries' (Orbax logs every save step at INFO, TFDS its builder configs)."""
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
        handler.addFilter(_OwnInfoOnly())


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad config file, config argument or override (a mistyped field)
    is one `error:` line and exit status 2, not a traceback."""
    from nrc_jax import cli

    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value.keys()  # a config file that failed to load raises only when used
        return rest
    except (KeyError, AttributeError) as e:  # --config.a.b=v naming a field the config lacks
        print(f"error: {cli.unknown_field_message(e, argv)}", file=sys.stderr)
    except (flags.Error, OSError, ValueError, TypeError) as e:
        print(f"error: {cli.first_and_last_line(e)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
