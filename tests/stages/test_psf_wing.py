"""The band's outer PSF wing from bright stars (stages.psf_wing) against GalSim PSFs of known
wing: Moffat beta = 2 (r^-4) and Kolmogorov x Airy, stars saturated in their cores, a sky level,
a galaxy typed STAR among them."""
from __future__ import annotations

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.stages.psf_poly import PsfField, evaluate_field  # noqa: E402
from tract7dt_mpi.stages.psf_wing import (Wing, light_beyond_square, measure_wing,  # noqa: E402
                                          with_bright_wing)

STAMP = 55
R_MAX = 100.0
FWHM = 4.0


def _psf(kind):
    if kind == "moffat2":
        return galsim.Moffat(beta=2.0, fwhm=FWHM)
    return galsim.Convolve(galsim.Kolmogorov(fwhm=FWHM * 0.98), galsim.Airy(lam_over_diam=0.4))


def _draw(obj, n, dx=0.0, dy=0.0):
    img = galsim.ImageD(n, n, scale=1.0)
    obj.drawImage(image=img, offset=(dx, dy), method="auto")
    return img.array


def _light_outside_box(kind):
    """True flux of the unit PSF outside the central STAMP x STAMP box."""
    return 1.0 - _draw(_psf(kind), STAMP).sum()


def _cutouts(kind, fluxes, rng, galaxy_flux=None, sky=3.0, sigma=1.5, sat_radius=5.0):
    n = 2 * int(R_MAX) + 21
    c = (n - 1) / 2.0
    cuts = []
    for k, f in enumerate(fluxes):
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        img = f * _draw(_psf(kind), n, dx, dy) + sky + rng.normal(0.0, sigma, (n, n))
        if galaxy_flux is not None and k == 0:        # a galaxy typed STAR: far more extended light
            gal = galsim.Convolve(galsim.Exponential(half_light_radius=12.0), _psf(kind))
            img += galaxy_flux * _draw(gal, n, dx, dy)
        yy, xx = np.indices((n, n))
        good = np.hypot(xx - c - dx, yy - c - dy) > (sat_radius if f > 3e6 else 0.0)
        cuts.append((img, good, c + dx, c + dy, sat_radius if f > 3e6 else 0.0))
    return cuts


def _field_stamps(kind, n):
    return [_draw(_psf(kind), STAMP)] * n


