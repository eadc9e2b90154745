"""Bright-source mask and final-mask composition."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.stages.bright_mask import (build_bright_mask, ellipse_mask, flag_affected,
                                             run_bright_mask)
from tract7dt_mpi.masks import compose_final_mask
from tract7dt_mpi.stage_options import bright_mask_options

SHAPE = (150, 160)
UNCAT = (40.0, 50.0)   # planted bright star with no catalog row
CAT = (110.0, 100.0)   # bright star that is in the catalog


@pytest.fixture
def white(synth):
    rng = np.random.default_rng(0)
    img = synth.gaussian_image(SHAPE, [(*UNCAT, 5e4), (*CAT, 5e4)], fwhm=3.0) + rng.normal(0, 1.0, SHAPE)
    return img.astype(np.float32), np.ones(SHAPE, np.float32)


def _cfg(tmp_path, **bm):
    return config_from_dict({"outputs": {"work_dir": str(tmp_path / "w")}, "bright_mask": bm,
                             "plotting": {"dpi": 40}}, base_dir=str(tmp_path))


def test_masks_uncatalogued_star_not_catalogued(tmp_path, white):
    white, sig = white
    cfg = _cfg(tmp_path)
    mask, det, info = build_bright_mask(white, sig, np.array([CAT]), cfg.bright_mask)
    assert info["n_detections"] == 2 and info["n_matched"] == 1 and info["n_unmatched"] == 1
    assert mask[int(UNCAT[1]), int(UNCAT[0])]
    assert not mask[int(CAT[1]), int(CAT[0])]
    um = det[~det["matched"]].iloc[0]
    assert um["x"] == pytest.approx(UNCAT[0], abs=0.2) and um["y"] == pytest.approx(UNCAT[1], abs=0.2)
    # ellipse radii floored at min_radius_pix; with dilate 1 the mask reaches at least floor+1 px
    r = max(3.0 * um["a"], 6.0)
    yy, xx = np.nonzero(mask)
    assert xx.max() - UNCAT[0] >= np.floor(r) and UNCAT[0] - xx.min() >= np.floor(r)
    assert xx.max() - UNCAT[0] <= np.ceil(r) + 1 + 1e-9


def test_min_radius_floor_and_dilation(tmp_path, white):
    white, sig = white
    m_small, det, _ = build_bright_mask(white, sig, np.array([CAT]), _cfg(tmp_path, min_radius_pix=6.0,
                                                                         ellipse_scale=0.1, dilate_pix=0).bright_mask)
    # ellipse of radius 6 (floor) -> about pi*36 pixels
    assert m_small.sum() == pytest.approx(np.pi * 36, rel=0.12)
    m_dil, _, _ = build_bright_mask(white, sig, np.array([CAT]), _cfg(tmp_path, min_radius_pix=6.0,
                                                                     ellipse_scale=0.1, dilate_pix=2).bright_mask)
    assert m_dil.sum() > m_small.sum() and m_dil[m_small].all()


def test_nonfinite_white_pixels_are_ignored(tmp_path, white):
    white, sig = white
    white[:, :10] = np.nan
    sig[:, :10] = np.inf
    mask, det, info = build_bright_mask(white, sig, np.array([CAT]), _cfg(tmp_path).bright_mask)
    assert info["n_detections"] == 2


def test_ellipse_mask_geometry():
    m = ellipse_mask((101, 101), [50.0], [50.0], [20.0], [5.0], [np.pi / 6])
    assert m.sum() == pytest.approx(np.pi * 20 * 5, rel=0.03)
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    assert m[int(round(50 + 18 * s)), int(round(50 + 18 * c))]        # along the major axis
    assert not m[int(round(50 + 8 * c)), int(round(50 - 8 * s))]      # perpendicular, beyond b


def test_flag_affected_rounding_and_bounds():
    mask = np.zeros((10, 10), bool)
    mask[4, 6] = True
    got = flag_affected([6.4, 5.6, 6.0, np.nan, 20.0], [3.6, 4.0, 4.6, 4.0, 4.0], mask)
    assert list(got) == [True, True, False, False, False]


def test_run_writes_fits_and_overlay_and_flags(tmp_path, white, synth):
    white, sig = white
    cfg = _cfg(tmp_path)
    wcs = synth.make_wcs(SHAPE)
    satur = np.zeros(SHAPE, bool)
    satur[5, 150] = True
    cat = pd.DataFrame({"ID": ["cat", "near_uncat", "excl"], "x_pix_white": [CAT[0], UNCAT[0] + 5, 140.0],
                        "y_pix_white": [CAT[1], UNCAT[1], 5.0], "excluded_any": [False, False, True]})
    out, mask, info = run_bright_mask(bright_mask_options(cfg), cat, white, sig, satur, wcs)
    # near_uncat is 5 px from the uncatalogued star: beyond match radius 3, so the star is
    # masked and the row is flagged (still kept, still active)
    assert list(out["affected_by_bright_mask"]) == [False, True, False]
    fm = fits.getdata(info["fits_path"])
    assert fm.dtype == np.uint8 and fm[5, 150] == 1 and fm[int(UNCAT[1]), int(UNCAT[0])] == 1
    assert not mask[5, 150]  # the saturation part is only in the FITS product
    assert fits.getheader(info["fits_path"])["CTYPE1"] == "RA---TAN"
    from tract7dt_mpi.figures import draw_bright_mask
    draw_bright_mask(cfg, white, mask, satur, out, info)
    png = os.path.join(cfg.outputs.work_dir, "bright_mask", "white_bright_mask_overlay.png")
    assert os.path.getsize(png) > 1000


def test_compose_final_mask():
    a = np.array([[1, 0, 0, 0]], bool)
    b = np.array([[0, 1, 0, 0]], bool)
    c = np.array([[0, 0, 1, 0]], bool)
    assert compose_final_mask(a, b, c).tolist() == [[True, True, True, False]]
    assert compose_final_mask(a, b, None).tolist() == [[True, True, False, False]]
    assert compose_final_mask(a, None).tolist() == [[True, False, False, False]]
    with pytest.raises(ValueError):
        compose_final_mask(a, np.zeros((2, 2), bool))


def test_unmatched_saturated_detections_are_listed_for_the_fit(tmp_path, white):
    """Only unmatched detections with a saturated pixel near their centre become model-only stars."""
    from tract7dt_mpi.stages.bright_mask import saturated_unmatched
    white, sig = white
    satur = np.zeros(SHAPE, bool)
    satur[int(UNCAT[1]), int(UNCAT[0])] = True               # the uncatalogued star saturates
    satur[int(CAT[1]), int(CAT[0])] = True                   # so does the catalogued one (matched)
    _, det, _ = build_bright_mask(white, sig, np.array([CAT]), _cfg(tmp_path).bright_mask, satur)
    sat = saturated_unmatched(det)
    assert len(sat) == 1 and sat["x"].iloc[0] == pytest.approx(UNCAT[0], abs=0.2)
    _, det2, _ = build_bright_mask(white, sig, np.array([CAT]), _cfg(tmp_path).bright_mask, None)
    assert len(saturated_unmatched(det2)) == 0                # nothing saturated: nothing listed
