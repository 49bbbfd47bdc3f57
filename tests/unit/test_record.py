"""The tile record: one type from the worker to the report, JSON both ways, old results logs still read."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from mhd.contracts.record import ALWAYS, RESULT_KEYS, TileRecord, finite

#: A results-log line as versions before the blur measure wrote it (no ``blur``), with a field this version does not know.
OLD_LINE = (
    '{"tile":"a.png","verdict":"ok","reason":"","features":900,"density":13733.0,"error":null,"grid":[[1]],'
    '"shape":[256,256],"backend":"numpy","transport":"inline","roundtrip_ms":80.1,'
    '"scored_at":"2025-01-01T00:00:00.000+00:00","future_field":{"x":1}}'
)


def detection(blur=1.2, astigmatism=math.nan):
    return SimpleNamespace(
        count=7,
        density=106.8,
        blur=blur,
        blur_err=0.1,
        blur_major=1.3,
        blur_minor=1.1,
        blur_angle=math.nan,
        scan_smear=0.0,
        grid=np.array([[3, 4]]),
        blur_cells=np.array([[0.714159, np.nan]]),
        blur_cells_err=np.array([[0.2, np.nan]]),
        shape=(256, 256),
        noise=0.01,
        astigmatism=astigmatism,
        astigmatism_angle=math.nan,
        backend="numpy",
        timings={"total": 12.5},
    )


def test_an_old_log_line_reads_and_writes_back_unchanged():
    rec = TileRecord.from_json(json.loads(OLD_LINE))
    assert (rec.tile, rec.verdict, rec.density, rec.grid) == ("a.png", "ok", 13733.0, [[1]])
    assert rec.blur is None and not rec.has_blur  # judged by the count, as before
    assert rec.extra == {"future_field": {"x": 1}}
    assert rec.to_json() == {**json.loads(OLD_LINE), "kind": None}  # no blur invented, the unknown field kept


def test_a_log_line_has_the_core_fields_and_blur_even_when_unmeasured():
    line = TileRecord("b.png", verdict="oof", kind="defocus", reason="defocus: no detail", features=0, density=0.0).to_json()
    assert tuple(line)[: len(ALWAYS)] == ALWAYS
    assert "blur" in line and line["blur"] is None  # not measurable, which is not "written before blur existed"
    assert "contrast" not in line and "latency_ms" not in line  # fields without a value are left out
    assert TileRecord.from_json(line) == TileRecord(
        "b.png", verdict="oof", kind="defocus", reason="defocus: no detail", features=0, density=0.0
    )
    assert TileRecord.from_json(line).has_blur


def test_from_detection_is_json_safe_and_the_wire_has_the_result_keys():
    rec = TileRecord.from_detection("t.png", detection(), ms=20.0)
    wire = rec.to_json(RESULT_KEYS)
    assert tuple(wire) == RESULT_KEYS
    assert json.loads(json.dumps(wire, allow_nan=False)) == wire  # no NaN, no NumPy
    assert (wire["features"], wire["grid"], wire["shape"], wire["detect_ms"], wire["ms"]) == (7, [[3, 4]], [256, 256], 12.5, 20.0)
    assert wire["astigmatism"] is None and wire["astigmatism_angle"] is None  # NaN: not measurable
    assert (wire["blur_cells"], wire["blur_cells_err"]) == ([[0.71, None]], [[0.2, None]])  # 0.01 px; NaN: not measurable
    assert TileRecord.from_json(wire) == rec


def test_failed_names_the_tile():
    rec = TileRecord.failed("c.png", "cannot decode", transport="inline")
    assert rec.error == "c.png: cannot decode" and rec.features is None and rec.transport == "inline"


def test_from_json_refuses_a_line_without_a_tile():
    for bad in ({}, {"tile": 3}, [1], "a.png"):
        with pytest.raises(ValueError):
            TileRecord.from_json(bad)


def test_finite():
    assert finite(None) is None and finite(math.nan) is None and finite(-math.inf) is None
    assert finite(np.float32(1.5)) == 1.5 and isinstance(finite(2), float)


@pytest.mark.parametrize("doc", ["endpoint/README.md", "docs/notebook.md"])
def test_the_docs_name_every_result_key(doc):
    """What the function returns is listed where admins and notebook users read it."""
    text = (ROOT / doc).read_text()
    assert [key for key in RESULT_KEYS if f"`{key}`" not in text] == []


def test_a_record_knows_the_file_version_it_scored_and_an_old_one_claims_none():
    rec = TileRecord("a.png", verdict="oof", file_size=100, file_mtime_ns=5)
    assert TileRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert not rec.changed(100, 5) and rec.changed(101, 5) and rec.changed(100, 6)
    old = TileRecord.from_json(json.loads(OLD_LINE))  # written before file versions were recorded
    assert (old.file_size, old.file_mtime_ns) == (None, None) and not old.changed(1, 2)
    assert "file_size" not in old.to_json() and "file_size" not in old.brief().to_json()
