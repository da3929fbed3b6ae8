"""The layers of the house, read from the imports (docs/architecture.md draws them).

Every ``import`` of every module under ``batch_ops/`` is read with :mod:`ast` — at module level and
inside functions alike; only imports under ``if TYPE_CHECKING:`` are left out (they never run).
Three rules:

* no module imports one of a higher layer, and the core never imports an adapter;
* no circle among the core's modules;
* the adapters (``airflow/``, ``prefect/``, ``cli/``) import public core names only: no module
  or name of the core that starts with an underscore.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "batch_ops"

#: Lowest first. A module may import modules of its own layer and of the layers below it. A name
#: stands for the module and everything under it (``jsonl`` is the package and its modules).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("_version", "errors", "aio", "_deprecated", "process_state", "locks", "_files")),
    ("data", ("models", "storage", "_http", "_transport", "leases")),
    ("files", ("neutral", "jsonl", "results", "identity.fingerprint", "structured")),
    ("wire", ("effects", "identity", "dialects", "settings")),
    ("decisions", ("outcomes", "polling", "chain", "fingerprint", "cost")),
    ("plans", ("_plans", "_submit", "_repair")),
    # The waits' side of webhooks (a driver's sleep ends on its batch's event) sits with the drivers;
    # the receiver is a service.
    ("drivers", ("_drivers", "client", "webhooks.subscription", "webhooks.hub", "webhooks.events")),
    ("services", ("orphans", "jobs", "webhooks", "evals")),
    ("package", ("",)),  # batch_ops/__init__.py: the public names
    ("adapters", ("airflow", "prefect", "cli", "server")),
)
ADAPTERS = ("airflow", "prefect", "cli")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def _layer(module: str) -> int:
    best, depth = -1, -1
    for number, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".") or name == "") and len(name) > depth:
                best, depth = number, len(name)
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> Iterator[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for each batch_ops import of ``module``."""
    path = MODULES[module]

    def walk(nodes: list[ast.stmt]) -> Iterator[ast.stmt]:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking(node.test):
                yield from walk(node.orelse)
                continue
            yield node
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from walk([n for n in inner if isinstance(n, ast.stmt)] + [
                        s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body])

    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in walk(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "batch_ops" or alias.name.startswith("batch_ops."):
                    yield alias.name.removeprefix("batch_ops").lstrip("."), None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "batch_ops" or node.module.startswith("batch_ops.")):
                target = node.module.removeprefix("batch_ops").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}".lstrip(".")
                if sub in MODULES:  # ``from batch_ops import storage``: the module itself
                    yield sub, None, node.lineno
                else:
                    yield target, alias.name, node.lineno


def _owner(target: str) -> str:
    """The module an import reaches: the longest known module name ``target`` starts with."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in MODULES else ""


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        edges[module] = {_owner(t) for t, _, _ in _imports(module)} - {module}
    return edges


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for module, targets in _edges().items():
        for target in targets:
            if _layer(target) > _layer(module):
                wrong.append(f"{module or 'batch_ops'} ({LAYERS[_layer(module)][0]}) imports {target or 'batch_ops'} "
                             f"({LAYERS[_layer(target)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_core_has_no_import_circle() -> None:
    core = {m for m in MODULES if _layer(m) < _layer("")}
    graph = {m: {t for t in targets if t in core} for m, targets in _edges().items() if m in core}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, circles


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_import_public_core_names_only(adapter: str) -> None:
    private = []
    for module in (m for m in MODULES if m == adapter or m.startswith(adapter + ".")):
        for target, name, line in _imports(module):
            if target == adapter or target.startswith(adapter + "."):
                continue  # its own modules
            where = f"batch_ops/{MODULES[module].relative_to(ROOT)}:{line}"
            if any(_private(part) for part in target.split(".")):
                private.append(f"{where}: batch_ops.{target}")
            elif name is not None and _private(name):
                private.append(f"{where}: {name} from batch_ops.{target}")
    assert not private, "\n".join(private)


def test_the_core_and_the_adapters_stay_apart() -> None:
    """The core never imports an adapter; the server never imports a client (it speaks the wire)."""
    wrong = []
    for module, targets in _edges().items():
        if _layer(module) < _layer(""):
            wrong += [f"{module} imports {t}" for t in targets if _layer(t) == _layer("airflow")]
        if module == "server" or module.startswith("server."):
            wrong += [f"{module} imports {t}" for t in targets if t in ("client", "_drivers", "_plans", "_submit")]
    assert not wrong, wrong
