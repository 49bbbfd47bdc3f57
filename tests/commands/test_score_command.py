"""``client score``: one record per file, bad files failing alone, the measures it prints, where it computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, run
from mhd.client.cli import main
from mhd.contracts.record import RESULT_KEYS
from mhd.functions import cuda_available

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_score_json_one_object_per_file_and_bad_files_fail_alone(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    tiny = tmp_path / "tiny.tif"
    import numpy as np
    import tifffile

    tifffile.imwrite(tiny, np.zeros((8, 8), np.uint8))
    out = run(
        "score", EXAMPLE / "tile_r0_c0.png", bad, tmp_path / "missing.png", tiny, EXAMPLE / "tile_r0_c1.tif", "--json", "--n-bin", "12"
    )
    assert out.exit_code == 1
    recs = [json.loads(x) for x in out.output.splitlines()]
    assert [Path(r["tile"]).name for r in recs] == [
        "tile_r0_c0.png",
        "bad.png",
        "missing.png",
        "tiny.tif",
        "tile_r0_c1.tif",
    ]  # "tile", as every record
    assert all("path" not in r and tuple(r) == RESULT_KEYS for r in recs)
    good = [recs[0], recs[4]]
    assert all(r["error"] is None and r["features"] > 100 and r["shape"] == [256, 256] and r["ms"] > 0 for r in good)
    assert recs[1]["error"].startswith(str(bad)) and "not a PNG" in recs[1]["error"]
    assert "cannot read" in recs[2]["error"] and "16" in recs[3]["error"]
    human = run("score", EXAMPLE / "tile_r0_c0.png")
    assert human.exit_code == 0 and "features" in human.output


def test_score_reports_astigmatism_where_the_tile_is_large_enough():
    from conftest import isbi_paths

    out = run("score", isbi_paths()[0], EXAMPLE / "tile_r0_c0.png", "--json")
    large, small = (json.loads(x) for x in out.output.splitlines())
    assert 0.0 <= large["astigmatism"] < 0.2  # an in-focus 512 px slice
    assert small["astigmatism"] is None and small["astigmatism_angle"] is None  # 256 px: orientation unmeasurable


def test_score_device_and_its_deprecated_backend_alias():
    """--device cpu|gpu says where the detector computes; --backend numpy|cupy (hidden) still does, with a note."""
    helptext = run("score", "--help").output
    assert "--device [auto|cpu|gpu]" in helptext and "--backend" not in helptext
    for args, note in ((["--device", "cpu"], False), (["--backend", "numpy"], True)):
        out = CliRunner().invoke(main, ["score", *args, str(EXAMPLE / "tile_r0_c0.png"), "--json"])
        assert out.exit_code == 0 and json.loads(out.stdout)["backend"] == "numpy", out.output
        deprecated = [line for line in out.stderr.splitlines() if "deprecated" in line]
        assert deprecated == (["client: --backend is deprecated for score; use --device (cpu for numpy, gpu for cupy)"] if note else [])
    both = CliRunner().invoke(main, ["score", "--device", "cpu", "--backend", "cupy", str(EXAMPLE / "tile_r0_c0.png"), "--json"])
    assert both.exit_code == 0 and json.loads(both.stdout)["backend"] == "numpy", both.output  # the new option wins
    if not cuda_available():
        gpu = CliRunner().invoke(main, ["score", "--device", "gpu", str(EXAMPLE / "tile_r0_c0.png"), "--json"])
        assert gpu.exit_code == 1 and gpu.stdout == ""
        assert "Error: --device gpu needs CuPy and a CUDA GPU" in gpu.stderr and "backend" not in gpu.stderr


def test_score_prints_the_blur_the_verdicts_use():
    out = run("score", EXAMPLE / "tile_r0_c0.png")
    rec = json.loads(run("score", EXAMPLE / "tile_r0_c0.png", "--json").output)
    assert out.exit_code == 0 and f"blur {rec['blur']:.2f} ± {rec['blur_err']:.2f} px" in out.output, out.output
