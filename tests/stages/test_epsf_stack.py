"""The native ePSF stack against GalSim truths: total-flux normalisation, broad wings, galaxies
among the candidates, a single star.

The figure of merit is what the fit does with the ePSF: the least-squares flux of a true star
(the GalSim PSF at unit *total* flux) with the built ePSF times its enclosed fraction, i.e. the
fitted flux over the true total flux of an isolated star.
"""
import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.config.schema import Epsf  # noqa: E402
from tract7dt_mpi.stages.epsf import EpsfCellInput, build_epsf_cell  # noqa: E402

FWHM = 4.0


def _field(psf, galaxies, n=600, seed=3, sky=100.0):
    rng = np.random.default_rng(seed)
    img = galsim.ImageD(n, n, scale=1.0)
    stars = []
    for j in range(5):
        for i in range(5):
            x, y = 70 + 115 * i + rng.uniform(-3, 3), 70 + 115 * j + rng.uniform(-3, 3)
            f = 10 ** rng.uniform(4.3, 6.0)
            stars.append((x, y, f))
            psf.withFlux(f).drawImage(image=img, add_to_image=True, center=galsim.PositionD(x + 1, y + 1))
    if galaxies:      # two bright galaxies 12-40 px from every star, as bright as the stars
        for x, y, _ in stars:
            for _ in range(2):
                d, a = rng.uniform(12, 40), rng.uniform(0, 2 * np.pi)
                prof = galsim.DeVaucouleurs if rng.uniform() < 0.5 else galsim.Exponential
                g = prof(half_light_radius=rng.uniform(2, 8), flux=10 ** rng.uniform(4.5, 6.0))
                g = g.shear(e=rng.uniform(0, 0.5), beta=rng.uniform(0, 180) * galsim.degrees)
                galsim.Convolve(g, psf).drawImage(image=img, add_to_image=True, center=galsim.PositionD(
                    x + d * np.cos(a) + 1, y + d * np.sin(a) + 1))
    data = rng.poisson(np.clip(img.array + sky, 0, None)).astype(float) - sky
    return data


def _build(data, fwhm=FWHM, **cfg):
    inp = EpsfCellInput(band="b", tag="r00_c00", x0=0, x1=data.shape[1], y0=0, y1=data.shape[0], img=data,
                        sigma_sky=np.full(data.shape, 10.0), bad=np.zeros(data.shape, bool),
                        satur=np.zeros(data.shape, bool), saturate_scaled=np.inf, fwhm_pix=fwhm, gain_scaled=1.0)
    res = build_epsf_cell(inp, Epsf(**dict({"psfstar_mode": "sep"}, **cfg)))
    assert res.meta["status"] == "ok", res.meta.get("error")
    return res


def _flux_ratio(res, psf):
    st = res.stamp.astype(float)
    truth = psf.drawImage(nx=st.shape[1], ny=st.shape[0], scale=1.0).array   # unit total, truncated
    ef = res.meta["psf_flux_in_stamp"]
    return (truth * st).sum() / (st * st).sum() / ef, truth.sum(), ef


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_moffat_fluxes_are_total_fluxes(beta):
    """A beta = 2 Moffat has 1 % of its light outside a 55 px stamp; the stamp's enclosed fraction
    is measured from the wings and the fitted flux is the total flux to 0.3 %."""
    psf = galsim.Moffat(beta=beta, fwhm=FWHM)
    res = _build(_field(psf, galaxies=False))
    ratio, ef_true, ef = _flux_ratio(res, psf)
    assert abs(ef - ef_true) < 0.002, (ef, ef_true)
    assert abs(ratio - 1.0) < 0.003, ratio
    assert res.meta["builder"]["method"] == "native_stack"
    assert res.meta["nstars_used"] >= 20


@pytest.mark.parametrize("kind,tol", [("kolmogorov", 0.0025), ("moffat", 0.0015)])
def test_sharp_psfs_give_unbiased_fluxes(kind, tol):
    """Stars of a 2.5 px FWHM PSF (Nyquist-sampled: much of its power near half the sampling rate)
    are registered onto the ePSF grid the way the fit moves the ePSF (a Fourier phase), so the
    PSF-fit flux is the total flux to 0.1-0.2 %; aligning whole stamps with Lanczos-3 instead gave
    -0.6 % (Kolmogorov) and -0.4 % (Moffat beta = 2.5)."""
    psf = galsim.Kolmogorov(fwhm=2.5) if kind == "kolmogorov" else galsim.Moffat(beta=2.5, fwhm=2.5)
    res = _build(_field(psf, galaxies=False), fwhm=2.5)
    ratio, _, _ = _flux_ratio(res, psf)
    assert abs(ratio - 1.0) < tol, ratio


