"""A galaxy larger than its patch, fitted in the ROI the plan gives it, against GalSim's truth."""
import galsim
import numpy as np
import pandas as pd

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch
from tract7dt_mpi.engine.profiles import total_flux_factor
from tract7dt_mpi.stages.patches import (assign_sources, build_patch_plan, grow_for_big_sources,
                                         source_extents)
from tract7dt_mpi.stage_options import plan_options

N = 600
X0 = Y0 = 300.0


def _image():
    """Sersic n = 3, Re 30 px (a patch here is 150 px, its halo 29 px), Moffat PSF, sky noise 1."""
    gal = galsim.Sersic(n=3.0, half_light_radius=30.0 * np.sqrt(0.7), flux=2e5)
    gal = gal.shear(q=0.7, beta=120 * galsim.degrees)
    img = galsim.ImageD(N, N, scale=1.0)
    galsim.Convolve(gal, galsim.Moffat(beta=3.5, fwhm=4.0)).drawImage(
        image=img, center=galsim.PositionD(X0 + 1, Y0 + 1), add_to_image=True)
    return img.array + np.random.default_rng(2).normal(0.0, 1.0, (N, N))


def _fit(data, p):
    cut = data[p.y0_roi:p.y1_roi, p.x0_roi:p.x1_roi]
    psf = galsim.Moffat(beta=3.5, fwhm=4.0).drawImage(nx=55, ny=55, scale=1.0).array
    ims = [ImageData("r", cut, np.ones(cut.shape), PixelizedPSF(psf / psf.sum()))]
    src = Source("sersic", X0 - p.x0_roi + 0.5, Y0 - p.y0_roi - 0.3, [1.5e5], re=25.0, ab=0.8,
                 phi_deg=20.0, sersic_n=2.0)
    r = fit_patch(ims, [src], FitOptions(n_opt_iters=60)).sources[0]
    return r, r.fluxes[0] * total_flux_factor("sersic", r.sersic_n) / 2e5


def test_a_galaxy_larger_than_its_patch_is_fitted_whole():
    cfg = config_from_dict({"epsf": {"epsf_ngrid": 2, "ngrid": 2, "final_psf_size": 55}})
    cat = pd.DataFrame({"_row": [0], "x_pix_white": [X0], "y_pix_white": [Y0], "Re": [30.0],
                        "TYPE": ["SERSIC"]})
    plan = assign_sources(build_patch_plan((N, N), None, plan_options(cfg)), cat, True, outer=27)
    small = next(p for p in plan if 0 in p.base_rows)
    grown, n = grow_for_big_sources(plan, source_extents(cat, 4.0), (N, N), 1536)
    big = next(p for p in grown if 0 in p.base_rows)
    assert n == 1 and big.roi_shape[0] > small.roi_shape[0]
    # the grown ROI holds the galaxy's 4 Re and the halo on every side
    assert big.x0_roi <= X0 - 149 and big.x1_roi >= X0 + 149
    assert big.y0_roi <= Y0 - 149 and big.y1_roi >= Y0 + 149
    r_big, f_big = _fit(_image(), big)
    assert r_big.converged and not r_big.stalled and not r_big.runaway
    assert abs(f_big - 1.0) < 0.01, f_big
    assert abs(r_big.sersic_n - 3.0) < 0.3 and abs(r_big.re - 30.0) < 2.0, (r_big.sersic_n, r_big.re)
