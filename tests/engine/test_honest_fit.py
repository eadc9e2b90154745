"""Sky choice (free, held at 0, Gaussian prior), faint-source positions and honest convergence
(sources on a bound or with a runaway model are not converged), on GalSim scenes."""
import galsim
import numpy as np
import pytest

from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch

from ._truth import draw, galaxy, moffat, psf_stamp

PSF = PixelizedPSF(psf_stamp(15))


def _image(clean, sigma, seed, invvar=None, band="r"):
    rng = np.random.default_rng(seed)
    iv = np.full(clean.shape, sigma ** -2) if invvar is None else invvar
    return ImageData(band, clean + rng.normal(0, sigma, clean.shape), iv, PSF)


# ------------------------------------------------------------------------------------------ sky

def test_held_sky_stays_zero_and_the_prior_pulls_with_its_analytic_weight():
    # a constant sky c with noise and one star whose whole footprint is masked: its flux is pinned,
    # so the sky alone meets the data: flat -> mean, prior N(0, sp) -> sum(w d) / (sum(w) + 1/sp^2)
    shape, sigma, c = (48, 48), 2.0, 3.0
    iv = np.full(shape, sigma ** -2)
    iv[8:40, 8:40] = 0.0
    data = _image(np.full(shape, c), sigma, 1, iv).data
    src = [Source("star", 24.0, 24.0, [100.0])]
    w, d = iv, data
    flat = float((w * d).sum() / w.sum())
    sp = 0.05
    prior = float((w * d).sum() / (w.sum() + sp ** -2))
    assert abs(prior - flat) > 0.2 * flat      # the prior matters at this width
    r_fit = fit_patch([ImageData("r", data, iv, PSF)], src, FitOptions())
    r_pri = fit_patch([ImageData("r", data, iv, PSF, sky_sigma=sp)], src, FitOptions())
    r_zero = fit_patch([ImageData("r", data, iv, PSF, sky_sigma=sp)], src, FitOptions(fit_sky=False))
    assert r_fit.sky[0] == pytest.approx(flat, rel=1e-6)
    assert r_pri.sky[0] == pytest.approx(prior, rel=1e-6)
    assert r_zero.sky[0] == 0.0
    # ln p carries the prior term
    assert r_pri.lnp == pytest.approx(-0.5 * r_pri.chi2 - 0.5 * prior ** 2 / sp ** 2, rel=1e-9)


def test_sky_held_at_zero_keeps_the_light_of_a_big_galaxy_that_a_fitted_sky_takes():
    # sky-subtracted image of a big two-component galaxy (not exactly a Sersic): a fitted sky
    # soaks up its outskirts; held at 0 the flux comes back
    shape = (96, 96)
    g = [(galsim.Exponential(half_light_radius=6.0, flux=6e4), 48, 48),
         (galsim.Exponential(half_light_radius=20.0, flux=4e4), 48, 48)]
    clean = draw(g, shape, psf=moffat())
    im = _image(clean, 2.0, 1)
    truth = 1e5
    src = [Source("sersic", 48.3, 47.8, [5e4], re=8.0, ab=0.9, phi_deg=0.0, sersic_n=2.0)]
    fit = fit_patch([im], src, FitOptions(fit_sky=True))
    zero = fit_patch([im], src, FitOptions(fit_sky=False))
    assert fit.sky[0] > 0.5                       # the sky took part of the galaxy
    assert zero.sky[0] == 0.0
    err_fit = abs(fit.sources[0].fluxes[0] / truth - 1)
    err_zero = abs(zero.sources[0].fluxes[0] / truth - 1)
    assert err_zero < 0.7 * err_fit, (err_zero, err_fit)
    assert err_zero < 0.12


# ------------------------------------------------------------------------------- faint sources

def test_faint_star_is_held_at_its_catalog_position_instead_of_walking_to_its_box_edge():
    # S/N ~ 1 star at (32, 32); an uncatalogued brighter star 5 px away pulls a free position
    shape = (64, 64)
    clean = draw([(moffat().withFlux(300.0), 37, 32), (moffat().withFlux(10.0), 32, 32)], shape)
    im = _image(clean, 1.0, 0)
    src = [Source("star", 32.0, 32.0, [10.0], max_shift=3.0)]
    free = fit_patch([im], src, FitOptions()).sources[0]
    assert free.x == pytest.approx(35.0) and "pos.x@upper" in free.stalled
    assert not free.converged                     # on its bound: not converged
    held = fit_patch([im], src, FitOptions(pos_min_snr=3.0)).sources[0]
    assert held.pos_held and (held.x, held.y) == (32.0, 32.0)
    assert held.converged and not held.stalled
    # a bright star is not held
    bright = fit_patch([im], [Source("star", 36.6, 32.3, [300.0], max_shift=3.0)],
                       FitOptions(pos_min_snr=3.0)).sources[0]
    assert not bright.pos_held and abs(bright.x - 37.0) < 0.5


