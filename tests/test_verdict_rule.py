"""Numbers of the verdict rule that the end-to-end tests only meet on friendly inputs.

The example sections have square 4 x 4 grids on tiles whose sides divide by 4,
and no tile denser than the calibration's in-focus line; these pin the rule
itself where those would not notice a change (found by ``bench/mutation.py``).
"""

from __future__ import annotations

import math

import pytest

from mhd.client.verdicts import Calibration, focus_map
from mhd.functions.worker.record import TileRecord


def test_focus_map_of_a_non_square_grid_on_an_odd_sized_tile():
    rec = TileRecord("t", grid=[[100, 50, 0], [10, 200, 7]], shape=[255, 301])  # 2 x 3 cells of 127.5 x 100.33 px
    centre = math.log(1e4)  # baseline: 10,000 features per megapixel
    cell_mp = (255 / 2) * (301 / 3) / 1e6
    expected = [[round(max(n / cell_mp, 1.0) / 1e4, 2) for n in row] for row in rec.grid]  # floored at 1 /MP
    assert focus_map(rec, centre) == expected
    assert expected[0][:2] == [0.78, 0.39]  # what the formula gives, written out
    assert focus_map(TileRecord("t", grid=[[1]], shape=[10, 10]), math.nan) is None and focus_map(TileRecord("t", grid=[], shape=[8, 8]), 0.0) is None


def test_a_tile_denser_than_the_in_focus_line_is_estimated_at_zero_defocus():
    cal = Calibration(intercept=math.log(2e4), slope=-0.8, r=-0.99, n=9, units="um", max_defocus=1.0)
    assert cal.defocus(math.log(3e4)) == 0.0  # never a negative |defocus|
    assert cal.defocus(math.log(2e4) - 1.6) == pytest.approx(2.0)
    assert cal.log_threshold == pytest.approx(math.log(2e4) - 0.8)
