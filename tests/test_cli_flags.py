"""Every command-line tool parses absl flags (on its own FlagValues, so tools share a process):
`--name=value` and `--name value` both work, the old nargs lists still do, and a bad command line
is one `error:` line with exit status 2."""
import ast
import pathlib

import pytest

from nrc_jax import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_no_tool_uses_argparse():
    for path in ROOT.glob("nrc_jax/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert "argparse" not in names, path


def _define(fv):
    from absl import flags

    flags.DEFINE_integer("num-devices", -1, "devices", flag_values=fv)
    flags.DEFINE_boolean("json", False, "json", flag_values=fv)
    flags.DEFINE_list("only", [], "stages", flag_values=fv)


def test_parse_forms_and_namespace():
    fv, rest = cli.parse(["a", "--num-devices", "2", "--json", "b", "--only", "x", "y", "c"], _define, prog="t",
                         usage="ARGS", num_args=(0, None), list_flags=("only",))
    assert rest == ["a", "b"]  # list values run to the next flag: like argparse's nargs="+", "c" is one
    args = cli.namespace(fv)
    assert (args.num_devices, args.json, args.only) == (2, True, ["x", "y", "c"])
    fv, _ = cli.parse(["--num-devices=3", "--only=x,y", "--nojson"], _define, prog="t", usage="")
    assert (fv["num-devices"].value, fv["only"].value, fv["json"].value) == (3, ["x", "y"], False)


@pytest.mark.parametrize("argv", [["--bogus"], ["--num-devices", "two"], ["extra"]])
def test_bad_command_lines_are_one_error_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(argv, _define, prog="t", usage="[flags]")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: t: ") and len(err.strip().splitlines()) == 1


def test_help_exits_0_and_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(["--help"], _define, prog="t", usage="[flags]", doc="What t does.")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: t [flags]" in out and "What t does." in out and "--num-devices" in out


def test_tools_parse_in_one_process_without_flag_clashes():
    from nrc_jax import plot, reproduce
    from nrc_jax.data import __main__ as data_cli

    assert plot.parse_args(["w1", "w2", "--out", "o", "--table-from-data", "swimmer", "hopper"]).table_from_data \
        == ["swimmer", "hopper"]
    args = reproduce.parse_args(["--only", "wd_hopper", "ufm_study", "--config.epochs_scale=0.5"])
    assert args.only == ["wd_hopper", "ufm_study"] and args.config.epochs_scale == 0.5
    args = data_cli.parse_args(["describe", "npz", "--path", "d.npz", "--data.seed=1", "--data.train_size", "5"])
    assert (args.command, args.name, args.data.path, args.data.seed, args.data.train_size) == \
        ("describe", "npz", "d.npz", 1, 5)
    assert data_cli.parse_args(["table", "--path=x"]).data.path == "x"  # --path P is short for --data.path=P
    with pytest.raises(SystemExit):
        data_cli.parse_args(["list", "--data.seed=1"])  # list takes no data settings
