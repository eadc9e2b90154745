"""PSFEx .psf files written here in the PSFEx format (PSF_DATA table, PSF_MASK cube, POL* keys):
term ordering, POLZERO/POLSCAL, 1-based positions, PSF_SAMP resampling and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io.psfex import read_psfex

from _psfex_files import gauss, write_psfex


def test_term_order_zero_scale_one_based(tmp_path):
    """Degree 2: terms 1, x, x², y, xy, y² -- each term gets its own stamp, so any other order
    or a wrong (x - POLZERO) / POLSCAL gives a different image."""
    rng = np.random.default_rng(1)
    basis = rng.uniform(0.5, 1.5, (6, 15, 15)) * gauss(15, 2.0)
    m = read_psfex(write_psfex(str(tmp_path / "a.psf"), basis, 2))
    assert m.degree == 2 and m.samp == 1.0 and m.accepted == 25 and m.fwhm == pytest.approx(3.1)
    x, y = 1400.0, 300.0                       # 1-based image pixels
    u, v = (x - 1000.0) / 800.0, (y - 500.0) / 400.0
    truth = (basis[0] + u * basis[1] + u * u * basis[2] + v * basis[3] + u * v * basis[4]
             + v * v * basis[5])
    np.testing.assert_allclose(m.model_stamp(x, y), truth, rtol=1e-6)
    st = m.stamp(x, y)
    assert st.shape == (15, 15) and st.dtype == np.float32
    np.testing.assert_allclose(st, truth / truth.sum(), rtol=1e-5)


def test_gaussian_width_linear_in_x(tmp_path):
    """A PSF whose sigma grows linearly in x (2.0 -> 3.0 px over the field), expanded per pixel
    to degree 3 in u by least squares; the evaluated stamp matches the Gaussian at that x."""
    n, deg = 31, 3
    us = np.linspace(-1, 1, 41)
    sig = lambda u: 2.5 + 0.5 * u          # noqa: E731
    cube = np.array([gauss(n, sig(u)) / (2 * np.pi * sig(u) ** 2) for u in us])
    coef = np.polynomial.polynomial.polyfit(us, cube.reshape(len(us), -1), deg)  # (deg+1, n*n)
    # PSFEx order for degree 3: 1, x, x², x³, y, xy, x²y, y², xy², y³ -> the x^i terms are 0..3
    basis = np.zeros((10, n, n))
    basis[:4] = coef.reshape(deg + 1, n, n)
    m = read_psfex(write_psfex(str(tmp_path / "g.psf"), basis, deg, zero=(1300.5, 1300.5),
                               scale=(1300.0, 1300.0)))
    for x in (1.0, 700.0, 1300.5, 2600.0):
        u = (x - 1300.5) / 1300.0
        truth = gauss(n, sig(u))
        truth /= truth.sum()
        st = m.stamp(x, 1234.0)                # y does not matter here
        assert np.max(np.abs(st - truth)) < 3e-3 * truth.max()   # the cubic's own error at the edges
        yy, xx = np.mgrid[0:n, 0:n] - n // 2
        assert np.sqrt(np.sum(st * xx ** 2)) == pytest.approx(sig(u), rel=0.01)


def test_psf_samp_resampled_to_image_pixels(tmp_path):
    """PSF_SAMP = 0.5: the model has two samples per image pixel; the stamp on the image grid is
    the same Gaussian sampled at whole pixels."""
    sigma_img = 1.6
    model = gauss(41, sigma_img, step=0.5)     # model pixel k is (k - 20) * 0.5 image px away
    m = read_psfex(write_psfex(str(tmp_path / "s.psf"), model[None], 0, samp=0.5))
    st = m.stamp(10.0, 10.0)
    assert st.shape == (21, 21)                # 20 model px * 0.5 = 10 image px each side
    truth = gauss(21, sigma_img)
    truth /= truth.sum()
    assert np.max(np.abs(st - truth)) < 2e-3 * truth.max()
    st2 = read_psfex(write_psfex(str(tmp_path / "s2.psf"), gauss(21, 1.0, step=2.0)[None], 0,
                                 samp=2.0)).stamp(1, 1)       # under-sampled model: 41 x 41 grid
    t2 = gauss(41, 1.0 * 1.0)
    assert st2.shape == (41, 41) and abs(st2.sum() - 1) < 1e-5
    assert np.unravel_index(np.argmax(st2), st2.shape) == (20, 20)
    assert np.sqrt(np.sum(st2 * (np.mgrid[0:41, 0:41][1] - 20) ** 2)) == pytest.approx(
        np.sqrt(np.sum(t2 / t2.sum() * (np.mgrid[0:41, 0:41][1] - 20) ** 2)), rel=0.15)


def test_constant_psf_and_errors(tmp_path):
    g = gauss(11, 1.5)[None]
    m = read_psfex(write_psfex(str(tmp_path / "c.psf"), g, 0))
    assert m.degree == 0
    np.testing.assert_allclose(m.stamp(5, 5), g[0] / g[0].sum(), rtol=1e-6)
    b6 = np.ones((6, 11, 11))
    with pytest.raises(InputError, match="PSFEx file not found: .*nope.psf"):
        read_psfex(str(tmp_path / "nope.psf"))
    with pytest.raises(InputError, match="missing header key POLZERO2"):
        read_psfex(write_psfex(str(tmp_path / "d.psf"), b6, 2, drop=("POLZERO2",)))
    with pytest.raises(InputError, match="POLNAME1 = 'MAG_AUTO', expected X\\*_IMAGE"):
        read_psfex(write_psfex(str(tmp_path / "e.psf"), b6, 2, names=("MAG_AUTO", "Y_IMAGE")))
    with pytest.raises(InputError, match=r"PSF_MASK shape \(6, 11, 11\), expected \(3, ny, nx\) for POLDEG1 = 1"):
        read_psfex(write_psfex(str(tmp_path / "f.psf"), b6, 1))
    img = str(tmp_path / "img.fits")
    fits.PrimaryHDU(data=np.zeros((3, 3))).writeto(img)
    with pytest.raises(InputError, match="no PSF_DATA table with a PSF_MASK column"):
        read_psfex(img)
