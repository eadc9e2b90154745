"""The power-law tail of the ePSF against GalSim-rendered Moffat PSFs."""
import galsim
import numpy as np
import pytest

from tract7dt_mpi.stages.epsf_wings import SLOPE_RANGE, with_wing_tail

N = 55


def _moffat(beta, fwhm, g1=0.0):
    prof = galsim.Moffat(beta=beta, fwhm=fwhm).shear(g1=g1, g2=0.0)
    a = prof.drawImage(nx=N, ny=N, scale=1.0).array.astype(float)
    return a / a.sum()


def _radius():
    y, x = np.indices((N, N))
    return np.hypot(x - N // 2, y - N // 2)


@pytest.mark.parametrize("beta", [2.5, 3.5])
@pytest.mark.parametrize("seed", [1, 2])
def test_noisy_wings_become_the_true_profile(beta, seed):
    """Pixel noise of 6e-5 (what a 15-star stack leaves) on an elliptical Moffat: beyond the wing
    radius the tail is >5x closer to the truth (rms; >10x at the maximum 5 px further out), carries
    the true wing flux within 0.5 % of the PSF, and the core is only renormalised."""
    truth = _moffat(beta, 4.0, g1=0.05)
    noisy = truth + np.random.default_rng(seed).normal(0.0, 6e-5, truth.shape)
    out, info = with_wing_tail(noisy, 4.0)
    assert info["applied"], info
    r = _radius()
    rw = info["wing_radius_pix"]
    assert 6 <= rw <= 20
    assert info["wing_slope"] == pytest.approx(2 * beta, abs=0.6)
    assert out.sum() == pytest.approx(1.0, abs=1e-6)
    outer, far = r > rw, r > rw + 5
    rms = lambda a: np.sqrt(np.mean((a - truth)[outer] ** 2))   # noqa: E731
    assert rms(out) * 5 < rms(noisy)
    assert np.abs(out - truth)[far].max() * 10 < np.abs(noisy - truth)[far].max()
    assert (out[outer] > 0).all()
    assert abs(out[outer].sum() - truth[outer].sum()) < 5e-3
    core = r < rw - 3
    ratio = out[core] / noisy[core]
    np.testing.assert_allclose(ratio, ratio.mean(), rtol=1e-5)
    assert abs(ratio.mean() - 1) < 0.02


def test_noise_free_stamp_is_left_alone():
    truth = _moffat(3.5, 4.0)
    out, info = with_wing_tail(truth, 4.0)
    assert not info["applied"] and info["reason"].startswith("every ring significant")
    np.testing.assert_allclose(out, truth, rtol=1e-12)


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_light_beyond_the_stamp_is_the_moffat_tail(beta):
    """tail_beyond_stamp: GalSim's flux of the PSF outside the 55 px stamp, over the flux inside."""
    prof = galsim.Moffat(beta=beta, fwhm=4.0)
    inside = prof.drawImage(nx=N, ny=N, scale=1.0).array.sum()     # unit total flux
    truth = (1.0 - inside) / inside
    rng = np.random.default_rng(4)
    noisy = _moffat(beta, 4.0) + rng.normal(0.0, 2e-6, (N, N))
    _, info = with_wing_tail(noisy, 4.0)
    assert abs(info["tail_beyond_stamp"] - truth) < max(0.1 * truth, 1e-4), (info, truth)


def test_no_fwhm_is_left_alone():
    truth = _moffat(3.5, 4.0)
    out, info = with_wing_tail(truth, float("nan"))
    assert not info["applied"] and info["reason"] == "no FWHM"


def test_a_flat_fitted_tail_does_not_put_the_flux_beyond_the_stamp():
    """Outer rings as flat as r^-2 (a background error on real co-adds): the extrapolation uses
    at least an r^-3 wing at the same level and never more than MAX_BEYOND of the flux."""
    from tract7dt_mpi.stages.epsf_wings import BETA_EXTRAP_MIN, MAX_BEYOND
    y, x = np.indices((N, N))
    r = np.hypot(x - N // 2, y - N // 2)
    flat = (1.0 + (r / 3.0) ** 2) ** -1.05
    flat /= flat.sum()
    _, info = with_wing_tail(flat, 4.0)
    assert 0 < info["tail_beyond_stamp"] <= MAX_BEYOND
    assert BETA_EXTRAP_MIN >= 1.5
