"""The package's modules import each other without a circle (module-level imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lib" / "dockyard"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:  # `if TYPE_CHECKING:` blocks aside
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = (found & paths.keys()) - {name}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for imported in sorted(graph[name]):
            found = visit(imported, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


def test_the_graph_is_read() -> None:
    graph = _imports()
    assert "dockyard._errors" in graph["dockyard.container_manager"] or any(
        "dockyard._errors" in graph[name] for name in graph["dockyard.container_manager"]
    )
    assert graph["dockyard._cli._main"], "the CLI's own imports are seen"


def test_no_module_imports_itself_through_others() -> None:
    assert _circle(_imports()) is None


def test_a_circle_is_found() -> None:
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 1 for a module importing none of the package, else one above
    the highest module it imports (module-level imports; annotation-only ones sit under
    `TYPE_CHECKING` and are no part of the layering)."""
    floors: dict[str, int] = {}

    def floor(name: str) -> int:
        if name not in floors:
            floors[name] = 1 + max((floor(imported) for imported in graph[name]), default=0)
        return floors[name]

    for name in graph:
        floor(name)
    return floors


# The facade sits on its wiring, which sits on the worker's output hub (a job's spawn and
# adoption beside it), the listener, the models, the container settings and the errors; the
# CLI adds its commands and its entry point (which runs them; the parser knows none of them)
# on top, and its package.
MAX_FLOORS_FACADE = 7
MAX_FLOORS_TREE = 10


def test_the_package_is_at_most_a_few_floors_deep() -> None:
    floors = _floors(_imports())
    assert floors["dockyard._errors"] == 1
    assert floors["dockyard.container_manager"] <= MAX_FLOORS_FACADE, floors
    assert max(floors.values()) <= MAX_FLOORS_TREE, sorted(floors.items(), key=lambda kv: kv[1])


def test_floors_are_counted_from_the_bottom() -> None:
    assert _floors({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"c"}}) == {
        "a": 3,
        "b": 2,
        "c": 1,
        "d": 2,
    }
