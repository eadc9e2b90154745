"""PSF term of the flux error: missed flux of stars under a wrong ePSF, pooled excess scatter."""
import math
from dataclasses import dataclass

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.stages.psf_error import (band_psf_flux_errors, excess_scatter,  # noqa: E402
                                           stamp_fwhm, star_flux_checks)


def test_excess_scatter_recovers_a_known_systematic():
    rng = np.random.default_rng(0)
    n, tau = 400, 0.012
    s = rng.uniform(0.002, 0.02, n)
    d = 0.003 + rng.normal(0, 1, n) * np.hypot(s, tau)
    d[:4] = 0.5                                             # neighbours in the aperture: clipped
    assert excess_scatter(d, s) == pytest.approx(tau, rel=0.15)
    # pure noise: no systematic
    assert excess_scatter(rng.normal(0, 1, n) * s, s) < 0.002
    assert math.isnan(excess_scatter([0.01, 0.02], [0.01, 0.01]))          # too few stars


@dataclass
class Star:
    data: np.ndarray
    weights: np.ndarray
    flux: float
    cutout_center: tuple


def moffat_image(fwhm, flux, n=41, offset=(0.0, 0.0)):
    im = galsim.Moffat(beta=3.5, fwhm=fwhm, flux=flux).drawImage(nx=n, ny=n, scale=1.0, offset=offset)
    return im.array.astype(float)


def test_missed_flux_measures_the_flux_error_of_a_wrong_width_psf():
    """Stars 3 % wider than the model: the LS flux with the narrow model and the missed flux
    within 2 FWHM agree with the true flux error (GalSim truth, no noise)."""
    model_psf = moffat_image(4.0, 1.0)
    model_psf /= model_psf.sum()
    stars, models, true_err = [], [], []
    for k in range(3):
        data = moffat_image(4.12, 1e4)
        f_ls = float((data * model_psf).sum() / (model_psf ** 2).sum())      # PSF-fit flux
        stars.append(Star(data, np.full(data.shape, 1.0), f_ls, (20.0, 20.0)))
        models.append(f_ls * model_psf)
        true_err.append(1e4 / f_ls - 1.0)
    d, s = star_flux_checks(stars, models, [0.0] * 3, gain=None, radius=2 * stamp_fwhm(model_psf))
    assert true_err[0] > 0.01                                                  # a real effect
    assert d[0] == pytest.approx(true_err[0], rel=0.35)
    assert s[0] == pytest.approx(math.sqrt(math.pi * (2 * stamp_fwhm(model_psf)) ** 2) / stars[0].flux,
                                 rel=0.15)


def test_band_pooling_uses_ok_cells_only():
    rng = np.random.default_rng(2)
    metas = []
    for c in range(4):
        s = list(rng.uniform(0.002, 0.004, 8))
        d = list(rng.normal(0, 1, 8) * np.hypot(s, 0.01))
        metas.append({"band": "m400", "status": "ok", "psf_flux_check": {"delta": d, "sigma": s}})
    metas.append({"band": "m400", "status": "fail", "psf_flux_check": {"delta": [9.0] * 9, "sigma": [1e-3] * 9}})
    metas.append({"band": "m500", "status": "ok", "psf_flux_check": {"delta": [0.0], "sigma": [0.01]}})
    out = band_psf_flux_errors(metas)
    assert out["m400"] == pytest.approx(0.01, rel=0.35)
    assert math.isnan(out["m500"])
