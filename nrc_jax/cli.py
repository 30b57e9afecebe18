"""absl flags for the command-line tools other than `main` and `ufm` (those use absl's global FLAGS
with `config_flags`).

Each tool defines its flags on its own `flags.FlagValues`, so importing several tools in one
process (tests, notebooks) never collides in the global FLAGS. Flags take `--name=value` or
`--name value`, may come before or after the positional arguments, and a bad command line is one
`error:` line and exit status 2, like every other user error.
"""
from __future__ import annotations

import sys
import types
from typing import Callable, Sequence

from absl import flags

HELP = ("--help", "-h", "--helpfull")


class UsageError(SystemExit):
    """A bad command line, already reported on stderr (exit status 2)."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


def join_list_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """`--name a b c` -> `--name=a,b,c` for list flags that took several values (argparse's nargs
    form, kept for existing command lines): values run up to the next token starting with '-'."""
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        if token.lstrip("-") in names and token.startswith("--") and "=" not in token:
            values = []
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            out.append(f"{token}={','.join(values)}")
            continue
        out.append(token)
        i += 1
    return out


def parse(argv: Sequence[str] | None, define: Callable[[flags.FlagValues], None], *, prog: str, usage: str,
          doc: str = "", num_args: tuple[int, int | None] = (0, 0),
          list_flags: Sequence[str] = ()) -> tuple[flags.FlagValues, list[str]]:
    """(flag values, positional arguments) of `argv` (default: sys.argv[1:]).

    `define(fv)` declares the tool's flags on `fv`; `num_args` bounds the number of positional
    arguments (max None: any). `--help` prints the usage, `doc` and the flags, then exits 0.
    Raises UsageError (a SystemExit with status 2, after one `error:` line) for a bad command line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    fv = flags.FlagValues()
    define(fv)
    if any(a in HELP for a in argv):
        print(f"usage: {prog} {usage}\n\n{doc.strip()}\n\nflags:\n{fv.get_help(include_special_flags=False)}")
        raise SystemExit(0)
    try:
        positional = fv([prog, *join_list_flags(argv, list_flags)])[1:]
    except flags.Error as e:
        raise UsageError(f"{prog}: {e} (usage: {prog} {usage}; --help lists the flags)") from None
    low, high = num_args
    if len(positional) < low or (high is not None and len(positional) > high):
        expected = f"{low}" if low == high else f"{low} to {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{prog}: expected {expected} positional argument(s), got {positional or 'none'} "
                         f"(usage: {prog} {usage})")
    return fv, positional


def namespace(fv: flags.FlagValues, **positional) -> types.SimpleNamespace:
    """The flags as attributes (hyphens become underscores: --epochs-scale -> .epochs_scale) plus
    the named positional arguments, as argparse's Namespace had them."""
    values = {name.replace("-", "_"): fv[name].value for name in fv}
    return types.SimpleNamespace(**values, **positional)


__all__ = ["parse", "namespace", "join_list_flags", "UsageError"]
