"""The package's imports run one way: read every module's imports with ``ast`` and check the directions.

Layers, lowest first: ``core`` (the model) and ``data`` (files -> batches) know nothing above them and not
each other; ``runs`` (a training run on disk: its configs, checkpoints and model) sits above ``core``;
``evaluation`` and ``export`` sit above those and need no ``training`` (which may use evaluation,
not export); entry points (absl flags and
``app.UsageError``) sit on top, and only they import ``absl.flags`` / ``absl.app``. Nothing in the
package imports the repository's ``tools/`` (conversion scripts that import the package, not the other
way round). Imports inside functions count: a lazy import is still a dependency.

Entry points are the package's top-level modules that define ``define_flags`` (the convention for every
command line: ``define_flags(fv)``, ``config_from_flags(fv)``, ``main``), and ``cli`` (their shared flag
helpers), so a new command line needs no change here; a module inside a subpackage is always library.

Inside the search (``nas``) the modules import one another one way too: their import graph has no circle
(the test prints the circle if there is one). Besides, the search space and the shared helpers (rank
correlation, an end-to-end run's evaluation) import no other part of the search; the trial store knows
nothing of the config, the study, the worker or the driver above it; and the worker loop imports neither
the driver nor ``progress`` (worker processes load no TensorBoard summaries, no cv2).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "deeplab_dpc"

# Modules that parse command lines (absl flags, app.UsageError); everything else in the package is library.
# KNOWN_ENTRY_POINTS must all be found by the rule (``entry_points``); new ones are found without being listed.
FLAG_HELPERS = frozenset({f"{PACKAGE}.cli"})
KNOWN_ENTRY_POINTS = frozenset(
    f"{PACKAGE}.{name}" for name in ("train", "eval", "vis", "export_model", "model_stats", "demo")
)

# (layer, layers it must not import). A layer is a module or a package prefix; ENTRY is every entry point.
ENTRY = "<entry points>"
FORBIDDEN = (
    ("core", ("data", "training", "evaluation", "export", "runs", ENTRY)),
    ("data", ("core", "runs", "training", "evaluation", "export", ENTRY)),
    ("runs", ("data", "training", "evaluation", "export", ENTRY)),
    ("evaluation", ("training", ENTRY)),
    ("export", ("training", ENTRY)),
    ("training", ("export", ENTRY)),
    ("analysis", ("data", "runs", "training", "evaluation", "export", ENTRY)),
    # The model server runs an export: it needs no model code, training, search or checkpoints.
    ("serving", ("core", "runs", "training", "evaluation", "export", "nas", ENTRY)),
    # Inside the search.
    ("nas.space", ("nas",)),
    ("nas.rank_correlation", ("nas",)),
    ("nas.full_training", ("nas",)),
    ("nas.trial_store", ("nas.search_config", "nas.study", "nas.worker", "nas.executors")),
    ("nas.worker", ("nas.executors", "nas.progress")),
)
# Subpackages whose modules' imports must form no circle (lazy imports included).
ACYCLIC = (f"{PACKAGE}.nas",)
ABSL_ENTRY_ONLY = ("absl.flags", "absl.app")


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every module ``source`` imports, with its line: top-level, inside functions and ``__import__`` /
    ``importlib.import_module`` calls with a literal name. ``from a import b`` yields ``a.b`` (b may be
    a submodule or a name defined in ``a``: either way ``a.b`` lies within ``a``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            found += [(base if alias.name == "*" else f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, node.lineno))
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def defines_flags(source: str) -> bool:
    """Whether a module defines a top-level ``define_flags`` function (the entry points' convention)."""
    return any(
        isinstance(node, ast.FunctionDef) and node.name == "define_flags" for node in ast.parse(source).body
    )


def entry_points(modules: dict[str, tuple[str, str, bool]]) -> frozenset[str]:
    """``cli`` and the package's top-level modules that define ``define_flags``."""
    top_level = {name for name, (_, _, is_package) in modules.items()
                 if not is_package and name.count(".") == 1 and name.startswith(PACKAGE + ".")}
    return FLAG_HELPERS | {name for name in top_level if defines_flags(modules[name][1])}


def violations(modules: dict[str, tuple[str, str, bool]]) -> list[str]:
    """``modules``: name -> (display path, source, is package). One line per offending import."""
    entries = entry_points(modules)

    def in_layer(name: str, layer: str) -> bool:
        return name in entries if layer == ENTRY else _within(name, f"{PACKAGE}.{layer}")

    out = []
    for module, (path, source, is_package) in sorted(modules.items()):
        for target, line in imports_of(source, module, is_package):
            where = f"{path}:{line}: {module} imports {target}"
            if _within(target, "tools"):
                out.append(f"{where} (the package must not import the repository's tools/)")
            if module not in entries and any(_within(target, name) for name in ABSL_ENTRY_ONLY):
                out.append(f"{where} (absl flags/app belong to entry points: top-level modules with define_flags)")
            for layer, forbidden in FORBIDDEN:
                if not in_layer(module, layer):
                    continue
                for other in forbidden:
                    if in_layer(target, other) and not in_layer(target, layer):
                        out.append(f"{where} ({layer} must not import {other})")
    return sorted(set(out))


def import_graph(modules: dict[str, tuple[str, str, bool]], within: str) -> dict[str, dict[str, int]]:
    """Among the modules inside ``within``: module -> {module it imports: line of the first such import}.
    An imported name (``from a.b import f``) counts as its module (``a.b``), the longest module name
    the import lies within; a module importing itself (its own package's names) is left out."""
    names = sorted((m for m in modules if _within(m, within)), key=len, reverse=True)
    graph: dict[str, dict[str, int]] = {}
    for module in sorted(names):
        _, source, is_package = modules[module]
        edges = graph.setdefault(module, {})
        for target, line in imports_of(source, module, is_package):
            imported = next((n for n in names if _within(target, n)), None)
            if imported is not None and imported != module:
                edges.setdefault(imported, line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One circle of imports in ``graph`` (``import_graph``'s), as modules in order, the first repeated
    at the end (``[a, b, a]``); None when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph.get(module, {})):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]],
                   modules: dict[str, tuple[str, str, bool]]) -> str:
    """One line per import of the circle: ``path:line: a imports b``."""
    return "\n".join(f"{modules[a][0]}:{graph[a][b]}: {a} imports {b}" for a, b in zip(cycle, cycle[1:]))


