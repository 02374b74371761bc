"""The shape of the house: no import cycle in the package, and the layers import downward only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "conceptvault"

# The layers of ARCHITECTURE.md, lowest first: a module imports from its own layer or below, never above.
LAYERS = [
    ("ground", ("errors", "digest", "files", "registry", "profiles", "delta_key", "key", "learned_token", "parallel")),
    (
        "model",
        ("keyfile", "backbone", "latents", "settings", "concepts", "objective", "training", "manifest")
        + ("checkpoint", "single_file", "vault", "generate", "defaults", "cross_attention_edit")
        + ("adversarial_preservation",),
    ),
    ("driver", ("driver",)),
    ("methods", ("methods",)),
    (
        "measure",
        ("evaluate", "world", "attacks", "attacks_prompt_search", "attack_report", "attack_campaign", "attack_sweep")
        + ("records",),
    ),
    ("edge", ("world.profile", "demo", "serve", "cli", "console", "")),
    ("deprecated spellings", ("hide", "seal", "esd", "uce")),
]


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


def test_the_graph_walker_finds_a_cycle_and_the_layers():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    names = [name for name, _ in LAYERS]
    assert names[_layer("world.profile")] == "edge" and names[_layer("world.render")] == "measure"
    assert names[_layer("methods.kpop.hide")] == "methods" and names[_layer("registry")] == "ground"


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert "registry" in graph and "methods.kpop.hide" in graph  # the walk sees the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def _layer(module: str) -> int:
    """The layer of ``module``: that of the longest prefix listed (``world.profile`` before ``world``)."""
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or (prefix and module.startswith(prefix + "."))
    ]
    assert matches, f"{module} is in no layer of ARCHITECTURE.md; add it there and to LAYERS"
    return max(matches)[1]


def test_every_import_goes_to_the_same_layer_or_below():
    graph = _graph()
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_method_imports_another():
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("methods."):
            own = module.split(".")[1]
            others = sorted(t for t in targets if t.startswith("methods.") and t.split(".")[1] != own)
            assert not others, f"{module} imports {others}"


def test_library_errors_name_parameters_and_the_command_line_gives_their_flags():
    flags_in_errors = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ConceptVaultError":
                text = " ".join(
                    part.value
                    for part in ast.walk(node)
                    if isinstance(part, ast.Constant) and isinstance(part.value, str)
                )
                if " --" in f" {text}":
                    flags_in_errors.append(f"{path.name}: {text[:60]}")
    assert not flags_in_errors, flags_in_errors

    from conceptvault.cli.common import as_flags

    message = "run again with `resume`, the same `passphrase` and `images_from`; `lr` is a setting"
    assert (
        as_flags(message) == "run again with --resume, the same --passphrase-file and --images-from; `lr` is a setting"
    )
