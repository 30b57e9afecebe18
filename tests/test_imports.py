"""Every module of nrc_jax imports, and the modules import each other without a cycle.

The graph comes from the import statements themselves (an AST scan), those inside functions
included: a cycle hidden in a function-level import is still a cycle of the design.
"""
import ast
import importlib
import pathlib

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
    assert {"nrc_jax.train", "nrc_jax.engine", "nrc_jax.engine_memory", "nrc_jax.engine_streamed"} <= set(graph)
    assert "nrc_jax.engine" in graph["nrc_jax.engine_memory"] and "nrc_jax.metrics" in graph["nrc_jax.engine"]
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


@pytest.mark.parametrize("name", sorted(module_names(PACKAGE)))
def test_every_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:  # an optional third-party package (e.g. mujoco) not installed here
        if e.name is None or e.name.split(".")[0] == "nrc_jax":
            raise
        pytest.skip(f"{name} needs {e.name}")
