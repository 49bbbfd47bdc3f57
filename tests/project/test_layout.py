"""Repository layout: nothing in the clone shadows the installed package, and the architecture's arrows hold."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "bench" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IG = _import_graph()
GRAPH = IG.graph()


def test_no_folder_of_the_clone_root_is_named_like_the_package():
    assert not (ROOT / "mhd").exists(), "a top-level mhd/ shadows the installed package for any Python run in the clone's root"


def test_package_imports_from_the_clone_root():
    """A plain ``python -c`` in the clone's root (cwd first on sys.path, no PYTHONPATH) imports the installed package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import mhd, mhd.endpoint, mhd.client, mhd.functions; print(mhd.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0.1.0"


@pytest.mark.parametrize("command", ["client", "mhd"])
def test_console_commands_run_help(command):
    exe = Path(sys.executable).with_name(command)
    assert exe.exists(), f"{command} is not installed beside {sys.executable} (pyproject.toml [project.scripts])"
    proc = subprocess.run([str(exe), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "submit" in proc.stdout and "watch" in proc.stdout


def test_import_graph_reads_every_module():
    assert {"mhd.functions", "mhd.functions.worker.remote", "mhd.client.cli", "mhd.endpoint.configure"} <= set(GRAPH)
    # the reader resolves relative imports: client/cli.py's ``from .submit import ...``
    assert "mhd.client.submit" in GRAPH["mhd.client.cli"]


def _offenders(source: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{mod} imports {name}"
        for mod, names in GRAPH.items()
        if IG.layer(mod) == source
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def test_the_pure_detector_imports_nothing_from_the_worker_client_endpoint_or_globus():
    assert (
        _offenders(
            "mhd.functions",
            (
                "mhd.functions.worker",
                "mhd.client",
                "mhd.endpoint",
                "pathlib",
                "globus_sdk",
                "globus_compute_sdk",
                "globus_compute_endpoint",
            ),
        )
        == []
    )


def test_the_pure_detector_reads_no_environment_and_opens_no_file():
    pure = [p for p in sorted((ROOT / "functions").rglob("*.py")) if IG.layer(IG.module_name(p)) == "mhd.functions"]
    assert {"mhd.functions._detect", "mhd.functions.tissue", "mhd.functions.simulate"} <= {IG.module_name(p) for p in pure}
    assert {IG.module_name(p): sorted(found) for p in pure if (found := IG.side_effects(p))} == {}


def test_the_worker_side_is_what_the_registered_function_needs():
    worker = {mod for mod in GRAPH if IG.layer(mod) == "mhd.functions.worker"}
    assert {
        "mhd.functions.worker.remote",
        "mhd.functions.worker.scoring",
        "mhd.functions.worker.tileio",
        "mhd.functions.worker.settings",
    } <= worker
    assert "mhd.functions._score" in worker  # kept for functions registered before the move: worker side
    assert _offenders("mhd.functions.worker", ("mhd.client", "mhd.endpoint")) == []


def test_the_contracts_import_nothing_heavy():
    """The client, the worker and the endpoint all import the contracts: the standard library only
    (tifffile, loaded where a TIFF's completeness is checked, is a dependency of every install)."""
    contracts = [mod for mod in GRAPH if mod.startswith("mhd.contracts")]
    assert {"mhd.contracts.record", "mhd.contracts.verdicts", "mhd.contracts.files", "mhd.contracts.formats"} <= set(contracts)
    third_party = {name.split(".")[0] for mod in contracts for name in GRAPH[mod]} - set(sys.stdlib_module_names) - {"mhd"}
    assert third_party == {"tifffile"}


def test_every_layer_takes_the_contracts_from_their_home():
    """The worker, the client and the endpoint import the contracts; none defines its own copy of them."""
    users = {IG.layer(mod) for mod, names in GRAPH.items() for name in names if name.startswith("mhd.contracts") and IG.layer(mod) != "mhd"}
    assert users == {"mhd.functions.worker", "mhd.client", "mhd.endpoint"}
    import mhd.contracts.files as files
    import mhd.contracts.limits as limits

    copies = {files.RESULTS_NAME, files.REPORT_DIR, files.LOG_NAME, files.SWEEP_PLOT, files.CALIBRATION_PLOT, files.SECTION_MARK}
    copies.add(files.RULE_CHOICE)
    copies |= {*limits.ALLOWED_SERIALIZERS, b"\x89PNG\r\n\x1a\n", b"\xff\xd9", "OOF  ", "tab:purple", ".tiff"}
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for folder in ("functions", "client", "endpoint")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) and node.value in copies
    ]
    assert found == []
    template = (ROOT / "endpoint" / "templates" / "_engine.yaml.j2").read_text()
    assert not any(name in template for name in limits.ALLOWED_SERIALIZERS), "the template lists the serializers it is given"


def test_the_top_level_imports_nothing_of_the_package():
    """``mhd.params`` is read by every layer, so it may import none of them."""
    assert "mhd.params" in GRAPH
    assert _offenders("mhd", ("mhd.functions", "mhd.client", "mhd.endpoint", "numpy", "scipy", "cupy")) == []


def test_importing_the_record_or_the_cli_loads_no_array_library():
    """At run time, not only in the source: a subpackage's __init__ runs too (mhd.functions loads lazily)."""
    code = "import sys, mhd.contracts, mhd.client.cli, mhd.params; print(sorted(m for m in ('numpy', 'scipy', 'cupy') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_client_never_imports_cupy():
    assert _offenders("mhd.client", ("cupy", "cupyx")) == []


def test_endpoint_never_imports_client():
    assert _offenders("mhd.endpoint", ("mhd.client",)) == []


def test_the_checks_can_fail(tmp_path):
    """The reader sees a forbidden arrow, lazy or relative, where one is written."""
    for folder in IG.PACKAGES:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "functions" / "worker").mkdir()
    (tmp_path / "functions" / "worker" / "__init__.py").write_text("")
    (tmp_path / "functions" / "bad.py").write_text("def f():\n    from ..client import cli\n")
    (tmp_path / "functions" / "leaky.py").write_text(
        "import os\nfrom pathlib import Path\nfrom .worker import x\ndef f():\n    return open(os.environ['X'])\n"
    )
    (tmp_path / "client" / "bad.py").write_text("def f():\n    import cupy\n")
    (tmp_path / "endpoint" / "bad.py").write_text("from mhd.client.config import Config\n")
    g = IG.graph(tmp_path)
    assert "mhd.client.cli" in g["mhd.functions.bad"]
    assert "cupy" in g["mhd.client.bad"]
    assert "mhd.client.config" in g["mhd.endpoint.bad"]
    assert IG.layers(g) == {
        "mhd.functions.worker": set(),
        "mhd.functions": {"mhd.client", "mhd.functions.worker"},
        "mhd.client": {"cupy"},
        "mhd.endpoint": {"mhd.client"},
        "mhd": set(),
    }
    assert IG.side_effects(tmp_path / "functions" / "leaky.py") == {"open", "os.environ", "pathlib"}


