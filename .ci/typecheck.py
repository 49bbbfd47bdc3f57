"""Type-check the package with mypy, as it is imported (``mhd.*``), from a clone.

The folders of a clone are not named like the packages they hold (``functions/``
is ``mhd.functions``, see ``[tool.setuptools.package-dir]``), and mypy cannot
follow setuptools' editable-install finder; so this lays the package out
under a temporary folder (symbolic links to the clone's files) and runs mypy
on it with the settings of ``[tool.mypy]`` in pyproject.toml.

    python .ci/typecheck.py            # what .ci/run runs
    python .ci/typecheck.py -p mhd.contracts   # other mypy arguments: those instead of the default targets
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Package -> its folder in the clone (pyproject.toml's package-dir).
FOLDERS = {"mhd": "mhd-package", "mhd/functions": "functions", "mhd/client": "client", "mhd/endpoint": "endpoint"}
#: What is checked by default (strict, see [tool.mypy] in pyproject.toml): the public API.
TARGETS = [
    *("-m", "mhd", "-m", "mhd.params", "-p", "mhd.contracts", "-m", "mhd.functions"),
    *("-m", "mhd.functions._detect", "-m", "mhd.functions._backend", "-m", "mhd.functions._normalize", "-m", "mhd.functions._scalespace"),
]


def lay_out(dest: Path) -> Path:
    """Link every ``.py`` file of the package into ``dest``/mhd/... as Python imports it; return ``dest``."""
    for package, folder in FOLDERS.items():
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            link = dest / package / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    return dest


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="mhd-typecheck-") as tmp:
        tree = lay_out(Path(tmp))
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *(argv or TARGETS)]
        return subprocess.run(cmd, cwd=tree).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
