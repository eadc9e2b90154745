"""Point source or galaxy for untyped rows, on GalSim scenes (engine fits, truth known)."""
import sys
from pathlib import Path

import galsim
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _truth import draw, moffat, psf_stamp  # noqa: E402

from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch  # noqa: E402
from tract7dt_mpi.stages.model_select import select_point_sources, untyped_rows  # noqa: E402


def _scene(rng):
    shape = (90, 90)
    star = galsim.DeltaFunction(flux=4e4)          # drawn convolved with the PSF
    gal = galsim.Exponential(half_light_radius=1.6, flux=4e4).shear(q=0.6, beta=30 * galsim.degrees)
    objs = [(star, 25.3, 30.2), (gal, 62.4, 58.7)]
    ims = []
    for b in "gr":
        clean = draw(objs, shape, psf=moffat())
        ims.append(ImageData(b, clean + rng.normal(0, 2.0, shape), np.full(shape, 0.25), PixelizedPSF(psf_stamp(15))))
    # both untyped: fitted as EXP first
    srcs = [Source("exp", 25.0, 30.0, [3e4, 3e4], re=2.0, ab=0.8), Source("exp", 62.0, 59.0, [3e4, 3e4], re=2.0, ab=0.8)]
    return ims, srcs


def test_star_becomes_a_point_source_and_the_galaxy_stays():
    ims, srcs = _scene(np.random.default_rng(3))
    opts = FitOptions(n_opt_iters=30)
    res = fit_patch(ims, srcs, opts)
    srcs2, res2, tried = select_point_sources(fit_patch, ims, srcs, res, opts, [0, 1], 4.0, 9.0)
    assert res2.sources[0].kind == "star" and tried[0] < 9.0
    assert res2.sources[1].kind == "exp"
    assert tried.get(1, 1e9) > 9.0          # a resolved galaxy: chi^2 strongly prefers it
    assert abs(res2.sources[0].fluxes[0] / 4e4 - 1) < 0.01
    assert res2.sources[0].converged


def test_untyped_rows():
    import pandas as pd
    cat = pd.DataFrame({"TYPE": ["STAR", "", None, "exp", "QSO", np.nan]})
    assert untyped_rows(cat, "TYPE", {"STAR", "EXP", "DEV", "SERSIC"}).tolist() == [False, True, True, False, True, True]
    assert untyped_rows(cat, None, {"STAR"}).all()
