"""ePSF star selection for one cell: cell background, SEP candidates, Gaia seeds.

Everything here works in cell-local pixel coordinates (0-based, x = column, y = row) on the cell's
own arrays, so the result depends only on those arrays and the settings (deterministic, rank-free).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import sep
from scipy import ndimage

from .epsf_cells import star_margin

log = logging.getLogger(__name__)

# SEP limits: generous pixel stack and sub-object limit for crowded cells.
SEP_PIXSTACK = 1_000_000
SEP_SUB_OBJECT_LIMIT = 200_000
STELLAR_LOCUS_TOL = 0.10   # candidates with half-flux radius > 1.10 x the median are not stars

ORIGIN_SEP, ORIGIN_GAIA, ORIGIN_BOTH = "sep", "gaia", "both"


def _c64(a) -> np.ndarray:
    """Native-endian, C-contiguous float64 copy-if-needed (what SEP accepts)."""
    return np.ascontiguousarray(a, dtype=np.float64)


def set_sep_limits() -> None:
    """Raise SEP's extraction limits to the serial pipeline's values (idempotent, process-wide)."""
    sep.set_extract_pixstack(SEP_PIXSTACK)
    if hasattr(sep, "set_sub_object_limit"):
        sep.set_sub_object_limit(SEP_SUB_OBJECT_LIMIT)


# --------------------------------------------------------------------------------------- background

@dataclass
class CellBackground:
    """Result of the optional per-cell SEP background fit."""

    work: np.ndarray                  # image the selection and the builder use (img - back, or img)
    back: np.ndarray | None = None    # background map (None if disabled or failed)
    stats: dict = field(default_factory=dict)   # the meta ``patch_background`` record


#: a cell's thresholds and summary statistics (medians) use every k-th pixel once it has more
#: than this many: a median of 250,000 values is known to ~0.3 % of the spread
MEDIAN_SAMPLE = 250_000


def sampled_median(a, mask=None) -> float:
    """Median of ``a`` (where ``mask``) over every k-th pixel, k = size // MEDIAN_SAMPLE (at least
    1): a full median of a 2 Mpx cell costs as much as its SEP background."""
    k = max(1, np.size(a) // MEDIAN_SAMPLE)
    v = np.ravel(a)[::k]
    if mask is not None:
        v = v[np.ravel(mask)[::k]]
        if v.size < MEDIAN_SAMPLE // 100:       # few usable pixels: take them all
            v = np.asarray(a)[np.asarray(mask, bool)]
    return float(np.median(v))


def bkg_stats(status, back=None, rms=None, mask_frac=float("nan"), error=None) -> dict:
    nan = float("nan")
    out = {
        "patch_bkg_median": sampled_median(back) if back is not None else nan,
        "patch_bkg_mean": float(np.mean(back)) if back is not None else nan,
        "patch_bkg_rms_median": sampled_median(rms) if rms is not None else nan,
        "patch_bkg_rms_mean": float(np.mean(rms)) if rms is not None else nan,
        "patch_bkg_mask_frac": float(mask_frac),
        "patch_bkg_status": status,
    }
    if error is not None:
        out["patch_bkg_error"] = error
    return out


def cell_background(img, sigma, bad, s) -> CellBackground:
    """Fit and subtract a SEP background map with bright pixels masked.

    Source mask: good pixels above median(img) + k * median(sigma), dilated ``background_mask_dilate``
    times with a 3x3 (8-connected) element. On any SEP error the image is returned unchanged.
    """
    img = np.asarray(img, dtype=np.float64)
    if not s.background_subtract_patch:
        return CellBackground(work=img, stats=bkg_stats("disabled"))
    try:
        good = ~bad & np.isfinite(img)
        if not good.any():
            raise ValueError("no valid pixel in the cell")
        sig_ok = good & np.isfinite(sigma)
        sig_med = sampled_median(sigma, sig_ok) if sig_ok.any() else 0.0
        src = good & (img > sampled_median(img, good) + s.background_source_mask_sigma * sig_med)
        if s.background_mask_dilate > 0 and src.any():
            # k 8-connected dilations = a (2k+1)^2 maximum filter (one separable pass)
            k = int(s.background_mask_dilate)
            src = ndimage.maximum_filter(src.view(np.uint8), size=2 * k + 1, mode="constant").view(bool)
        mask = ~good | src
        box = max(8, int(s.background_boxsize))
        filt = max(1, int(s.background_filtersize))
        data = _c64(np.where(good, img, 0.0))
        bkg = sep.Background(data, mask=np.ascontiguousarray(mask), bw=box, bh=box, fw=filt, fh=filt)
        back = bkg.back()
        rms = bkg.rms()
        work = np.where(good, img - back, 0.0)
        return CellBackground(work=work, back=back,
                              stats=bkg_stats("ok", back, rms, float(mask.mean())))
    except Exception as exc:  # SEP raises plain Exceptions for degenerate cells
        log.warning("cell background fit failed (%s); using the image unchanged", exc)
        return CellBackground(work=img, stats=bkg_stats("error", error=str(exc)))


# --------------------------------------------------------------------------------------- candidates

@dataclass
class Candidates:
    """SEP detections of one cell (all of them) and the indices that pass the star cuts."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    peak: np.ndarray
    score: np.ndarray
    ok: np.ndarray          # indices passing edge/peak/roundness/saturated-stamp cuts, best score first
    reasons: dict           # rejection counts by reason
    seg: np.ndarray | None = None   # SEP segmentation map of the cell (object i has label i + 1)
    size_locus: float = float("nan")  # median half-flux radius of the kept candidates (px)
    r50: np.ndarray | None = None     # half-flux radius per detection (px; nan = not measured)
    band_locus: object = None         # the band's stellar locus (epsf_locus.SizeLocus) or None

    def too_big(self, r) -> np.ndarray:
        """True where a half-flux radius lies above the cell's locus (when it has one) or the
        band's; an unmeasured (nan) radius counts as too big only when there is a locus."""
        r = np.asarray(r, float)
        out = np.zeros(r.shape, bool)
        if np.isfinite(self.size_locus):
            out |= ~(r <= self.size_locus * (1.0 + STELLAR_LOCUS_TOL))
        if self.band_locus is not None:
            out |= self.band_locus.resolved(r)
        return out

    @classmethod
    def empty(cls, shape=None) -> "Candidates":
        z = np.zeros(0)
        seg = np.zeros(shape, np.int32) if shape is not None else None
        return cls(z, z, z, z, z, z, np.zeros(0, int), {}, seg)

    def label_at(self, x, y) -> int:
        """Segment label under the rounded position (0 = no detected object there)."""
        if self.seg is None:
            return 0
        h, w = self.seg.shape
        ix, iy = int(np.rint(x)), int(np.rint(y))
        return int(self.seg[iy, ix]) if (0 <= ix < w and 0 <= iy < h) else 0


