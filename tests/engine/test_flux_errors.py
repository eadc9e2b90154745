"""Flux errors against the scatter of fits to GalSim noise realisations of one galaxy.

A galaxy's flux is fitted together with its position, radius, axis ratio, angle (and Sersic
index); its flux error must include what those free parameters let the flux do. The truth is the
scatter of the fitted fluxes over independent noise draws of the same GalSim rendering.
"""
import numpy as np
import pytest

from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch

from ._truth import draw, galaxy, moffat, psf_stamp

N_DRAWS = 40
SHAPE = (48, 48)


def _draws(kind, n=None):
    clean = draw([(galaxy(kind, 2.0e4, 3.0, 0.7, 20.0, n=n), 23.8, 24.3)], SHAPE, psf=moffat())
    psf = PixelizedPSF(psf_stamp())
    marg, cond, flux = [], [], []
    for k in range(N_DRAWS):
        rng = np.random.default_rng(100 + k)
        ims = [ImageData("r", clean + rng.normal(0, 1.0, SHAPE), np.ones(SHAPE), psf)]
        src = Source(kind, 24.0, 24.0, [1.8e4], re=2.5, ab=0.8, phi_deg=10.0,
                     sersic_n=2.5 if kind == "sersic" else None)
        r = fit_patch(ims, [src], FitOptions(n_opt_iters=60)).sources[0]
        c = fit_patch(ims, [src], FitOptions(n_opt_iters=60, marginal_flux_errors=False)).sources[0]
        flux.append(r.fluxes[0]), marg.append(r.flux_errs[0]), cond.append(c.flux_errs[0])
    return np.array(flux), np.median(marg), np.median(cond)


@pytest.mark.parametrize("kind,n", [("exp", None), ("sersic", 2.0)])
def test_flux_errors_marginalised_over_the_shape_match_the_scatter(kind, n):
    flux, marg, cond = _draws(kind, n)
    scatter = float(np.std(flux, ddof=1))
    # 40 draws: the sample sigma is known to ~11 %
    assert 0.8 < marg / scatter < 1.25, (marg, cond, scatter)
    assert cond < 0.85 * marg, (marg, cond, scatter)


def test_flux_errors_do_not_depend_on_the_approximate_psf_basis(monkeypatch):
    # 6 bands with their own noisy PSFs (the derivative columns come from the PSF bank's 1e-2
    # basis during the fit, and the flux errors from an exact re-rendering at its end): fluxes and
    # errors equal those of a fit that never uses a basis
    from tract7dt_mpi.engine.psf import PsfBank

    rng = np.random.default_rng(7)
    ims = []
    for b, f in enumerate(np.linspace(3.6, 4.4, 6)):
        st = psf_stamp(15, fwhm=f)
        st = st + rng.normal(0.0, 3e-4 * st.max(), st.shape)
        clean = draw([(galaxy("sersic", 2.0e4, 3.0, 0.7, 20.0, n=2.0), 23.8, 24.3)], SHAPE, psf=moffat(fwhm=f))
        ims.append(ImageData(f"b{b}", clean + rng.normal(0, 1.0, SHAPE), np.ones(SHAPE), PixelizedPSF(st / st.sum())))
    src = Source("sersic", 24.0, 24.0, np.full(6, 1.8e4), re=2.5, ab=0.8, phi_deg=10.0, sersic_n=2.5)
    a = fit_patch(ims, [src], FitOptions(n_opt_iters=60)).sources[0]
    monkeypatch.setattr(PsfBank, "JAC_MAX_RANK_FRAC", 0.0)
    b = fit_patch(ims, [src], FitOptions(n_opt_iters=60)).sources[0]
    assert np.all(np.abs(a.fluxes - b.fluxes) < 0.05 * b.flux_errs)
    np.testing.assert_allclose(a.flux_errs, b.flux_errs, rtol=0.01)


def test_a_sersic_total_flux_error_carries_the_index_error():
    """The total flux c(n) F of a Sersic galaxy moves with its fitted index as well as with F: over
    noise draws of one GalSim n = 4 galaxy, the scatter of ln n matches the reported var(ln n), and
    the scatter of the total flux the reported error once the index terms are in."""
    from tract7dt_mpi.engine.profiles import total_flux_factor
    from tract7dt_mpi.stages.flux_convention import index_variance, with_index_errors

    clean = draw([(galaxy("sersic", 2.0e4, 3.0, 0.7, 20.0, n=4.0), 23.8, 24.3)], SHAPE, psf=moffat())
    psf = PixelizedPSF(psf_stamp())
    tot, lnn, err_tot, err_plain, var_n = [], [], [], [], []
    for k in range(N_DRAWS):
        rng = np.random.default_rng(300 + k)
        ims = [ImageData("r", clean + rng.normal(0, 1.0, SHAPE), np.ones(SHAPE), psf)]
        src = Source("sersic", 24.0, 24.0, [1.8e4], re=2.5, ab=0.8, phi_deg=10.0, sersic_n=3.0)
        r = fit_patch(ims, [src], FitOptions(n_opt_iters=60)).sources[0]
        assert r.lnn_cov is not None and r.lnn_cov.shape == (1, 2)
        c = total_flux_factor("sersic", r.sersic_n)
        v = index_variance("sersic", r.sersic_n, r.fluxes[0], r.lnn_cov[0], "total")
        tot.append(c * r.fluxes[0]), lnn.append(np.log(r.sersic_n))
        err_tot.append(c * with_index_errors(r.flux_errs[0], v)), err_plain.append(c * r.flux_errs[0])
        var_n.append(r.lnn_cov[0, 1])
    # 40 draws: a sample sigma is known to ~11 %
    s_n = float(np.std(lnn, ddof=1))
    assert 0.75 < np.sqrt(np.median(var_n)) / s_n < 1.3, (np.sqrt(np.median(var_n)), s_n)
    s_tot = float(np.std(tot, ddof=1))
    assert 0.8 < np.median(err_tot) / s_tot < 1.25, (np.median(err_tot), np.median(err_plain), s_tot)
    # here the index adds ~13 % to the error (var ln n ~ 1.2 %^2; the factor's slope is ~0.4)
    assert np.median(err_plain) < 0.92 * np.median(err_tot), (np.median(err_plain), np.median(err_tot))


