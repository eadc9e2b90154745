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


def _bank_vs_single_bands(stamps, kind="sersic"):
    """(rendering with all bands in one PsfBank, the same band by band with one-band banks)."""
    from tract7dt_mpi.engine.psf import PsfBank

    args = (kind, 40.3, 39.6, np.log(3.1), 0.3, -0.2, 4.5 if kind == "sersic" else np.nan)
    bank = PsfBank([PixelizedPSF(s) for s in stamps])
    from tract7dt_mpi.engine.render import param_names

    free = set(param_names(kind))
    r = render_galaxy(*args, bank, (80, 80), free)
    single = [render_galaxy(*args, PsfBank([PixelizedPSF(s)]), (80, 80), free).A[0] for s in stamps]
    return bank, r.A.astype(float), np.stack(single).astype(float)


@pytest.mark.parametrize("kind", ["exp", "dev", "sersic"])
def test_bands_sharing_psfs_render_through_an_exact_low_rank_basis(kind):
    # 8 bands, 3 distinct Moffat PSFs: the bank's basis has rank 3 and every column (model and
    # derivatives) equals the band-by-band rendering with that band's own PSF to float32 rounding
    fw = [3.6, 3.6, 3.9, 3.9, 3.9, 4.4, 4.4, 4.4]
    bank, a, b = _bank_vs_single_bands([psf_stamp(20, f) for f in fw], kind)
    sz = next(iter(bank._ft))
    assert bank.low_rank(sz, bank.EXACT_TOL)[0].shape[1] == 3
    scale = np.abs(b).max(axis=(2, 3), keepdims=True)
    assert np.abs(a - b).max() / scale.min() < 1e-5


def test_noisy_psfs_keep_exact_models_and_close_derivatives():
    # imperfect per-band ePSFs (noise 3e-4 of the peak): no float32-exact basis exists, so the model
    # column is each band's own; the derivative columns (Gauss-Newton only) come from the
    # 1e-2 basis (rank 2 here) and stay within 2 % of each column's peak of the band-by-band ones
    rng = np.random.default_rng(3)
    stamps = []
    for f in np.linspace(3.6, 4.5, 12):
        s = psf_stamp(20, f)
        s = s + rng.normal(0.0, 3e-4 * s.max(), s.shape)
        stamps.append(s / s.sum())
    bank, a, b = _bank_vs_single_bands(stamps)
    sz = next(iter(bank._ft))
    assert bank.low_rank(sz, bank.EXACT_TOL) is None
    assert bank.low_rank(sz, bank.JAC_TOL) is not None
    peak = np.abs(b).max(axis=(2, 3))
    assert (np.abs(a[:, 0] - b[:, 0]).max(axis=(1, 2)) / peak[:, 0]).max() < 1e-5
    assert (np.abs(a[:, 1:] - b[:, 1:]).max(axis=(2, 3)) / peak[:, 1:]).max() < 2e-2


def test_unrelated_psfs_get_no_basis():
    from tract7dt_mpi.engine.psf import PsfBank

    rng = np.random.default_rng(4)
    bank = PsfBank([PixelizedPSF(rng.random((15, 15)) + 0.01) for _ in range(6)])
    assert bank.low_rank(32, bank.JAC_TOL) is None
