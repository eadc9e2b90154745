"""The band's stellar size locus rejects compact galaxies and galaxy nuclei in cells with 1-4
candidates; cells too small for a star are reported once; a cell without a star says why."""
import logging
from dataclasses import replace

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.config.schema import Epsf  # noqa: E402
from tract7dt_mpi.stages.epsf import EpsfCellInput, build_epsf_cell, epsf_settings, select_psf_stars  # noqa: E402
from tract7dt_mpi.stages.epsf_cells import min_cell_side, too_small_cells  # noqa: E402
from tract7dt_mpi.stages.epsf_locus import SizeLocus, band_size_locus, locus_cells  # noqa: E402
from tract7dt_mpi.stages.epsf_report import failure_summary  # noqa: E402

SIG, FWHM = 2.0, 4.0
# cutout 31 -> edge clearance 17 px; cells must be >= 36 px
BASE = Epsf(psfstar_mode="sep", cutout_size=31, edge_pad=2, min_sep=30.0)
MOFFAT_R50 = 2.41    # half-light radius (px) of a Moffat beta 3.5, FWHM 4 (pixel-convolved ~2.45)


def psf():
    return galsim.Moffat(beta=3.5, fwhm=FWHM)


def field(stars=(), galaxies=(), n=200, seed=1, sky=100.0):
    """Moffat stars (x, y, flux) and PSF-convolved galaxies (x, y, flux, hlr[, nucleus flux])."""
    img = galsim.ImageD(n, n, scale=1.0)
    for x, y, f in stars:
        psf().withFlux(f).drawImage(image=img, add_to_image=True, center=galsim.PositionD(x + 1, y + 1))
    for g in galaxies:
        x, y, f, hlr = g[:4]
        prof = galsim.Convolve(galsim.Exponential(half_light_radius=hlr, flux=f), psf())
        prof.drawImage(image=img, add_to_image=True, center=galsim.PositionD(x + 1, y + 1))
        if len(g) > 4:   # a point-like nucleus
            psf().withFlux(g[4]).drawImage(image=img, add_to_image=True, center=galsim.PositionD(x + 1, y + 1))
    return img.array + sky + np.random.default_rng(seed).normal(0, SIG, (n, n))


def cell(arr, locus=None, gaia_xy=None, mode="sep"):
    h, w = arr.shape
    return EpsfCellInput("m500", "r01_c01", 0, w, 0, h, arr, np.full(arr.shape, SIG),
                         np.zeros(arr.shape, bool), None, np.inf, FWHM, gaia_xy, size_locus=locus)


def chosen(sel):
    return sorted((round(x), round(y)) for x, y in zip(sel.x, sel.y))


@pytest.fixture(scope="module")
def band_locus():
    """The locus from a 'rest of the tile' field: 9 stars and 6 compact galaxies."""
    stars = [(x, y, 3e4) for x in (40, 100, 160) for y in (40, 100, 160)]
    gals = [(x, y, 3e4, 1.5) for x, y in [(70, 70), (130, 70), (70, 130), (130, 130), (100, 70), (70, 100)]]
    arr = field(stars, gals, seed=5)
    s = epsf_settings(BASE)
    loc, n = band_size_locus([(arr, np.full(arr.shape, SIG), np.zeros(arr.shape, bool), None)], s, FWHM, np.inf)
    assert n == 1
    return loc


def test_locus_is_the_star_clump_even_when_galaxies_outnumber_the_stars():
    rng = np.random.default_rng(0)
    stars = 2.4 * (1 + 0.02 * rng.standard_normal(12))
    gals = rng.uniform(2.9, 6.0, 40)
    loc = SizeLocus.from_sizes(np.concatenate([gals, stars, [np.nan, -1.0]]))
    assert loc.r50 == pytest.approx(2.4, rel=0.03)
    assert loc.tol == pytest.approx(0.10)                # 3 x 2 % is below the 10 % floor
    assert loc.n == 52
    assert list(loc.resolved([2.5, 2.7, np.nan])) == [False, True, True]
    assert SizeLocus.from_sizes([2.4, 2.5, 2.4, 2.45]) is None       # fewer than 5


def test_band_locus_measured_on_a_galsim_field_is_the_moffat_r50(band_locus):
    assert band_locus.r50 == pytest.approx(2.45, abs=0.15)
    assert 0.10 <= band_locus.tol <= 0.30


@pytest.mark.parametrize("nucleus, disk, hlr", [(2e4, 2e4, 4.0), (3e4, 1e4, 6.0)])
def test_galaxy_nucleus_among_three_candidates_is_rejected_with_the_band_locus(band_locus, nucleus, disk, hlr):
    # two stars and a bright galaxy with a point-like nucleus: 3 candidates, no cell locus
    arr = field([(50, 50, 3e4), (150, 150, 2e4)], [(100, 100, disk, hlr, nucleus)], seed=7)
    alone, _ = select_psf_stars(cell(arr), BASE)
    assert (100, 100) in chosen(alone)                   # the old behaviour: taken as a star
    sel, meta = select_psf_stars(cell(arr, band_locus), BASE)
    assert chosen(sel) == [(50, 50), (150, 150)]
    assert meta["selection"]["rejected"]["resolved"] == 1
    assert meta["selection"]["band_size_locus_r50_pix"] == band_locus.r50


