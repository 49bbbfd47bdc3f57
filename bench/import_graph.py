"""Print the static import graph of the package: each module and the ``mhd`` modules it imports.

    python bench/import_graph.py            # module -> mhd modules it imports
    python bench/import_graph.py --layers   # layer -> layers it imports, and cupy

Read from the source with :mod:`ast` (nothing is imported), every ``import``
statement counts, at module level or inside a function (a lazy import is
still an arrow). The layers are the pure detector ``mhd.functions``, the
worker side ``mhd.functions.worker`` (the registered function, decoding,
confinement, limits, the tile record), ``mhd.client``, ``mhd.endpoint`` and
the top-level ``mhd`` (the version and :mod:`mhd.params`, the detector's
parameters, which every layer reads).
``tests/project/test_layout.py`` checks the architecture's arrows with the same
reader:

* ``mhd.functions`` (the pure detector) imports nothing from the worker side,
  ``mhd.client``, ``mhd.endpoint``, ``pathlib`` or ``globus*``, and neither
  reads the environment nor opens files (:func:`side_effects`);
* ``mhd.functions.worker`` imports nothing from ``mhd.client`` or ``mhd.endpoint``;
* ``mhd.client`` never imports ``cupy``;
* ``mhd.endpoint`` never imports ``mhd.client``;
* ``mhd`` (``mhd.params``) imports nothing of the package: every layer may read it.

A subpackage's ``__init__`` runs when any of its modules is imported;
``mhd.functions`` loads its detector lazily (PEP 562), so importing the worker's
record does not load NumPy and SciPy (``tests/project/test_layout.py`` checks it at run time).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: folder -> import name, as pyproject.toml's [tool.setuptools.package-dir] maps them
PACKAGES = {"functions": "mhd.functions", "client": "mhd.client", "endpoint": "mhd.endpoint", "mhd-package": "mhd"}

#: The layers, most specific first: a module belongs to the first one it is in.
LAYERS = ("mhd.functions.worker", "mhd.functions", "mhd.client", "mhd.endpoint", "mhd")

#: Modules of another layer than their name says: ``mhd.functions._score`` is kept for
#: functions registered before the worker side moved (it re-exports the worker's ``score_batch``).
MOVED = {"mhd.functions._score": "mhd.functions.worker"}


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            out.add(stem)
            # ``from . import x`` / ``from mhd.client import x``: x may be a submodule
            out.update(f"{stem}.{alias.name}" for alias in node.names if alias.name != "*")
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> every module it imports (``mhd`` and third-party), for all of functions/, client/, endpoint/, mhd-package/."""
    out: dict[str, set[str]] = {}
    for folder in PACKAGES:
        for path in sorted((root / folder).rglob("*.py")):
            out[module_name(path, root)] = imports(path, root)
    return out


def mhd_edges(g: dict[str, set[str]]) -> dict[str, list[str]]:
    """module -> the modules of the package it imports (names that are modules, not attributes)."""
    known = set(g)
    return {mod: sorted(n for n in names if n in known and n != mod) for mod, names in g.items()}


def layer(name: str) -> str | None:
    """The layer of a module name (:data:`LAYERS`), ``cupy`` for CuPy, else None."""
    for moved, sub in MOVED.items():
        if name == moved or name.startswith(moved + "."):
            return sub
    for sub in LAYERS:
        if name == sub or name.startswith(sub + "."):
            return sub
    top = name.split(".")[0]
    return top if top in ("cupy", "cupyx") else None


def side_effects(path: Path) -> set[str]:
    """What in ``path`` reaches outside an image-in, numbers-out computation.

    ``os.environ``, ``os.getenv`` / ``os.putenv`` / ``os.unsetenv`` (the
    environment), calls of ``open`` and ``io.open`` (files), and imports of
    ``pathlib`` and ``globus*`` modules; as a set of those names.
    """
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            dotted = f"{node.value.id}.{node.attr}"
            if dotted in ("os.environ", "os.getenv", "os.putenv", "os.unsetenv", "io.open"):
                out.add(dotted)
        elif isinstance(node, ast.Name) and node.id in ("environ", "getenv"):
            out.add(node.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            out.add("open")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "pathlib" or a.name.startswith("globus"))
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] == "pathlib" or node.module.startswith("globus"):
                out.add(node.module)
    return out


def layers(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """layer -> the other layers (and cupy) any of its modules imports."""
    out: dict[str, set[str]] = {sub: set() for sub in LAYERS}
    for mod, names in g.items():
        src = layer(mod)
        out[src].update(d for n in names if (d := layer(n)) and d != src)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true", help="subpackage arrows only")
    args = parser.parse_args()
    g = graph()
    if args.layers:
        for sub, deps in layers(g).items():
            print(f"{sub} -> {', '.join(sorted(deps)) or '(nothing)'}")
        return
    for mod, deps in mhd_edges(g).items():
        print(f"{mod} -> {', '.join(deps) or '(nothing)'}")


if __name__ == "__main__":
    main()
