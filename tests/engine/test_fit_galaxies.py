"""EXP / DEV / SERSIC galaxies rendered by GalSim, convolved with a Moffat PSF (stamp given)."""
import numpy as np
import pytest

from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch
from tract7dt_mpi.engine._tools.make_sersic_table import r_out

from ._truth import draw, galaxy, moffat, psf_stamp

CASES = [  # kind, re (semi-major px), b/a, phi, n
    ("exp", 1.5, 0.9, 20.0, None), ("exp", 4.0, 0.5, 70.0, None), ("exp", 8.0, 0.3, 135.0, None),
    ("dev", 1.2, 0.7, 10.0, None), ("dev", 3.0, 0.4, 100.0, None), ("dev", 6.0, 1.0, 0.0, None),
    ("sersic", 2.0, 0.6, 45.0, 2.5), ("sersic", 5.0, 0.8, 160.0, 1.5), ("sersic", 3.0, 0.35, 80.0, 0.7),
]


def _fit(kind, re, ab, phi, n, rng):
    size = int(2 * (min({"exp": 4, "dev": 8}.get(kind, 8) * re, 45)) + 24) | 1
    shape = (size, size)
    x, y = size // 2 + 0.37, size // 2 - 0.21
    trunc = r_out(n) - 0.5 if kind == "sersic" else None
    fluxes = [3.0e4, 6.0e4]
    cleans = [draw([(galaxy(kind, f, re, ab, phi, n=n, r_out=trunc), x, y)], shape, psf=moffat()) for f in fluxes]
    truth = [c.sum() for c in cleans]        # truncated profile: the drawn total is the true flux
    psf = PixelizedPSF(psf_stamp(15))
    ims = [ImageData(b, c + rng.normal(0, 1.0, shape), np.ones(shape), psf) for b, c in zip("gr", cleans)]
    start = Source(kind, x - 0.6, y + 0.5, [1.0, 1.0], re=re * 1.3, ab=min(1.0, ab + 0.15), phi_deg=phi + 10,
                   sersic_n=2.0 if kind == "sersic" else np.nan)
    res = fit_patch(ims, [start], FitOptions(n_opt_iters=30))
    return res.sources[0], np.array(truth)


def test_galaxies_recover_flux_size_ellipticity():
    rng = np.random.default_rng(5)
    fl = []
    for kind, re, ab, phi, n in CASES:
        r, truth = _fit(kind, re, ab, phi, n, rng)
        fl.extend(r.fluxes / truth - 1)
        assert r.re / re == pytest.approx(1, abs=0.05), (kind, re, r.re)
        assert (1 - r.ab) == pytest.approx(1 - ab, abs=0.05), (kind, ab, r.ab)
        if ab < 0.9:
            dphi = (r.phi_deg - phi + 90) % 180 - 90
            assert abs(dphi) < 5.0
        if kind == "sersic":
            assert r.sersic_n == pytest.approx(n, rel=0.15)
    assert np.median(np.abs(fl)) < 0.02, fl


def test_compact_galaxy_beside_a_star_keeps_a_real_axis_ratio():
    """A compact DEV galaxy 9 px from a star 64 times brighter, fitted with a PSF 3 % too wide:
    the star's residual makes a line (b/a ~ 1e-4) the best fit of the galaxy's shape; the
    ellipticity wall keeps it at b/a >= ~0.1."""
    rng = np.random.default_rng(0)
    shape = (61, 61)
    x, y, sx, sy = 30.3, 29.8, 21.3, 27.3
    gal = draw([(galaxy("dev", 400.0, 1.8, 0.38, 40.0), x, y)], shape, psf=moffat())
    star = draw([(moffat().withFlux(64 * 400.0), sx, sy)], shape)
    psf = PixelizedPSF(psf_stamp(15, fwhm=4.0 * 1.03))
    ims = [ImageData(b, gal + star + rng.normal(0, 1.0, shape), np.ones(shape), psf) for b in "grz"]
    srcs = [Source("dev", x + 0.3, y - 0.2, [1.0] * 3, re=1.8, ab=0.44, phi_deg=34.0),
            Source("star", sx, sy, [1.0] * 3)]
    r = fit_patch(ims, srcs, FitOptions(n_opt_iters=40)).sources[0]
    assert r.ab > 0.09
