"""ePSF of a patch interpolated between cell ePSFs (patch_run.epsf_interpolation)."""
import numpy as np
import pytest

from tract7dt_mpi.stages.epsf_cells import cell_tag
from tract7dt_mpi.stages.patch_inputs import PsfChoiceInput
from tract7dt_mpi.stages.psf_field import (bilinear_weights, cell_centre, interpolated_choice,
                                           patch_psf_choices)

SHAPE = (1000, 1000)     # 2 x 2 cells of 500 px: centres at 249.5 and 749.5


def gauss(sigma, size=25):
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).astype(np.float32)


def sigma_at(x):
    """A PSF width growing linearly across the frame (2.0 px at x=0, 2.4 px at x=1000)."""
    return 2.0 + 0.4 * x / 1000.0


def choices(n=2, gate_stars=20, drop=()):
    out = {}
    for r in range(n):
        for c in range(n):
            if (r, c) in drop:
                continue
            x, _ = cell_centre(SHAPE, n, r, c)
            out[cell_tag(r, c)] = {"m400": PsfChoiceInput(stamp=gauss(sigma_at(x)), nstars_used=gate_stars,
                                                          path=f"EPSFs/m400/{cell_tag(r, c)}/epsf.npy")}
    return out


def test_bilinear_weights():
    (only, w), = bilinear_weights(SHAPE, 2, 249.5, 749.5)
    assert only == (1, 0) and w == pytest.approx(1.0)
    mid = dict(bilinear_weights(SHAPE, 2, 499.5, 499.5))
    assert len(mid) == 4 and all(v == pytest.approx(0.25) for v in mid.values())
    # linear extrapolation beyond the outer centres, at most half a spacing (a patch centre is
    # never further out): at x = 124.5 (a quarter spacing out) the weights are 1.25 / -0.25
    w = dict(bilinear_weights(SHAPE, 2, 124.5, 249.5))
    assert w == {(0, 0): pytest.approx(1.25), (0, 1): pytest.approx(-0.25)}
    w = dict(bilinear_weights(SHAPE, 2, -500.0, 249.5))
    assert w == {(0, 0): pytest.approx(1.5), (0, 1): pytest.approx(-0.5)}     # capped
    w = dict(bilinear_weights(SHAPE, 2, 374.5, 249.5))                        # x a quarter of the way
    assert w == {(0, 0): pytest.approx(0.75), (0, 1): pytest.approx(0.25)}
    for x, y in [(0, 0), (600, 123), (999, 999), (250, 700)]:
        assert sum(v for _, v in bilinear_weights(SHAPE, 2, x, y)) == pytest.approx(1.0)


def test_interpolated_stamp_follows_a_psf_gradient():
    """Between cell centres the interpolated ePSF is much closer to the PSF there than the cell's."""
    ch = choices()
    x, y = 470.0, 480.0                       # in cell r00_c00, near the cells' shared corner
    got = interpolated_choice(ch, "m400", "r00_c00", SHAPE, 2, x, y, gate=2)
    truth = gauss(sigma_at(x))
    err_interp = np.abs(got.stamp - truth).max() / truth.max()
    err_cell = np.abs(ch["r00_c00"]["m400"].stamp - truth).max() / truth.max()
    assert err_interp < 0.3 * err_cell, (err_interp, err_cell)
    assert got.stamp.sum() == pytest.approx(1.0, abs=1e-5) and got.stamp.dtype == np.float32
    assert {t for t, _ in got.sources} == {"r00_c00", "r00_c01", "r01_c00", "r01_c01"}
    assert got.path == ch["r00_c00"]["m400"].path and got.nstars_used == 20


def test_extrapolated_stamp_follows_the_gradient_to_the_field_edge():
    """Near the field edge (beyond the outer cell centres) the extrapolated ePSF is closer to the
    PSF there than the outer cell's own ePSF."""
    ch = choices()
    x, y = 60.0, 500.0
    got = interpolated_choice(ch, "m400", "r00_c00", SHAPE, 2, x, y, gate=2)
    truth = gauss(sigma_at(x))
    err_extra = np.abs(got.stamp - truth).max() / truth.max()
    err_cell = np.abs(ch["r00_c00"]["m400"].stamp - truth).max() / truth.max()
    assert err_extra < 0.3 * err_cell, (err_extra, err_cell)


def test_interpolated_choice_carries_the_epsf_stars_with_weighted_shares():
    ch = choices()
    for tag in ch:
        ch[tag]["m400"] = PsfChoiceInput(stamp=ch[tag]["m400"].stamp, nstars_used=20,
                                         stars=((1.0, 2.0, 0.5), (3.0, 4.0, 0.5)))
    got = interpolated_choice(ch, "m400", "r00_c00", SHAPE, 2, 499.5, 499.5, gate=2)
    assert len(got.stars) == 8 and sum(s for _, _, s in got.stars) == pytest.approx(1.0)
    assert all(s == pytest.approx(0.125) for _, _, s in got.stars)


