"""Flux errors of a galaxy whose profile the model cannot describe (engine ``residual_error_scale``):
a GalSim bulge + disk fitted as one exponential leaves a residual under its profile, and its flux
error grows by sqrt(reduced chi^2) of that residual; a galaxy the model describes keeps its
statistical error."""
import galsim
import numpy as np

from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch

from ._truth import draw, galaxy, moffat, psf_stamp

SHAPE = (64, 64)
PSF = PixelizedPSF(psf_stamp())


def _fit(clean, seed, scale):
    rng = np.random.default_rng(seed)
    ims = [ImageData("r", clean + rng.normal(0, 1.0, SHAPE), np.ones(SHAPE), PSF)]
    src = Source("exp", 32.0, 32.0, [3.0e4], re=3.0, ab=0.8, phi_deg=10.0)
    return fit_patch(ims, [src], FitOptions(n_opt_iters=60, residual_error_scale=scale)).sources[0]


def test_a_galaxy_the_model_describes_keeps_its_statistical_error():
    clean = draw([(galaxy("exp", 3.0e4, 3.5, 0.7, 20.0), 31.8, 32.3)], SHAPE, psf=moffat())
    same = 0
    for k in range(10):
        a, b = _fit(clean, 200 + k, True), _fit(clean, 200 + k, False)
        same += bool(np.isclose(a.flux_errs[0], b.flux_errs[0], rtol=1e-9))
    assert same >= 9           # a 3-sigma threshold: one draw in ~700 crosses it by chance


def test_a_bulge_plus_disk_fitted_as_an_exponential_gets_a_larger_error():
    bulge = galsim.DeVaucouleurs(half_light_radius=1.2, flux=1.5e4)
    disk = galsim.Exponential(half_light_radius=5.0, flux=3.0e4).shear(q=0.6, beta=20 * galsim.degrees)
    clean = draw([(bulge + disk, 31.8, 32.3)], SHAPE, psf=moffat())
    true = 4.5e4
    pulls, pulls_stat, ratios = [], [], []
    for k in range(8):
        a, b = _fit(clean, 300 + k, True), _fit(clean, 300 + k, False)
        ratios.append(a.flux_errs[0] / b.flux_errs[0])
        pulls.append((a.fluxes[0] - true) / a.flux_errs[0])
        pulls_stat.append((b.fluxes[0] - true) / b.flux_errs[0])
    assert min(ratios) > 1.3, ratios
    assert abs(np.median(pulls)) < abs(np.median(pulls_stat)) / 1.3, (pulls, pulls_stat)


def test_a_bright_galaxys_own_poisson_noise_is_not_taken_for_misfit():
    """A galaxy the model describes, bright enough that its own Poisson noise (gain 2) is ~100x the
    sky's at its peak: the flux error (sky + Poisson, flux_error_model total) matches the scatter
    of the fitted fluxes over noise draws; the residual chi^2 is measured against that same noise,
    not against the sky's alone (which inflated the error ~8x)."""
    gain = 2.0
    clean = draw([(galaxy("exp", 2.0e4, 3.0, 0.7, 20.0), 31.8, 32.3)], SHAPE, psf=moffat())
    sd = np.sqrt(1.0 + np.clip(clean, 0.0, None) / gain)
    flux, err = [], []
    for k in range(30):
        rng = np.random.default_rng(700 + k)
        ims = [ImageData("r", clean + rng.normal(0, 1.0, SHAPE) * sd, np.ones(SHAPE), PSF, gain=gain)]
        src = Source("exp", 32.0, 32.0, [1.8e4], re=2.5, ab=0.8, phi_deg=10.0)
        r = fit_patch(ims, [src], FitOptions(n_opt_iters=60)).sources[0]
        flux.append(r.fluxes[0]), err.append(r.flux_errs[0])
    # 30 draws: the sample sigma is known to ~13 %
    assert 0.75 < np.median(err) / np.std(flux, ddof=1) < 1.3, (np.median(err), np.std(flux, ddof=1))
