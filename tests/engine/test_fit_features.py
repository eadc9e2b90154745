"""Bounds, priors, staged fit, single-band mode, stall flags and robustness (GalSim truth)."""
import numpy as np
import pytest

from tract7dt_mpi.engine import FitOptions, ImageData, MoffatPSF, PixelizedPSF, Source, fit_patch
from tract7dt_mpi.engine.fit import STAGES, _run_stage
from tract7dt_mpi.engine.problem import Problem

from ._truth import draw, galaxy, moffat, psf_stamp

PSF = PixelizedPSF(psf_stamp(10))
SHAPE = (32, 32)


def _star_images(x, y, fluxes=(2.0e4,), rng=None, sigma=1.0):
    rng = rng or np.random.default_rng(0)
    return [ImageData(f"b{i}", draw([(moffat().withFlux(f), x, y)], SHAPE) + rng.normal(0, sigma, SHAPE),
                      np.full(SHAPE, sigma ** -2), PSF) for i, f in enumerate(fluxes)]


def test_max_shift_bound_and_stall_flag():
    ims = _star_images(16.8, 15.0)
    free = fit_patch(ims, [Source("star", 16.0, 15.0, [1e4])]).sources[0]
    assert free.x == pytest.approx(16.8, abs=0.02) and free.stalled == []
    bound = fit_patch(ims, [Source("star", 16.0, 15.0, [1e4], max_shift=0.3)]).sources[0]
    assert bound.x == pytest.approx(16.3, abs=1e-9)
    assert "pos.x@upper" in bound.stalled and not any(s.startswith("pos.y") for s in bound.stalled)


def test_logre_lower_stall_for_a_star_fitted_as_galaxy():
    ims = _star_images(15.2, 16.1)
    r = fit_patch(ims, [Source("exp", 15.0, 16.0, [1e4], re=2.0, ab=0.9, phi_deg=0)],
                  FitOptions(n_opt_iters=40)).sources[0]
    assert r.re == pytest.approx(0.1, rel=1e-3)
    assert "shape.logre@lower" in r.stalled


def test_position_and_flux_priors_pull_towards_catalog():
    ims = _star_images(16.5, 15.0)
    nopri = fit_patch(ims, [Source("star", 16.0, 15.0, [1e4])]).sources[0]
    pri = fit_patch(ims, [Source("star", 16.0, 15.0, [1e4], pos_sigma=1e-5)]).sources[0]
    assert abs(nopri.x - 16.5) < 0.02 and abs(pri.x - 16.0) < 0.01
    fpri = fit_patch(ims, [Source("star", 16.0, 15.0, [1.5e4], flux_sigma=[0.01])]).sources[0]
    assert nopri.fluxes[0] == pytest.approx(2.0e4, rel=0.01) and fpri.fluxes[0] == pytest.approx(1.5e4, abs=5)
    assert fpri.flux_errs[0] < 0.01 + 1e-9


def test_shape_prior_holds_radius():
    rng = np.random.default_rng(1)
    clean = draw([(galaxy("exp", 3e4, 4.0, 0.6, 30.0), 20.2, 19.7)], (40, 40), psf=moffat())
    ims = [ImageData("r", clean + rng.normal(0, 1, (40, 40)), np.ones((40, 40)), PSF)]
    kw = dict(kind="exp", x=20.0, y=20.0, fluxes=[1e4], re=3.0, ab=0.6, phi_deg=30.0)
    free = fit_patch(ims, [Source(**kw)]).sources[0]
    held = fit_patch(ims, [Source(**kw, re_sigma=3e-5, ell_sigma=1e-5, theta_sigma_deg=1e-3)]).sources[0]
    assert free.re == pytest.approx(4.0, rel=0.03)
    assert held.re == pytest.approx(3.0, rel=0.003) and held.ab == pytest.approx(0.6, abs=0.003)


