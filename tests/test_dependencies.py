"""pyproject.toml declares exactly what nrc_jax/ and configs/ import, and the environment the suite
runs in meets every lower bound (so the bounds are the tested releases, not guesses)."""
import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Declared but used without an import statement: TFDS opens the expert sets' files through it.
USED_WITHOUT_IMPORT = {"array-record"}
# Imported only by optional code paths that name their extra in the error they raise.
OPTIONAL_IMPORTS = {"tensorflow": "tf"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _lower_bound(requirement: str) -> str | None:
    match = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    return match.group(1) if match else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def imported_top_level_modules() -> set[str]:
    """Third-party top-level modules named by any import in nrc_jax/ and configs/."""
    names = set()
    for path in [*ROOT.glob("nrc_jax/**/*.py"), *ROOT.glob("configs/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("nrc_jax", "configs", "__future__")}


def test_every_import_is_declared_and_every_declared_package_is_imported():
    by_module = importlib.metadata.packages_distributions()
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    imported = set()
    for module in imported_top_level_modules() - set(OPTIONAL_IMPORTS):
        assert module in by_module, f"{module} is imported but not installed"
        imported.update(_name(d) for d in by_module[module])
    assert imported - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - imported - USED_WITHOUT_IMPORT == set(), "declared but never imported"
    for module, extra in OPTIONAL_IMPORTS.items():
        assert extra in PYPROJECT["project"]["optional-dependencies"], module


@pytest.mark.parametrize("requirement", PYPROJECT["project"]["dependencies"]
                         + PYPROJECT["project"]["optional-dependencies"]["test"])
def test_installed_release_meets_the_lower_bound(requirement):
    bound = _lower_bound(requirement)
    assert bound is not None, f"{requirement}: no lower bound"
    installed = importlib.metadata.version(_name(requirement))
    assert _version_tuple(installed) >= _version_tuple(bound), (requirement, installed)
