"""Inputs without data are refused; fits resting on constant pixels are flagged."""
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.wcs import WCS

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.stages import data_checks


def test_constant_image_refused_but_noise_and_all_nan_pass():
    with pytest.raises(InputError, match=r"image g\.fits is constant .* 0"):
        data_checks.check_not_constant(np.zeros((5, 5), np.float32), "g.fits")
    one = np.full((5, 5), 3.0)
    one[0, 0] = np.nan
    with pytest.raises(InputError, match="constant"):
        data_checks.check_not_constant(one, "g.fits")
    data_checks.check_not_constant(np.random.default_rng(1).normal(size=(5, 5)), "g.fits")
    data_checks.check_not_constant(np.full((5, 5), np.nan), "g.fits")     # the loader's all-NaN case


def test_bad_coordinates():
    got = data_checks.bad_coordinates([1.0, np.nan, "", "x", 2.0], [1.0, 1.0, 1.0, 1.0, np.inf])
    assert got.tolist() == [False, True, True, True, True]


def test_rows_off_image_refused_naming_the_footprint():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [50.5, 50.5]
    w.wcs.cd = [[-1e-4, 0], [0, 1e-4]]
    with pytest.raises(InputError, match=r"cat\.csv: none of its 2 rows lies on the image "
                                         r"\(working frame 100x100 px, RA 149\.99.*Dec 1\.99"):
        data_checks.check_rows_on_image([-5.0, np.nan], [10.0, 3.0], (100, 100), w, "cat.csv")
    data_checks.check_rows_on_image([-5.0, 99.2], [10.0, 0.0], (100, 100), w, "cat.csv")


def test_dead_near_needs_constant_usable_pixels():
    rng = np.random.default_rng(3)
    live = SimpleNamespace(data=rng.normal(size=(20, 20)), invvar=np.ones((20, 20)))
    zero = SimpleNamespace(data=np.zeros((20, 20)), invvar=np.ones((20, 20)))
    assert not data_checks.dead_near([live], 10.0, 10.0)
    assert data_checks.dead_near([live, zero], 10.0, 10.0)
    masked = SimpleNamespace(data=np.zeros((20, 20)), invvar=np.zeros((20, 20)))
    assert not data_checks.dead_near([masked], 10.0, 10.0)          # masked is core_masked, not dead
    assert not data_checks.dead_near([zero], np.nan, 10.0)