def test_compact_galaxy_as_the_only_candidate_is_rejected(band_locus):
    arr = field([], [(100, 100, 4e4, 1.5)], seed=8)
    sel, meta = select_psf_stars(cell(arr, band_locus), BASE)
    assert len(sel) == 0 and meta["selection"]["rejected"]["resolved"] == 1
    star, _ = select_psf_stars(cell(field([(100, 100, 4e4)], seed=8), band_locus), BASE)
    assert chosen(star) == [(100, 100)]                  # a single star passes


def test_gaia_seed_on_a_galaxy_nucleus_is_rejected(band_locus):
    arr = field([(50, 50, 3e4)], [(100, 100, 2e4, 4.0, 2e4)], seed=9)
    seeds = np.array([[50.0, 50.0], [100.0, 100.0]])
    sel, meta = select_psf_stars(cell(arr, band_locus, seeds), replace(BASE, psfstar_mode="gaia"))
    assert chosen(sel) == [(50, 50)]
    assert meta["selection"]["rejected"]["gaia_resolved"] == 1


def test_locus_cells_go_coarse_to_fine_under_the_pixel_cap():
    cells = [(r, c) for r in range(4) for c in range(4)]
    every = locus_cells(cells, 100, max_pix=10_000)
    assert sorted(every) == cells and every[:2] == [(0, 0), (3, 3)]    # opposite corners first
    assert locus_cells(cells, 100, max_pix=400) == every[:4]
    assert locus_cells([], 100) == []


def test_band_locus_stops_reading_cells_once_it_has_enough_candidates():
    stars = [(x, y, 3e4) for x in (40, 100, 160) for y in (40, 100, 160)]
    arr = field(stars, seed=6)
    one = (arr, np.full(arr.shape, SIG), np.zeros(arr.shape, bool), None)
    s = epsf_settings(BASE)
    read = []

    def cells():
        for k in range(5):
            read.append(k)
            yield one
    loc, n = band_size_locus(cells(), s, FWHM, np.inf, target_n=15)
    assert n == 2 and read == [0, 1] and loc.n == 18


# ------------------------------------------------------------------------------- reporting

def test_too_small_cells_are_said_once_with_the_numbers(caplog):
    s = epsf_settings(BASE)
    assert min_cell_side(s) == 36
    boxes = {(r, c): (c * 34, c * 34 + 34, r * 34, r * 34 + 34) for r in range(3) for c in range(3)}
    boxes[(0, 0)] = (0, 40, 0, 40)
    with caplog.at_level(logging.INFO):
        small = too_small_cells(boxes, s)
    assert len(small) == 8
    warn = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1
    assert "8 of 9 cells" in warn[0].getMessage() and "34x34" in warn[0].getMessage()
    assert "36 px" in warn[0].getMessage()
    # the cells' own failures stay quiet
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tract7dt_mpi"):
        res = build_epsf_cell(cell(field([(17, 17, 3e4)], n=34)), BASE)
    assert res.stamp is None and res.meta["cell_too_small"]
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_cell_without_a_star_says_why_in_one_info_line(caplog, band_locus):
    arr = field([(5, 100, 3e4)], [(100, 100, 4e4, 1.5)], seed=3)        # a star at the edge + a galaxy
    with caplog.at_level(logging.INFO, logger="tract7dt_mpi"):
        res = build_epsf_cell(cell(arr, band_locus), BASE)
    assert res.stamp is None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, lines
    assert "no usable ePSF: 2 SEP detection(s), 0 left after the cuts" in lines[0]
    assert "edge 1" in lines[0] and "resolved 1" in lines[0]
    ok = build_epsf_cell(cell(field([(60, 60, 3e4), (140, 140, 3e4)], seed=4), band_locus), BASE).meta
    summary = failure_summary([res.meta, ok, {"band": "m500", "status": "fail", "cell_too_small": True}])
    assert summary == ["ePSF m500: 1/3 cells OK; no PSF star in 1 (0 without any detection; candidates "
                       "removed by: edge 1, resolved 1); 1 too small for a star"]


