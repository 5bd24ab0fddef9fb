"""The package's shape: no module imported in a cycle, and no module that nothing runs.

Both read the sources with ``ast`` (nothing is imported), so a cycle hidden in a function body, which Python only
trips over when that function first runs, is found as well as one at module level."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "orchestrator"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations that never run, so they make no cycle."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool]]:
    """The package's modules that ``module`` imports, each with whether the import sits inside a function body
    (imports under ``if TYPE_CHECKING:`` left out)."""

    def target(name: str) -> str | None:  # the innermost module of the package a dotted name lies in
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in MODULES else None

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([child.module] if child.module else [])])
                names = [f"{base}.{alias.name}" for alias in child.names]  # a submodule, else a name in ``base``
            for name in names:
                if (found := target(name)) and found != module:
                    yield found, in_function
            if not _type_checking_only(child):
                yield from visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from visit(ast.parse(path.read_text(), str(path)), False)


def _graph(*, function_level: bool) -> dict[str, set[str]]:
    return {
        m: {t for t, in_function in _imports(m, p) if function_level or not in_function} for m, p in MODULES.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


@pytest.mark.parametrize("function_level", [False, True], ids=["module-level imports", "with function-level imports"])
def test_no_module_is_imported_in_a_cycle(function_level: bool) -> None:
    """Module-level imports alone, then with the imports inside functions added. A package's ``__init__`` importing
    its own submodules is not a cycle here: the edge from a submodule to its package is Python's, not the code's."""
    assert _cycles(_graph(function_level=function_level)) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_body() -> None:
    """The checker itself, on a stand-in graph: a -> b at module level, b -> a inside a function."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def _entry_points() -> set[str]:
    """Modules run as programs rather than imported: ``-m NAME`` in a rendered template, a string constant naming a
    module in the package's code (the commands stages build, the CLI's pass-through subcommands), and
    pyproject's ``[project.scripts]``. ``python -m PKG`` runs ``PKG.__main__``."""
    named = {m for p in (REPO / "templates").glob("*.j2") for m in re.findall(r"-m\s+([\w.]+)", p.read_text())}
    for path in MODULES.values():
        named |= {
            n.value
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in MODULES
        }
    scripts = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    named |= set(re.findall(r'^\S+\s*=\s*"([\w.]+):', scripts, flags=re.M))  # tomllib is Python 3.11's
    return named | {f"{m}.__main__" for m in named if f"{m}.__main__" in MODULES}


def test_every_module_is_imported_or_run() -> None:
    """A module no code of the package imports and nothing runs is dead; its tests alone do not keep it. A package
    counts as used when one of its modules is."""
    used = {t for targets in _graph(function_level=True).values() for t in targets} | _entry_points()
    unused = {m for m in MODULES if m not in used and not any(u.startswith(f"{m}.") for u in used)}
    assert sorted(unused) == []


def test_stop_signals_are_installed_by_one_module_of_the_trainers() -> None:
    """Both trainers stop through ``orchestrator.train.stopping``: a second recorder would be a second policy."""
    installers = {
        m
        for m, p in MODULES.items()
        if m.startswith("orchestrator.train.")
        and any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "signal"
            for n in ast.walk(ast.parse(p.read_text()))
        )
    }
    assert installers == {"orchestrator.train.stopping"}
