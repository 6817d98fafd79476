"""The package layout stays as designed (docs/architecture.md): no import cycle between modules,
counting imports inside functions and under TYPE_CHECKING too; the folders' dependency arrows point
one way; nothing inside the library imports the package root; modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "masllm"
MAX_LINES = 300
# The only top-level modules besides the folders: leaves, the CLI, and the old module paths.
TOP_LEVEL = {"__init__", "_version", "batch", "cli", "config", "penalty", "registry"}
DEPRECATED = {"checkpoint", "sharding", "teardown"}  # aliases of masllm 0.1 paths, kept for one release


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The masllm modules `path` imports, anywhere in the file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "masllm"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "masllm":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)  # a submodule, or a name of the package
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None (iterative DFS with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    for root in graph:
        if colour[root]:
            continue
        stack, path = [(root, iter(sorted(graph[root])))], [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return [*path[path.index(child) :], child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def _folder(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_between_modules():
    graph = _graph()
    assert len(graph) > 40 and "masllm.omega" in graph["masllm.trainer.mixin"]
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_folders_depend_one_way():
    graph = _graph()
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module == "masllm" or _folder(module) in DEPRECATED | {"cli"}:
            continue  # the root and the CLI re-export / call everything, nothing imports them
        src = _folder(module)
        folders.setdefault(src, set()).update(_folder(t) for t in targets if _folder(t) != src)
    cycle = _cycle({f: {t for t in ts if t in folders} for f, ts in folders.items()})
    assert cycle is None, f"folders depend on each other: {' -> '.join(cycle)}"
    for leaf in ("registry", "_version", "distributed"):
        assert not folders.get(leaf), f"{leaf} must import nothing from masllm, imports {folders[leaf]}"
    assert folders["config"] <= {"registry"}


def test_nothing_inside_imports_the_package_root():
    offenders = [m for m, targets in _graph().items() if "masllm" in targets and _folder(m) != "cli"]
    assert not offenders, f"these modules import the package root (a cycle in disguise): {offenders}"


def test_top_level_is_leaves_and_folders():
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat - DEPRECATED <= TOP_LEVEL, f"new top-level modules {sorted(flat - DEPRECATED - TOP_LEVEL)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path} is over {MAX_LINES} lines: split it"


def test_old_module_paths_still_import():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from masllm.checkpoint import CONFIG_NAME, load_omega, save_omega  # noqa: F401
        from masllm.sharding import LocalShards, world  # noqa: F401
        from masllm.teardown import exit_process  # noqa: F401
        from masllm.trainer import MASTrainer  # noqa: F401