def package_modules(root: pathlib.Path = ROOT) -> dict[str, tuple[str, str, bool]]:
    return {
        module_name(path, root): (str(path.relative_to(root)), path.read_text(encoding="utf-8"),
                                  path.name == "__init__.py")
        for path in sorted((root / PACKAGE).rglob("*.py"))
    }


def test_the_package_imports_run_one_way():
    modules = package_modules()
    assert f"{PACKAGE}.core.model" in modules and f"{PACKAGE}.evaluation.eval_lib" in modules
    bad = violations(modules)
    assert not bad, "imports against the allowed directions:\n" + "\n".join(bad)


@pytest.mark.parametrize("within", ACYCLIC)
def test_no_import_circle_inside(within):
    modules = package_modules()
    graph = import_graph(modules, within)
    assert f"{within}.study" in graph and f"{within}.trial_store" in graph[f"{within}.worker"]
    cycle = find_cycle(graph)
    assert cycle is None, f"a circle of imports inside {within}:\n" + describe_cycle(cycle, graph, modules)


def test_entry_points_are_found_by_the_rule():
    found = entry_points(package_modules())
    missing = sorted((KNOWN_ENTRY_POINTS | FLAG_HELPERS) - found)
    assert not missing, f"entry points the rule does not find (no top-level define_flags?): {missing}"
    assert not any(name.count(".") > 1 for name in found), found  # never a subpackage's module


# The checker itself: it must see what it is meant to forbid.


def _check(**sources):
    return violations(
        {name.replace("__", "."): (name.replace("__", "/") + ".py", src, False) for name, src in sources.items()}
    )


def test_lazy_and_relative_imports_are_seen():
    bad = _check(
        deeplab_dpc__evaluation__eval_lib="def f():\n    from deeplab_dpc.training.checkpoints import x\n",
        deeplab_dpc__core__model="from ..data import batches\n",
        deeplab_dpc__export__export_lib="def f():\n    return __import__('deeplab_dpc.training.train_lib')\n",
    )
    assert any("deeplab_dpc/evaluation/eval_lib.py:2:" in b and "evaluation must not import training" in b
               for b in bad), bad
    assert any("deeplab_dpc/core/model.py:1:" in b and "deeplab_dpc.data.batches" in b for b in bad), bad
    assert any("deeplab_dpc/export/export_lib.py:2:" in b for b in bad), bad


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("deeplab_dpc.data.conversion", "from absl import app, flags\n", "absl flags/app belong to entry points"),
        ("deeplab_dpc.data.conversion", "import absl.flags\n", "absl flags/app belong to entry points"),
        ("deeplab_dpc.demo", "def f():\n    from tools import build_folder_data\n", "must not import the repository's tools/"),
        ("deeplab_dpc.data.cli_like", "from absl import flags\ndef define_flags(fv):\n    pass\n",
         "absl flags/app belong to entry points"),  # define_flags inside a subpackage: still library
        ("deeplab_dpc.helpers", "from absl import app\n", "absl flags/app belong to entry points"),
        ("deeplab_dpc.data.batches", "from deeplab_dpc.core.model import ModelConfig\n", "data must not import core"),
        ("deeplab_dpc.core.layers", "import deeplab_dpc.cli\n", "core must not import <entry points>"),
        ("deeplab_dpc.training.train_lib", "from deeplab_dpc import cli\n", "training must not import <entry points>"),
        ("deeplab_dpc.runs", "from deeplab_dpc.export import export_lib\n", "runs must not import export"),
        ("deeplab_dpc.nas.space", "def f():\n    from deeplab_dpc.nas import samplers\n", "nas.space must not import nas"),
        ("deeplab_dpc.nas.trial_store", "from deeplab_dpc.nas.search_config import SearchConfig\n",
         "nas.trial_store must not import nas.search_config"),
        ("deeplab_dpc.nas.worker", "from deeplab_dpc.nas import progress\n", "nas.worker must not import nas.progress"),
    ],
)
def test_each_rule_fails_when_broken(module, source, expected):
    bad = violations({module: (module.replace(".", "/") + ".py", source, False)})
    assert any(expected in b for b in bad), bad


