import numpy as np
import pytest

from tract7dt_mpi.engine import HybridPSF, MoffatPSF, PixelizedPSF
from tract7dt_mpi.engine.render import render_galaxy, render_star

from ._truth import draw, galaxy, moffat, psf_stamp

FREE = {"pos.x", "pos.y", "shape.logre", "shape.ee1", "shape.ee2", "sersicindex"}


def test_galaxy_render_matches_galsim():
    # exp (lux table, truncated at 4 re) vs GalSim Sersic n=1 truncated at 4 re, both with the Moffat PSF
    x, y, re, ab, phi = 30.3, 29.6, 4.0, 0.5, 30.0
    truth = draw([(galaxy("exp", 1.0, re, ab, phi), x, y)], (61, 61), psf=moffat())
    truth /= truth.sum()      # the truncated profile has unit flux in the engine's convention
    from tract7dt_mpi.engine import catalog_shape_to_params
    r = render_galaxy("exp", x, y, *catalog_shape_to_params(re, ab, phi), np.nan, [PixelizedPSF(psf_stamp(15))],
                      (61, 61), set())
    model = np.zeros((61, 61))
    model[r.y0:r.y1, r.x0:r.x1] = r.A[0, 0]
    assert np.abs(model - truth).max() < 0.03 * truth.max()   # MoG vs exact cusp: ~1.6 %
    assert model.sum() == pytest.approx(truth.sum(), rel=0.005)


@pytest.mark.parametrize("psf", [PixelizedPSF(psf_stamp(15)), MoffatPSF(4.0, 3.5, 12), HybridPSF(psf_stamp(15), 4)],
                         ids=["pixelized", "moffat", "hybrid"])
def test_galaxy_derivatives_match_finite_differences(psf):
    p = dict(px=30.3, py=29.6, logre=np.log(3.1), ee1=0.3, ee2=-0.2, n=2.3)
    r = render_galaxy("sersic", *p.values(), [psf], (60, 60), FREE)
    for j, name in enumerate(p):
        h = 1e-3
        up, dn = dict(p), dict(p)
        up[name] += h
        dn[name] -= h
        a = render_galaxy("sersic", *up.values(), [psf], (60, 60), set()).A[0, 0].astype(float)
        b = render_galaxy("sersic", *dn.values(), [psf], (60, 60), set()).A[0, 0].astype(float)
        num = (a - b) / (2 * h)
        assert np.abs(r.A[0, 1 + j] - num).max() < 2e-3 * np.abs(num).max() + 1e-6, name


def test_star_box_is_clipped_and_unit_flux():
    psf = PixelizedPSF(psf_stamp(10))
    r = render_star(5.2, 30.0, [psf], (40, 40), {"pos.x", "pos.y"})
    assert (r.x0, r.y0) == (0, 20) and r.A.shape == (1, 3, 20, 16)
    inside = render_star(20.2, 20.0, [psf], (40, 40), set())
    assert inside.A[0, 0].sum() == pytest.approx(1.0, abs=1e-3)
