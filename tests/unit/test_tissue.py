"""Tissue or resin (``mhd.functions.tissue``): the contrast-to-noise ratio the ``empty`` verdict reads."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mhd.functions.tissue import contrast_to_noise

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_contrast_to_noise_separates_resin_from_blurred_tissue(isbi):
    rng = np.random.default_rng(1)
    tissue = rng.poisson(gaussian_filter(isbi[0][:256, :256].astype(float), 6) / 255 * 200) / 200 * 255
    shading = np.linspace(0.5, 0.7, 256)[None, :] * np.ones((256, 1))
    resin = rng.poisson(shading * 200) / 200 * 255
    t, r = contrast_to_noise(tissue), contrast_to_noise(resin)
    assert t.cnr > 5 and r.cnr < 2 and r.cells.shape == (4, 4) and r.cells.max() < 2
    assert contrast_to_noise(np.full((64, 64), 255.0)).cnr == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        contrast_to_noise(np.zeros((4, 4, 3)))
    fine = contrast_to_noise(tissue, (64, 64))  # 4 px per cell: smaller blocks for the cells, the same for the tile
    assert fine.cnr == t.cnr and np.isfinite(fine.cells).all() and fine.cells.shape == (64, 64)


def test_contrast_of_float_tiles_does_not_depend_on_their_scale(isbi):
    rng = np.random.default_rng(3)
    tissue = rng.poisson(gaussian_filter(isbi[0][:256, :256].astype(float), 6) / 255 * 200) / 200 * 255
    ref = contrast_to_noise(tissue).cnr
    for scale in (1 / 255, 1e-3 / 255, 1e6):  # the integer rounding floor (0.29 grey levels) made [0, 1] tissue look empty
        assert contrast_to_noise((tissue * scale).astype(np.float32)).cnr == pytest.approx(ref, rel=1e-3)
    assert contrast_to_noise(rng.normal(0.5, 0.05, (256, 256)).astype(np.float32)).cnr == pytest.approx(1.0, abs=0.2)
