"""The band's polynomial PSF field against GalSim Moffat PSFs whose width changes over the frame."""
import galsim
import numpy as np
import pytest

from tract7dt_mpi.stages.psf_poly import evaluate_field, fit_psf_field

S, FRAME = 61, (2000, 2000)


def fwhm_at(x, y):
    """A focus dome: 4 px at the centre, 4.6 px in the corners (quadratic in x and y)."""
    u, v = (x - 1000.0) / 1000.0, (y - 1000.0) / 1000.0
    return 4.0 + 0.3 * (u * u + v * v)


def stamp(x, y, size=S):
    return galsim.Moffat(beta=3.0, fwhm=fwhm_at(x, y)).drawImage(nx=size, ny=size, scale=1.0).array


@pytest.fixture(scope="module")
def stars():
    rng = np.random.default_rng(2)
    xy = rng.uniform(100, 1900, (40, 2))
    vals = np.stack([stamp(x, y) for x, y in xy]) + rng.normal(0, 2e-5, (40, S, S))
    w = np.full(vals.shape, 1.0 / 2e-5 ** 2)
    return xy, vals, w


def _flux_factor(st, ef, x, y):
    truth = stamp(x, y, size=st.shape[0])      # unit total flux
    st = st.astype(float) * ef
    return (truth * st).sum() / (st * st).sum()


def test_quadratic_field_follows_the_dome_where_a_constant_cannot(stars):
    xy, vals, w = stars
    f2 = fit_psf_field(xy, vals, w, 2, FRAME, 55, 4.2)
    f0 = fit_psf_field(xy, vals, w, 0, FRAME, 55, 4.2)
    assert f2.degree == 2 and f0.degree == 0 and f2.n_stars == 40
    worst2, worst0 = 0.0, 0.0
    for x, y in [(1000, 1000), (150, 150), (1850, 300), (500, 1700), (1900, 1900)]:
        st, ef = evaluate_field(f2, x, y)
        assert st.shape == (55, 55) and abs(float(st.sum()) - 1) < 1e-5
        worst2 = max(worst2, abs(_flux_factor(st, ef, x, y) - 1))
        st0, ef0 = evaluate_field(f0, x, y)
        worst0 = max(worst0, abs(_flux_factor(st0, ef0, x, y) - 1))
    assert worst2 < 0.005, worst2          # 0.1-0.3 % inside, 0.4 % at the outermost corner
    assert worst0 > 0.02, worst0


def test_degree_drops_with_few_stars(stars):
    xy, vals, w = stars
    assert fit_psf_field(xy[:10], vals[:10], w[:10], 2, FRAME, 55, 4.2).degree == 1
    assert fit_psf_field(xy[:5], vals[:5], w[:5], 2, FRAME, 55, 4.2).degree == 0
    assert fit_psf_field(xy[:0], vals[:0], w[:0], 2, FRAME, 55, 4.2) is None


def test_shares_are_leverages(stars):
    """Each star's share of the field at its own position: ~K/n on average (K = 6 terms)."""
    xy, vals, w = stars
    f = fit_psf_field(xy, vals, w, 2, FRAME, 55, 4.2)
    assert f.share.mean() == pytest.approx(6 / 40, rel=0.1)
    assert (f.share > 0).all() and (f.share < 1).all()


def test_stars_without_positive_flux_give_no_field(stars):
    xy, vals, w = stars
    assert fit_psf_field(xy, -vals, w, 2, FRAME, 55, 4.2) is None
