"""`python -m nrc_jax.data`: describe, export and tabulate the study's data sets.

  python -m nrc_jax.data describe NAME [--json] [--data.FIELD=VALUE ...]
      the paper's Table 1 row (name, train_size, test_size, input_shape, target_dim,
      target_correlation, lambda_min, lambda_max) from the training targets;
  python -m nrc_jax.data export NAME OUT.npz [--data.FIELD=VALUE ...]
      writes x_train, y_train, x_test, y_test of a set held in memory (tabular or small image sets);
  python -m nrc_jax.data table [NAME ...] [--json] [--data.FIELD=VALUE ...]
      Table 1 (markdown) for the given sets, by default every set made locally (no data.path needed);
  python -m nrc_jax.data list
      the known data set names.
`--data.FIELD=VALUE` sets a field of `default_data_config()` (ml_collections `config_flags`, typed
by the field's default, e.g. --data.train_size=500 --data.target_transform=zca); NAME sets
data.name, and `--path P` is short for --data.path=P. User errors (missing path, wrong layout,
non-finite values, unknown name or field, a value of the wrong type) print one `error:` line
without a traceback and exit 2.
"""
from __future__ import annotations

import copy
import json
import os
import re
import sys
import tempfile
import types
from typing import Any, Sequence

import ml_collections
import numpy as np

from nrc_jax.data import PATH_DATASETS, default_data_config, known_datasets, load_dataset
from nrc_jax.data.base import TABLE1_KEYS, table1_row
from nrc_jax.errors import DataError, UserError

EXIT_USER_ERROR = 2


def data_config(args: types.SimpleNamespace, name: str) -> ml_collections.ConfigDict:
    """The command line's data config (`--data.FIELD=VALUE` applied) for the set `name`."""
    cfg = copy.deepcopy(args.data)
    cfg.name = name
    return cfg


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE1_KEYS) + " |", "|" + "---|" * len(TABLE1_KEYS)]
    lines += ["| " + " | ".join(_format(row[k]) for k in TABLE1_KEYS) + " |" for row in rows]
    return "\n".join(lines)


def describe(args: types.SimpleNamespace) -> int:
    row = table1_row(load_dataset(data_config(args, args.name)))
    if args.json:
        print(json.dumps(row))
    else:
        width = max(len(k) for k in TABLE1_KEYS)
        for key in TABLE1_KEYS:
            print(f"{key:<{width}}  {_format(row[key])}")
    return 0


def write_npz_atomically(out: str, arrays: dict[str, np.ndarray]) -> None:
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def export(args: types.SimpleNamespace) -> int:
    data = load_dataset(data_config(args, args.name))
    if data.streamed:
        raise DataError(f"data set {data.name!r} is streamed from disk (larger than data.max_in_memory_mb); export "
                        f"writes sets held in memory: use smaller --data.train_size/test_size/image_size")
    arrays = {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test, "y_test": data.y_test}
    try:
        write_npz_atomically(args.out, arrays)
    except OSError as e:
        raise DataError(f"data set {data.name!r}: cannot write {args.out} ({e})") from e
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    return 0


def local_datasets() -> list[str]:
    return [name for name in known_datasets() if name not in PATH_DATASETS]


def table(args: types.SimpleNamespace) -> int:
    names = args.names or local_datasets()
    rows, failures = [], []
    for name in names:
        try:
            rows.append(table1_row(load_dataset(data_config(args, name))))
        except UserError as e:
            failures.append(f"{name}: {e}")
    if args.json:
        print(json.dumps(rows))
    elif rows:
        print(markdown_table(rows))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return EXIT_USER_ERROR if failures else 0


def list_names(_: types.SimpleNamespace) -> int:
    for name in known_datasets():
        print(name + ("" if name in local_datasets() else "  (needs data.path)"))
    return 0


# command: (function, positional argument names (a trailing "*" takes any number), flags it accepts)
COMMANDS = {
    "describe": (describe, ("name",), ("json", "data")),
    "export": (export, ("name", "out"), ("data",)),
    "table": (table, ("names*",), ("json", "data")),
    "list": (list_names, (), ()),
}


def _define_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_boolean("json", False, "describe: one JSON object; table: a JSON list of rows", flag_values=fv)


def parse_args(argv: Sequence[str] | None) -> types.SimpleNamespace:
    """The command line as a namespace: command, run (its function), its positional arguments and
    the flags; a flag the command does not take is a usage error."""
    from nrc_jax import cli

    prog = "python -m nrc_jax.data"
    argv = [re.sub(r"^--path(?==|$)", "--data.path", a) for a in (sys.argv[1:] if argv is None else argv)]
    fv, positional = cli.parse(argv, _define_flags, prog=prog, usage="{describe,export,table,list} ... [flags]",
                               doc=__doc__, num_args=(1, None), config=default_data_config(), config_name="data")
    command, rest = positional[0], positional[1:]
    if command not in COMMANDS:
        raise cli.UsageError(f"{prog}: unknown command {command!r}; allowed {', '.join(COMMANDS)}")
    run, names, allowed = COMMANDS[command]
    wrong = [f"--{name}" for name in fv if fv[name].present and name.split(".")[0] not in allowed]
    if wrong:
        raise cli.UsageError(f"{prog} {command}: does not take {', '.join(wrong)}")
    if names and names[-1].endswith("*"):
        values = {names[-1].rstrip("*"): rest}
    elif len(rest) != len(names):
        raise cli.UsageError(f"{prog} {command}: expected {' '.join(n.upper() for n in names) or 'no arguments'}, "
                             f"got {rest or 'none'}")
    else:
        values = dict(zip(names, rest))
    return types.SimpleNamespace(**cli.namespace(fv).__dict__, **values, command=command, run=run)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