# ------------------------------------------------------------------------------ convergence

def test_source_ending_on_its_position_bound_is_not_converged():
    shape = (64, 64)
    im = _image(draw([(moffat().withFlux(5e3), 30.0, 30.0)], shape), 1.0, 2)
    r = fit_patch([im], [Source("star", 33.0, 30.0, [5e3], max_shift=1.0)], FitOptions())
    s = r.sources[0]
    assert s.x == pytest.approx(32.0) and s.stalled == ["pos.x@lower"]
    assert not s.converged


def test_runaway_galaxy_is_not_converged():
    # a small galaxy on a wide diffuse sheet, sky held at 0: the model grows to swallow the sheet
    shape = (80, 80)
    clean = draw([(galsim.Gaussian(sigma=25.0, flux=3e5), 40, 40)], shape) + \
        draw([(galaxy("exp", 3e3, 2.0, 0.8, 0.0), 40, 40)], shape, psf=moffat())
    im = _image(clean, 1.0, 2)
    src = [Source("exp", 40.2, 39.9, [3e3], re=2.0, ab=0.8, phi_deg=0.0)]
    r = fit_patch([im], src, FitOptions(fit_sky=False, shape_fallback=False))
    s = r.sources[0]
    assert s.re > 10.0
    assert "re>5xstart" in s.runaway and "flux>3xaperture:r" in s.runaway
    assert not s.converged and not s.shape_fallback
    # by default such a galaxy is refitted with its catalog shape held: flagged, and its flux no
    # longer the sheet's (the sheet adds ~9 counts/px under the galaxy's core)
    fb = fit_patch([im], src, FitOptions(fit_sky=False)).sources[0]
    assert fb.shape_fallback and fb.shape_fixed
    assert fb.re == pytest.approx(2.0) and fb.ab == pytest.approx(0.8)
    assert "re>5xstart" not in fb.runaway
    assert fb.fluxes[0] < 0.2 * s.fluxes[0]


def test_shape_fallback_holds_a_neighbour_that_runs_away_in_the_refit(monkeypatch):
    # galaxy A swallows a wide sheet; refitted with A's shape held, the sheet is free for B, 15 px
    # off, which then grows in its turn: a second fallback round holds B as well
    from tract7dt_mpi.engine import fit as engine_fit

    shape = (96, 96)
    clean = draw([(galsim.Gaussian(sigma=25.0, flux=3e5), 45, 45)], shape) + \
        draw([(galaxy("exp", 3e3, 2.0, 0.8, 0.0), 45, 45), (galaxy("exp", 2e4, 2.0, 0.8, 0.0), 70, 45)],
             shape, psf=moffat())
    im = _image(clean, 1.0, 2)
    src = [Source("exp", 45.2, 44.9, [3e3], re=2.0, ab=0.8, phi_deg=0.0),
           Source("exp", 70.1, 45.1, [2e4], re=2.0, ab=0.8, phi_deg=0.0)]
    monkeypatch.setattr(engine_fit, "FALLBACK_ROUNDS", 1)
    one = fit_patch([im], src, FitOptions(fit_sky=False)).sources
    assert one[0].shape_fallback and not one[1].shape_fallback and one[1].re > 10.0
    monkeypatch.setattr(engine_fit, "FALLBACK_ROUNDS", 3)
    r = fit_patch([im], src, FitOptions(fit_sky=False))
    assert [s.shape_fallback for s in r.sources] == [True, True]
    assert [s.re for s in r.sources] == [pytest.approx(2.0), pytest.approx(2.0)]
    assert all(s.converged and not s.runaway for s in r.sources)
    assert [st.get("shape_fallback") for st in r.stages][-2:] == [1, 1]


