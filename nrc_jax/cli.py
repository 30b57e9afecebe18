"""absl flags for the command-line tools other than `main` (which uses absl's global FLAGS).

Each tool defines its flags on its own `flags.FlagValues`, so importing several tools in one
process (tests, notebooks) never collides in the global FLAGS. Flags take `--name=value` or
`--name value`, may come before or after the positional arguments, and a bad command line is one
`error:` line and exit status 2, like every other user error. A tool that takes settings takes
them as `--config=configs/<file>.py[:arg]` (ml_collections `config_flags`, locked: an override
`--config.a.b=v` of a field the config lacks is an error), as `main` does; a tool whose settings are
one fixed ConfigDict takes its fields as `--NAME.a=v` (`DEFINE_config_dict`, equally locked), as
`python -m nrc_jax.data` does with `--data.train_size=500`.
"""
from __future__ import annotations

import contextlib
import sys
import types
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from absl import flags

if TYPE_CHECKING:
    import ml_collections

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


def first_and_last_line(error: BaseException) -> str:
    """One line for an error whose text may hold a whole traceback (config_flags quotes them)."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [line.strip() for line in str(root).splitlines() if line.strip()] or [type(root).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ({lines[-1]})"


def unknown_field_message(error: KeyError | AttributeError, argv: Sequence[str], name: str = "config") -> str:
    """The message for `--config.a.b=v` naming a field the (locked) config lacks."""
    text: object = error
    while isinstance(text, BaseException) and text.args:  # ConfigDict wraps a KeyError in an AttributeError
        text = text.args[0]
    field, *hint = str(text).splitlines()
    field = field.strip("\"'")
    named = [a.split("=")[0] for a in argv if a.startswith(f"--{name}.") and field in a.split("=")[0]]
    return f"{', '.join(named) or field}: the config has no field {field!r}. {' '.join(hint)}".rstrip()


def define_config(fv: flags.FlagValues, argv: Sequence[str], default: str | ml_collections.ConfigDict | None,
                  name: str = "config") -> None:
    """`--NAME` on `fv`, locked, with `--NAME.a.b=v` overrides read from `argv` (the full command line,
    program name first): a python config file (`PATH[:ARG]`, `get_config(ARG)`) when `default` is a
    path or None, else the ConfigDict `default` itself (then only its fields can be set)."""
    from ml_collections import config_flags

    if default is None or isinstance(default, str):
        config_flags.DEFINE_config_file(name, default, f"python config file, PATH[:ARG] (`--{name}.a.b=v` "
                                        "overrides a field)", flag_values=fv, lock_config=True, sys_argv=list(argv))
    else:
        config_flags.DEFINE_config_dict(name, default, f"settings; `--{name}.a.b=v` sets a field", flag_values=fv,
                                        lock_config=True, sys_argv=list(argv))


@contextlib.contextmanager
def _one_line_errors(prog: str, argv: Sequence[str], hint: str, name: str = "config") -> Iterator[None]:
    """A bad flag, config file, config argument or override becomes a UsageError."""
    try:
        yield
    except (KeyError, AttributeError) as e:  # --config.a.b=v naming a field the config lacks
        raise UsageError(f"{prog}: {unknown_field_message(e, argv, name)}") from None
    except flags.Error as e:
        raise UsageError(f"{prog}: {first_and_last_line(e)} {hint}") from None
    except (OSError, ValueError, TypeError) as e:  # the config file or its get_config(arg)
        raise UsageError(f"{prog}: {first_and_last_line(e)}") from None


def parse(argv: Sequence[str] | None, define: Callable[[flags.FlagValues], None], *, prog: str, usage: str,
          doc: str = "", num_args: tuple[int, int | None] = (0, 0), list_flags: Sequence[str] = (),
          config: str | ml_collections.ConfigDict | None = None,
          config_name: str = "config") -> tuple[flags.FlagValues, list[str]]:
    """(flag values, positional arguments) of `argv` (default: sys.argv[1:]).

    `define(fv)` declares the tool's flags on `fv`; `num_args` bounds the number of positional
    arguments (max None: any). `config` (a path, "" for none: then --config is required, or a
    ConfigDict) gives the tool a `--config` flag, named `config_name` (`define_config`); its
    ConfigDict is `fv[config_name].value`. `--help`
    prints the usage, `doc` and the flags, then exits 0.
    Raises UsageError (a SystemExit with status 2, after one `error:` line) for a bad command line,
    config file, config argument or override.
    """
    argv = join_list_flags(list(sys.argv[1:] if argv is None else argv), list_flags)
    fv = flags.FlagValues()
    define(fv)
    hint = f"(usage: {prog} {usage}; --help lists the flags)"
    with _one_line_errors(prog, argv, hint, config_name):
        if config is not None:
            define_config(fv, [prog, *argv], None if isinstance(config, str) and not config else config, config_name)
    if any(a in HELP for a in argv):
        print(f"usage: {prog} {usage}\n\n{doc.strip()}\n\nflags:\n{fv.get_help(include_special_flags=False)}")
        raise SystemExit(0)
    with _one_line_errors(prog, argv, hint, config_name):
        positional = fv([prog, *argv])[1:]
        if config is not None and fv[config_name].value is None:
            raise UsageError(f"{prog}: --{config_name} is required {hint}")
        if config is not None:
            fv[config_name].value.keys()  # a config file that failed to load raises only when used
    low, high = num_args
    if len(positional) < low or (high is not None and len(positional) > high):
        expected = f"{low}" if low == high else f"{low} to {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{prog}: expected {expected} positional argument(s), got {positional or 'none'} "
                         f"(usage: {prog} {usage})")
    return fv, positional


def namespace(fv: flags.FlagValues, **positional) -> types.SimpleNamespace:
    """The flags as attributes (hyphens become underscores: --num-devices -> .num_devices) plus
    the named positional arguments, as argparse's Namespace had them."""
    values = {name.replace("-", "_"): fv[name].value for name in fv if "." not in name}  # not --config.a.b
    return types.SimpleNamespace(**values, **positional)


__all__ = ["parse", "namespace", "join_list_flags", "define_config", "first_and_last_line", "unknown_field_message",
           "UsageError"]
