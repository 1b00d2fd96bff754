"""Fail when superhf_lab imports upwards or in a circle; ``make test`` runs it before the suite.

Each folder of the package states in its ``__init__.py`` which folders it may import ("May import: core, runtime.");
this check reads those lines, so the rule has one home. Every import statement counts, also those inside functions
and under ``TYPE_CHECKING``. The modules at the package's top (the commands users type) may import any folder.
The one import no statement shows is the registry's discovery of the algorithm modules (``importlib`` in
``superhf_lab/algorithms/registry.py``), inside its own folder.

    python tools/check_layers.py [PACKAGE_DIR]
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

MAY_IMPORT = re.compile(r"^May import: (.+?)\.?$", re.MULTILINE)
ANY = "every other layer"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def allowed_layers(root: Path) -> dict[str, set[str] | None]:
    """Each folder's "May import" list (None: any folder); a folder without one is an error."""
    layers: dict[str, set[str] | None] = {}
    for init in sorted(root.glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        found = MAY_IMPORT.search(docstring)
        if found is None:
            raise SystemExit(f"{init}: its docstring needs a line 'May import: <folders>.' (or '{ANY}')")
        names = found.group(1).strip()
        if names == ANY:
            layers[init.parent.name] = None
        elif names.startswith("nothing"):
            layers[init.parent.name] = set()
        else:
            layers[init.parent.name] = {name.strip() for name in names.split(",")}
    return layers


def imports(path: Path, root: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(module of this package, line) for every import statement in the file, resolved to a module file."""
    package = root.name
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        else:
            continue
        found += [(target, node.lineno) for target in targets if target.split(".")[0] == package]
    return found


def layer_of(module: str, layers: dict) -> str | None:
    """The folder a module lives in; None for the package itself and its top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in layers else None


def shortest_cycle(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path from the group's first module back to itself, through the group."""
    start = group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node]):
                if successor == start:
                    return paths[node] + [start]
                if successor in group and successor not in paths:
                    paths[successor] = paths[node] + [successor]
                    following.append(successor)
        frontier = following
    return group


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm), each as a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def check(root: Path) -> list[str]:
    """Every upward import and every circle, as messages naming the modules."""
    layers = allowed_layers(root)
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    problems = []
    for module, path in files.items():
        graph[module] = set()
        source_layer = layer_of(module, layers)
        for target, line in imports(path, root, set(files)):
            if target not in files:
                problems.append(f"{path}:{line}: imports {target}, which is no module of {root.name}")
                continue
            if target != module:
                graph[module].add(target)
            target_layer = layer_of(target, layers)
            allowed = layers.get(source_layer) if source_layer else None
            if (
                source_layer
                and target_layer
                and target_layer != source_layer
                and allowed is not None
                and target_layer not in allowed
            ):
                may = f"only {', '.join(sorted(allowed))}" if allowed else "no other folder"
                problems.append(
                    f"{path}:{line}: {module} imports {target}: {source_layer}/ may import {may} "
                    "(its __init__.py says so)"
                )
            if source_layer and target_layer is None and target != root.name:
                problems.append(
                    f"{path}:{line}: {module} imports {target}, a top-level command module; "
                    "only the commands may import the layers, not the other way round"
                )
    for group in circles(graph):
        problems.append(
            f"import circle through {len(group)} modules, e.g. " + " -> ".join(shortest_cycle(group, graph))
        )
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "superhf_lab"
    problems = check(root)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} layer problem(s) in {root}", file=sys.stderr)
        return 1
    print(f"layers: {root.name} imports downwards only, without circles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
