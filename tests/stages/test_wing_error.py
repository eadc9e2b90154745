"""The stars' PSF-wing error measured on fitted stars (stages.wing_error), against GalSim truth."""
import math

import numpy as np
import pandas as pd
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.engine.flux_errors import INNER_WING_LEVEL, WING_LEVEL, wing_errors  # noqa: E402
from tract7dt_mpi.stages.wing_error import (apply_fitted_wing_errors, band_wing_fractions,  # noqa: E402
                                            fitted_wing_checks, pooled_fraction)


def _moffat(n, offset=(0.0, 0.0), fwhm=4.0, beta=2.5):
    im = galsim.Moffat(beta=beta, fwhm=fwhm).drawImage(nx=n, ny=n, scale=1.0, offset=offset).array
    return im.astype(float) / im.sum()


def _with_wing(p, scale):
    """``p`` with its wing (below WING_LEVEL of the peak) times ``scale``, renormalised."""
    q = np.where(p < WING_LEVEL * p.max(), p * scale, p)
    return q / q.sum()


def _star_checks(rng, n_stars, flux, true_wing, model_wing=1.0, sky_sigma=5.0, gain=4.0, n=61):
    """Stars drawn with the Moffat PSF whose wing (below WING_LEVEL of the peak) is multiplied by
    ``true_wing(k, theta, p / peak)`` (sky + Poisson noise), each fitted by least squares with the
    plain Moffat (its wing times ``model_wing``, renormalised); returns the checks (rms, noise),
    each (n_stars, 2): inner and outer ring."""
    iv = np.full((n, n), 1.0 / sky_sigma ** 2)
    c = (n - 1) / 2.0
    stamp = _with_wing(_moffat(41), model_wing)
    rms, noise = [], []
    for k in range(n_stars):
        off = tuple(rng.uniform(-0.5, 0.5, 2))
        p = _moffat(n, off)
        yy, xx = np.indices(p.shape, dtype=float)
        theta = np.arctan2(yy - c - off[1], xx - c - off[0])
        truth = flux[k] * np.where(p < WING_LEVEL * p.max(), p * true_wing(k, theta, p / p.max()), p)
        model = _with_wing(p, model_wing)
        data = truth + rng.normal(0, 1, (n, n)) * np.sqrt(sky_sigma ** 2 + truth / gain)
        f = float((iv * data * model).sum() / (iv * model * model).sum())
        e, s = fitted_wing_checks(data - f * model, iv, f * model, gain, [(c + off[0], c + off[1])],
                                  [f], stamp)
        rms.append(e[0])
        noise.append(s[0])
    return np.array(rms), np.array(noise)


def _pooled(rms, noise):
    return [pooled_fraction(rms[:, i], noise[:, i]) for i in range(2)]


def test_a_right_psf_gives_calibrated_noise_and_no_wing_error():
    """Stars fitted with their own PSF, S/N ~ 300 to ~ 30000: the zones' rms is their noise (the
    fitted flux's share of the noise is not counted twice) and the pooled fraction is ~0."""
    rng = np.random.default_rng(21)
    n = 300
    flux = 10 ** rng.uniform(4.0, 6.0, n)
    rms, noise = _star_checks(rng, n, flux, lambda k, t, q: 1.0)
    # 300 stars x 16 zones: the mean of rms^2 / noise^2 is known to ~0.03
    for i in range(2):
        assert np.nanmean(rms[:, i] ** 2 / noise[:, i] ** 2) == pytest.approx(1.0, abs=0.08)
    assert max(_pooled(rms, noise)) < 0.004


@pytest.mark.parametrize("scale", [0.95, 1.04])
def test_the_check_measures_a_wing_too_faint_or_too_bright(scale):
    """A model wing 5 % too faint (or 4 % too bright) for every star: the fraction is the true
    wing's excess over the model's, 1 / scale - 1 (within 15 %), although the star's own flux fit
    took part of that light into its flux."""
    rng = np.random.default_rng(22)
    n = 40
    flux = 10 ** rng.uniform(5.0, 6.0, n)
    rms, noise = _star_checks(rng, n, flux, lambda k, t, q: 1.0, model_wing=scale)
    for f in _pooled(rms, noise):
        assert f == pytest.approx(abs(1.0 / scale - 1.0), rel=0.15)


def test_wing_error_varying_over_the_field_is_its_rms():
    """Each star's true wing 0-8 % brighter than the model's (uniform over the stars): the
    fraction is the rms of the true excesses within 20 %."""
    rng = np.random.default_rng(23)
    n = 60
    true = rng.uniform(0.0, 0.08, n)
    rms, noise = _star_checks(rng, n, np.full(n, 3e5), lambda k, t, q: 1.0 + true[k])
    for f in _pooled(rms, noise):
        assert f == pytest.approx(float(np.sqrt(np.mean(true ** 2))), rel=0.2)