def test_galaxies_among_the_candidates_are_left_out():
    """Compact galaxies as bright as the stars pass the SEP selection; the stack drops them as
    resolved and masks the neighbours' light, so the ePSF stays a PSF (flux within 2 %;
    without the classification this field gives +9 %)."""
    psf = galsim.Moffat(beta=2.0, fwhm=FWHM)
    res = _build(_field(psf, galaxies=True))
    ratio, _, _ = _flux_ratio(res, psf)
    assert abs(ratio - 1.0) < 0.02, ratio
    assert res.meta["builder"]["n_rejected"] >= 3


def test_single_star_cell_builds():
    """One star is enough for an ePSF (no clipping statistics, no classification)."""
    psf = galsim.Moffat(beta=3.0, fwhm=FWHM)
    img = galsim.ImageD(200, 200, scale=1.0)
    psf.withFlux(3e5).drawImage(image=img, add_to_image=True, center=galsim.PositionD(100.3, 99.6))
    data = img.array + np.random.default_rng(1).normal(0, 3.0, img.array.shape)
    inp = EpsfCellInput(band="b", tag="r00_c00", x0=0, x1=200, y0=0, y1=200, img=data,
                        sigma_sky=np.full(data.shape, 3.0), bad=np.zeros(data.shape, bool),
                        satur=np.zeros(data.shape, bool), saturate_scaled=np.inf, fwhm_pix=FWHM)
    for combine in ("weighted_mean", "median"):
        res = build_epsf_cell(inp, Epsf(psfstar_mode="sep", combine=combine))
        assert res.meta["status"] == "ok", res.meta.get("error")
        assert res.meta["nstars_used"] == 1
        ratio, _, _ = _flux_ratio(res, psf)
        assert abs(ratio - 1.0) < 0.01, ratio


def _stamps(psf, n=16, size=61, sky_sigma=3.0, seed=4):
    """n GalSim star stamps (size x size) at sub-pixel offsets, fluxes 2e4-2e5, Gaussian noise."""
    rng = np.random.default_rng(seed)
    c = (size - 1) // 2
    raws, centres, fluxes = [], [], []
    for _ in range(n):
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        f = rng.uniform(2e4, 2e5)
        img = psf.withFlux(f).drawImage(nx=size, ny=size, scale=1.0, offset=(dx, dy)).array
        raws.append(img + rng.normal(0.0, sky_sigma, img.shape))
        centres.append((c + dx, c + dy))
        fluxes.append(f)
    return np.array(raws), np.full((n, size, size), 1.0 / sky_sigma), centres, np.array(fluxes)


def test_stack_stops_when_converged_and_gives_the_all_passes_psf():
    """On clean stars the stack stops before N_PASSES once a pass moves it by < CONVERGED (3e-4) of its peak;
    its ePSF is the one all N_PASSES give (to that level), and both are the true PSF."""
    from tract7dt_mpi.stages.epsf_stack import CONVERGED, N_PASSES, stack_epsf

    psf = galsim.Moffat(beta=3.5, fwhm=FWHM).shear(g1=0.02, g2=0.0)
    raws, ws, centres, fluxes = _stamps(psf)
    args = (raws, ws, centres, [(0, 0)] * len(raws), range(len(raws)), None, FWHM,
            0.9 * fluxes, np.zeros(len(raws)))
    early = stack_epsf(*args)
    full = stack_epsf(*args, tol=0.0)
    assert early.info["passes"] < N_PASSES and full.info["passes"] == N_PASSES
    peak = full.psf.max()
    assert np.abs(early.psf - full.psf).max() < CONVERGED * peak
    truth = psf.drawImage(nx=61, ny=61, scale=1.0).array
    for res in (early, full):
        assert np.abs(res.psf - truth).max() < 0.005 * truth.max()
        f = np.array([st.flux for st in res.stars])
        np.testing.assert_allclose(f, fluxes, rtol=0.005)
