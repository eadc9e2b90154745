"""Bright-source mask: mask white-stack detections that have no catalog counterpart.

SEP runs on the white stack with ``sigma_white`` as the per-pixel error. The detection keys,
which the original docs leave unnamed, live in the ``bright_mask`` config block:

* ``thresh_sigma`` (5.0): detection threshold in units of ``sigma_white``;
* ``minarea`` (25 px): minimum connected pixels above threshold (ignores noise peaks and
  cosmic-ray-like specks: only extended or bright blobs matter here);
* ``deblend_nthresh`` (32) and ``deblend_cont`` (0.005): SEP's deblending levels and minimum
  contrast, SEP's own defaults.

Each detection farther than ``match_radius_pix`` from every active catalog source gets a filled
ellipse of radii ``max(ellipse_scale*a, min_radius_pix)``, ``max(ellipse_scale*b,
min_radius_pix)`` and SEP's orientation; the union is dilated by ``dilate_pix``. That dilated
ellipse mask is what the fit ignores (stored in the prepared store by the caller) and what sets
``affected_by_bright_mask``; the FITS product additionally ORs the any-band saturation mask.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["build_bright_mask", "flag_affected", "run_bright_mask", "sep_detect", "ellipse_mask",
           "BrightMaskOptions"]

log = logging.getLogger("tract7dt_mpi.stages.bright_mask")

#: unmatched saturated detections, under work_dir/bright_mask/
SATURATED_CSV = "saturated_unmatched.csv"


def sep_detect(img, sigma, thresh_sigma=5.0, minarea=25, deblend_nthresh=32, deblend_cont=0.005):
    """SEP extraction on ``img`` with per-pixel ``sigma``; non-finite pixels are masked.

    Returns SEP's structured array (x, y, a, b, theta, flux, peak, npix, ...). The pixel stack
    grows and the extraction is retried when SEP reports an overflow on a large/crowded frame.
    """
    import sep
    data = np.ascontiguousarray(img, dtype=np.float32)
    err = np.ascontiguousarray(sigma, dtype=np.float32)
    bad = ~np.isfinite(data) | ~np.isfinite(err) | (err <= 0)
    if bad.any():
        data = np.where(bad, 0.0, data).astype(np.float32)
        good_err = err[~bad]
        fill = np.float32(good_err.max() * 1e6) if good_err.size else np.float32(1e30)
        err = np.where(bad, fill, err).astype(np.float32)
    if bad.all():
        return np.zeros(0, dtype=[("x", "f8"), ("y", "f8"), ("a", "f8"), ("b", "f8"), ("theta", "f8"),
                                  ("flux", "f8"), ("peak", "f8"), ("npix", "i8")])
    stack = max(1_000_000, min(data.size // 10, 20_000_000))
    sub = 4096
    for _ in range(4):
        sep.set_extract_pixstack(int(stack))
        sep.set_sub_object_limit(int(sub))
        try:
            return sep.extract(data, float(thresh_sigma), err=err, mask=bad, minarea=int(minarea),
                               deblend_nthresh=int(deblend_nthresh), deblend_cont=float(deblend_cont),
                               clean=True, clean_param=1.0)
        except Exception as exc:
            msg = str(exc).lower()
            if "pixel buffer" in msg or "pixstack" in msg:
                stack *= 4
            elif "deblend" in msg or "sub-object" in msg or "object limit" in msg:
                sub *= 8
            else:
                raise
    raise RuntimeError("SEP extraction on the white stack kept overflowing its buffers")


def ellipse_mask(shape, x, y, a, b, theta) -> np.ndarray:
    """Filled ellipses (semi-axes a, b in px, theta in rad counter-clockwise from +x) as bool."""
    mask = np.zeros(shape, dtype=bool)
    H, W = shape
    for xc, yc, aa, bb, th in zip(x, y, a, b, theta):
        r = float(max(aa, bb))
        x0, x1 = max(0, int(np.floor(xc - r))), min(W, int(np.ceil(xc + r)) + 1)
        y0, y1 = max(0, int(np.floor(yc - r))), min(H, int(np.ceil(yc + r)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx, dy = xx - xc, yy - yc
        c, s = np.cos(th), np.sin(th)
        u = dx * c + dy * s
        v = -dx * s + dy * c
        mask[y0:y1, x0:x1] |= (u / aa) ** 2 + (v / bb) ** 2 <= 1.0
    return mask


def saturated_at(satur_any, x, y, half: int = 2) -> np.ndarray:
    """True where the (2 half + 1)^2 box around (x, y) holds a pixel saturated in any band."""
    out = np.zeros(len(x), dtype=bool)
    if satur_any is None:
        return out
    h, w = satur_any.shape
    for k, (xx, yy) in enumerate(zip(x, y)):
        if not (np.isfinite(xx) and np.isfinite(yy)):
            continue
        ix, iy = int(round(xx)), int(round(yy))
        box = satur_any[max(0, iy - half):min(h, iy + half + 1), max(0, ix - half):min(w, ix + half + 1)]
        out[k] = bool(box.any())
    return out


def saturated_unmatched(det: pd.DataFrame) -> pd.DataFrame:
    """Unmatched detections with saturated pixels: bright stars the fit does not model (not in the
    catalog, or excluded by the saturation cut). Their cores are masked, but their wings reach far
    beyond the mask ellipse; the fit adds them as held point sources (``x, y`` working frame)."""
    if not len(det) or "saturated" not in det:
        return pd.DataFrame({"x": [], "y": [], "flux": []})
    um = det[~det["matched"] & det["saturated"]]
    return um[["x", "y", "flux"]].reset_index(drop=True)


def build_bright_mask(white, sigma_white, catalog_xy_active, cfg_bm, satur_any=None):
    """Return (dilated ellipse mask, detections DataFrame, info) of the white stack.

    ``catalog_xy_active``: (N, 2) working-frame (x, y) of active catalog sources.
    ``info['fits_mask']`` is the FITS product (ellipses OR ``satur_any``).
    """
    from scipy.ndimage import binary_dilation
    from scipy.spatial import cKDTree
    objs = sep_detect(white, sigma_white, cfg_bm.thresh_sigma, cfg_bm.minarea,
                      cfg_bm.deblend_nthresh, cfg_bm.deblend_cont)
    det = pd.DataFrame({k: np.asarray(objs[k], float) for k in ("x", "y", "a", "b", "theta", "flux", "peak")})
    det["npix"] = np.asarray(objs["npix"], int) if len(objs) else np.zeros(0, int)
    xy = np.asarray(catalog_xy_active, float).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    dist = np.full(len(det), np.inf)
    if len(det) and len(xy):
        dist, _ = cKDTree(xy).query(det[["x", "y"]].to_numpy(), k=1)
    det["match_dist_pix"] = dist
    det["matched"] = dist <= float(cfg_bm.match_radius_pix)
    det["saturated"] = saturated_at(satur_any, det["x"].to_numpy(), det["y"].to_numpy())
    um = det[~det["matched"]]
    scale, floor = float(cfg_bm.ellipse_scale), float(cfg_bm.min_radius_pix)
    ra = np.maximum(scale * um["a"].to_numpy(), floor)
    rb = np.maximum(scale * um["b"].to_numpy(), floor)
    det["mask_a"] = np.nan
    det["mask_b"] = np.nan
    det.loc[um.index, "mask_a"] = ra
    det.loc[um.index, "mask_b"] = rb
    mask = ellipse_mask(white.shape, um["x"].to_numpy(), um["y"].to_numpy(), ra, rb, um["theta"].to_numpy())
    nd = int(cfg_bm.dilate_pix)
    if nd > 0 and mask.any():
        mask = binary_dilation(mask, iterations=nd)
    fits_mask = mask | satur_any if satur_any is not None else mask.copy()
    info = dict(n_detections=int(len(det)), n_matched=int(det["matched"].sum()),
                n_unmatched=int((~det["matched"]).sum()), masked_fraction=float(mask.mean()) if mask.size else 0.0,
                fits_mask=fits_mask)
    return mask, det, info


def flag_affected(x, y, mask) -> np.ndarray:
    """True where the rounded (x, y) lies inside ``mask`` (positions outside the frame: False)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    H, W = mask.shape
    out = np.zeros(len(x), dtype=bool)
    ok = np.isfinite(x) & np.isfinite(y)
    xi = np.rint(x[ok]).astype(np.int64)
    yi = np.rint(y[ok]).astype(np.int64)
    inb = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    sub = np.zeros(ok.sum(), dtype=bool)
    sub[inb] = mask[yi[inb], xi[inb]]
    out[ok] = sub
    return out