def _graph(sources: dict[str, str], packages: frozenset[str] = frozenset()):
    """(modules, their import graph inside ``deeplab_dpc.nas``) of made-up ``sources`` by module name."""
    modules = {
        name: (name.replace(".", "/") + ("/__init__.py" if name in packages else ".py"), src, name in packages)
        for name, src in sources.items()
    }
    return modules, import_graph(modules, "deeplab_dpc.nas")


def test_a_made_up_circle_is_found_and_printed():
    # a -> b at the top, b -> c inside a function, c -> a by a relative import of a name.
    modules, graph = _graph({
        "deeplab_dpc.nas.a": "from deeplab_dpc.nas import b as b_lib\n",
        "deeplab_dpc.nas.b": "import os\n\n\ndef f():\n    from deeplab_dpc.nas.c import g\n",
        "deeplab_dpc.nas.c": "from .a import CONSTANT\nfrom deeplab_dpc.core import spec\n",
        "deeplab_dpc.nas.d": "from deeplab_dpc.nas import a\n",  # leads into the circle, is not part of it
    })
    cycle = find_cycle(graph)
    assert cycle == ["deeplab_dpc.nas.a", "deeplab_dpc.nas.b", "deeplab_dpc.nas.c", "deeplab_dpc.nas.a"]
    assert describe_cycle(cycle, graph, modules).splitlines() == [
        "deeplab_dpc/nas/a.py:1: deeplab_dpc.nas.a imports deeplab_dpc.nas.b",
        "deeplab_dpc/nas/b.py:5: deeplab_dpc.nas.b imports deeplab_dpc.nas.c",
        "deeplab_dpc/nas/c.py:1: deeplab_dpc.nas.c imports deeplab_dpc.nas.a",
    ]


def test_a_circle_of_two_and_one_through_the_package_are_found():
    _, graph = _graph({
        "deeplab_dpc.nas.features": "def f():\n    import deeplab_dpc.nas.proxy\n",
        "deeplab_dpc.nas.proxy": "from deeplab_dpc.nas.features import FeatureCache\n",
    })
    assert find_cycle(graph) == ["deeplab_dpc.nas.features", "deeplab_dpc.nas.proxy", "deeplab_dpc.nas.features"]
    # The package's __init__ re-exports a name of a module that imports a name of the package back.
    _, graph = _graph(
        {
            "deeplab_dpc.nas": "from deeplab_dpc.nas.study import load_study\n",
            "deeplab_dpc.nas.study": "from deeplab_dpc.nas import space\nfrom deeplab_dpc.nas import VERSION\n",
            "deeplab_dpc.nas.space": "",
        },
        packages=frozenset({"deeplab_dpc.nas"}),
    )
    assert find_cycle(graph) == ["deeplab_dpc.nas", "deeplab_dpc.nas.study", "deeplab_dpc.nas"]


def test_imports_one_way_make_no_circle():
    _, graph = _graph({
        "deeplab_dpc.nas.space": "from deeplab_dpc.core.spec import CellSpec\n",
        "deeplab_dpc.nas.trial_store": "from deeplab_dpc.nas import space as space_lib\n",
        "deeplab_dpc.nas.worker": "from deeplab_dpc.nas import trial_store\n"
        "def f():\n    from deeplab_dpc.nas.space import suggest_spec\n",
        "deeplab_dpc.nas.executors": "from deeplab_dpc.nas.worker import run_worker\nimport deeplab_dpc.nas.space\n",
    })
    assert graph["deeplab_dpc.nas.worker"] == {"deeplab_dpc.nas.trial_store": 1, "deeplab_dpc.nas.space": 3}
    assert find_cycle(graph) is None


def test_allowed_imports_pass():
    assert not _check(
        deeplab_dpc__evaluation__eval_lib="from deeplab_dpc.runs import load_model_for_inference\n"
        "from deeplab_dpc.data.batches import make_batches\nfrom absl import logging\n",
        deeplab_dpc__training__train_lib="from deeplab_dpc.evaluation.eval_lib import confusion_over\n",
        deeplab_dpc__eval="from absl import app, flags\nfrom deeplab_dpc import cli\ndef define_flags(fv):\n    pass\n",
        deeplab_dpc__new_tool="from absl import app, flags\ndef define_flags(fv):\n    pass\n",
        deeplab_dpc__core__model="from deeplab_dpc.core import geometry\nfrom deeplab_dpc.fileio import write_json\n",
        deeplab_dpc__nas__space="from deeplab_dpc.nas.space import distributions\nfrom deeplab_dpc.core.spec import CellSpec\n",
        deeplab_dpc__nas__worker="from deeplab_dpc.nas import trial_store\nfrom deeplab_dpc.nas.study import load_study\n",
    )
