"""The fallback Moffat of a band from its own stars (stages.star_moffat) against GalSim stars of
known FWHM and beta, with saturated stars, galaxies and noise among the candidates."""
import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.stages.star_moffat import band_moffat  # noqa: E402


def _field(beta, fwhm, rng, n_stars=14, n_gal=5, size=600):
    img = galsim.ImageD(size, size, scale=1.0)
    xy = []
    for k in range(n_stars + n_gal):
        x, y = rng.uniform(30, size - 30, 2)
        if k < n_stars:
            obj = galsim.Moffat(beta=beta, fwhm=fwhm, flux=float(rng.uniform(2e4, 2e5)))
        else:
            obj = galsim.Convolve(galsim.Exponential(half_light_radius=float(rng.uniform(2.5, 5.0)),
                                                     flux=float(rng.uniform(5e4, 3e5))),
                                  galsim.Moffat(beta=beta, fwhm=fwhm))
        obj.drawImage(image=img, center=galsim.PositionD(x + 1, y + 1), add_to_image=True)
        xy.append((x, y))
    arr = img.array + 5.0 + rng.normal(0.0, 2.0, img.array.shape)
    bad = np.zeros(arr.shape, bool)
    x, y = xy[0]                       # the first star saturated: its core is flagged
    bad[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = True
    return arr, bad, np.array(xy)


@pytest.mark.parametrize("beta,fwhm", [(1.8, 3.2), (3.5, 4.5)])
def test_band_moffat_recovers_fwhm_and_beta(beta, fwhm):
    arr, bad, xy = _field(beta, fwhm, np.random.default_rng(5))
    got = band_moffat(arr, bad, xy, fwhm_guess=3.0)
    assert got is not None and got.n_stars >= 8
    assert got.fwhm == pytest.approx(fwhm, rel=0.03)
    assert got.beta == pytest.approx(beta, rel=0.08)


def test_no_stars_no_result():
    rng = np.random.default_rng(1)
    arr = rng.normal(0.0, 1.0, (200, 200))
    assert band_moffat(arr, np.zeros(arr.shape, bool), np.array([[100.0, 100.0]]), 3.0) is None


def test_the_fallback_moffat_takes_the_band_stars_fwhm_and_beta():
    from tract7dt_mpi.config.loader import default_config
    from tract7dt_mpi.io.prepared import BandInfo
    from tract7dt_mpi.stages.fit_setup import choose_psf
    cfg = default_config()
    info = BandInfo(band="g", filter="g", path="", scale=1.0, zp_auto=25.0, skysig=1.0, egain=1.0,
                    saturate=float("inf"), fwhm_pix=4.0, star_fwhm_pix=3.2, star_beta=1.8)
    psf, audit, line = choose_psf("g", None, info, cfg.patch_run, cfg.moffat_psf)
    assert audit["fallback_fwhm_pix"] == pytest.approx(3.2) and "stars" in audit["fallback_fwhm_source"]
    assert psf.beta == pytest.approx(1.8)
    no_stars = BandInfo(band="g", filter="g", path="", scale=1.0, zp_auto=25.0, skysig=1.0, egain=1.0,
                        saturate=float("inf"), fwhm_pix=4.0)
    psf, audit, _ = choose_psf("g", None, no_stars, cfg.patch_run, cfg.moffat_psf)
    assert audit["fallback_fwhm_pix"] == pytest.approx(4.0) and psf.beta == pytest.approx(cfg.moffat_psf.beta)