def sep_detect(work, sigma, bad, s) -> Candidates:
    """Run SEP on the cell (error = sky-only sigma, mask = bad) and keep every object."""
    set_sep_limits()
    err = np.array(sigma, dtype=np.float64)
    finite = np.isfinite(err) & (err > 0)
    if not finite.all():
        err[~finite] = float(np.median(err[finite])) if finite.any() else 1.0
    data = np.where(bad | ~np.isfinite(work), 0.0, work)
    objs, seg = sep.extract(_c64(data), float(s.thresh_sigma), err=_c64(err),
                            mask=np.ascontiguousarray(bad | ~finite), minarea=int(s.minarea),
                            deblend_nthresh=32, deblend_cont=0.001, clean=True, clean_param=1.0,
                            segmentation_map=True)
    if len(objs) == 0:
        return Candidates.empty(np.shape(work))
    flux = np.asarray(objs["flux"], float)
    peak = np.asarray(objs["peak"], float)
    score = np.where(np.isfinite(flux) & (flux > 0), flux, peak)
    return Candidates(np.asarray(objs["x"], float), np.asarray(objs["y"], float),
                      np.asarray(objs["a"], float), np.asarray(objs["b"], float), peak, score,
                      np.zeros(0, int), {}, np.asarray(seg, dtype=np.int32))