def test_an_elliptical_wing_error_is_seen_although_the_whole_wing_is_right():
    """The true wing 5 % brighter along x and 5 % fainter along y (1 + 0.05 cos 2 theta): the
    whole wing holds the model's light, but a galaxy on one side sees +-5 %; the fraction is the
    rms over the zones, 0.05 x sqrt(1/2) x 0.90 (an octant's mean of cos 2 theta) = 0.032, to 20 %."""
    rng = np.random.default_rng(26)
    n = 40
    rms, noise = _star_checks(rng, n, np.full(n, 3e5), lambda k, t, q: 1.0 + 0.05 * np.cos(2 * t))
    expect = 0.05 * math.sqrt(0.5) * math.sin(math.pi / 4) / (math.pi / 4)
    for f in _pooled(rms, noise):
        assert f == pytest.approx(expect, rel=0.2)


def test_the_outer_wing_is_measured_apart_from_the_inner():
    """The true outer wing (below INNER_WING_LEVEL of the peak) 6 % brighter, the inner one right:
    the outer ring's fraction is 6 % (to 15 %), the inner one's ~0 (the star's flux fit spreads a
    little of the outer excess over the whole PSF)."""
    rng = np.random.default_rng(27)
    n = 40
    rms, noise = _star_checks(rng, n, np.full(n, 3e5),
                              lambda k, t, q: np.where(q < INNER_WING_LEVEL, 1.06, 1.0))
    f_in, f_out = _pooled(rms, noise)
    assert f_out == pytest.approx(0.06, rel=0.15)
    assert f_in < 0.01


def _table(n, rng, chk, sig, snr=500.0):
    flux = np.full(n, 1e5)
    stat = flux / snr
    r = rng.normal(0, 1, (3, n)) * np.array([[50.0], [80.0], [20.0]])
    wing0 = wing_errors(r, [0.05] * 3)
    err0 = np.sqrt(stat ** 2 + (0.003 * flux) ** 2 + wing0 ** 2)
    return pd.DataFrame({
        "FLUX_m400_fit": flux, "FLUXERR_STAT_m400_fit": stat, "FLUXERR_m400_fit": err0,
        "FLUXERR_WING_m400_fit": wing0, "WINGRESP_IN_m400_fit": r[0], "WINGRESP_OUT_m400_fit": r[1],
        "WINGRESP_HALO_m400_fit": r[2], "WINGCHK_IN_m400_fit": chk[0], "WINGCHK_IN_ERR_m400_fit": sig,
        "WINGCHK_OUT_m400_fit": chk[1], "WINGCHK_OUT_ERR_m400_fit": sig,
        "psf_fallback_bands": [""] * (n - 1) + ["m400"]}), r, wing0, err0


def test_measured_fractions_rescale_the_stars_wing_parts_only():
    """The band's measured inner (1.2 %) and outer (3 %) wing errors replace the configured 5 %
    for the stars' wings; the halos keep 5 %; FLUXERR keeps its other terms; a row fitted with the
    fallback PSF keeps the fit's values; the store-only columns are dropped."""
    rng = np.random.default_rng(24)
    n = 200
    sig = rng.uniform(0.002, 0.01, n)
    # per ring: rms of 8 sectors of noise sig around a local wing error
    chk = [np.sqrt(np.mean(rng.normal(0.0, 1.0, (n, 8)) ** 2, axis=1)) * np.hypot(sig, f) for f in (0.012, 0.03)]
    tab, r, wing0, err0 = _table(n, rng, chk, sig)
    (f_in, f_out), _, _ = band_wing_fractions(tab, ["m400"])["m400"]
    assert f_in == pytest.approx(0.012, rel=0.2) and f_out == pytest.approx(0.03, rel=0.2)
    out, summary = apply_fitted_wing_errors(tab, ["m400"], 0.05)
    row = summary.set_index("band").loc["m400"]
    assert (row["wing_err_inner"], row["wing_err_outer"]) == (pytest.approx(f_in, rel=1e-4), pytest.approx(f_out, rel=1e-4))
    new = np.abs(f_in * r[0] + f_out * r[1] + 0.05 * r[2])
    np.testing.assert_allclose(out["FLUXERR_WING_m400_fit"][:-1], new[:-1], rtol=1e-4)
    other = np.sqrt(err0 ** 2 - wing0 ** 2)
    np.testing.assert_allclose(out["FLUXERR_m400_fit"][:-1], np.hypot(other, new)[:-1], rtol=1e-6)
    assert out["FLUXERR_m400_fit"].iloc[-1] == err0[-1]
    assert out["FLUXERR_WING_m400_fit"].iloc[-1] == wing0[-1]
    assert not [c for c in out.columns if c.startswith(("WINGRESP", "WINGCHK"))]


def test_too_few_bright_stars_keep_the_configured_fraction():
    rng = np.random.default_rng(25)
    n = 4
    tab, r, wing0, err0 = _table(n, rng, [np.full(n, 0.01)] * 2, np.full(n, 0.003))
    out, summary = apply_fitted_wing_errors(tab, ["m400"], 0.05)
    np.testing.assert_array_equal(out["FLUXERR_m400_fit"], err0)
    assert summary["wing_source"].iloc[0].startswith("configured")
