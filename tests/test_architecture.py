"""The shape of the house: no import cycle in the package, and the layers import downward only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "conceptvault"

# modules below the methods: none of them may import a method (methods/), the command line, the demo, serving
GROUND = {"errors", "registry", "profiles", "manifest", "key", "delta_key", "keyfile", "checkpoint", "backbone"}
UPPER = ("methods", "cli", "demo", "serve", "attack_campaign", "world.profile")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The package's modules that ``path`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("conceptvault."):
                target = node.module.removeprefix("conceptvault.")
            else:
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("conceptvault.") for a in node.names if a.name.startswith("conceptvault.")
            )
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for after in sorted(graph[node]):
            if state.get(after) == "open":
                return stack[stack.index(after) :] + [after]
            if after not in state and (found := visit(after)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_walker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert "registry" in graph and "methods.kpop.hide" in graph  # the walk sees the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_ground_floor_imports_no_method_and_no_upper_layer():
    graph = _graph()
    for module in GROUND:
        upward = sorted(m for m in graph[module] if m.startswith(UPPER))
        assert not upward, f"{module} imports {upward}"
