"""Rules about the package's shape, checked on the source (AST), without importing it.

* No import cycle among ``airflow_privacy`` modules: a cycle makes what works
  depend on which module happens to be imported first.
* The plain-Python core and the storage layer never import Airflow, so the CLI
  and the tests run them without it and the operators stay thin faces.
* Every exception class lives in :mod:`airflow_privacy.exceptions` and derives
  from ``AirflowPrivacyError``: the operators decide retry-or-fail from that one
  hierarchy, so a class defined elsewhere would silently escape the decision.

Reading source rather than importing keeps the checks fast (no torch, Great
Expectations or Airflow) and independent of optional dependencies.
"""

from __future__ import annotations

import ast
import builtins
import inspect
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "airflow_privacy"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
EXCEPTIONS_MODULE = f"{PACKAGE}.exceptions"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_nodes(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module is imported: not function bodies, not ``if TYPE_CHECKING``."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        if isinstance(node, ast.If):
            if not is_type_checking(node.test):
                yield from import_time_nodes(node.body)
            yield from import_time_nodes(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from import_time_nodes(block)
            for handler in node.handlers:
                yield from import_time_nodes(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from import_time_nodes(node.body)


def imported_names(node: ast.stmt, current: str, is_package: bool) -> list[str]:
    """Absolute names an import statement may load (``from X import Y``: ``X.Y`` and ``X``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = current.split(".") if is_package else current.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at import time."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in import_time_nodes(parse(path).body):
            for target in imported_names(node, name, is_package):
                if target in known and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_package_modules() -> None:
    graph = import_graph()
    assert "airflow_privacy.core.models" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_core_and_storage_never_import_airflow() -> None:
    """Anywhere in the file, functions and ``TYPE_CHECKING`` blocks included."""
    offenders = []
    for name, path in modules().items():
        if not name.startswith((f"{PACKAGE}.core", f"{PACKAGE}.storage")):
            continue
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            else:
                continue
            offenders += [f"{name}:{node.lineno} imports {t}" for t in targets
                          if t == "airflow" or t.startswith("airflow.")]
    assert not offenders, "\n".join(offenders)


def base_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return None


def test_every_exception_class_lives_in_exceptions_and_derives_from_the_base() -> None:
    from airflow_privacy import exceptions

    # Names that denote exception classes: builtins, what exceptions.py defines, and
    # (by convention) anything called *Error / *Exception; then, to a fixpoint, every
    # package class deriving from one of those.
    exception_names = {n for n, v in vars(builtins).items()
                       if inspect.isclass(v) and issubclass(v, BaseException)}
    exception_names |= {n for n, v in vars(exceptions).items()
                        if inspect.isclass(v) and issubclass(v, BaseException)}
    classes = [(name, node) for name, path in modules().items()
               for node in ast.walk(parse(path)) if isinstance(node, ast.ClassDef)]
    changed = True
    while changed:
        changed = False
        for _, node in classes:
            bases = {base_name(b) for b in node.bases}
            if node.name not in exception_names and (
                bases & exception_names
                or any(b and b.endswith(("Error", "Exception")) for b in bases)
            ):
                exception_names.add(node.name)
                changed = True
    elsewhere = [f"{module}.{node.name}" for module, node in classes
                 if module != EXCEPTIONS_MODULE and node.name in exception_names]
    assert not elsewhere, f"exception classes outside {EXCEPTIONS_MODULE}: {elsewhere}"

    defined = [v for v in vars(exceptions).values()
               if inspect.isclass(v) and issubclass(v, BaseException)
               and v.__module__ == EXCEPTIONS_MODULE]
    assert len(defined) >= 10
    assert [c.__name__ for c in defined if not issubclass(c, exceptions.AirflowPrivacyError)] == []