def test_the_wing_error_is_the_flux_a_galaxy_takes_from_a_neighbour_stars_wing_error():
    """A DEV galaxy 14 px from a star 60x brighter (GalSim, Moffat beta = 2): 1 % more light in the
    star's wing (where its PSF is below 5 % of the peak) moves the galaxy's fitted flux (shape
    free) by a fifth of what ``wing_errs`` reports for a 5 % wing error, and by 1 % of the sum of
    its signed responses ``wing_resp`` to the star's inner and outer wing, to 25 % (a linear
    response); the star's own flux does not count its own wing (that is the PSF term)."""
    fwhm, shape = 4.0, (96, 96)
    psf = moffat(fwhm, 2.0)
    st = psf_stamp(30, fwhm, 2.0)
    xs, ys, xg, yg = 40.3, 47.8, 54.1, 48.4
    star = draw([(psf.withFlux(6e5), xs, ys)], shape)
    gal = draw([(galaxy("dev", 1e4, 3.0, 0.7, 30.0), xg, yg)], shape, psf=psf)
    wing = np.where(star < 0.05 * star.max(), star, 0.0)
    src = [Source("star", xs, ys, [6e5]), Source("dev", xg + 0.2, yg - 0.1, [9e3], re=2.7, ab=0.75, phi_deg=25.0)]
    opts = FitOptions(n_opt_iters=80, fit_sky=False, psf_wing_error=0.05)

    def fit(extra):
        im = ImageData("r", star + gal + extra, np.full(shape, 1.0), PixelizedPSF(st))
        return fit_patch([im], src, opts).sources
    base, moved = fit(0.0), fit(0.01 * wing)
    shift = moved[1].fluxes[0] - base[1].fluxes[0]
    # the signed responses to the stars' inner and outer wings (stages.wing_error rescales each by
    # its measured error) add up to the response to the whole wing
    assert 0.01 * base[1].wing_resp[0, :2].sum() == pytest.approx(shift, rel=0.25), (base[1].wing_resp, shift)
    assert base[1].wing_resp[0, 2] == 0.0                                       # no halo here
    assert base[1].wing_errs[0] / 5.0 == pytest.approx(abs(shift), rel=0.25), (base[1].wing_errs, shift)
    assert 0.1 < abs(base[1].wing_resp[0, 1]) / abs(base[1].wing_resp[0, :2]).sum() < 0.9   # both parts count
    assert abs(shift) > 2.0 * base[1].flux_errs[0]          # it matters here
    assert base[0].wing_errs[0] == 0.0


def test_the_wing_error_counts_a_subtracted_halo():
    """The halo of a bright star beyond the image, subtracted before the fit (``wing_light``):
    1 % more of it moves a galaxy's fitted flux by a fifth of its 5 % ``wing_errs``, to 25 %
    (sky held; a free sky takes most of such a smooth halo, and the response says so too)."""
    fwhm, shape = 4.0, (80, 80)
    psf = moffat(fwhm, 2.0)
    halo = draw([(psf.withFlux(5e7), -60.0, 35.0)], shape)
    gal = draw([(galaxy("exp", 1e4, 3.0, 0.7, 30.0), 30.2, 38.4)], shape, psf=psf)
    src = [Source("exp", 30.4, 38.3, [9e3], re=2.7, ab=0.75, phi_deg=25.0)]

    def fit(extra, sky):
        im = ImageData("r", gal + extra, np.ones(shape), PixelizedPSF(psf_stamp(20, fwhm, 2.0)), wing_light=halo)
        return fit_patch([im], src, FitOptions(n_opt_iters=80, psf_wing_error=0.05, fit_sky=sky)).sources[0]
    for sky in (False, True):
        base, moved = fit(0.0, sky), fit(0.01 * halo, sky)
        shift = moved.fluxes[0] - base.fluxes[0]
        assert base.wing_errs[0] / 5.0 == pytest.approx(abs(shift), rel=0.25, abs=0.02 * base.flux_errs[0]), \
            (sky, base.wing_errs, shift)
        assert 0.01 * base.wing_resp[0, 2] == pytest.approx(shift, rel=0.25, abs=0.02 * base.flux_errs[0])
        assert not base.wing_resp[0, :2].any()                                      # no star here
        assert (abs(shift) > 0.3 * base.flux_errs[0]) == (not sky), (sky, shift, base.flux_errs)