def test_readme_layout_states_the_real_arrows():
    readme = (ROOT / "README.md").read_text()
    for sub, deps in IG.layers(GRAPH).items():
        line = f"{sub} -> {', '.join(sorted(deps)) or '(nothing)'}"
        assert line in readme, f"README's Repository layout should show: {line}"


def test_ci_runs_the_readme_test_command_with_the_lint():
    readme = (ROOT / "README.md").read_text()
    [command] = [line for line in readme.splitlines() if line.startswith("python3 -m venv") and "[test]" in line]
    lint = ".venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/python .ci/typecheck.py"
    assert f"{lint} && .venv/bin/pytest -q" in command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()[-1]
    assert ci == command.replace("pip install -e", "pip install -q -e"), "the same command, pip quiet"


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_passes(args):
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed (the [test] extra installs it)")
    proc = subprocess.run([str(ruff), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_only_local_scoring_and_the_thumbnails_decode_tiles_in_the_client():
    """The worker measures what the verdicts need: no client module decodes a tile except ``client score``'s, and the
    report's thumbnails (pictures for the operator, nothing measured)."""
    decoders = {
        "mhd.functions.worker.tileio.read_tile",
        "mhd.functions.worker.scoring.load_tile",
        "mhd.client.score.load_image",
        "mhd.functions.tissue",
    }
    users = {mod for mod, names in GRAPH.items() if IG.layer(mod) == "mhd.client" and names & decoders}
    assert users == {"mhd.client.score", "mhd.client.thumbs"}


def test_the_package_docstring_names_every_subpackage():
    import re

    import mhd

    text = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"^packages = \[(.*)\]", text, re.M).group(1)
    public = [name for name in re.findall(r'"([\w.]+)"', packages) if name != "mhd" and "._" not in name]
    for name in [*public, "mhd.params"]:
        assert re.search(rf"^{re.escape(name)}$", mhd.__doc__, re.M), name


def test_references_to_bench_scripts_and_example_tiles_exist():
    """A docstring or document that cites a bench script or an example tile cites one that is there."""
    import re

    files = [
        p
        for folder in ("functions", "client", "endpoint", "examples", "docs", "mhd-package")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".md")
    ]
    for path in [*files, ROOT / "README.md"]:
        text = path.read_text()
        for script in re.findall(r"bench/(\w+\.\w+)", text):
            assert (ROOT / "bench" / script).exists(), (path, script)
        for tile in re.findall(r"section_042/(\w+\.(?:tif|png|bmp))", text):
            assert (ROOT / "examples" / "section_042" / tile).exists(), (path, tile)