# ------------------------------------------------------------------------------------- neighbours

def neighbour_geometry(fwhm_pix):
    """(dilation, core radius) in px for neighbour handling, from the seeing FWHM (4 px if unknown).

    Other objects' SEP segments (isophote at thresh_sigma) are grown by ~2 FWHM for masking, so
    their wings are masked too (but never inside half the core radius of the star itself); a star
    with another object's segment within its core radius (~2 FWHM) is a blend and is rejected.
    """
    f = float(fwhm_pix) if fwhm_pix is not None and np.isfinite(fwhm_pix) and fwhm_pix > 0 else 4.0
    return float(np.clip(2.0 * f, 3.0, 12.0)), float(np.clip(2.0 * f, 4.0, 12.0))


def neighbour_mask(seg, x0, y0, shape, own_label, dilate) -> np.ndarray:
    """Pixels of a box (origin x0, y0; ``shape``) within ``dilate`` px of any other object's segment.

    Segments just outside the box count too (the box is padded by the dilation radius).
    """
    h, w = shape
    if seg is None:
        return np.zeros(shape, bool)
    pad = int(np.ceil(dilate)) + 1
    H, W = seg.shape
    ya, yb = max(0, y0 - pad), min(H, y0 + h + pad)
    xa, xb = max(0, x0 - pad), min(W, x0 + w + pad)
    other = seg[ya:yb, xa:xb]
    other = (other > 0) & (other != own_label)
    out = np.zeros(shape, bool)
    if not other.any():
        return out
    near = ndimage.distance_transform_edt(~other) <= dilate
    oy, ox = y0 - ya, x0 - xa
    sub = near[max(0, oy):oy + h, max(0, ox):ox + w]
    out[max(0, -oy):max(0, -oy) + sub.shape[0], max(0, -ox):max(0, -ox) + sub.shape[1]] = sub
    return out


def star_neighbour_mask(sel, k: int, x0: int, y0: int, shape, centre) -> np.ndarray:
    """:func:`neighbour_mask` of selected star ``k`` in a box (origin x0, y0), never inside half
    the blend core radius around the star's own centre (x, y in the box)."""
    mask = neighbour_mask(sel.seg, x0, y0, shape, sel.label[k], sel.nb[0])
    yy, xx = np.indices(shape)
    return mask & ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 > (0.5 * sel.nb[1]) ** 2)


def is_blended(seg, x, y, own_label, dilate, r_core) -> bool:
    """True if another object's segment lies within ``r_core`` of (x, y) (``dilate`` unused here)."""
    r = int(np.ceil(r_core))
    ix, iy = int(np.rint(x)), int(np.rint(y))
    m = neighbour_mask(seg, ix - r, iy - r, (2 * r + 1, 2 * r + 1), own_label, 0.0)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    d2 = (xx + ix - x) ** 2 + (yy + iy - y) ** 2
    return bool((m & (d2 <= r_core * r_core)).any())