def test_stages_freeze_what_the_spec_says():
    rng = np.random.default_rng(2)
    clean = draw([(galaxy("exp", 3e4, 4.0, 0.6, 30.0), 20.5, 19.6)], (40, 40), psf=moffat())
    ims = [ImageData("r", clean + rng.normal(0, 1, (40, 40)), np.ones((40, 40)), PSF)]
    prob = Problem(ims, [Source("exp", 20.0, 20.0, [1e4], re=3.0, ab=0.8, phi_deg=0.0)])
    opts = FitOptions()
    p0 = [p.copy() for p in prob.p0]
    ev1, info1 = _run_stage(prob, p0, prob.F0, prob.sky0, STAGES[1], True, opts, 1)
    assert np.all(ev1.params[0][:2] == p0[0][:2]) and abs(ev1.params[0][2] - p0[0][2]) > 0.05
    ev2, info2 = _run_stage(prob, ev1.params, ev1.F, ev1.sky, STAGES[2], False, opts, 2)
    assert np.all(ev2.params[0][2:] == ev1.params[0][2:]) and np.all(ev2.F == ev1.F) and np.all(ev2.sky == ev1.sky)
    assert abs(ev2.params[0][0] - 20.5) < 0.1
    res = fit_patch(ims, prob.sources, opts)
    assert [s["stage"] for s in res.stages] == [1, 2, 3]
    assert [s["stage"] for s in fit_patch(ims, prob.sources, FitOptions(staged=False)).stages] == [0]


def test_single_band_mode_fits_bands_independently():
    rng = np.random.default_rng(4)
    ims = [_star_images(14.3, 15.0, rng=rng)[0], _star_images(15.1, 15.0, (3.0e4,), rng=rng)[0]]
    ims[1].band = "b1"
    src = [Source("star", 14.7, 15.0, [1e4, 1e4])]
    single = fit_patch(ims, src, FitOptions(multi_band=False))
    assert single.sources == [] and set(single.per_band) == {"b0", "b1"}
    assert single.per_band["b0"].sources[0].x == pytest.approx(14.3, abs=0.02)
    assert single.per_band["b1"].sources[0].x == pytest.approx(15.1, abs=0.02)
    assert single.per_band["b1"].sources[0].fluxes[0] == pytest.approx(3.0e4, rel=0.01)
    multi = fit_patch(ims, src, FitOptions())
    assert 14.35 < multi.sources[0].x < 15.05


def test_robustness_masked_offimage_negative_and_duplicate_sources():
    ims = _star_images(10.0, 10.0, (2.0e4, 1.0e4))
    ims[1].invvar[:25, :25] = 0.0                       # band 1: the source has no unmasked pixel
    srcs = [Source("star", 10.0, 10.0, [-5.0, 0.0]),
            Source("star", 10.0, 10.0, [0.0, 0.0]),     # exact duplicate -> singular flux system
            Source("exp", -40.0, 12.0, [1.0, 1.0], re=2.0, ab=0.5, phi_deg=0.0),   # entirely off the image
            Source("sersic", 31.5, 31.5, [0.0, 0.0], re=1.0, ab=1.0, phi_deg=0.0, sersic_n=9.0)]
    res = fit_patch(ims, srcs, FitOptions(n_opt_iters=5))
    tot = res.sources[0].fluxes[0] + res.sources[1].fluxes[0]
    assert tot == pytest.approx(2.0e4, rel=0.01)
    assert "b1" in res.sources[0].no_data_bands and np.isnan(res.sources[0].flux_errs[1])
    assert res.sources[2].no_data_bands == ["b0", "b1"]
    for r in res.sources:
        assert np.all(np.isfinite(r.fluxes)) and np.isfinite(r.x) and np.isfinite(r.y)
    assert np.isfinite(res.chi2) and all(np.all(np.isfinite(m)) for m in res.model_images())


def test_moffat_and_mixture_psfs_fit_galaxy():
    rng = np.random.default_rng(8)
    clean = draw([(galaxy("dev", 3e4, 3.0, 0.5, 60.0), 24.3, 23.8)], (48, 48), psf=moffat())
    for psf in (MoffatPSF(4.0, 3.5, 15),):
        ims = [ImageData("r", clean + rng.normal(0, 1, (48, 48)), np.ones((48, 48)), psf)]
        r = fit_patch(ims, [Source("dev", 24.0, 24.0, [1e4], re=2.0, ab=0.8, phi_deg=40)]).sources[0]
        assert r.fluxes[0] / clean.sum() == pytest.approx(1, abs=0.03) and r.re == pytest.approx(3.0, rel=0.08)


def _star_faint_dev_bright_exp():
    """GalSim scene: a bright star, a DEV galaxy at S/N ~ 4 19 px from it, a bright EXP galaxy."""
    rng = np.random.default_rng(4)
    shape = (48, 48)
    clean = draw([(moffat().withFlux(3e4), 14.0, 24.0)], shape) + draw(
        [(galaxy("dev", 60.0, 3.0, 0.7, 20.0), 33.0, 24.0), (galaxy("exp", 2e4, 4.0, 0.6, 30.0), 30.0, 12.0)],
        shape, psf=moffat())
    return [ImageData("r", clean + rng.normal(0, 1.0, shape), np.ones(shape), PSF)]


