"""Bright-star cut-outs for a band's outer PSF wing (stages.psf_wing), read from the prepared store.

Runs on the rank that fits the bands' PSF fields, after the ePSF phase. The candidates are the
catalogue's stars (``TYPE`` STAR, a Gaia match, or excluded as saturated), ranked once by their
light on the white stack within 3 FWHM (saturated ones first); per band the brightest
``n_stars`` that have no brighter candidate within ``r_max`` are cut out.
"""
from __future__ import annotations

import logging

import numpy as np

from .stages.psf_poly import evaluate_field
from .stages.psf_wing import measure_wing, with_bright_wing

log = logging.getLogger(__name__)

#: candidates ranked on the white stack (per band the brightest isolated ones are used)
N_CANDIDATES = 60
#: bright stars measured per band
BRIGHT_WING_STARS = 20


def _truthy(col) -> np.ndarray:
    return col.astype(str).str.strip().str.lower().isin(("true", "1")).to_numpy()


def star_candidates(catalog, prepared, fwhm: float) -> np.ndarray:
    """(n, 2) working-frame (x, y) of the catalogue's likely stars, brightest first on the white
    stack (saturated ones first), at most ``N_CANDIDATES``."""
    if catalog is None or len(catalog) == 0 or not {"x_pix_white", "y_pix_white"} <= set(catalog.columns):
        return np.zeros((0, 2))
    star = np.zeros(len(catalog), bool)
    if "TYPE" in catalog.columns:
        star |= catalog["TYPE"].astype(str).str.strip().str.upper().eq("STAR").to_numpy()
    if "gaia_source_id" in catalog.columns:
        gid = catalog["gaia_source_id"].astype(str).str.strip()
        star |= ~gid.isin(("", "nan", "None", "<NA>")).to_numpy()
    sat = _truthy(catalog["excluded_saturation"]) if "excluded_saturation" in catalog.columns \
        else np.zeros(len(catalog), bool)
    star |= sat
    x = catalog["x_pix_white"].to_numpy(float)
    y = catalog["y_pix_white"].to_numpy(float)
    h, w = prepared.shape
    ok = star & np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x < w) & (y < h)
    idx = np.where(ok)[0]
    if idx.size == 0 or not prepared.has_white:
        return np.zeros((0, 2))
    r = max(3.0 * float(fwhm), 3.0)
    light = np.zeros(idx.size)
    for j, i in enumerate(idx):
        x0, y0 = int(x[i] - r), int(y[i] - r)
        img, _ = prepared.read_white(max(y0, 0), int(y[i] + r) + 1, max(x0, 0), int(x[i] + r) + 1)
        light[j] = np.nansum(img)
    order = np.lexsort((-light, ~sat[idx]))[:N_CANDIDATES]
    return np.stack([x[idx[order]], y[idx[order]]], axis=1)


def _cutouts(prepared, band: str, xy, r_max: float, n_stars: int, fwhm: float):
    """Up to ``n_stars`` (image, good, x, y, r_core) cut-outs of ``band`` around isolated
    candidates (no brighter candidate within ``r_max``)."""
    out, used = [], []
    R = int(np.ceil(r_max)) + 1
    for k, (x, y) in enumerate(xy):
        if len(out) >= n_stars:
            break
        if k and np.any(np.hypot(xy[:k, 0] - x, xy[:k, 1] - y) < r_max):
            continue
        ix, iy = int(round(x)), int(round(y))
        y0, x0 = max(iy - R, 0), max(ix - R, 0)
        cut = prepared.read(band, y0, iy + R + 1, x0, ix + R + 1, with_bright=False)
        bad = cut.nonfinite | cut.saturated
        cx, cy = x - x0, y - y0
        yy, xx = np.indices(bad.shape)
        rr = np.hypot(xx - cx, yy - cy)
        near = bad & (rr < 10.0 * fwhm)
        r_core = float(rr[near].max()) if near.any() else 0.0
        out.append((cut.img, ~bad, cx, cy, r_core))
        used.append((x, y))
    return out, np.asarray(used).reshape(-1, 2)


def add_bright_wing(field, prepared, band: str, xy, fwhm: float, r_max_fwhm: float, n_stars: int):
    """``field`` with its outer wing and light beyond the stamp measured on the band's bright
    stars (stages.psf_wing), or ``field`` unchanged (logged) when too few stars show one."""
    r_join = field.wings.get("wing_radius_pix") or 3.0 * fwhm
    r_max = float(min(r_max_fwhm * fwhm, 0.5 * min(prepared.shape)))
    cuts, used = _cutouts(prepared, band, np.asarray(xy, float).reshape(-1, 2), r_max, n_stars, fwhm)
    stamps = []
    for x, y in used:
        st, ef = evaluate_field(field, float(x), float(y))
        stamps.append(np.zeros((1, 1)) if st is None else np.asarray(st, float) * ef)
    wing = measure_wing(cuts, stamps, fwhm, float(r_join), r_max) if cuts else None
    if wing is None:
        log.info("ePSF %s: no bright-star wing (%d candidate stars); the field's own tail is kept",
                 band, len(cuts))
        return field
    new = with_bright_wing(field, wing)
    log.info("ePSF %s: wing r^-%.2f beyond %.0f px from %d bright stars (%d dropped), out to %.0f px; "
             "light beyond the stamp %.2f%% (field's own tail: %.2f%%)", band, wing.slope, wing.r_join,
             wing.n_stars, wing.n_rejected, wing.r_max, 100 * new.tail_beyond, 100 * field.tail_beyond)
    return new
