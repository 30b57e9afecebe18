"""Config files that build on each other, loadable from any working directory.

`--config=/abs/path/configs/mujoco.py:swimmer` loads that file by path (ml_collections'
config_flags), so a plain `from configs import mlp` inside it would need the repository root on
`sys.path`. `sibling(__file__, "mlp")` finds `mlp.py` beside the calling config file instead.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys
import types


def _same_file(module: types.ModuleType | None, path: pathlib.Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and pathlib.Path(file).resolve() == path


def sibling(config_file: str, name: str) -> types.ModuleType:
    """The config module `<name>.py` in the directory of `config_file` (pass `__file__`).

    It is the module `configs.<name>` (loaded once, shared with `from configs import <name>`) unless
    another module holds that name, e.g. a user's own `configs` package.
    """
    path = pathlib.Path(config_file).resolve().with_name(f"{name}.py")
    if not path.is_file():
        raise FileNotFoundError(f"{config_file} needs the config {path}, which does not exist")
    key = f"configs.{name}"
    if _same_file(sys.modules.get(key), path):
        return sys.modules[key]
    if key in sys.modules:  # another `configs` package: keep ours apart
        key = f"_nrc_jax_configs.{abs(hash(str(path)))}.{name}"
        if _same_file(sys.modules.get(key), path):
            return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


def repository_config_path(name: str) -> str:
    """The path of `configs/<name>.py` in the checkout this nrc_jax comes from (a tool's default
    `--config`, valid from any working directory)."""
    return str(pathlib.Path(__file__).resolve().parents[2] / "configs" / f"{name}.py")


def repository_config(name: str) -> types.ModuleType:
    """`configs/<name>.py` of the checkout this nrc_jax comes from (configs/ is not installed)."""
    return sibling(repository_config_path(name), name)


__all__ = ["sibling", "repository_config", "repository_config_path"]
