"""`python -m nrc_jax.data`: describe, export and tabulate the study's data sets.

  python -m nrc_jax.data describe NAME [--json] [--path P] [--set key=value ...]
      the paper's Table 1 row (name, train_size, test_size, input_shape, target_dim,
      target_correlation, lambda_min, lambda_max) from the training targets;
  python -m nrc_jax.data export NAME OUT.npz [--path P] [--set key=value ...]
      writes x_train, y_train, x_test, y_test of a set held in memory (tabular or small image sets);
  python -m nrc_jax.data table [NAME ...] [--json] [--set key=value ...]
      Table 1 (markdown) for the given sets, by default every set made locally (no data.path needed);
  python -m nrc_jax.data list
      the known data set names.
`--set key=value` sets any field of `default_data_config()` (e.g. --set train_size=500 --set
target_transform=zca); `--path P` is short for --set path=P. User errors (missing path, wrong layout,
non-finite values, unknown name or field) print one message without a traceback and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from nrc_jax.data import PATH_DATASETS, default_data_config, known_datasets, load_dataset
from nrc_jax.data.base import TABLE1_KEYS, table1_row
from nrc_jax.errors import ConfigError, DataError, UserError

EXIT_USER_ERROR = 2


def parse_value(key: str, text: str, default: Any) -> Any:
    """`text` converted to the type of the field's default (bool accepts true/false/1/0)."""
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--set {key}={text}: expected true or false")
    try:
        return type(default)(text) if isinstance(default, (int, float)) else text
    except ValueError as e:
        raise ConfigError(f"--set {key}={text}: expected a {type(default).__name__}") from e


def data_config(name: str, path: str | None, settings: Sequence[str]) -> Any:
    """default_data_config() with `name`, `path` and the `key=value` overrides applied."""
    cfg = default_data_config()
    cfg.name = name
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or key not in cfg:
            raise ConfigError(f"--set {item!r}: expected key=value with key one of {', '.join(sorted(cfg.keys()))}")
        cfg[key] = parse_value(key, text, cfg[key])
    if path is not None:
        cfg.path = path
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


def describe(args: argparse.Namespace) -> int:
    row = table1_row(load_dataset(data_config(args.name, args.path, args.set)))
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


def export(args: argparse.Namespace) -> int:
    data = load_dataset(data_config(args.name, args.path, args.set))
    if data.streamed:
        raise DataError(f"data set {data.name!r} is streamed from disk (larger than data.max_in_memory_mb); export "
                        f"writes sets held in memory: use smaller --set train_size/test_size/image_size")
    arrays = {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test, "y_test": data.y_test}
    try:
        write_npz_atomically(args.out, arrays)
    except OSError as e:
        raise DataError(f"data set {data.name!r}: cannot write {args.out} ({e})") from e
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    return 0


def local_datasets() -> list[str]:
    return [name for name in known_datasets() if name not in PATH_DATASETS]


def table(args: argparse.Namespace) -> int:
    names = args.names or local_datasets()
    rows, failures = [], []
    for name in names:
        try:
            rows.append(table1_row(load_dataset(data_config(name, None, args.set))))
        except UserError as e:
            failures.append(f"{name}: {e}")
    if args.json:
        print(json.dumps(rows))
    elif rows:
        print(markdown_table(rows))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return EXIT_USER_ERROR if failures else 0


def list_names(_: argparse.Namespace) -> int:
    for name in known_datasets():
        print(name + ("" if name in local_datasets() else "  (needs data.path)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nrc_jax.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_config_options(p: argparse.ArgumentParser, with_path: bool = True) -> None:
        if with_path:
            p.add_argument("--path", default=None, help="data.path: the file or folder of the data set")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set a data config field (repeatable), e.g. --set train_size=500")

    p = commands.add_parser("describe", help="print the Table 1 row of a data set")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="one JSON object")
    add_config_options(p)
    p.set_defaults(run=describe)
    p = commands.add_parser("export", help="write x_train, y_train, x_test, y_test to an .npz")
    p.add_argument("name")
    p.add_argument("out")
    add_config_options(p)
    p.set_defaults(run=export)
    p = commands.add_parser("table", help="print Table 1 for local data sets")
    p.add_argument("names", nargs="*", help="data sets (default: every set that needs no data.path)")
    p.add_argument("--json", action="store_true", help="a JSON list of rows")
    add_config_options(p, with_path=False)
    p.set_defaults(run=table)
    p = commands.add_parser("list", help="the known data set names")
    p.set_defaults(run=list_names)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
