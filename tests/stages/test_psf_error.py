"""PSF term of the flux error: missed flux of stars under a wrong ePSF, pooled excess scatter."""
import math
from dataclasses import dataclass

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.stages.psf_error import (apply_fitted_psf_errors, band_psf_flux_errors,  # noqa: E402
                                           excess_scatter, fitted_star_checks, own_share_factors,
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
    """Stars 3 % wider than the model: the missed flux within 3 FWHM of the least-squares fit with
    the narrow model is the true flux error of that fit (GalSim truth, no noise); the check refits
    the flux itself, so the stars carry a deliberately wrong starting flux."""
    model_psf = moffat_image(4.0, 1.0)
    model_psf /= model_psf.sum()
    stars, models, true_err = [], [], []
    for k in range(3):
        data = moffat_image(4.12, 1e4)
        f_ls = float((data * model_psf).sum() / (model_psf ** 2).sum())      # PSF-fit flux
        stars.append(Star(data, np.full(data.shape, 1.0), 0.9 * f_ls, (20.0, 20.0)))
        models.append(0.9 * f_ls * model_psf)
        true_err.append(1e4 / f_ls - 1.0)
    radius = 3 * stamp_fwhm(model_psf)
    d, s = star_flux_checks(stars, models, [0.0] * 3, gain=None, radius=radius)
    assert true_err[0] > 0.01                                                  # a real effect
    assert d[0] == pytest.approx(true_err[0], rel=0.1)
    assert s[0] == pytest.approx(math.sqrt(math.pi * radius ** 2) / f_ls, rel=0.15)


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


def _ls_fit(data, iv, psf):
    """Least-squares flux of ``psf`` (unit sum) in ``data`` with weights ``iv`` (the patch fit's)."""
    return float((iv * psf * data).sum() / (iv * psf * psf).sum())


def test_fitted_star_check_measures_the_fit_error_of_a_wrong_width_psf():
    """A star 3 % wider than the fit's PSF, fitted by least squares: the annulus-subtracted
    residual within 2 FWHM, over A and the aperture's width capture, is the fit's true flux error
    (GalSim truth, no noise); a smooth residual background under the star does not change it."""
    n = 81
    x, y = 40.3, 39.8
    stamp = moffat_image(4.0, 1.0, n=41)
    stamp /= stamp.sum()
    data = moffat_image(4.12, 1e4, n=n, offset=(0.3, -0.2))
    psf_at = moffat_image(4.0, 1.0, n=n, offset=(0.3, -0.2))
    psf_at /= psf_at.sum()
    iv = np.ones((n, n))
    f_ls = _ls_fit(data, iv, psf_at)
    true_err = 1e4 / f_ls - 1.0
    fwhm = stamp_fwhm(stamp)
    d, s = fitted_star_checks(data - f_ls * psf_at, iv, f_ls * psf_at, None, [(x, y)], [f_ls],
                              2 * fwhm, stamp, 4 * fwhm)
    assert true_err > 0.01
    assert d[0] == pytest.approx(true_err, rel=0.08)
    # a residual pedestal of 0.5 per pixel (2.5 % of the flux within 4 FWHM) cancels
    d_bg, _ = fitted_star_checks(data - f_ls * psf_at + 0.5, iv, f_ls * psf_at, None, [(x, y)],
                                 [f_ls], 2 * fwhm, stamp, 4 * fwhm)
    assert d_bg[0] == pytest.approx(d[0], abs=1e-4)
    # with a gain the star's own Poisson noise enters; near the edge or masked: no value
    _, s_g = fitted_star_checks(data - f_ls * psf_at, iv, f_ls * psf_at, 2.0, [(x, y)], [f_ls],
                                2 * fwhm, stamp, 4 * fwhm)
    assert s_g[0] > s[0]
    iv_masked = iv.copy()
    iv_masked[33:47, 33:47] = 0.0
    d2, _ = fitted_star_checks(data - f_ls * psf_at, iv_masked, f_ls * psf_at, None,
                               [(x, y), (2.0, 40.0)], [f_ls, f_ls], 2 * fwhm, stamp, 4 * fwhm)
    assert math.isnan(d2[0]) and math.isnan(d2[1])


def test_width_capture_is_the_share_of_a_width_error_a_small_aperture_sees():
    """GalSim truth: a star 2 % wider than the model, least-squares fitted, shows in the
    annulus-subtracted 2 FWHM aperture a share of its flux error that width_capture predicts;
    large apertures see nearly all of it, broad (Moffat beta = 2) wings less."""
    from tract7dt_mpi.stages.psf_error import width_capture
    n = 121
    for beta, lo, hi in ((3.0, 0.75, 0.9), (2.0, 0.55, 0.75)):
        p = galsim.Moffat(beta=beta, fwhm=4.4).drawImage(nx=n, ny=n, scale=1.0).array.astype(float)
        t = galsim.Moffat(beta=beta, fwhm=4.4 * 1.02).drawImage(nx=n, ny=n, scale=1.0).array.astype(float)
        p, t = p / p.sum(), t / t.sum()
        f = _ls_fit(t, np.ones((n, n)), p)
        stamp = p[30:91, 30:91]
        cap = width_capture(stamp, 8.8, 17.6)
        assert lo < cap < hi
        d, _ = fitted_star_checks(t - f * p, np.ones((n, n)), f * p, None, [(60.0, 60.0)], [f],
                                  8.8, stamp, 17.6)
        assert d[0] == pytest.approx(1.0 / f - 1.0, rel=0.05)
    assert width_capture(stamp, 30.0, 45.0) > 0.95


def _star_field(rng, n_stars, fwhm_true, fwhm_model, flux, sky_sigma=5.0, gain=4.0, n=61):
    """GalSim stars (Moffat beta 3, FWHMs ``fwhm_true``), sky and Poisson noise, each fitted by
    least squares with a ``fwhm_model`` PSF at its true position; returns (delta, sigma, true
    fractional flux error, statistical flux error / flux) per star."""
    ds, ss, errs, stat = [], [], [], []
    iv = np.full((n, n), 1.0 / sky_sigma ** 2)
    c = (n - 1) / 2.0
    for k in range(n_stars):
        off = tuple(rng.uniform(-0.5, 0.5, 2))
        fm = fwhm_model[k] if np.ndim(fwhm_model) else fwhm_model
        model = moffat_image(fm, 1.0, n=n, offset=off)
        model /= model.sum()
        stamp = moffat_image(fm, 1.0, n=41)
        stamp /= stamp.sum()
        truth = galsim.Moffat(beta=3.5, fwhm=fwhm_true[k], flux=flux[k]).drawImage(
            nx=n, ny=n, scale=1.0, offset=off).array.astype(float)
        data = truth + rng.normal(0, 1, (n, n)) * np.sqrt(sky_sigma ** 2 + np.maximum(truth, 0) / gain)
        f = _ls_fit(data, iv, model)
        fwhm = stamp_fwhm(stamp)
        d, s = fitted_star_checks(data - f * model, iv, f * model, gain, [(c + off[0], c + off[1])],
                                  [f], 2 * fwhm, stamp, 4 * fwhm)
        ds.append(d[0])
        ss.append(s[0])
        errs.append(f / flux[k] - 1.0)
        w = iv * model
        var = (w * w * (sky_sigma ** 2 + np.maximum(truth, 0) / gain)).sum() / (w * model).sum() ** 2
        stat.append(math.sqrt(var) / f)
    return np.array(ds), np.array(ss), np.array(errs), np.array(stat)


def test_check_noise_is_calibrated_and_a_right_psf_gives_no_term():
    """Stars fitted with their own true PSF (GalSim, noise draws as the truth): delta / sigma has
    unit spread at every S/N (the fit's share of the noise is not counted twice), and the pooled
    PSF term is ~0 against the stars' 0.2-2 % statistical errors."""
    rng = np.random.default_rng(11)
    n = 120
    fw = rng.uniform(3.8, 4.2, n)
    flux = 10 ** rng.uniform(3.5, 5.5, n)
    d, s, err, stat = _star_field(rng, n, fw, fw, flux)
    z = d / s
    assert 1.4826 * np.median(np.abs(z - np.median(z))) == pytest.approx(1.0, abs=0.15)
    assert np.std(z) == pytest.approx(1.0, abs=0.15)
    assert excess_scatter(d, s) < 0.25 * np.median(stat)


def test_check_finds_the_scatter_of_a_wrong_psf_model():
    """A star field whose true PSF width varies by +-5 % around the one model PSF used for all of
    them (the model up to 5 % too wide or too narrow): the pooled PSF term equals the spread of
    the stars' true flux errors (GalSim truth) within 20 %, and far exceeds the statistical one."""
    rng = np.random.default_rng(12)
    n = 80
    fw = 4.0 * (1.0 + rng.uniform(-0.05, 0.05, n))
    flux = 10 ** rng.uniform(4.5, 5.5, n)
    d, s, err, stat = _star_field(rng, n, fw, 4.0, flux)
    tau_true = excess_scatter(err, stat)
    assert tau_true > 0.015                                     # a real effect: ~1.7 % rms
    assert excess_scatter(d, s) == pytest.approx(tau_true, rel=0.2)


def test_fitted_psf_errors_replace_the_term_on_epsf_bands_only():
    import pandas as pd
    rng = np.random.default_rng(5)
    n = 300
    flux = rng.uniform(2e3, 5e4, n)
    stat = np.sqrt(flux + 400.0)
    s = rng.uniform(0.002, 0.01, n)
    tab = pd.DataFrame({
        "FLUX_m400_fit": flux, "FLUXERR_STAT_m400_fit": stat, "FLUXERR_m400_fit": stat * 1.5,
        "PSFCHK_m400_fit": rng.normal(0, 1, n) * np.hypot(s, 0.012), "PSFCHK_ERR_m400_fit": s,
        "FLUX_m500_fit": flux, "FLUXERR_STAT_m500_fit": stat, "FLUXERR_m500_fit": stat * 1.5,
        "PSFCHK_m500_fit": np.nan, "PSFCHK_ERR_m500_fit": np.nan,
        "psf_fallback_bands": [""] * (n - 1) + ["m400"]})
    out, summary = apply_fitted_psf_errors(tab, ["m400", "m500"])
    frac = summary.set_index("band").loc["m400", "psf_flux_err_frac"]
    assert frac == pytest.approx(0.012, rel=0.2)
    np.testing.assert_allclose(out["FLUXERR_m400_fit"][:-1], np.hypot(stat, frac * flux)[:-1], rtol=1e-4)
    assert out["FLUXERR_m400_fit"].iloc[-1] == tab["FLUXERR_m400_fit"].iloc[-1]     # fallback PSF
    np.testing.assert_array_equal(out["FLUXERR_m500_fit"], tab["FLUXERR_m500_fit"])   # no stars
    assert not [c for c in out.columns if c.startswith("PSFCHK")]


def test_own_share_factor_undoes_what_the_epsf_absorbed():
    """An ePSF that is the mean of 4 stars' profiles, one of them 4 % wider: on that star the
    residual of an LS fit with the ePSF is 3/4 of its residual against the other stars' profile;
    1 / (1 - share) restores it (GalSim truth, no noise)."""
    n = 61
    narrow = moffat_image(4.0, 1.0, n=n)
    wide = moffat_image(4.16, 1.0, n=n)
    epsf = (3 * narrow + wide) / 4
    radius = 2 * stamp_fwhm(narrow)
    iv = np.ones((n, n))

    def check(psf):
        f = float((wide * 1e4 * psf).sum() / (psf ** 2).sum())
        return fitted_star_checks(wide * 1e4 - f * psf, iv, f * psf, None, [(30.0, 30.0)], [f],
                                  radius, narrow, 2 * radius)[0][0]

    k = own_share_factors([(130.0, 230.0)], [(500.0, 500.0, 0.1), (130.4, 229.8, 0.25)])
    assert k[0] == pytest.approx(1 / 0.75)
    assert check(epsf) * k[0] == pytest.approx(check(narrow), rel=0.05)
    assert own_share_factors([(10.0, 10.0)], [(12.0, 10.0, 0.25)])[0] == 1.0     # not the same star


@pytest.mark.parametrize("kind,fwhm", [("moffat2", 3.6), ("moffat3", 4.0), ("kolmogorov", 2.3),
                                       ("kolmogorov", 5.0)])
def test_stamp_fwhm_is_the_pixel_convolved_fwhm_wherever_the_peak_sits(kind, fwhm):
    """Against the exact FWHM of the PSF convolved with the pixel (GalSim, 0.02 px sampling), at
    any sub-pixel position of the peak (counting whole pixels was 5-15 % off, by position)."""
    galsim = pytest.importorskip("galsim")
    psf = galsim.Kolmogorov(fwhm=fwhm) if kind == "kolmogorov" else \
        galsim.Moffat(beta=float(kind[-1]), fwhm=fwhm)
    fine = galsim.Convolve(psf, galsim.Pixel(1.0)).drawImage(nx=801, ny=801, scale=0.02, method="no_pixel").array
    true = 2.0 * np.sqrt(np.count_nonzero(fine >= fine.max() / 2.0) * 0.02 ** 2 / np.pi)
    rng = np.random.default_rng(1)
    for off in [(0.0, 0.0), (0.5, 0.5)] + [tuple(rng.uniform(-0.5, 0.5, 2)) for _ in range(4)]:
        got = stamp_fwhm(psf.drawImage(nx=55, ny=55, scale=1.0, offset=off).array)
        assert got == pytest.approx(true, rel=0.03), (off, got, true)
