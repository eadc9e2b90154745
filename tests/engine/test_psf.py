import numpy as np
import pytest

from tract7dt_mpi.engine import GaussianMixturePSF, HybridPSF, MoffatPSF, NCircularGaussianPSF, PixelizedPSF
from tract7dt_mpi.engine.lanczos import shift_stamp

from ._truth import psf_stamp


def _centroid(a):
    y, x = np.mgrid[:a.shape[0], :a.shape[1]]
    return (a * x).sum() / a.sum(), (a * y).sum() / a.sum()


@pytest.mark.parametrize("dx,dy", [(0.3, -0.2), (-0.5, 0.5), (0.0, 0.11)])
def test_lanczos_shift_conserves_flux_and_moves_profile(dx, dy):
    # a well-sampled Gaussian (sigma 1.7 px) shifted by Lanczos-3 vs the exactly shifted Gaussian
    y, x = np.mgrid[-12:13, -12:13]
    gauss = lambda cx, cy: np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 1.7 ** 2) / (2 * np.pi * 1.7 ** 2)
    out = shift_stamp(gauss(0, 0), dx, dy)[0]
    assert out.sum() == pytest.approx(gauss(0, 0).sum(), rel=1e-9)        # taps sum to 1
    truth = gauss(dx, dy)
    assert np.abs(out - truth).max() < 0.01 * truth.max()  # Lanczos-3 error peaks at |d| = 0.5
    # the best-matching exact shift (what a fit measures) equals (dx, dy) to < 0.01 px
    grid = np.linspace(-0.03, 0.03, 61)
    cost = [[((out - gauss(dx + a, dy + b)) ** 2).sum() for a in grid] for b in grid]
    jb, ja = np.unravel_index(np.argmin(cost), (61, 61))
    assert abs(grid[ja]) <= 0.01 and abs(grid[jb]) <= 0.01
    # first moment: Lanczos-3 taps carry a known bias (their first moment is not exactly dx)
    cx = (out * x).sum() / out.sum()
    assert cx == pytest.approx(dx, abs=0.02)


def test_lanczos_derivatives_match_finite_differences():
    st = psf_stamp(10)
    v = shift_stamp(st, 0.2, -0.1, derivs=True)
    h = 1e-6
    np.testing.assert_allclose(v[1], (shift_stamp(st, 0.2 + h, -0.1)[0] - shift_stamp(st, 0.2 - h, -0.1)[0]) / (2 * h), atol=1e-7)
    np.testing.assert_allclose(v[2], (shift_stamp(st, 0.2, -0.1 + h)[0] - shift_stamp(st, 0.2, -0.1 - h)[0]) / (2 * h), atol=1e-7)


def test_em_from_stamp_recovers_two_gaussians():
    amp, var = np.array([0.7, 0.3]), np.array([1.5, 9.0])
    h = 20
    y, x = np.mgrid[-h:h + 1, -h:h + 1]
    st = sum(a / (2 * np.pi * v) * np.exp(-0.5 * (x * x + y * y) / v) for a, v in zip(amp, var))
    g = GaussianMixturePSF.from_stamp(st, 2, max_iter=3000)
    order = np.argsort(g.var[:, 0, 0])
    np.testing.assert_allclose(g.amp[order], amp, atol=0.01)
    np.testing.assert_allclose(g.var[order, 0, 0], var, rtol=0.03)
    np.testing.assert_allclose(g.var[order, 1, 1], var, rtol=0.03)
    assert np.abs(g.mean).max() < 1e-6


def test_mog_point_patch_unit_sum_and_derivative():
    p = NCircularGaussianPSF([1.7, 4.2], [0.85, 0.15])
    x0, y0, a = p.point_patch(10.3, 7.8, derivs=True)
    assert a[0].sum() == pytest.approx(1.0, abs=2e-3)
    h = 1e-6
    _, _, ap = p.point_patch(10.3 + h, 7.8)
    _, _, am = p.point_patch(10.3 - h, 7.8)
    np.testing.assert_allclose(a[1], (ap[0] - am[0]) / (2 * h), atol=1e-6)


def test_pixelized_fourier_is_centred_stamp():
    st = psf_stamp(7)
    p = PixelizedPSF(st)
    back = np.fft.irfft2(p.fourier(32), s=(32, 32))
    np.testing.assert_allclose(np.roll(back, (7, 7), axis=(0, 1))[:15, :15], st, atol=1e-12)


def test_moffat_and_hybrid_build_mixtures():
    m = MoffatPSF(4.0, 3.5, 12)
    assert m.stamp.shape == (25, 25) and m.stamp.sum() == pytest.approx(1.0)
    assert m.mixture.amp.size == 3 and m.mixture.amp.sum() == pytest.approx(1.0, abs=0.02)
    hy = HybridPSF(psf_stamp(12), n_gauss=4)
    assert hy.mixture.amp.size == 4


def test_bad_stamp_is_a_precise_value_error():
    with pytest.raises(ValueError, match="odd"):
        PixelizedPSF(np.ones((4, 5)))
    with pytest.raises(ValueError, match="beta"):
        MoffatPSF(4.0, 0.5)