def test_significantly_negative_flux_is_a_runaway():
    # a faint star next to a bright one fitted with a 5 % too wide PSF: the faint model subtracts
    # the bright star's residual (large negative flux, even with its position held)
    shape = (64, 64)
    clean = draw([(moffat().withFlux(2e4), 38, 32), (moffat().withFlux(15.0), 32, 32)], shape)
    rng = np.random.default_rng(0)
    im = ImageData("r", clean + rng.normal(0, 1.0, shape), np.ones(shape),
                   PixelizedPSF(psf_stamp(15, fwhm=4.2)))
    src = [Source("star", 38, 32, [2e4], max_shift=3.0), Source("star", 32, 32, [15.0], max_shift=3.0)]
    s = fit_patch([im], src, FitOptions(pos_min_snr=3.0)).sources[1]
    assert s.pos_held and s.fluxes[0] < -5 * s.flux_errs[0]
    assert s.runaway == ["flux<-5sigma:r"] and not s.converged


def test_good_fit_has_no_runaway():
    shape = (64, 64)
    clean = draw([(moffat().withFlux(3e3), 30.2, 31.7)], shape) + \
        draw([(galaxy("exp", 5e3, 3.0, 0.7, 20.0), 40.0, 25.0)], shape, psf=moffat())
    im = _image(clean, 1.0, 5)
    r = fit_patch([im], [Source("star", 30.0, 32.0, [2e3], max_shift=3.0),
                         Source("exp", 40.3, 25.2, [4e3], re=2.5, ab=0.8, phi_deg=0.0, max_shift=3.0)],
                  FitOptions())
    assert all(s.converged and not s.runaway and not s.stalled for s in r.sources)


def test_no_improving_step_from_a_non_optimal_start_is_a_stall_not_convergence(monkeypatch):
    # the real-data case "stopped at iteration 0 with dlnp = 0": force every damped step to fail
    import tract7dt_mpi.engine.fit as F
    monkeypatch.setattr(F, "_try_step", lambda prob, ev, sy, H, g, lam, nu, *a: (None, 0.0, lam, nu))
    shape = (48, 48)
    im = _image(draw([(moffat().withFlux(5e3), 24.0, 24.0)], shape), 1.0, 3)
    off = fit_patch([im], [Source("star", 25.0, 24.0, [5e3])], FitOptions(staged=False))
    assert not off.converged and off.stages[-1]["stop_reason"].startswith("stalled")
    assert off.last_dlnp == 0.0 and not off.sources[0].converged
    # from the optimum (found without the patch) there is nothing left to gain: convergence
    monkeypatch.undo()
    ref = fit_patch([im], [Source("star", 25.0, 24.0, [5e3])], FitOptions(staged=False)).sources[0]
    monkeypatch.setattr(F, "_try_step", lambda prob, ev, sy, H, g, lam, nu, *a: (None, 0.0, lam, nu))
    best = fit_patch([im], [Source("star", ref.x, ref.y, ref.fluxes)], FitOptions(staged=False))
    assert best.converged and best.sources[0].converged


def test_a_sersic_index_at_its_upper_bound_is_refitted_with_the_index_held_and_its_size_free():
    # a noise-free untruncated n = 6 galaxy: its free index runs to the table's bound 6.3. The
    # refit holds n at 4 and keeps the size free: it moves from the start's 1.3x the true size
    # (a refit with the whole start shape held would keep that) to the n = 4 law's 0.8x
    from tract7dt_mpi.engine import fit as engine_fit

    re, fwhm = 3.2, 4.0
    psf = galsim.Moffat(beta=3.0, fwhm=fwhm)
    st = psf.drawImage(nx=55, ny=55, scale=1.0).array
    img = galsim.Convolve(galaxy("sersic", 1.0, re, 0.8, 20.0, n=6.0), psf).drawImage(
        nx=161, ny=161, scale=1.0, offset=(0.2, -0.3)).array
    im = ImageData("r", img * 1e6, np.ones(img.shape), PixelizedPSF(st / st.sum()))
    src = [Source("sersic", 80.2, 79.7, [0.9e6], re=1.3 * re, ab=0.9, phi_deg=10.0, sersic_n=3.0)]
    free = fit_patch([im], src, FitOptions(fit_sky=False, shape_fallback=False)).sources[0]
    assert free.stalled == ["sersicindex@upper"] and not free.converged
    r = fit_patch([im], src, FitOptions(fit_sky=False)).sources[0]
    assert r.shape_fallback and not r.shape_fixed
    assert r.sersic_n == pytest.approx(engine_fit.FALLBACK_INDEX)
    assert r.re == pytest.approx(re, rel=0.25) and r.re < re, r.re
    assert r.ab == pytest.approx(0.8, abs=0.05) and r.converged