def test_faint_galaxy_keeps_its_shape_below_shape_min_snr():
    """A galaxy at S/N ~ 4 next to a bright star: with shape_min_snr its catalog shape is held
    (shape_fixed) and only position and flux move; a bright galaxy's shape is still fitted."""
    ims = _star_faint_dev_bright_exp()
    srcs = [Source("star", 14.0, 24.0, [1e4]), Source("dev", 33.0, 24.0, [60.0], re=3.0, ab=0.7, phi_deg=20.0),
            Source("exp", 30.0, 12.0, [1e4], re=3.0, ab=0.6, phi_deg=30.0)]
    held = fit_patch(ims, srcs, FitOptions(shape_min_snr=10.0)).sources
    assert held[1].shape_fixed and not held[0].shape_fixed and not held[2].shape_fixed
    # its position gets a 0.5 px prior around the catalog position: from a catalog position
    # 1.8 px off the truth it moves half-way; with a weak POS_ERR prior of its own, all the way
    for sig, lo, hi in [(None, 0.5, 1.5), (100.0, 2.0, 3.0)]:
        s2 = [srcs[0], Source("dev", 34.5, 25.0, [60.0], re=3.0, ab=0.7, phi_deg=20.0, pos_sigma=sig), srcs[2]]
        g = fit_patch(ims, s2, FitOptions(shape_min_snr=10.0)).sources[1]
        assert g.shape_fixed and lo < np.hypot(g.x - 34.5, g.y - 25.0) < hi, (sig, g.x, g.y)
        assert np.hypot(g.x - 33.0, g.y - 24.0) < 1.0
    assert held[1].re == pytest.approx(3.0, abs=1e-9) and held[1].ab == pytest.approx(0.7, abs=1e-9)
    assert held[2].re == pytest.approx(4.0, rel=0.05)                  # a bright shape is fitted
    assert held[0].fluxes[0] == pytest.approx(3e4, rel=0.01)
    free = fit_patch(ims, srcs, FitOptions(shape_min_snr=0.0)).sources
    assert not free[1].shape_fixed and free[1].re != pytest.approx(3.0, abs=1e-6)


def test_source_centred_outside_the_image_models_its_wings():
    """A bright star 2 px beyond the image edge: unmodelled, its wings bias the neighbour by >10 %
    (GalSim truth); as a held halo source the neighbour's flux is right to 1 %."""
    rng = np.random.default_rng(1)
    shape = (40, 40)
    psf = PixelizedPSF(psf_stamp(12))
    clean = draw([(moffat().withFlux(5e4), -2.0, 20.0), (moffat().withFlux(3e3), 20.0, 20.0)], shape)
    ims = [ImageData("r", clean + rng.normal(0, 1, shape), np.ones(shape), psf)]
    alone = fit_patch(ims, [Source("star", 20.0, 20.0, [1e3])]).sources[0]
    assert abs(alone.fluxes[0] / 3e3 - 1) > 0.1
    out = fit_patch(ims, [Source("star", 20.0, 20.0, [1e3]),
                          Source("star", -2.3, 20.0, [1e4], max_shift=0.5)]).sources
    assert out[0].fluxes[0] == pytest.approx(3e3, rel=0.01)
    assert abs(out[1].x + 2.3) <= 0.5 + 1e-9
    gal = fit_patch(ims, [Source("star", 20.0, 20.0, [1e3]),
                          Source("exp", -2.3, 20.0, [1e4], re=2.0, ab=0.8, phi_deg=0.0, max_shift=0.5,
                                 hold_shape=True)]).sources[1]
    assert gal.shape_fixed and gal.re == pytest.approx(2.0) and gal.ab == pytest.approx(0.8)


def test_re_factor_bounds_the_radius_around_the_catalog_value():
    """The S/N-4 DEV next to a star grows to ~14 px when free; re_factor=2 keeps it within [1.5, 6]."""
    ims = _star_faint_dev_bright_exp()
    kw = dict(kind="dev", x=33.0, y=24.0, fluxes=[60.0], re=3.0, ab=0.7, phi_deg=20.0)
    others = [Source("star", 14.0, 24.0, [1e4]), Source("exp", 30.0, 12.0, [1e4], re=3.0, ab=0.6, phi_deg=30.0)]
    free = fit_patch(ims, others + [Source(**kw)]).sources[2]
    assert free.re > 6.0
    bound = fit_patch(ims, others + [Source(**kw, re_factor=2.0)]).sources[2]
    assert 1.5 - 1e-6 <= bound.re <= 6.0 + 1e-6
