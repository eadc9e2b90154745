"""Fourier sub-pixel shift of PSF stamps against analytic (pixel-integrated) Gaussians."""
import numpy as np
import pytest
from scipy.special import erf

from tract7dt_mpi.engine.fshift import fourier_shift, fourier_shifts
from tract7dt_mpi.engine.lanczos import shift_stamp


def pixel_gaussian(n, sigma, x0=0.0, y0=0.0):
    """Gaussian of unit flux integrated over each pixel, centred at (x0, y0) from the centre pixel."""
    e = np.arange(n + 1) - n / 2.0

    def axis(c):
        c = erf((e - c) / (np.sqrt(2) * sigma))
        return 0.5 * np.diff(c)
    return np.outer(axis(y0), axis(x0))


@pytest.mark.parametrize("dx,dy", [(0.5, 0.0), (0.31, -0.47), (-0.5, 0.5)])
def test_shift_matches_the_shifted_profile_better_than_lanczos(dx, dy):
    sig = 4.0 / 2.3548          # 4 px FWHM
    st = pixel_gaussian(41, sig)
    truth = pixel_gaussian(41, sig, dx, dy)
    f = fourier_shift(st, dx, dy)[0]
    lz = shift_stamp(st, dx, dy)[0]
    err_f = np.abs(f - truth).max() / truth.max()
    err_l = np.abs(lz - truth).max() / truth.max()
    assert err_f < 2e-3, err_f
    assert err_f < 0.3 * err_l, (err_f, err_l)
    assert f.sum() == pytest.approx(1.0, abs=1e-6)


def test_derivatives_are_the_finite_differences():
    st = pixel_gaussian(31, 1.8)
    val, ddx, ddy = fourier_shift(st, 0.2, -0.1, derivs=True)
    h = 1e-4
    fx = (fourier_shift(st, 0.2 + h, -0.1)[0] - fourier_shift(st, 0.2 - h, -0.1)[0]) / (2 * h)
    fy = (fourier_shift(st, 0.2, -0.1 + h)[0] - fourier_shift(st, 0.2, -0.1 - h)[0]) / (2 * h)
    np.testing.assert_allclose(ddx, fx, atol=1e-7)
    np.testing.assert_allclose(ddy, fy, atol=1e-7)
    assert fourier_shift(np.stack([st, 2 * st]), 0.2, -0.1).shape == (1, 2, 31, 31)


@pytest.mark.parametrize("single", [False, True])
def test_each_shift_of_a_batch_matches_its_shifted_profile(single):
    """One stamp moved by many (dx, dy) at once (and a stack, each plane by its own): every copy is
    the analytic shifted profile, as precise as one shift at a time; the derivatives are the
    finite differences of the profile; single precision (float32 out) costs < 1e-6 of the peak."""
    sig = 4.0 / 2.3548
    st = pixel_gaussian(41, sig)
    dx, dy = np.array([0.5, -0.31, 0.02, 1.4]), np.array([0.0, 0.47, -0.5, -0.8])
    val, ddx, ddy = fourier_shifts(st, dx, dy, derivs=True, single=single)
    h = 1e-4
    for i in range(dx.size):
        truth = pixel_gaussian(41, sig, dx[i], dy[i])
        assert np.abs(val[i] - truth).max() / truth.max() < 2e-3
        assert np.abs(val[i] - fourier_shift(st, dx[i], dy[i])[0]).max() < (1e-6 if single else 1e-12) * st.max()
        fx = (pixel_gaussian(41, sig, dx[i] + h, dy[i]) - pixel_gaussian(41, sig, dx[i] - h, dy[i])) / (2 * h)
        fy = (pixel_gaussian(41, sig, dx[i], dy[i] + h) - pixel_gaussian(41, sig, dx[i], dy[i] - h)) / (2 * h)
        assert np.abs(ddx[i] - fx).max() < 3e-3 * np.abs(fx).max()
        assert np.abs(ddy[i] - fy).max() < 3e-3 * np.abs(fy).max()
    planes = np.stack([st, 2 * st])
    out = fourier_shifts(planes, dx[:2], dy[:2], single=single)[0]
    assert out.shape == (2, 41, 41) and out.dtype == (np.float32 if single else np.float64)
    assert np.abs(out[1] - 2 * pixel_gaussian(41, sig, dx[1], dy[1])).max() < 4e-3 * st.max()


def _sharp_psf():
    galsim = pytest.importorskip("galsim")
    return galsim.Convolve(galsim.Kolmogorov(fwhm=2.3), galsim.Airy(lam_over_diam=0.72))


