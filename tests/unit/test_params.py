"""One definition of the detector's parameters (``mhd.params``): the detector, the worker and the command line agree with it."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ROOT
from mhd import params as spec
from mhd.client.cli import main
from mhd.functions import DEFAULTS, detect
from mhd.functions._tags import MAX_LEVELS
from mhd.functions.worker.scoring import check_params

#: Commands that take the detector's options.
DETECTOR_COMMANDS = ("score", "submit", "watch", "calibrate", "focus-sweep")

NUMBERS = [p for p in spec.PARAMS.values() if p.kind in ("int", "float")]


def _beyond(p: spec.Param) -> list:
    """Values just outside ``p``'s limits (and, for an integer, a fraction inside them)."""
    step = 1 if p.kind == "int" else 1e-6 * max(1.0, abs(p.hi))
    out = [p.lo - step, p.hi + step]
    return out + [p.lo + 0.5] if p.kind == "int" else out


def test_detect_defaults_are_the_spec():
    assert DEFAULTS is spec.DEFAULTS
    for name, par in inspect.signature(detect).parameters.items():
        if par.default is not inspect.Parameter.empty and name != "backend":
            assert par.default == spec.DEFAULTS[name], name


def _accepted(p: spec.Param, value: float) -> dict | None:
    """``{p.name: value}`` with a partner scale that keeps ``min_t < max_t``; None where none can."""
    if p.name == "min_t":
        top = spec.PARAMS["max_t"].hi
        return {"min_t": value, "max_t": top} if value < top else None
    if p.name == "max_t":
        bottom = spec.PARAMS["min_t"].lo
        return {"max_t": value, "min_t": bottom} if value > bottom else None
    return {p.name: value}


@pytest.mark.parametrize("p", NUMBERS, ids=lambda p: p.name)
def test_worker_and_detector_accept_exactly_the_spec_limits(p):
    tile = np.random.default_rng(1).random((32, 32))
    for ok in filter(None, (_accepted(p, p.lo), _accepted(p, p.hi))):
        assert check_params(ok) == {**ok, "backend": "auto"}
        detect(tile, backend="numpy", **ok)
    for bad in _beyond(p):
        with pytest.raises(ValueError, match=p.name):
            check_params({p.name: bad})
        with pytest.raises(ValueError, match=p.name):
            detect(tile, backend="numpy", **{p.name: bad})


def test_the_detector_runs_at_the_largest_n_bin_and_can_represent_it():
    assert spec.PARAMS["n_bin"].hi <= MAX_LEVELS  # the level index must fit the response's tag bits
    det = detect(np.random.default_rng(0).random((64, 64)), backend="numpy", n_bin=spec.PARAMS["n_bin"].hi)
    assert det.scales.shape == (spec.PARAMS["n_bin"].hi,)


@pytest.mark.parametrize(
    "given, match",
    [
        ({"grid": (0, 3)}, "grid"),
        ({"grid": (3, 65)}, "grid"),
        ({"grid": 4}, "grid"),
        ({"polarity": "up"}, "polarity"),
        ({"min_t": 4.0, "max_t": 4.0}, "min_t < max_t"),
        ({"min_t": 9.0}, "min_t < max_t"),  # against the default max_t
        ({"threshold": True}, "threshold"),
        ({"n_bin": np.float64(8.5)}, "n_bin"),
        ({"sigma": 1.6}, "unknown parameter"),
        ({"n_bin": 10**400}, r"n_bin must be an integer in \[2, 64\], got an integer of 1329 bits$"),  # JSON has big ints
        ({"n_bin": "x" * 1000}, r"n_bin must be an integer in \[2, 64\], got 'x{56}\.\.\.$"),  # not echoed whole
        ({"threshold": 10**400}, "threshold"),
        ({"n_bin": 1 << 20000}, "n_bin must be an integer in .*, got an integer of 20001 bits"),  # repr() refuses it
        ({"grid": [10**400, 2]}, "grid"),
        ({"max_t": float("nan")}, "max_t"),
    ],
)
def test_validate_refuses_with_the_parameters_name(given, match):
    with pytest.raises(ValueError, match=match):
        spec.validate(given)


def test_validate_returns_canonical_types():
    got = spec.validate({"n_bin": np.int64(8), "grid": [3, 5], "min_t": 1, "polarity": "dark"})
    assert got == {"n_bin": 8, "grid": (3, 5), "min_t": 1.0, "polarity": "dark"}
    assert type(got["n_bin"]) is int and type(got["min_t"]) is float


@pytest.mark.parametrize("command", DETECTOR_COMMANDS)
def test_cli_options_and_help_are_the_spec(command):
    options = {o.name: o for o in main.commands[command].params}
    cli = spec.cli_params()
    assert [p.name for p in cli] == ["n_bin", "min_t", "max_t", "threshold"]
    helptext = CliRunner().invoke(main, [command, "--help"], terminal_width=400).output
    for p in cli:
        opt = options[p.name]
        assert opt.opts == [p.option]
        assert (opt.type.min, opt.type.max) == (p.lo, p.hi)
        assert f"[detector default {p.default:g}" in " ".join(helptext.split()), p.name
        assert f"[{p.lo:g}<=x<={p.hi:g}]" in helptext, p.name  # 1000, not 1000.0


def test_integral_limits_are_written_as_integers():
    """Help prints a limit as written: ``1e3`` would show as ``1000.0``."""
    for p in NUMBERS:
        for limit in (p.lo, p.hi):
            assert limit is None or not isinstance(limit, float) or not limit.is_integer(), (p.name, limit)


def test_cli_refuses_contradicting_scales_as_a_usage_error(tmp_path):
    res = CliRunner().invoke(main, ["score", "--min-t", "9", str(tmp_path / "none.png")])
    assert res.exit_code == 64 and "min_t < max_t" in res.output


def test_the_spec_imports_only_the_standard_library():
    """The command line builds its options from it without loading NumPy or SciPy."""
    tree = ast.parse(Path(spec.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {n.split(".")[0] for n in names} <= set(sys.stdlib_module_names) | {"__future__"}


def test_limits_the_docs_quote_are_the_spec():
    text = (ROOT / "endpoint" / "README.md").read_text()
    quoted = {name: float(value) for name, value in re.findall(r"`(\w+) <= ([\d.]+)`", text)}
    assert quoted, "endpoint/README.md quotes no limit"
    assert quoted == {name: spec.PARAMS[name].hi for name in quoted}


def test_the_docs_and_the_notebook_take_the_grid_from_the_spec():
    """The grid's shape is a parameter: no document, help text or figure assumes the default one."""
    root = ROOT
    rows, cols = spec.PARAMS["grid"].default
    literal = re.compile(rf"\b{rows} ?x ?{cols} grid|\({rows}, {cols}\) feature counts|set_[xy]ticks\(range\({rows}\)\)")
    for name in ("README.md", "docs/notebook.md", "client/cli.py", "examples/notebook.ipynb"):
        assert not literal.search((root / name).read_text()), name