@pytest.mark.parametrize("kind", ["moffat2", "kolmairy"])
def test_light_beyond_the_stamp_matches_the_true_psf(kind):
    rng = np.random.default_rng(7)
    fluxes = [8e6, 5e6, 4e6, 2e6, 1.5e6, 1e6, 8e5, 6e5]
    cuts = _cutouts(kind, fluxes, rng)
    wing = measure_wing(cuts, _field_stamps(kind, len(cuts)), FWHM, r_join=14.0, r_max=R_MAX)
    assert wing is not None and wing.n_stars >= 6
    got = light_beyond_square(wing, STAMP // 2)
    true = _light_outside_box(kind)
    # beyond a 55-px stamp: Moffat beta = 2 ~1.0 %, Kolmogorov x Airy ~0.5 %; the far wing of the
    # latter flattens beyond the measured 100 px, so it may come out a little low, never high
    assert true - 0.0025 < got < true + 0.0012, (got, true, wing)
    if kind == "moffat2":
        assert abs(wing.slope - 4.0) < 0.15


def test_a_galaxy_typed_star_is_left_out():
    rng = np.random.default_rng(11)
    fluxes = [3e6, 5e6, 4e6, 2e6, 1.5e6, 1e6, 8e5]
    cuts = _cutouts("moffat2", fluxes, rng, galaxy_flux=2e5)
    wing = measure_wing(cuts, _field_stamps("moffat2", len(cuts)), FWHM, r_join=14.0, r_max=R_MAX)
    assert wing is not None and wing.n_rejected >= 1
    got = light_beyond_square(wing, STAMP // 2)
    assert abs(got - _light_outside_box("moffat2")) < 0.0015


def test_too_few_stars_give_no_wing():
    rng = np.random.default_rng(3)
    cuts = _cutouts("moffat2", [1e6, 8e5], rng)
    assert measure_wing(cuts, _field_stamps("moffat2", 2), FWHM, r_join=14.0, r_max=R_MAX) is None


def test_light_beyond_square_lies_between_the_inscribed_and_circumscribed_circles():
    wing = Wing(amp=0.5, slope=3.5, r_join=10.0, r_max=100.0, n_stars=5, n_rejected=0, chi2=1.0)
    half = 27

    def circle(r):            # analytic flux of amp r^-s outside radius r
        return 2 * np.pi * wing.amp * r ** (2 - wing.slope) / (wing.slope - 2)
    got = light_beyond_square(wing, half)
    assert circle((half + 0.5) * np.sqrt(2)) < got < circle(half + 0.5)


def test_the_field_takes_the_wing_and_stays_normalised():
    size = STAMP
    core = _draw(galsim.Moffat(beta=2.0, fwhm=FWHM), size)
    core = core / core.sum()
    yy, xx = np.indices((size, size))
    r = np.hypot(xx - 27, yy - 27)
    blend = np.clip((r - 11.0) / 3.0, 0.0, 1.0)
    field = PsfField(core[None], 0, 0.0, 0.0, 1.0, core.copy(), blend, 0.0, np.zeros((1, 2)),
                     np.ones(1), size, 1, {"wing_radius_pix": 14})
    true_beyond = _light_outside_box("moffat2")
    alpha = FWHM / (2 * np.sqrt(2 ** 0.5 - 1))
    amp = (2.0 - 1.0) / (np.pi * alpha ** 2) * alpha ** 4      # unit Moffat beta=2 far out
    truth = _draw(galsim.Moffat(beta=2.0, fwhm=FWHM), size)            # unit total: the anchor
    new = with_bright_wing(field, Wing(amp=amp, slope=4.0, r_join=14.0, r_max=100.0, n_stars=5,
                                       n_rejected=0, chi2=1.0), [truth], FWHM)
    stamp, ef = evaluate_field(new, 0.0, 0.0)
    assert abs(stamp.sum() - 1.0) < 1e-5
    assert abs((1.0 - ef) - true_beyond) < 0.001, (1 - ef, true_beyond)
    # the field's own outer rings are not used: a core whose outer rings lost light to the
    # stars' fitted backgrounds (a pedestal taken off) still gets the whole wing
    low = np.clip(core - 0.3 * core[27, 27 + 20], 0.0, None)
    field_low = PsfField(low[None], 0, 0.0, 0.0, 1.0, core.copy(), blend, 0.0, np.zeros((1, 2)),
                         np.ones(1), size, 1, {"wing_radius_pix": 14})
    wing = Wing(amp=amp, slope=4.0, r_join=14.0, r_max=100.0, n_stars=5, n_rejected=0, chi2=1.0)
    ring = (r > 18) & (r < 26)
    got = {}
    for name, f in (("clean", field), ("low", field_low)):
        st, e = evaluate_field(with_bright_wing(f, wing, [truth], FWHM), 0.0, 0.0)
        got[name] = (np.asarray(st, float) * e)[ring].sum()
        assert abs((1.0 - e) - true_beyond) < 0.001, (name, 1 - e, true_beyond)
    # (the pure r^-4 is ~4 % above the Moffat's own profile 18-26 px out)
    assert abs(got["clean"] / truth[ring].sum() - 1.04) < 0.02, got["clean"] / truth[ring].sum()
    assert abs(got["low"] / got["clean"] - 1.0) < 0.01, got


def test_a_field_whose_stars_lost_a_pedestal_fits_total_fluxes():
    """A stack whose stars' fitted backgrounds took up a constant part of a beta = 2 wing (the
    field is the true PSF minus a pedestal, renormalised): with the measured wing the field's
    PSF-fit flux of a true star is its total flux."""
    size = STAMP
    truth = _draw(galsim.Moffat(beta=2.0, fwhm=FWHM), size)          # unit total, in the stamp
    r = np.hypot(*(np.indices((size, size)) - size // 2))
    low = truth - 0.2 * truth[r.astype(int) == 26].mean()             # the stack's deficit
    low = low / low.sum()
    blend = np.clip((r - 19.0) / 3.0, 0.0, 1.0)
    field = PsfField(low[None], 0, 0.0, 0.0, 1.0, low.copy(), blend, 0.0, np.zeros((1, 2)),
                     np.ones(1), size, 1, {"wing_radius_pix": 22})
    alpha = FWHM / (2 * np.sqrt(2 ** 0.5 - 1))
    # the power law through the Moffat's own profile at 16 and 40 px (as fit_wing finds it)
    moffat = lambda x: (1.0 / (np.pi * alpha ** 2)) * (1.0 + (x / alpha) ** 2) ** -2.0  # noqa: E731
    slope = np.log(moffat(16.0) / moffat(40.0)) / np.log(40.0 / 16.0)
    wing = Wing(amp=moffat(16.0) * 16.0 ** slope, slope=slope, r_join=22.0, r_max=100.0, n_stars=5,
                n_rejected=0, chi2=1.0)
    stamp, ef = evaluate_field(with_bright_wing(field, wing, [truth], FWHM), 0.0, 0.0)
    p = np.asarray(stamp, float)
    flux = (p * truth).sum() / (p * p).sum() / ef                      # sky-limited PSF fit
    assert abs(flux - 1.0) < 0.0008, flux      # without the pedestal: 0.9984
