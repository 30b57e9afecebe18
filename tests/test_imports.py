"""Every module of nrc_jax imports, the modules import each other without a cycle, and each layer
(sub-package) imports only the layers below it.

The graph comes from the import statements themselves (an AST scan), those inside functions
included: a cycle hidden in a function-level import is still a cycle of the design.
"""
import ast
import importlib
import pathlib
import shutil

import pytest

import nrc_jax

PACKAGE = pathlib.Path(nrc_jax.__file__).resolve().parent


def module_names(package_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """{dotted module name: file} of every module of the package in `package_dir` (a package's
    `__init__.py` is the package itself)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _runs_as_main(node: ast.If) -> bool:
    """`if __name__ == "__main__":`: that code runs in the module `__main__`, not in this one."""
    test = node.test
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _import_nodes(tree: ast.AST):
    """The Import / ImportFrom nodes of a module, except those under `if __name__ == "__main__":`."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _runs_as_main(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        pending.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` (file `path`) imports."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(package_dir: pathlib.Path) -> dict[str, set[str]]:
    modules = module_names(package_dir)
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph, or None (iterative depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = "open"
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state.get(child) == "open":
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = "open"
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_nrc_jax_imports_form_no_cycle():
    graph = import_graph(PACKAGE)
    assert {"nrc_jax.engine.train", "nrc_jax.engine.learner", "nrc_jax.engine.memory",
            "nrc_jax.engine.streamed"} <= set(graph)
    assert "nrc_jax.engine.learner" in graph["nrc_jax.engine.memory"]
    assert "nrc_jax.core.metrics" in graph["nrc_jax.engine.learner"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_scan_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("import os\nfrom pkg.sub import c\n")
    (package / "sub" / "c.py").write_text("def f():\n    from .. import a\n    return a\n")
    (package / "d.py").write_text('from pkg import a\nif __name__ == "__main__":\n    from pkg import b\n')
    graph = import_graph(package)
    assert graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (package / "sub" / "c.py").write_text("import pkg\n")
    assert find_cycle(import_graph(package)) is None


# What each layer may import besides itself (a name allows the module and everything under it).
# The entry points (main, inspect, plot, reproduce, studies, evidence, ufm, ufm_study) may import
# anything; `nrc_jax`, `nrc_jax.errors` and `nrc_jax.cli` are package-wide basics.
BASICS = ("nrc_jax", "nrc_jax.errors", "nrc_jax.cli")
MAY_IMPORT = {
    "nrc_jax.core": ("nrc_jax.errors",),
    "nrc_jax.engine": ("nrc_jax.core", "nrc_jax.io", "nrc_jax.data") + BASICS,
    "nrc_jax.io": ("nrc_jax.core", "nrc_jax.data", "nrc_jax.engine.models", "nrc_jax.engine.optim",
                   "nrc_jax.engine.sweeps") + BASICS,
    "nrc_jax.data": BASICS,
    "nrc_jax.plotting": ("nrc_jax.io", "nrc_jax.data") + BASICS,
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of b by a module a of a layer in MAY_IMPORT that the layer may not make."""
    found = []
    for name, targets in sorted(graph.items()):
        layer = next((l for l in MAY_IMPORT if _within(name, l)), None)
        if layer is None:
            continue
        allowed = (layer,) + MAY_IMPORT[layer]
        found += [f"{name} -> {t}" for t in sorted(targets)
                  if not any(t == a if a in BASICS else _within(t, a) for a in allowed)]
    return found


def test_each_layer_imports_only_the_layers_below_it():
    graph = import_graph(PACKAGE)
    assert {"nrc_jax.core.metrics", "nrc_jax.engine.train", "nrc_jax.io.writers"} <= set(graph)
    assert layering_violations(graph) == []


@pytest.mark.parametrize("module, planted", [
    ("core/metrics.py", "from nrc_jax.engine import train"),
    ("core/deep.py", "from nrc_jax.io.run_files import METRICS_FILE"),
    ("core/stats.py", "import nrc_jax.plotting.workdir"),
    ("core/ufm.py", "from nrc_jax import data"),
    ("engine/train.py", "from nrc_jax import main"),
    ("engine/memory.py", "from nrc_jax.plotting import table"),
    ("io/writers.py", "from nrc_jax.engine.learner import Learner"),
    ("data/base.py", "from nrc_jax.io import run_files"),
])
def test_the_layer_check_finds_a_planted_import(tmp_path, module, planted):
    """A copy of the package with one forbidden import, inside a function, shows exactly that edge."""
    package = tmp_path / "nrc_jax"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    path = package / module
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {planted}\n")
    violations = layering_violations(import_graph(package))
    name = "nrc_jax." + module.removesuffix(".py").replace("/", ".")
    assert len(violations) == 1 and violations[0].startswith(f"{name} -> "), violations


@pytest.mark.parametrize("name", sorted(module_names(PACKAGE)))
def test_every_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:  # an optional third-party package (e.g. mujoco) not installed here
        if e.name is None or e.name.split(".")[0] == "nrc_jax":
            raise
        pytest.skip(f"{name} needs {e.name}")