def test_psf_shift_of_an_aliased_core_does_not_ring_in_the_wing():
    """A 2.3 px Kolmogorov x Airy PSF (GalSim, drawn at the shifted position for the truth): the
    Fourier translate rings 10-25 px out at ~1e-3 of the peak (4 x the PSF there); psf_shift keeps
    the Fourier core and is right to 1e-4 of the peak in the wing; a least-squares flux of the
    truth with it is right to 5e-4."""
    from tract7dt_mpi.engine.fshift import core_weight, psf_shift
    from tract7dt_mpi.engine.psf import stamp_fwhm
    psf = _sharp_psf()
    st = psf.drawImage(nx=55, ny=55, scale=1.0).array
    w = core_weight(st.shape, stamp_fwhm(st))
    yy, xx = np.indices(st.shape)
    for dx, dy in [(0.45, 0.3), (0.5, 0.5), (-0.2, 0.4)]:
        truth = psf.drawImage(nx=55, ny=55, scale=1.0, offset=(dx, dy)).array
        r = np.hypot(xx - 27 - dx, yy - 27 - dy)
        wing, core = (r > 10) & (r < 25), r < 3.5
        four = fourier_shift(st, dx, dy)[0]
        new = psf_shift(st, dx, dy, weight=w)[0]
        pk = truth.max()
        assert np.abs(four - truth)[wing].max() > 3e-4 * pk        # the ringing this removes
        assert np.abs(new - truth)[wing].max() < 1e-4 * pk
        assert np.abs(new - truth)[core].max() <= np.abs(four - truth)[core].max() + 1e-5 * pk
        assert abs((new * truth).sum() / (new * new).sum() - 1.0) < 5e-4   # a fit's flux
    np.testing.assert_array_equal(psf_shift(st, 0.3, 0.1)[0], fourier_shift(st, 0.3, 0.1)[0])


def test_psf_shift_derivatives_are_the_finite_differences():
    from tract7dt_mpi.engine.fshift import core_weight, psf_shift
    st = pixel_gaussian(41, 1.0)
    w = core_weight(st.shape, 2.355)
    val, ddx, ddy = psf_shift(st, 0.2, -0.1, derivs=True, weight=w)
    h = 1e-4
    fx = (psf_shift(st, 0.2 + h, -0.1, weight=w)[0] - psf_shift(st, 0.2 - h, -0.1, weight=w)[0]) / (2 * h)
    fy = (psf_shift(st, 0.2, -0.1 + h, weight=w)[0] - psf_shift(st, 0.2, -0.1 - h, weight=w)[0]) / (2 * h)
    np.testing.assert_allclose(ddx, fx, atol=1e-7)
    np.testing.assert_allclose(ddy, fy, atol=1e-7)
    assert core_weight(st.shape, float("nan")) is None


def test_only_aliased_stamps_take_the_blend():
    """fshift.aliased against GalSim PSFs: the 2.3 px Kolmogorov x Airy and a 2.5 px Gaussian hold
    power at the Nyquist frequency (their Fourier translates ring), a Moffat beta = 3 of 4.4 px and
    a 4.4 px Kolmogorov x Airy do not, also with noise of 1e-4 of the peak per pixel; for those
    the Fourier translate is right beyond 2.5 FWHM to 5e-5 of the peak, as Lanczos-3 is, so a
    PixelizedPSF of them renders with the Fourier translate alone (no weight), and a band stack
    keeps the blend for its aliased band only."""
    galsim = pytest.importorskip("galsim")
    from tract7dt_mpi.engine import PixelizedPSF
    from tract7dt_mpi.engine.fshift import aliased
    from tract7dt_mpi.engine.psf import PsfBank, stamp_fwhm

    def stamp(p, offset=(0.0, 0.0)):
        return p.drawImage(nx=55, ny=55, scale=1.0, offset=offset).array

    sharp = [_sharp_psf(), galsim.Gaussian(fwhm=2.5)]
    broad = [galsim.Moffat(beta=3.0, fwhm=4.4),
             galsim.Convolve(galsim.Kolmogorov(fwhm=4.1), galsim.Airy(lam_over_diam=0.77))]
    rng = np.random.default_rng(3)
    assert all(aliased(stamp(p)) for p in sharp)
    yy, xx = np.indices((55, 55))
    for p in broad:
        st = stamp(p)
        assert not aliased(st)
        assert not aliased(st + rng.normal(0.0, 1e-4 * st.max(), st.shape))
        far = np.hypot(xx - 27, yy - 27) > 2.5 * stamp_fwhm(st)
        truth = stamp(p, (0.5, 0.5))
        assert np.abs(fourier_shift(st, 0.5, 0.5)[0] - truth)[far].max() < 5e-5 * truth.max()
        psf = PixelizedPSF(st / st.sum())
        assert psf.shift_weight(27, 27) is None
        _, _, arr = psf.point_patch(30.5, 20.5)
        np.testing.assert_array_equal(arr[0], fourier_shift(psf.stamp, 0.5, 0.5)[0])
    bank = PsfBank([PixelizedPSF(stamp(broad[0])), PixelizedPSF(stamp(sharp[0]))])
    _, wt, cy, cx = bank.stamp_stack(27)
    assert np.all(wt[0] == 1.0) and wt[1].min() == 0.0
