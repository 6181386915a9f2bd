"""The house's layout, checked from the source: the library never imports the experiments,
experiments modules share only public names, and imports form no circle."""
from __future__ import annotations

import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "convnorm")


def _modules(folder):
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            yield os.path.join(folder, name)


def _imports(path, top_level_only=False):
    """(module, imported names) of every import in the file (function-level ones too unless asked)."""
    tree = ast.parse(open(path).read(), path)
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _module_name(path):
    rel = os.path.relpath(path, os.path.dirname(SRC))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


@pytest.mark.parametrize("path", list(_modules(SRC)), ids=os.path.basename)
def test_the_library_never_imports_the_experiments(path):
    for module, _ in _imports(path):
        assert not module.startswith("convnorm.experiments"), f"{path} imports {module}"


EXPERIMENTS = [p for p in _modules(os.path.join(SRC, "experiments"))] + list(
    _modules(os.path.join(SRC, "experiments", "models")))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_experiments_modules_share_only_public_names(path):
    for module, names in _imports(path):
        if module.startswith("convnorm.experiments"):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path} imports {private} from {module}"


def test_module_level_imports_form_no_circle():
    paths = list(_modules(SRC)) + EXPERIMENTS
    known = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        edges = set()
        for module, names in _imports(path, top_level_only=True):
            if not module.startswith("convnorm"):
                continue
            # `from package import submodule` depends on the submodule, not on the package.
            subs = {f"{module}.{n}" for n in names} & known
            edges |= subs if subs else {module}
        graph[_module_name(path)] = edges
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])
