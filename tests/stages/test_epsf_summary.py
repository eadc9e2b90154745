"""ePSF summary numbers: adaptive moments against GalSim profiles of known size and shape."""
import math

import numpy as np
import pytest

from tract7dt_mpi.stages.epsf_summary import band_cell_maps, cell_index, example_stars, stamp_moments

galsim = pytest.importorskip("galsim")


def _draw(prof, n=55, dx=0.0, dy=0.0):
    return prof.shift(dx, dy).drawImage(nx=n, ny=n, scale=1.0, method="no_pixel").array


@pytest.mark.parametrize("sigma,q,beta,dx,dy", [(1.7, 1.0, 0.0, 0.0, 0.0), (2.2, 0.8, 30.0, 0.3, -0.4),
                                               (1.5, 0.6, -60.0, -1.2, 0.7)])
def test_gaussian_size_shape_and_centre(sigma, q, beta, dx, dy):
    # GalSim's shear(q=...) keeps the area: sqrt(a b) = sigma, b/a = q, major axis at beta
    img = _draw(galsim.Gaussian(sigma=sigma).shear(q=q, beta=beta * galsim.degrees), dx=dx, dy=dy)
    m = stamp_moments(img)
    assert m["fwhm_pix"] == pytest.approx(2 * math.sqrt(2 * math.log(2)) * sigma, rel=0.02)
    assert m["ellipticity"] == pytest.approx(1 - q, abs=1e-4)
    if q < 1:
        assert m["theta_deg"] == pytest.approx(beta, abs=0.05)
    assert (m["x"], m["y"]) == pytest.approx((27 + dx, 27 + dy), abs=1e-3)


def test_moffat_wings_do_not_dominate():
    """A sheared Moffat beta=2.5 (heavy wings) of FWHM 4 px: FWHM and ellipticity as drawn, where
    unweighted second moments would give a far larger size."""
    img = _draw(galsim.Moffat(beta=2.5, fwhm=4.0).shear(q=0.9, beta=10 * galsim.degrees), n=75)
    m = stamp_moments(img)
    assert m["fwhm_pix"] == pytest.approx(4.0, rel=0.02)
    assert m["ellipticity"] == pytest.approx(0.1, abs=0.01) and m["theta_deg"] == pytest.approx(10, abs=1)
    yy, xx = np.mgrid[:75, :75] - 37.0
    raw = 2.3548 * math.sqrt((img * (xx ** 2 + yy ** 2)).sum() / img.sum() / 2)
    assert raw > 1.5 * m["fwhm_pix"]


def test_empty_stamp_is_nan():
    assert math.isnan(stamp_moments(np.zeros((11, 11)))["fwhm_pix"])


def test_cell_maps_and_example_stars():
    g = _draw(galsim.Gaussian(sigma=2.0), n=31)
    cells = {"r00_c01": ({"nstars_used": 7}, g), "r01_c00": ({"nstars_used": 3}, None),
             "bad": ({}, g)}
    maps = band_cell_maps(cells, 2)
    assert maps["fwhm_pix"][0, 1] == pytest.approx(2.3548 * 2.0, rel=0.02)
    assert np.isnan(maps["fwhm_pix"][1, 0]) and np.isnan(maps["fwhm_pix"][0, 0])
    assert maps["nstars"][0, 1] == 7
    assert cell_index("r03_c12") == (3, 12) and cell_index("x") is None
    metas = [{"used_stars_xy": [[1, 2], [3, 4]], "used_stars_weight": [0.1, 0.5]},
             {"used_stars_xy": [[5, 6]], "used_stars_weight": [0.3]}, None]
    assert example_stars(metas, 2) == [(3.0, 4.0, 0.5), (5.0, 6.0, 0.3)]
