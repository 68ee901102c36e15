#!/usr/bin/env python3
"""Fails on an import cycle or an import that goes up the harness's layers (run by `make lint`).

The layers, lowest first (README, "How the harness is built"). A module may import modules of its own
package and of any lower layer, never a higher layer or a sibling package of the same layer. Every import
counts, also those inside functions: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "harness"
# (rank, package prefix): the longest matching prefix names a module's layer.
LAYERS = [
    (0, "harness.core"),
    (1, "harness.traffic"),
    (1, "harness.hashing"),
    (1, "harness.processes"),
    (2, "harness.istio_model"),
    (2, "harness.report"),
    (3, "harness.meshes.local"),
    (3, "harness.meshes.kube"),
    (4, "harness.meshes.istiod"),
    (5, "harness.meshes.registry"),
    (6, "harness.plugin"),
]


def layer(module: str) -> tuple[int, str]:
    matches = [(rank, prefix) for rank, prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise SystemExit(f"check-imports: {module} is in no layer; add its package to LAYERS in {__file__}")
    return max(matches, key=lambda match: len(match[1]))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """The harness modules ``path`` imports, with line numbers (``from pkg import mod`` names the module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule if submodule in modules else node.module, node.lineno))
    return found


def main(root: Path = ROOT) -> int:
    # The packages' own __init__ files hold no code; they are not checked.
    paths = sorted(p for p in (root / PACKAGE).rglob("*.py") if p.name != "__init__.py" or p.read_text().strip())
    inits = list((root / PACKAGE).rglob("__init__.py"))
    modules = {module_name(path, root) for path in paths} | {module_name(p, root) for p in inits}
    packages = {module_name(p, root) for p in inits} - {module_name(p, root) for p in paths}
    graph: dict[str, set[str]] = defaultdict(set)
    problems = []
    for path in paths:
        source = module_name(path, root)
        rank, package = layer(source)
        for target, line in imports(path, modules):
            if target == source or target.rpartition(".")[0] == "" or target in packages:
                continue
            graph[source].add(target)
            target_rank, target_package = layer(target)
            where = f"{path.relative_to(root)}:{line}"
            if target_rank > rank:
                problems.append(f"{where}: upward import of {target} ({target_package}, layer {target_rank}) "
                                f"from layer {rank} ({package})")
            elif target_rank == rank and target_package != package:
                problems.append(f"{where}: sideways import of {target} from {package} (same layer {rank})")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    for problem in problems:
        print(problem)
    edges = sum(len(targets) for targets in graph.values())
    print(f"check-imports: {len(modules)} modules, {edges} imports between them, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                ordered = sorted(component)
                found.append([*ordered, ordered[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT))
