"""The package's layers: imports point down only, and no module imports itself back.

The imports of every module (function-level ones included) are read with
ast, never by importing. Layers, top down (README, Source layout):

    cli, cli_parser, __main__        the command line
    commands/                        commands that use a build
    pipeline, stages/                the conversion stages
    validate/                        the engine: a library that knows no command
    backends                         the registry
    runners/, model/, weights/, data/
    config, config_model, family, records, util/, errors   the ground floor
"""
import ast
import os

import pytest

from tests.support import ROOT

LAYERS = [("cli", "cli_parser", "__main__"), ("commands",), ("pipeline", "stages"), ("validate",), ("backends",),
          ("runners", "model", "weights", "data"), ("config", "config_model", "family", "records", "util", "errors",
                                                    "__init__")]


def module_imports(package_dir):
    """{module: {imported module of the package}} for every .py file."""
    pkg = os.path.basename(package_dir)
    found = {}
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.dirname(package_dir))[:-3].replace(os.sep, ".")
            module = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
            found[module] = path
    graph = {}
    for module, path in found.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = module.split(".")
                    keep = len(parts) - node.level + (1 if path.endswith("__init__.py") else 0)
                    base = ".".join(parts[:keep] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                while n and n not in found:
                    n = n.rpartition(".")[0]
                # a module importing its own package's __init__ is the package idiom, not a dependency back
                if n and n != module and n.startswith(pkg) and not module.startswith(n + "."):
                    deps.add(n)
        graph[module] = deps
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module):
    part = module.split(".")[1] if "." in module else "__init__"
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS and the README")


def upward(graph):
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if layer_of(b) < layer_of(a))


def test_no_import_cycle_and_no_upward_import():
    graph = module_imports(os.path.join(ROOT, "converter"))
    assert len(graph) > 50
    assert cycles(graph) == []
    assert upward(graph) == []


def test_the_checks_trip_on_a_cycle_and_an_upward_import(tmp_path):
    """Negative controls: a package with a validate <-> commands circle."""
    pkg = tmp_path / "converter"
    for folder in ("commands", "validate"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "commands" / "evaluate.py").write_text("from converter.validate.host import Host\n")
    (pkg / "validate" / "host.py").write_text("def f():\n    from converter.commands.evaluate import load_gt\n")
    graph = module_imports(str(pkg))
    assert cycles(graph) == [["converter.commands.evaluate", "converter.validate.host"]]
    assert upward(graph) == ["converter.validate.host -> converter.commands.evaluate"]
    (pkg / "validate" / "host.py").write_text("from . import items\n")
    (pkg / "validate" / "items.py").write_text("from ..commands import evaluate\n")
    graph = module_imports(str(pkg))   # relative imports are resolved too
    assert "converter.validate.items -> converter.commands.evaluate" in upward(graph)


def test_an_unknown_folder_is_refused():
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("converter.plugins.x")
