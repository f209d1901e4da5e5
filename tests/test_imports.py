"""The package's import graph: no cycle, and predict does not depend on training code.

The graph is read from the source with :mod:`ast`: every ``import`` statement,
at module level, inside functions and under ``TYPE_CHECKING``; an edge goes to
the deepest ``bids_amyloid`` module named (not to its parent packages).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bids_amyloid"


def module_files() -> dict[str, Path]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph() -> dict[str, set[str]]:
    files = module_files()

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name].update(t for t in map(known, targets) if t and t != name)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_graph_sees_known_edges() -> None:
    graph = import_graph()
    assert "bids_amyloid.evaluation" in graph["bids_amyloid.train.stages"]
    assert "bids_amyloid.predict.saliency" in graph["bids_amyloid.predict.run"]  # in a function


def test_no_import_cycle() -> None:
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_predict_does_not_import_training_code() -> None:
    graph = import_graph()
    for name in (n for n in graph if n.startswith("bids_amyloid.predict")):
        reached = reachable(graph, name)
        assert not {n for n in reached if n.startswith("bids_amyloid.train")}, name
