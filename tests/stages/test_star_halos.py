"""Bright-star halos beyond the PSF stamp (stages.star_halos) against GalSim and analytic truths."""
import sys
from pathlib import Path

import galsim
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _truth import galaxy  # noqa: E402

from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch  # noqa: E402
from tract7dt_mpi.engine.profiles import total_flux_factor  # noqa: E402
from tract7dt_mpi.stages.star_halos import core_flux, halo_flux, halo_image, halo_reach  # noqa: E402

BETA, FWHM = 2.0, 4.0


def _moffat_wing():
    """A Moffat's far wing as amp r^-slope of a unit-total PSF: (beta-1) alpha^(2 beta-2) / pi."""
    alpha = galsim.Moffat(beta=BETA, fwhm=FWHM).scale_radius
    return (BETA - 1) * alpha ** (2 * BETA - 2) / np.pi, 2 * BETA


def test_halo_image_is_the_power_law_outside_the_stamp_square_only():
    amp, slope = 0.5, 3.5
    img = halo_image((60, 80), 100, 200, [(130.0, 230.0, 1e6)], amp, slope, half=10, sigma=1.0)
    yy, xx = np.indices(img.shape)
    dx, dy = xx + 100 - 130.0, yy + 200 - 230.0
    r = np.hypot(dx, dy)
    out = (np.abs(dx) > 10) | (np.abs(dy) > 10)
    np.testing.assert_allclose(img[out], 1e6 * amp * r[out] ** -slope, rtol=1e-12)
    assert not img[~out].any()
    # beyond its reach (halo below FLOOR_SIGMA of the sky) a star adds nothing
    reach = float(halo_reach(1e6, amp, slope, 1.0))
    far = halo_image((5, 5), int(130 + reach) + 5, 230, [(130.0, 230.0, 1e6)], amp, slope, 10, 1.0)
    assert not far.any()


def test_halo_flux_of_a_saturated_moffat_star_from_its_far_rings():
    amp, slope = _moffat_wing()
    S, F = 241, 2e8
    img = galsim.Moffat(beta=BETA, fwhm=FWHM).withFlux(F).drawImage(nx=S, ny=S, scale=1.0).array
    rng = np.random.default_rng(3)
    data = img + 2.5 + rng.normal(0, 10.0, img.shape)      # a sky pedestal the fit must not take
    good = img < 1e5                                        # the saturated core is lost
    c = (S - 1) / 2.0
    f = halo_flux(data, good, c, c, 25.0, 110.0, amp, slope)
    # the Moffat is (1 + r^2/alpha^2)^-beta, 1-2 % below its power-law asymptote at 25-110 px
    assert f == pytest.approx(F, rel=0.03)
    assert np.isnan(halo_flux(np.zeros((50, 50)), np.zeros((50, 50), bool), 25, 25, 5, 20, amp, slope))


def test_galaxy_next_to_a_bright_star_is_right_once_the_halo_is_subtracted():
    # a galaxy 85 px from a saturated star, fitted on its own cut-out with a 55-px PSF stamp: the
    # star's light beyond the stamp is on the galaxy and in the cut-out's sky gradient
    amp, slope = _moffat_wing()
    psf = galsim.Moffat(beta=BETA, fwhm=FWHM)
    S, Fstar, Fg, sig = 301, 2e8, 3e4, 10.0
    xs, ys, xg, yg = 100.0, 150.0, 185.3, 150.4
    img = galsim.ImageD(S, S, scale=1.0)
    psf.withFlux(Fstar).drawImage(image=img, center=galsim.PositionD(xs + 1, ys + 1), add_to_image=True)
    galsim.Convolve(galaxy("exp", Fg, 4.0, 0.7, 30.0), psf).drawImage(
        image=img, center=galsim.PositionD(xg + 1, yg + 1), add_to_image=True)
    data = img.array + np.random.default_rng(1).normal(0, sig, (S, S))
    good = img.array < 1e5
    f_star = halo_flux(data, good, xs, ys, 20.0, 100.0, amp, slope)
    st = psf.drawImage(nx=55, ny=55, scale=1.0).array
    inside = st.sum()
    box = (slice(110, 191), slice(145, 226))

    def fitted(d):
        im = ImageData("r", d[box], np.where(good[box], sig ** -2, 0.0), PixelizedPSF(st / inside))
        s = fit_patch([im], [Source("exp", xg - 145, yg - 110, [0.9 * Fg], re=4.0, ab=0.7, phi_deg=30.0)],
                      FitOptions()).sources[0]
        return s.fluxes[0] * total_flux_factor("exp", np.nan) / inside, s.flux_errs[0]

    raw, err = fitted(data)
    sub, _ = fitted(data - halo_image((S, S), 0, 0, [(xs, ys, f_star)], amp, slope, 27, sig))
    assert abs(raw - Fg) > 5 * err               # the halo moves it by > 5 sigma ...
    assert abs(sub - Fg) < 2 * err               # ... and subtracted, it is within its error


def test_core_flux_of_an_unsaturated_star_next_to_a_bright_one():
    # the far rings of a moderate star 60 px from a 300x brighter one hold more of the bright
    # star's light than of its own; its core does not
    amp, slope = _moffat_wing()
    psf = galsim.Moffat(beta=BETA, fwhm=FWHM)
    S, F = 241, 1e5
    img = galsim.ImageD(S, S, scale=1.0)
    psf.withFlux(F).drawImage(image=img, center=galsim.PositionD(121.3, 120.8), add_to_image=True)
    psf.withFlux(300 * F).drawImage(image=img, center=galsim.PositionD(181.0, 121.0), add_to_image=True)
    data = img.array + np.random.default_rng(5).normal(0, 2.0, img.array.shape)
    good = np.ones(img.array.shape, bool)
    r_ap = 3.0 * FWHM
    unit = psf.drawImage(nx=101, ny=101, scale=1.0).array
    yy, xx = np.indices(unit.shape)
    enclosed = unit[np.hypot(xx - 50, yy - 50) <= r_ap].sum()
    assert core_flux(data, good, 120.3, 119.8, r_ap, enclosed) == pytest.approx(F, rel=0.02)
    assert halo_flux(data, good, 120.3, 119.8, 15.0, 100.0, amp, slope) > 2 * F
