"""ePSF grid helpers and star-selection rules, on small GalSim-rendered cells."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.config.schema import Epsf  # noqa: E402
from tract7dt_mpi.stages.epsf import (EpsfCellInput, forced_radius, gaia_seeds_for_band,  # noqa: E402
                                      select_psf_stars)
from tract7dt_mpi.stages.epsf_cells import active_cells, cell_bounds, cell_tag  # noqa: E402

SIG = 2.0
# cutout 31 -> edge clearance need = 15 + 2 = 17 px
BASE = Epsf(psfstar_mode="sep", cutout_size=31, edge_pad=2, min_sep=30.0)


def render(stars, n=200, seed=1, sky=100.0):
    """Moffat (beta 3.5, FWHM 4) stars [(x, y, flux[, e])] on a flat sky with noise SIG, 0-based coords."""
    img = galsim.ImageD(n, n, scale=1.0)
    for st in stars:
        x, y, flux = st[:3]
        prof = galsim.Moffat(beta=3.5, fwhm=4.0).withFlux(flux)
        if len(st) > 3:
            prof = prof.shear(e=st[3], beta=0 * galsim.degrees)
        prof.drawImage(image=img, add_to_image=True, center=galsim.PositionD(x + 1, y + 1))
    return img.array + sky + np.random.default_rng(seed).normal(0, SIG, (n, n))


def inp(arr, gaia_xy=None, satur=None, saturate=np.inf, x0=0, y0=0):
    h, w = arr.shape
    return EpsfCellInput("m500", "r00_c00", x0, x0 + w, y0, y0 + h, arr, np.full(arr.shape, SIG),
                         np.zeros(arr.shape, bool), satur, saturate, 4.0, gaia_xy)


def chosen(sel):
    return sorted((round(x), round(y)) for x, y in zip(sel.x, sel.y))


# ------------------------------------------------------------------------------------ grid helpers

def test_cell_bounds_last_cell_reaches_edge():
    assert cell_bounds((100, 103), 3, 0, 0) == (0, 34, 0, 33)
    assert cell_bounds((100, 103), 3, 1, 1) == (34, 68, 33, 66)
    assert cell_bounds((100, 103), 3, 2, 2) == (68, 103, 66, 100)
    assert cell_tag(2, 11) == "r02_c11"


def test_active_cells_counts_in_frame_sources_only():
    xy = np.array([[5, 5], [99, 50], [50, 99.9], [np.nan, 3], [-1, 5], [10, 100]])
    # (x=99, y=50) -> c=2 (clipped), r=1; (50, 99.9) -> r=2 (clipped), c=1
    assert active_cells(xy, (100, 100), 3) == [(0, 0), (1, 2), (2, 1)]


def test_forced_radius_clamps():
    s = Epsf()
    assert forced_radius(4.0, 61, s) == pytest.approx(6.0)
    assert forced_radius(1.0, 61, s) == pytest.approx(3.0)      # rmin
    assert forced_radius(20.0, 61, s) == pytest.approx(15.0)    # rmax
    assert forced_radius(20.0, 21, s) == pytest.approx(8.0)     # cutout_size//2 - 2
    assert forced_radius(float("nan"), 61, s) == 3.0


def test_gaia_seeds_window_and_projection():
    from astropy.wcs import WCS
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [51.0, 51.0]          # 1-based: pixel 50 (0-based) at crval
    w.wcs.cdelt = [-0.5 / 3600, 0.5 / 3600]
    df = pd.DataFrame({"ra": [150.0] * 6, "dec": [2.0] * 6,
                       "mag_m500": [9.9, 10.0, 20.0, 30.0, 30.1, np.nan]})
    xy = gaia_seeds_for_band(df, "m500", w, Epsf())
    assert xy.shape == (3, 2)
    assert np.allclose(xy, 50.0)
    assert gaia_seeds_for_band(df, "m525", w, Epsf()).shape == (0, 2)          # no mag column
    assert gaia_seeds_for_band(df, "m500", w, Epsf(psfstar_mode="sep")).shape == (0, 2)
    assert gaia_seeds_for_band(None, "m500", w, Epsf()).shape == (0, 2)


# --------------------------------------------------------------------------------- SEP selection

def test_min_sep_and_max_stars():
    arr = render([(60, 100, 5e4), (80, 100, 2e4), (140, 140, 3e4)])
    sel, meta = select_psf_stars(inp(arr), BASE)
    assert chosen(sel) == [(60, 100), (140, 140)]
    assert sel.reasons["min_sep"] == 1 and meta["nstars_sel"] == 2
    sel, _ = select_psf_stars(inp(arr), replace(BASE, min_sep=10.0))
    assert len(sel) == 3
    sel, _ = select_psf_stars(inp(arr), replace(BASE, max_stars=1))
    assert chosen(sel) == [(60, 100)]          # highest flux first


def test_edge_clearance():
    arr = render([(12, 100, 5e4), (25, 60, 5e4), (100, 188, 5e4), (100, 100, 5e4)])
    sel, _ = select_psf_stars(inp(arr), BASE)
    assert chosen(sel) == [(25, 60), (100, 100)]
    assert sel.reasons["edge"] == 2


def test_roundness_q_range():
    arr = render([(60, 60, 5e4, 0.5), (140, 140, 5e4)])   # e=0.5 -> a/b = sqrt(3)
    sel, _ = select_psf_stars(inp(arr), BASE)
    assert chosen(sel) == [(140, 140)] and sel.reasons["roundness"] == 1
    sel, _ = select_psf_stars(inp(arr), replace(BASE, q_range=(0.5, 2.0)))
    assert len(sel) == 2


def test_saturated_stamp_and_peak_rejection():
    arr = render([(60, 60, 5e4), (140, 140, 5e4)])
    satur = np.zeros(arr.shape, bool)
    satur[60, 72] = True                                 # 12 px from the first star
    sel, _ = select_psf_stars(inp(arr, satur=satur), BASE)   # star_sat_check_r null -> 31//2 = 15
    assert chosen(sel) == [(140, 140)] and sel.reasons["saturated_stamp"] == 1
    sel, _ = select_psf_stars(inp(arr, satur=satur), replace(BASE, star_sat_check_r=5))
    assert len(sel) == 2
    # peak (bg-subtracted) ~ 0.0437 * 5e4 = 2200 > 2000 / 1.3: both rejected as saturated peaks
    sel, _ = select_psf_stars(inp(arr, saturate=2000.0), BASE)
    assert len(sel) == 0 and sel.reasons["peak_saturated"] == 2


# -------------------------------------------------------------------------------- Gaia selection

STARS = [(60, 60, 5e4), (140, 60, 3e4), (60, 140, 300.0), (140, 140, 4e4)]   # (60,140): S/N ~ 12


def test_gaia_mode_snap_snr_and_origins():
    arr = render(STARS)
    x0, y0 = 1000, 2000     # cell placed inside a larger working frame: seeds are frame coordinates
    seeds = np.array([[60.8, 59.6], [60, 140], [100, 100], [140.3, 60.0]]) + [x0, y0]
    s = replace(BASE, psfstar_mode="gaia", gaia_snr_min=20.0)
    sel, meta = select_psf_stars(inp(arr, gaia_xy=seeds, x0=x0, y0=y0), s)
    assert meta["nstars_seed"] == 4
    assert chosen(sel) == [(60, 60), (140, 60)]          # faint star and empty sky fail the S/N test
    assert sel.origin == ["both", "both"]
    assert abs(sel.x[0] - 60.0) < 0.2 and abs(sel.y[0] - 60.0) < 0.2   # snapped to the SEP centroid
    assert sel.reasons["gaia_low_snr"] == 2
    sel, _ = select_psf_stars(inp(arr, gaia_xy=seeds, x0=x0, y0=y0), replace(s, gaia_snr_min=5.0))
    origin_at = {(round(x), round(y)): o for x, y, o in zip(sel.x, sel.y, sel.origin)}
    assert origin_at[(60, 140)] == "gaia"                # too faint for SEP at thresh 10 sigma
    sel, _ = select_psf_stars(inp(arr, gaia_xy=seeds, x0=x0, y0=y0), replace(s, gaia_snap_to_sep=False))
    assert sel.x[0] == pytest.approx(60.8) and sel.origin[0] == "both"   # seen by SEP, not moved


def test_sep_plus_gaia_puts_gaia_first():
    arr = render(STARS)
    seeds = np.array([[140, 140]])
    sel, _ = select_psf_stars(inp(arr, gaia_xy=seeds), replace(BASE, psfstar_mode="sep+gaia", max_stars=2))
    assert sel.origin == ["both", "sep"]
    assert chosen(sel) == [(60, 60), (140, 140)]        # Gaia star, then the brightest SEP star
    sel, _ = select_psf_stars(inp(arr, gaia_xy=seeds), replace(BASE, psfstar_mode="sep", max_stars=2))
    assert chosen(sel) == [(60, 60), (140, 140)]          # the two highest fluxes
    assert sel.origin == ["sep", "sep"]


def test_gaia_seed_on_saturated_box_is_skipped():
    arr = render(STARS)
    seeds = np.array([[60, 60], [140, 140]])
    # raw peak ~ 100 + 0.0437*5e4 = 2285 for the first seed; threshold 2600/1.3 = 2000
    sel, _ = select_psf_stars(inp(arr, gaia_xy=seeds, saturate=2600.0), replace(BASE, psfstar_mode="gaia"))
    assert chosen(sel) == [(140, 140)] and sel.reasons["gaia_saturated"] == 1


def test_invalid_mode_falls_back():
    arr = render(STARS)
    sel, meta = select_psf_stars(inp(arr), replace(BASE, psfstar_mode="bogus"))
    assert meta["psfstar_mode"] == "sep+gaia" and len(sel) >= 2


def test_background_disabled_uses_the_image_as_is():
    stars = [(60, 60, 5e4), (140, 140, 3e4)]
    sel, meta = select_psf_stars(inp(render(stars, sky=0.0)), replace(BASE, background_subtract_patch=False))
    assert meta["patch_background"]["patch_bkg_status"] == "disabled"
    assert chosen(sel) == [(60, 60), (140, 140)]
    sel, meta = select_psf_stars(inp(render(stars, sky=0.0)), BASE)
    assert meta["patch_background"]["patch_bkg_status"] == "ok"
    assert abs(meta["patch_background"]["patch_bkg_median"]) < 0.5


def test_blends_and_resolved_sources_are_rejected():
    stars = [(50, 50, 4e4), (50, 100, 4e4), (50, 150, 4e4), (150, 50, 4e4), (150, 150, 4e4),
             (100, 100, 4e4), (109, 100, 3e4),                         # a deblended close pair
             (100, 40, 4e4), (103.5, 40, 3e4)]                         # an unresolved pair
    arr = render(stars)
    img = galsim.ImageD(200, 200, scale=1.0)                          # a round compact galaxy
    gal = galsim.Convolve(galsim.Exponential(half_light_radius=2.0, flux=6e4),
                          galsim.Moffat(beta=3.5, fwhm=4.0))
    gal.drawImage(image=img, add_to_image=True, center=galsim.PositionD(151, 101))
    sel, meta = select_psf_stars(inp(arr + img.array), BASE)
    assert chosen(sel) == [(50, 50), (50, 100), (50, 150), (150, 50), (150, 150)]
    assert sel.reasons["blended"] == 2        # each of the deblended pair: the other is too close
    assert sel.reasons["resolved"] == 2       # the unresolved pair and the galaxy: too large
    assert abs(meta["selection"]["size_locus_r50_pix"] - 2.4) < 0.4   # Moffat r50 = 2.41 px
