"""examples/notebook.ipynb runs offline, in local mode, with a real Jupyter kernel.

The kernel is this environment's Python (a kernelspec written to a temporary
JUPYTER_PATH), so a fresh ``pip install -e '.[test]'`` is all it needs. Local
mode runs the registered function's source text in the endpoint's own
process-pool engine (``LocalExecutor``) on ``examples/section_042``, and on a
section whose names carry no montage positions and that links to a file outside it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, copy_example

EXAMPLES = ROOT / "examples"
NOTEBOOK = EXAMPLES / "notebook.ipynb"
KERNEL = "mhd-test-python"
ENDPOINT = "4b116d3c-1703-4f8f-9f6f-39921e5864df"
FUNCTION = "0f6a3b52-9c1e-4d7a-8b2f-5e4c3d2a1b09"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for this Python, a temporary HOME and no stored client configuration."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "mhd test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MHD_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for var in ("MHD_ENDPOINT", "MHD_FUNCTION", "MHD_NOTEBOOK_MODE", "MHD_NOTEBOOK_SECTION"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")


def _images(nb: nbformat.NotebookNode) -> list[str]:
    return [o.data["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]


def test_notebook_is_stored_clean_with_a_python_kernel():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.language == "python"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "commit the notebook without outputs"
    source = "\n".join(c.source for c in code)
    assert "submit_to_registered_function(FUNCTION_ID" in source, "globus mode calls the function by UUID"
    assert "PureSourceTextInspect" in source and "JSONData" in source, "the endpoint accepts only these serializers"


@pytest.mark.slow
def test_notebook_runs_in_local_mode_and_plots_the_section(kernel_env, monkeypatch):
    monkeypatch.setenv("MHD_NOTEBOOK_MODE", "local")
    monkeypatch.setenv("MHD_BLUR_MAX", "1.2")  # the configured rule, as client report reads it (not Rule()'s 0.7 px)
    nb = _execute(nbformat.read(NOTEBOOK, as_version=4))
    text = _text(nb)
    assert "mode local; section section_042" in text
    assert "16 tiles in 4 tasks" in text
    assert "ERROR" not in text
    scored = [line for line in text.splitlines() if " features " in line]
    assert len(scored) == 16 and all(line.rstrip().endswith(("numpy", "cupy:0")) for line in scored)
    counts = ast.literal_eval(text.split("verdicts: ", 1)[1].splitlines()[0])
    assert sum(counts.values()) == 16
    # The example section's strongly defocused tile and its resin-only tile.
    assert "oof   tile_r1_c2.png" in text
    assert "empty tile_r0_c3.png" in text
    assert counts["ok"] >= 10
    # The default rule judges by the blur: the threshold shown (and drawn) is the blur's, not a count's.
    assert re.search(r"out of focus above \d+\.\d\d px of blur \(the section's focus plus at least 1.2 px in quadrature, and 2 ", text)
    assert "out of focus below" not in text  # the count's threshold, printed under a count rule
    images = _images(nb)
    assert len(images) == 2, "one figure: the focus measure per tile and the montage; one: the grid of a flagged tile"
    assert all(len(img) > 10_000 for img in images)
    assert "no montage" not in text


#: Tiles of the example section under names without a montage position (the strongly defocused and the empty one too).
UNPLACED = {
    "tile_r0_c0.png": "a.png",
    "tile_r0_c1.tif": "b.tif",
    "tile_r1_c2.png": "c.png",
    "tile_r0_c3.png": "d.png",
    "tile_r2_c1.png": "e.png",
    "tile_r3_c3.bmp": "f.bmp",
}


@pytest.mark.slow
def test_notebook_lists_a_section_without_positions_and_refuses_a_link_out_of_it_as_the_client_does(kernel_env, monkeypatch):
    """One run for both: names without ``r<row>_c<col>`` (a table, not a montage) and a link to a file outside."""
    example = copy_example(kernel_env / "example", readme=False)
    section = kernel_env / "unplaced"
    section.mkdir()
    for old, new in UNPLACED.items():
        (example / old).rename(section / new)
    (section / "g.png").symlink_to(example / "tile_r2_c2.png")  # a tile's bytes, but outside the section
    monkeypatch.setenv("MHD_NOTEBOOK_MODE", "local")
    monkeypatch.setenv("MHD_NOTEBOOK_SECTION", str(section))
    nb = _execute(nbformat.read(NOTEBOOK, as_version=4))
    text = _text(nb)
    assert "mode local; section " in text and "6 tiles in 2 tasks" in text
    # refused as client submit refuses it (its local workers' words), and printed as it prints it; the rest scored
    assert "ERROR g.png: path resolves outside the data root (symbolic link?): refused" in text
    scored = [line.split()[0] for line in text.splitlines() if " features " in line]
    assert scored == ["a.png", "b.tif", "c.png", "d.png", "e.png", "f.bmp"]
    counts = ast.literal_eval(text.split("verdicts: ", 1)[1].splitlines()[0])
    assert counts["error"] == 1 and sum(counts.values()) == 7
    assert "6 of 6 tiles have no r<row>_c<col> in their names: no montage" in text
    table = text.split("no montage", 1)[1].splitlines()[2:9]  # after the header: every tile, in acquisition order
    assert [line.split()[:2] for line in table] == [
        ["a.png", "ok"],
        ["b.tif", "ok"],
        ["c.png", "oof"],
        ["d.png", "empty"],
        ["e.png", "ok"],
        ["f.bmp", "ok"],
        ["g.png", "error"],
    ]
    assert "defocus: blurrier than the section" in table[2] and "no tissue" in table[3] and "symbolic link" in table[6]
    assert re.match(r"c\.png\s+oof\s+\d+\.\d\d\s", table[2]) and re.match(r"g\.png\s+error\s+-\s", table[6])
    assert len(_images(nb)) == 2, "the focus measure per tile alone; the grid of a flagged tile"


def test_notebook_picks_globus_mode_when_an_endpoint_and_function_are_configured(kernel_env, monkeypatch):
    """Only the settings cell runs: globus mode needs a login and the service."""
    monkeypatch.setenv("MHD_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("MHD_FUNCTION", FUNCTION)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells = nb.cells[: first + 1]
    nb.cells.append(nbformat.v4.new_code_cell("print(ENDPOINT_ID, FUNCTION_ID)"))
    text = _text(_execute(nb))
    assert "mode globus; section section_042" in text
    assert f"{ENDPOINT} {FUNCTION}" in text


@pytest.mark.slow
def test_notebook_scores_with_a_stored_calibrations_parameters_or_refuses_other_ones(kernel_env, monkeypatch):
    """Only the settings cell runs: a calibration holds for the detector parameters it was fitted with (the
    configured default calibration: one stored beside the configuration file is no longer applied by itself)."""
    from nbclient.exceptions import CellExecutionError

    from mhd.client.calibration import Calibration, fitted_params

    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells = nb.cells[: first + 1]
    nb.cells.append(nbformat.v4.new_code_cell("print(sorted(PARAMS.items()))"))
    store = kernel_env / "calibration.json"  # beside the (absent) configuration file
    monkeypatch.setenv("MHD_CALIBRATION", str(store))
    Calibration(0.5, 2.0, 0.99, 9, "um", 1.0, fitted_params(None), "series", "blur").save(store)
    text = _text(_execute(nb))
    assert str(sorted(fitted_params(None).items())) in text  # sent whole: an endpoint's defaults cannot differ
    Calibration(0.5, 2.0, 0.99, 9, "um", 1.0, fitted_params({"threshold": 0.1}), "series", "blur").save(store)
    nb.cells[-2].outputs, nb.cells[-1].outputs = [], []
    with pytest.raises(CellExecutionError, match="fitted with other detector parameters"):
        _execute(nb)