@dataclass(frozen=True)
class BrightMaskOptions:
    """What the stage wrapper reads from the config (built by
    :func:`tract7dt_mpi.stage_options.bright_mask_options`): the ``bright_mask`` section and the
    work folder its products go under."""

    settings: object
    work_dir: str


def run_bright_mask(opts: BrightMaskOptions, catalog, white, sigma_white, satur_any, wcs, logger=None):
    """Stage wrapper: build the mask, flag ``affected_by_bright_mask`` and write
    ``bright_mask/white_bright_mask.fits``. Returns (catalog, mask, info); ``info['detections']``
    holds the SEP detections (for the overlay the pipeline draws); the caller stores ``mask`` with
    ``PreparedWriter.write_bright_mask``."""
    from ..io.atomic import atomic_write_text
    from ..io.fits import write_mask_fits
    logger = logger or log
    bm = opts.settings
    cat = catalog.copy()
    x = cat["x_pix_white"].to_numpy(float)
    y = cat["y_pix_white"].to_numpy(float)
    act = ~cat["excluded_any"].to_numpy(bool) if "excluded_any" in cat else np.ones(len(cat), bool)
    mask, det, info = build_bright_mask(white, sigma_white, np.column_stack([x[act], y[act]]), bm, satur_any)
    cat["affected_by_bright_mask"] = flag_affected(x, y, mask)
    info["n_affected"] = int(cat["affected_by_bright_mask"].sum())
    out_dir = os.path.join(opts.work_dir, "bright_mask")
    fits_path = os.path.join(out_dir, "white_bright_mask.fits")
    write_mask_fits(fits_path, info.pop("fits_mask"), wcs)
    info["fits_path"] = fits_path
    logger.info("Bright mask: %d SEP detection(s) (thresh_sigma=%s, minarea=%s), %d matched, %d masked; "
                "%.3f%% of pixels masked; %d catalog row(s) affected_by_bright_mask. Saved %s",
                info["n_detections"], bm.thresh_sigma, bm.minarea, info["n_matched"],
                info["n_unmatched"], 100 * info["masked_fraction"], info["n_affected"], fits_path)
    info["detections"] = det
    sat = saturated_unmatched(det)
    sat_path = os.path.join(out_dir, SATURATED_CSV)
    atomic_write_text(sat_path, sat.to_csv(index=False))
    logger.info("Bright mask: %d unmatched saturated detection(s) (bright stars not fitted) will be "
                "modelled in the patches they shine into: %s", len(sat), sat_path)
    return cat, mask, info
