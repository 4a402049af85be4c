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
)
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
    ],
)
def test_each_rule_fails_when_broken(module, source, expected):
    bad = violations({module: (module.replace(".", "/") + ".py", source, False)})
    assert any(expected in b for b in bad), bad


def test_allowed_imports_pass():
    assert not _check(
        deeplab_dpc__evaluation__eval_lib="from deeplab_dpc.runs import load_model_for_inference\n"
        "from deeplab_dpc.data.batches import make_batches\nfrom absl import logging\n",
        deeplab_dpc__training__train_lib="from deeplab_dpc.evaluation.eval_lib import confusion_over\n",
        deeplab_dpc__eval="from absl import app, flags\nfrom deeplab_dpc import cli\ndef define_flags(fv):\n    pass\n",
        deeplab_dpc__new_tool="from absl import app, flags\ndef define_flags(fv):\n    pass\n",
        deeplab_dpc__core__model="from deeplab_dpc.core import geometry\nfrom deeplab_dpc.fileio import write_json\n",
    )
