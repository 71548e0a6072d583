"""The architecture rules of the package, checked on its source with ``ast`` (nothing is imported).

* **Layers.** A module may import only from its own layer or a lower one, imports inside
  functions included; relative imports are resolved. ``preimage/__init__.py`` (the public API)
  may import anything, and no module of the package imports the package root.
* **Short functions.** No function (or method) is longer than :data:`MAX_FUNCTION_LINES` lines,
  from its ``def`` line to its last line.

Each test fails with the whole list of violations, one per line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "preimage"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Bottom to top: a module may import from its own layer and those below it. A module belongs to
#: the layer of the longest prefix naming it (``preimage.io`` covers ``preimage.io.images``).
LAYERS: list[tuple[str, ...]] = [
    ("preimage.errors", "preimage.paper", "preimage.version", "preimage.compiled"),
    ("preimage.data", "preimage.io"),
    ("preimage.objective", "preimage.masks", "preimage.metrics", "preimage.image_metrics", "preimage.params",
     "preimage.transforms", "preimage.objectives", "preimage.objective_numba"),
    ("preimage.optim",),
    ("preimage.models",),
    ("preimage.representations",),
    ("preimage.invert", "preimage.visualize"),
    ("preimage.baselines",),
    ("preimage.experiments", "preimage.evaluate"),
    ("preimage.cli", "preimage.serve"),
]
LAYER_NAMES = ["errors/paper", "data/io", "objective/masks/metrics", "optim", "models", "representations",
               "invert", "baselines", "experiments/evaluate", "cli"]
#: The public API: above every layer, so that importing it from inside the package is a violation.
API_LAYER = len(LAYERS)
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package: ``module`` imports ``target`` at ``line``."""

    path: Path
    line: int
    module: str
    target: str


def module_name(path: Path, root: Path) -> str:
    """``preimage/io/images.py`` → ``preimage.io.images``; a package's ``__init__.py`` → the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name → file."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve_base(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module named by a ``from ... import`` (None when it climbs out of the tree)."""
    if node.level == 0:
        return node.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 > len(package) - 1:
        return None
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, module: str, known: set[str]) -> list[Import]:
    """Every import of a package module in ``path`` (module ``module``), wherever it stands.

    ``from pkg import name`` targets ``pkg.name`` when that is a module of the package, else ``pkg``.
    A relative import climbing above the top package is reported with the target ``"<outside>"``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    top = module.split(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(node, module, is_package)
            if base is None:
                found.append(Import(path, node.lineno, module, "<outside>"))
                continue
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in dict.fromkeys(targets):
            if t == top or t.startswith(top + "."):
                found.append(Import(path, node.lineno, module, t))
    return found


def layer_of(module: str) -> int | None:
    """The layer index of a package module (the longest matching prefix), :data:`API_LAYER` for
    the package root, None when no layer names it."""
    if module == PACKAGE:
        return API_LAYER
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def _label(layer: int | None) -> str:
    if layer is None:
        return "no layer"
    return "the public API" if layer == API_LAYER else f"layer {layer} {LAYER_NAMES[layer]}"


def layer_violations(root: Path) -> list[str]:
    """One line per import that goes up the layers (or out of the tree), in file order."""
    mods = modules(root)
    out = []
    for name, path in mods.items():
        if name == PACKAGE:
            continue  # the public API may import anything
        here = layer_of(name)
        for imp in imports_of(path, name, set(mods)):
            there = layer_of(imp.target) if imp.target != "<outside>" else None
            if imp.target != "<outside>" and (here is None or there is None or there <= here):
                continue  # unassigned modules are reported by test_every_module_has_a_layer
            rel = path.relative_to(root.parent)
            out.append(f"{rel}:{imp.line}: {name} ({_label(here)}) imports {imp.target} ({_label(there)})")
    return out


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """One line per function or method longer than ``limit`` lines (``def`` line to last line)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno}: {node.name} is {n} lines")
    return sorted(out, key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def _fail(title: str, lines: list[str]) -> None:
    pytest.fail(f"{title} ({len(lines)}):\n" + "\n".join(lines), pytrace=False)


# ------------------------------------------------------------------------------------ the package
def test_every_module_has_a_layer():
    missing = [f"{p.relative_to(ROOT.parent)}: {name}" for name, p in modules(ROOT).items()
               if layer_of(name) is None]
    if missing:
        _fail("modules in no layer of COMMON.md (move them, or add their layer to LAYERS)", missing)


def test_imports_follow_the_layers():
    bad = layer_violations(ROOT)
    if bad:
        _fail("imports from a higher layer", bad)


def test_no_function_longer_than_80_lines():
    bad = long_functions(ROOT)
    if bad:
        _fail(f"functions longer than {MAX_FUNCTION_LINES} lines", bad)


# ------------------------------------------------------------------------------------ the checker
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checker_resolves_relative_and_function_level_imports(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "from .cli import main\n",
        "errors.py": "",
        "io/__init__.py": "from . import images\n",
        "io/images.py": "from ..errors import E\n\ndef f():\n    from ..optim import minimise\n",
        "optim.py": "import preimage.metrics\n",
        "metrics.py": "from preimage import cli\n",
        "cli.py": "from .io.images import f\nfrom . import helpers\n",
        "representations/hog.py": "def g():\n    from ..invert import invert\n    from .. import paper\n",
        "representations/dsift.py": "from ... import elsewhere\n",
        "helpers.py": "",
    })
    assert layer_violations(root) == [
        "preimage/io/images.py:4: preimage.io.images (layer 1 data/io) imports preimage.optim (layer 3 optim)",
        "preimage/metrics.py:1: preimage.metrics (layer 2 objective/masks/metrics) imports preimage.cli "
        "(layer 9 cli)",
        "preimage/representations/dsift.py:1: preimage.representations.dsift (layer 5 representations) "
        "imports <outside> (no layer)",
        "preimage/representations/hog.py:2: preimage.representations.hog (layer 5 representations) imports "
        "preimage.invert (layer 6 invert)",
        "preimage/representations/hog.py:3: preimage.representations.hog (layer 5 representations) imports "
        "preimage (the public API)",
    ]
    # `from .. import paper` names no module here: it imports the package root (the public API)
    imps = imports_of(root / "representations/hog.py", "preimage.representations.hog", set(modules(root)))
    assert [i.target for i in imps] == ["preimage.invert", "preimage"]
    assert layer_of("preimage") == API_LAYER and layer_of("preimage.helpers") is None
    assert layer_of("preimage.io.images") == 1 and layer_of("preimage.iox") is None


def test_checker_measures_functions_from_def_to_last_line(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    root = _tree(tmp_path, {"a.py": f"@decorator\ndef short():\n{body}\n\ndef long():\n{body}    x = 1\n"})
    assert long_functions(root) == ["preimage/a.py:84: long is 81 lines"]