def test_the_compatibility_shim_names_the_release_that_removes_it():
    """``mhd.functions._score`` goes in the next minor release; its docstring and the README say which."""
    import re

    import mhd
    import mhd.functions._score as shim

    major, minor = (int(n) for n in mhd.__version__.split(".")[:2])
    removal = f"{major}.{minor + 1}.0"
    assert f"Removed in mhd {removal}" in shim.__doc__
    assert re.search(rf"`mhd\.functions\._score`.{{0,200}}it is removed in {re.escape(removal)}", (ROOT / "README.md").read_text(), re.S)


def test_sem_focus_commands_the_documents_name_exist():
    """``python bench/sem_focus.py <command>`` in the README, the docs and its own docstring names a command it has."""
    import re
    import subprocess
    import sys

    script = ROOT / "bench" / "sem_focus.py"
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True).stdout
    commands = set(re.search(r"\{([\w,]+)\}", usage).group(1).split(","))
    texts = [(ROOT / "README.md").read_text(), script.read_text(), *(p.read_text() for p in (ROOT / "docs").rglob("*.md"))]
    named = {m for text in texts for m in re.findall(r"bench/sem_focus\.py (\w+)", text)}
    assert named and named <= commands, named - commands


def test_the_detectors_public_names_are_typed_and_loaded_lazily():
    """``mhd.functions`` lists each public name once for type checkers (``TYPE_CHECKING``) and once for loading."""
    import mhd.functions as functions

    assert sorted(functions.__all__) == sorted(functions._EXPORTS)
    text = (ROOT / "functions" / "__init__.py").read_text()
    checked = set(re.findall(r"(\w+)(?:,|\n)", text.split("if TYPE_CHECKING:")[1].split("#: Public name")[0]))
    assert set(functions._EXPORTS) <= checked


def test_no_function_is_longer_than_60_lines():
    """Docstrings aside: a longer function does several jobs."""
    long = []
    for folder in ("functions", "client", "endpoint", "mhd-package"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    body = node.body
                    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1
                    lines = node.end_lineno - (body[1] if has_doc else body[0]).lineno + 1
                    if lines > 60:
                        long.append(f"{path.relative_to(ROOT)}: {node.name} ({lines} lines)")
    assert long == []


def test_the_type_check_is_strict_on_the_contracts(tmp_path):
    """``.ci/typecheck.py`` lays the package out as imported; an untyped function in the contracts fails it."""
    spec = importlib.util.spec_from_file_location("typecheck", ROOT / ".ci" / "typecheck.py")
    typecheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(typecheck)
    tree = typecheck.lay_out(tmp_path)
    assert (tree / "mhd" / "contracts" / "record.py").resolve() == ROOT / "mhd-package" / "contracts" / "record.py"
    assert (tree / "mhd" / "functions" / "_detect.py").resolve() == ROOT / "functions" / "_detect.py"
    (tree / "mhd" / "contracts" / "untyped.py").write_text("def f(x):\n    return x\n")
    args = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "mhd.contracts"]
    proc = subprocess.run(args, cwd=tree, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "untyped.py:1: error: Function is missing a type annotation" in proc.stdout, proc.stdout