def q_ok(a, b, q_range) -> np.ndarray:
    """True where b > 0 and a/b lies inside ``q_range`` (SEP gives a >= b)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(b > 0, a / np.where(b > 0, b, 1.0), np.inf)
    return (b > 0) & (q >= q_range[0]) & (q <= q_range[1])


def box_has_saturated(satur, x, y, r) -> bool:
    """True if the (2r+1)^2 box around the rounded (x, y), clipped to the cell, holds a saturated pixel."""
    if satur is None:
        return False
    h, w = satur.shape
    ix, iy = int(np.rint(x)), int(np.rint(y))
    y0, y1 = max(0, iy - r), min(h, iy + r + 1)
    x0, x1 = max(0, ix - r), min(w, ix + r + 1)
    if y0 >= y1 or x0 >= x1:
        return False
    return bool(satur[y0:y1, x0:x1].any())


def in_cell(x, y, own) -> np.ndarray:
    """True where (x, y) (array pixels) lies in ``own`` = (x0, x1, y0, y1), half-open on pixel
    centres (the cell's bounds in the arrays); everywhere when ``own`` is None."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if own is None:
        return np.ones(x.shape, bool)
    x0, x1, y0, y1 = own
    return (np.floor(x + 0.5) >= x0) & (np.floor(x + 0.5) < x1) & (np.floor(y + 0.5) >= y0) \
        & (np.floor(y + 0.5) < y1)


def filter_candidates(c: Candidates, shape, need, sat_thr, satur, sat_r, q_range, nb=None,
                      own=None) -> Candidates:
    """Apply the candidate cuts (+ blend rejection when ``nb`` = (dilate, r_core) is given);
    fill ``c.ok`` (best score first) and ``c.reasons``. ``own``: the cell's bounds in the arrays
    (:func:`in_cell`), which may extend beyond it: detections centred outside it belong to a
    neighbouring cell (``other_cell``)."""
    h, w = shape
    reasons = {"other_cell": 0, "edge": 0, "peak_saturated": 0, "roundness": 0, "saturated_stamp": 0,
               "blended": 0}
    keep = []
    mine = in_cell(c.x, c.y, own)
    inside = (c.x > need) & (c.x < w - need - 1) & (c.y > need) & (c.y < h - need - 1)
    qok = q_ok(c.a, c.b, q_range)
    order = np.argsort(-c.score, kind="stable")
    for i in order:
        if not mine[i]:
            reasons["other_cell"] += 1
        elif not inside[i]:
            reasons["edge"] += 1
        elif not c.peak[i] < sat_thr:
            reasons["peak_saturated"] += 1
        elif not qok[i]:
            reasons["roundness"] += 1
        elif box_has_saturated(satur, c.x[i], c.y[i], sat_r):
            reasons["saturated_stamp"] += 1
        elif nb is not None and is_blended(c.seg, c.x[i], c.y[i], int(i) + 1, *nb):
            reasons["blended"] += 1
        else:
            keep.append(int(i))
    c.ok = np.asarray(keep, dtype=int)
    c.reasons = reasons
    return c


def half_flux_radii(work, bad, x, y, a) -> np.ndarray:
    """SEP half-flux radii (px) at (x, y) within 6 sqrt(max(a, 0.5)^2 + 1) px (a: SEP semi-major
    axis, so an extended object is measured out to its own size); nan where SEP flags a failure."""
    x, y, a = (np.atleast_1d(np.asarray(v, float)) for v in (x, y, a))
    if x.size == 0:
        return np.zeros(0)
    rmax = 6.0 * np.sqrt(np.maximum(a, 0.5) ** 2 + 1.0)
    rad, flag = sep.flux_radius(_c64(np.where(bad, 0.0, work)), x, y, rmax, 0.5, normflux=None,
                                mask=np.ascontiguousarray(bad), subpix=5)
    return np.where(np.isfinite(rad) & (rad > 0), rad, np.nan)


def stellar_locus_cut(c: Candidates, work, bad, tol=STELLAR_LOCUS_TOL, min_n=5,
                      band_locus=None) -> Candidates:
    """Drop candidates resolved beyond the stellar locus (an addition to the serial pipeline).

    size = SEP half-flux radius of every detection (``c.r50``); cell locus = median size of the
    kept candidates (bright compact objects are mostly stars), used with at least ``min_n`` of
    them; ``band_locus`` = the band's locus over the tile (:mod:`.epsf_locus`), which also
    works for a cell with 1-4 candidates. A candidate larger than either locus x (1 + its
    tolerance) is a compact galaxy, a galaxy nucleus or a blend whose light would broaden the ePSF.
    """
    c.band_locus = band_locus
    c.r50 = half_flux_radii(work, bad, c.x, c.y, c.a)
    if c.ok.size >= min_n:
        c.size_locus = float(np.nanmedian(c.r50[c.ok]))
    if c.ok.size == 0 or (c.ok.size < min_n and band_locus is None):
        return c
    big = np.zeros(c.x.size, bool)
    big[c.ok] = c.too_big(c.r50[c.ok])
    c.reasons["resolved"] = int(big[c.ok].sum())
    c.ok = np.asarray([i for i in c.ok if not big[i]], dtype=int)
    return c


def selection_limits(s, saturate_scaled):
    """(edge clearance, saturation threshold, saturated-stamp check radius) of the cell cuts."""
    need = star_margin(s)
    sat_thr = float(saturate_scaled) / float(s.gaia_seed_sat_div) \
        if saturate_scaled is not None and np.isfinite(saturate_scaled) else np.inf
    sat_r = int(s.star_sat_check_r) if s.star_sat_check_r is not None else int(s.cutout_size) // 2
    return need, sat_thr, sat_r


# --------------------------------------------------------------------------------------- selection

@dataclass
class Selection:
    """Chosen PSF stars (cell-local) and per-reason counters."""

    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    origin: list = field(default_factory=list)
    label: list = field(default_factory=list)     # own SEP segment label (0 = none)
    reasons: dict = field(default_factory=dict)
    seg: np.ndarray | None = None                  # the cell's SEP segmentation map
    nb: tuple | None = None                        # (dilate, r_core) of neighbour_geometry

    def __len__(self):
        return len(self.x)

    def far_enough(self, x, y, min_sep) -> bool:
        if not self.x:
            return True
        d2 = (np.asarray(self.x) - x) ** 2 + (np.asarray(self.y) - y) ** 2
        return bool(np.all(d2 >= min_sep * min_sep))

    def add(self, x, y, origin, label=0):
        self.x.append(float(x))
        self.y.append(float(y))
        self.origin.append(origin)
        self.label.append(int(label))


def _bump(d, key):
    d[key] = d.get(key, 0) + 1


def seed_box_saturated(img, bad, x, y, r, sat_thr) -> bool:
    """True if the max of the non-bad pixels in the (2r+1)^2 box reaches ``sat_thr`` (or all are bad)."""
    h, w = img.shape
    ix, iy = int(np.rint(x)), int(np.rint(y))
    sl = (slice(max(0, iy - r), min(h, iy + r + 1)), slice(max(0, ix - r), min(w, ix + r + 1)))
    vals = img[sl][~bad[sl]]
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return True
    return bool(np.isfinite(sat_thr) and vals.max() >= sat_thr)


def forced_snr(work, sigma, bad, x, y, r):
    """Forced circular-aperture (flux, S/N, SEP flag) at one position (error = sky sigma, mask = bad)."""
    err = np.where(np.isfinite(sigma), sigma, 0.0)
    flux, ferr, flag = sep.sum_circle(_c64(np.where(bad, 0.0, work)), np.array([float(x)]),
                                      np.array([float(y)]), float(r), err=_c64(err),
                                      mask=np.ascontiguousarray(bad), subpix=5)
    f, e = float(flux[0]), float(ferr[0])
    snr = f / e if e > 0 else float("nan")
    return f, snr, int(flag[0])


def gaia_pass(sel: Selection, seeds, cand: Candidates, used: set, img, work, sigma, bad, satur, s,
              sat_thr, sat_r, r_forced, nb=None) -> None:
    """Accept Gaia seeds in table order; mutates ``sel`` and ``used``.

    ``nb`` = (dilate, r_core) also rejects blended seeds (see :func:`is_blended`); a seed whose
    object is larger than the stellar locus (``cand.too_big``; Gaia also catalogues galaxy
    nuclei and compact galaxies) is rejected as ``gaia_resolved``.
    """
    rs = sel.reasons
    match_r2 = float(s.gaia_match_r_pix) ** 2
    qok_all = q_ok(cand.a, cand.b, s.q_range)
    h, w = img.shape
    for sx, sy in seeds:
        if len(sel) >= s.max_stars:
            break
        ix, iy = int(np.rint(sx)), int(np.rint(sy))
        if not (0 <= ix < w and 0 <= iy < h) or bad[iy, ix]:
            _bump(rs, "gaia_bad_pixel")
            continue
        if seed_box_saturated(img, bad, sx, sy, int(s.gaia_seed_sat_r), sat_thr):
            _bump(rs, "gaia_saturated")
            continue
        d2 = (cand.x - sx) ** 2 + (cand.y - sy) ** 2 if cand.x.size else np.zeros(0)
        near = d2 <= match_r2
        x, y, origin, snapped = float(sx), float(sy), ORIGIN_GAIA, None
        if s.gaia_snap_to_sep:
            free = near & np.array([i not in used for i in range(cand.x.size)], dtype=bool)
            if free.any():
                j = int(np.flatnonzero(free)[np.argmin(d2[free])])
                if not qok_all[j]:
                    _bump(rs, "gaia_snap_roundness")
                    continue
                x, y, origin, snapped = float(cand.x[j]), float(cand.y[j]), ORIGIN_BOTH, j
        elif near.any():
            origin = ORIGIN_BOTH
        if box_has_saturated(satur, x, y, sat_r):
            _bump(rs, "gaia_saturated_stamp")
            continue
        if cand.r50 is not None:   # the size of the object under the seed
            if snapped is not None:
                r50 = cand.r50[snapped]
            elif near.any():
                r50 = cand.r50[int(np.flatnonzero(near)[np.argmin(d2[near])])]
            else:
                r50 = half_flux_radii(work, bad, x, y, 1.0)[0]
            if cand.too_big([r50])[0]:
                _bump(rs, "gaia_resolved")
                continue
        own = snapped + 1 if snapped is not None else cand.label_at(x, y)
        if nb is not None and is_blended(cand.seg, x, y, own, *nb):
            _bump(rs, "gaia_blended")
            continue
        _, snr, flag = forced_snr(work, sigma, bad, x, y, r_forced)
        if flag != 0 or not (snr >= s.gaia_snr_min):
            _bump(rs, "gaia_low_snr" if flag == 0 else "gaia_aperture_flag")
            continue
        if not sel.far_enough(x, y, s.min_sep):
            _bump(rs, "min_sep")
            continue
        sel.add(x, y, origin, own)
        if snapped is not None:
            used.add(snapped)


def sep_pass(sel: Selection, cand: Candidates, used: set, s) -> None:
    """Fill with SEP candidates by descending score, min_sep apart, up to max_stars."""
    for i in cand.ok:
        if len(sel) >= s.max_stars:
            break
        if int(i) in used:
            continue
        if not sel.far_enough(cand.x[i], cand.y[i], s.min_sep):
            _bump(sel.reasons, "min_sep")
            continue
        sel.add(cand.x[i], cand.y[i], ORIGIN_SEP, int(i) + 1)
        used.add(int(i))


def seeds_in_window(gaia_xy, x0, y0, shape, need, own=None):
    """Working-frame seeds inside the edge-clearance window of arrays of ``shape`` whose first
    pixel is frame (x0, y0), and inside the cell's bounds ``own`` there (:func:`in_cell`), as
    array-local (N, 2)."""
    if gaia_xy is None:
        return np.zeros((0, 2))
    xy = np.asarray(gaia_xy, dtype=float).reshape(-1, 2)
    lx, ly = xy[:, 0] - x0, xy[:, 1] - y0
    h, w = shape
    ok = np.isfinite(lx) & np.isfinite(ly) & (lx >= need) & (lx < w - need - 1) \
        & (ly >= need) & (ly < h - need - 1)
    ok &= in_cell(np.where(ok, lx, 0.0), np.where(ok, ly, 0.0), own)
    return np.column_stack([lx[ok], ly[ok]])