def test_band_loci_reads_the_cells_through_the_prepared_store(caplog):
    from types import SimpleNamespace

    from tract7dt_mpi.stages.epsf_locus import band_loci
    arr = field([(x, y, 3e4) for x in (40, 100, 160) for y in (40, 100, 160)], seed=12)

    class Prepared:
        def band_info(self, band):
            return SimpleNamespace(fwhm_pix=FWHM, saturate_scaled=np.inf)

        def read(self, band, y0, y1, x0, x1, with_bright=False):
            sl = (slice(y0, y1), slice(x0, x1))
            z = np.zeros(arr[sl].shape, bool)
            return SimpleNamespace(img=arr[sl], sigma_sky=np.full(z.shape, SIG), nonfinite=z, saturated=z)

    s = epsf_settings(BASE)
    boxes = {(0, 0): (0, 100, 0, 200), (0, 1): (100, 200, 0, 200), (0, 2): (0, 20, 0, 20)}
    with caplog.at_level(logging.INFO, logger="tract7dt_mpi"):
        loci = band_loci(Prepared(), ["m500", "m600"], boxes, s)
    assert set(loci) == {"m500", "m600"} and loci["m500"].r50 == pytest.approx(2.45, abs=0.15)
    assert sum("stellar size locus" in r.getMessage() for r in caplog.records) == 2
    assert band_loci(Prepared(), ["m500"], {(0, 2): (0, 20, 0, 20)}, s) == {"m500": None}
    # the task path (one band per task): the cells that can hold a star, the same locus
    from tract7dt_mpi.stages.epsf_locus import band_locus, locus_cell_boxes
    use = locus_cell_boxes(boxes, s)
    assert (0, 20, 0, 20) not in use and len(use) == 2
    assert band_locus(Prepared(), "m600", use, s) == loci["m600"]


# ------------------------------------------------------------------------------- cell margins

def test_a_star_near_an_inner_cell_edge_is_used_with_the_cell_margin():
    """A 200 x 200 frame cut into a left and a right cell at x = 100: GalSim stars at x = 92 (left
    cell, 8 px from its edge, inside the 17 px clearance) and x = 108 (right cell). Read alone the
    left cell loses its star to the edge cut; read with its halo_box margin it uses it, at its
    frame position, and leaves the right cell's star to the right cell (other_cell)."""
    from tract7dt_mpi.stages.epsf_cells import halo_box
    from tract7dt_mpi.stages.epsf_report import no_star_reason
    arr = field([(92.3, 60.2, 3e4), (108.6, 140.4, 3e4)], seed=7)
    s = epsf_settings(BASE)
    left, right = (0, 100, 0, 200), (100, 200, 0, 200)

    def inp(box, read, gaia=None):
        ax0, ax1, ay0, ay1 = read
        a = arr[ay0:ay1, ax0:ax1]
        x0, x1, y0, y1 = box
        return EpsfCellInput("m500", "r00_c00", x0, x1, y0, y1, a, np.full(a.shape, SIG),
                             np.zeros(a.shape, bool), None, np.inf, FWHM, gaia, ax0=ax0, ay0=ay0)

    alone = build_epsf_cell(inp(left, left), BASE)
    assert alone.stamp is None and "edge 1" in no_star_reason(alone.meta)
    assert halo_box(left, arr.shape, s) == (0, 117, 0, 200)
    for box, x_true, y_true in ((left, 92.3, 60.2), (right, 108.6, 140.4)):
        res = build_epsf_cell(inp(box, halo_box(box, arr.shape, s)), BASE)
        assert res.meta["status"] == "ok", res.meta.get("error")
        (x, y), = res.meta["used_stars_xy"]
        assert abs(x - x_true) < 0.3 and abs(y - y_true) < 0.3
        assert res.meta["selection"]["rejected"]["other_cell"] == 1
        assert (res.meta["x0"], res.meta["x1"]) == box[:2]
    # Gaia seeds (working frame) of both stars: each cell seeds only its own
    seeds = np.array([[92.3, 60.2], [108.6, 140.4]])
    for box, x_true in ((left, 92.3), (right, 108.6)):
        res = build_epsf_cell(inp(box, halo_box(box, arr.shape, s), seeds), replace(BASE, psfstar_mode="gaia"))
        assert res.meta["nstars_seed"] == 1 and res.meta["status"] == "ok", res.meta.get("error")
        assert abs(res.meta["used_stars_xy"][0][0] - x_true) < 0.3
    with pytest.raises(ValueError, match="does not cover"):
        build_epsf_cell(inp(left, (10, 117, 0, 200)), BASE)


def test_small_inner_cells_can_hold_a_star_with_their_margin(caplog):
    """34-px cells (below the 36 px a star's cut-out and pad need) are too small alone, but in a
    102 px frame each reads a margin of the frame and none is reported; in a 34 px frame the one
    cell is."""
    s = epsf_settings(BASE)
    boxes = {(r, c): (c * 34, c * 34 + 34, r * 34, r * 34 + 34) for r in range(3) for c in range(3)}
    with caplog.at_level(logging.INFO):
        assert len(too_small_cells(boxes, s)) == 9
        assert too_small_cells(boxes, s, (102, 102)) == []
        assert too_small_cells({(0, 0): (0, 34, 0, 34)}, s, (34, 34)) == [(0, 0)]
