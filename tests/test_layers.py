"""The package's layers: imports point down only, and no module imports itself back.

The imports of every module (function-level ones included) are read with
ast, never by importing. Layers, top down (docs/development.md, Source layout):

    cli, cli_parser, __main__        the command line
    commands/                        commands that use a build
    pipeline, stages/                the conversion stages
    engine/                          the engine: a library that knows no command
    backends                         the registry
    runners/, model/, weights/, data/
    config, config_model, family, records, util/, errors   the ground floor
"""
import ast
import os

import pytest

from tests.support import ROOT

LAYERS = [("cli", "cli_parser", "__main__"), ("commands",), ("pipeline", "stages"), ("engine",), ("backends",),
          ("runners", "model", "weights", "data"), ("config", "config_model", "family", "records", "layout", "util", "errors",
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
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS and docs/development.md")


def upward(graph):
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if layer_of(b) < layer_of(a))


def test_no_import_cycle_and_no_upward_import():
    graph = module_imports(os.path.join(ROOT, "converter"))
    assert len(graph) > 50
    assert cycles(graph) == []
    assert upward(graph) == []


def test_the_checks_trip_on_a_cycle_and_an_upward_import(tmp_path):
    """Negative controls: a package with an engine <-> commands circle."""
    pkg = tmp_path / "converter"
    for folder in ("commands", "engine"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "commands" / "evaluate.py").write_text("from converter.engine.worker import Worker\n")
    (pkg / "engine" / "worker.py").write_text("def f():\n    from converter.commands.evaluate import load_gt\n")
    graph = module_imports(str(pkg))
    assert cycles(graph) == [["converter.commands.evaluate", "converter.engine.worker"]]
    assert upward(graph) == ["converter.engine.worker -> converter.commands.evaluate"]
    (pkg / "engine" / "worker.py").write_text("from . import items\n")
    (pkg / "engine" / "items.py").write_text("from ..commands import evaluate\n")
    graph = module_imports(str(pkg))   # relative imports are resolved too
    assert "converter.engine.items -> converter.commands.evaluate" in upward(graph)


def test_an_unknown_folder_is_refused():
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("converter.plugins.x")


# --- the house: short functions, few positional parameters, one layout -------

MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 6


def house_problems(package_dir):
    """Every function longer than MAX_FUNCTION_LINES lines or with more than
    MAX_POSITIONAL positional parameters (self and cls aside), and every
    os.path.join onto a workdir outside layout.py (which names the paths)."""
    problems = []
    for folder, _, files in os.walk(package_dir):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.dirname(package_dir))
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            for node in ast.walk(tree):
                problems += [f"{rel}:{node.lineno} {p}" for p in _node_problems(node, name)]
    return problems


def _node_problems(node, file_name):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
        if lines > MAX_FUNCTION_LINES:
            yield f"{node.name} has {lines} lines"
        if len(positional) > MAX_POSITIONAL:
            yield f"{node.name} takes {len(positional)} positional parameters"
    if (file_name != "layout.py" and isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join"
            and node.args and "workdir" in ast.unparse(node.args[0]).lower()):
        yield f"joins a path onto a workdir ({ast.unparse(node)[:60]}): ask layout.Workdir for it"


def test_the_house_rules_hold():
    assert house_problems(os.path.join(ROOT, "converter")) == []


def test_the_house_rules_trip(tmp_path):
    """Negative controls: a long function, a long positional list, a literal join onto a workdir."""
    pkg = tmp_path / "converter"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (pkg / "a.py").write_text(f"def long():\n{body}\n\n"
                              "def many(self, a, b, c, d, e, f, g):\n    pass\n\n\n"
                              "def fine(a, b, c, d, e, f, *, g, h, i):\n    pass\n")
    (pkg / "b.py").write_text("import os\n\n\ndef f(workdir):\n    return os.path.join(workdir, 'onnx')\n")
    (pkg / "layout.py").write_text("import os\n\n\ndef f(workdir):\n    return os.path.join(workdir, 'onnx')\n")
    found = house_problems(str(pkg))
    assert [p.split(" ", 1)[1] for p in found] == [
        f"long has {MAX_FUNCTION_LINES + 1} lines", "many takes 7 positional parameters",
        "joins a path onto a workdir (os.path.join(workdir, 'onnx')): ask layout.Workdir for it"]