def test_unusable_neighbours_are_left_out_and_own_cell_rules():
    ch = choices(drop={(0, 1)})
    ch["r01_c01"]["m400"] = PsfChoiceInput(stamp=gauss(9.0), nstars_used=1)    # below the gate
    got = interpolated_choice(ch, "m400", "r00_c00", SHAPE, 2, 499.5, 499.5, gate=2)
    assert {t for t, _ in got.sources} == {"r00_c00", "r01_c00"}
    # the left column has one width: the result is that width, unaffected by the rejected cell
    assert np.allclose(got.stamp, ch["r00_c00"]["m400"].stamp, atol=1e-6)
    # an own cell below the gate takes the nearest usable cells of the band (here only r01_c00)
    ch["r00_c00"]["m400"] = PsfChoiceInput(stamp=gauss(2.0), nstars_used=1)
    near = interpolated_choice(ch, "m400", "r00_c00", SHAPE, 2, 499.5, 499.5, gate=2)
    assert {t for t, _ in near.sources} == {"r01_c00"} and near.note
    assert np.allclose(near.stamp, ch["r01_c00"]["m400"].stamp, atol=1e-6)
    # a band without any usable ePSF keeps its own choice, so the fitter's fallback and reason apply
    ch["r01_c00"]["m400"] = PsfChoiceInput(stamp=gauss(2.0), nstars_used=1)
    own = interpolated_choice(ch, "m400", "r00_c00", SHAPE, 2, 499.5, 499.5, gate=2)
    assert own is ch["r00_c00"]["m400"]


def test_cell_without_epsf_takes_the_nearest_cells_weighted_by_distance():
    """3 x 3 cells, the centre one empty: its patches get the mean of the 4 nearest cells (the
    edge-centre cells, equidistant), whose width is the PSF width at the centre of the frame."""
    shape = (900, 900)
    ch = {}
    for r in range(3):
        for c in range(3):
            if (r, c) == (1, 1):
                continue
            x, _ = cell_centre(shape, 3, r, c)
            ch[cell_tag(r, c)] = {"m400": PsfChoiceInput(stamp=gauss(sigma_at(x)), nstars_used=10,
                                                         flux_in_stamp=0.99)}
    got = interpolated_choice(ch, "m400", "r01_c01", shape, 3, 449.5, 449.5, gate=2)
    assert {t for t, _ in got.sources} == {"r00_c01", "r01_c00", "r01_c02", "r02_c01"}
    assert all(w == pytest.approx(got.sources[0][1]) for _, w in got.sources)
    assert got.flux_in_stamp == pytest.approx(0.99) and got.nstars_used == 40
    truth = gauss(sigma_at(449.5))
    assert np.abs(got.stamp - truth).max() / truth.max() < 0.02


def test_patch_choices_modes():
    class Spec:
        epsf_tag, x0_base, x1_base, y0_base, y1_base = "r00_c00", 400, 500, 400, 500
    ch = choices()
    assert patch_psf_choices(ch, Spec, SHAPE, 2, 2, "cell") is ch["r00_c00"]
    got = patch_psf_choices(ch, Spec, SHAPE, 2, 2, "bilinear")
    assert set(got) == {"m400"} and got["m400"].sources


def test_position_scale_gives_the_total_flux_of_a_star_whose_psf_differs_from_the_patch_stamp():
    # the patch stamp has FWHM 4.0 px, the star's own PSF 4.1 px (a 2.5 % gradient across a patch
    # is extreme; real ones are a few tenths of a per cent): the fit with the patch stamp is ~2 %
    # off, times position_scale it is the total flux
    import galsim

    from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch
    from tract7dt_mpi.stages.psf_field import position_scale

    def stamp(fwhm, n=55):
        a = galsim.Moffat(beta=2.5, fwhm=fwhm).drawImage(nx=n, ny=n, scale=1.0).array
        return a / a.sum(), float(a.sum())

    st_c, ef_c = stamp(4.0)
    st_s, ef_s = stamp(4.1)
    img = galsim.Moffat(beta=2.5, fwhm=4.1).withFlux(1e6).drawImage(nx=81, ny=81, scale=1.0).array
    r = fit_patch([ImageData("r", img, np.ones(img.shape), PixelizedPSF(st_c))],
                  [Source("star", 40.0, 40.0, [9e5])], FitOptions(fit_sky=False)).sources[0]
    total = r.fluxes[0] / ef_c
    assert abs(total / 1e6 - 1) > 0.01
    shape, norm = position_scale(st_c, ef_c, st_s, ef_s)
    assert total * shape * norm / 1e6 == pytest.approx(1.0, abs=2e-4)
