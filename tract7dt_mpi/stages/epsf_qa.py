"""ePSF star-stamp background and quality metrics.

Pure numpy on small stamps: per-star annulus background, encircled-energy growth metrics of the
final stamp and star-minus-model residual statistics. Nothing here writes files.
"""
from __future__ import annotations

import math

import numpy as np

NAN = float("nan")


def nanmedian_axis0(a):
    """``np.nanmedian(a, axis=0)`` (NaN where a column has no value, without a warning), by one
    sort along axis 0: NaNs sort last, so the median of the n finite values of a column is at
    rows (n - 1) // 2 and n // 2."""
    a = np.asarray(a, float)
    s = np.sort(a, axis=0)
    n = np.count_nonzero(~np.isnan(a), axis=0)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(s, np.maximum(n // 2, 0)[None], axis=0)[0]
    return np.where(n > 0, (lo + hi) / 2.0, np.nan)


# --------------------------------------------------------------------------------- local background

def annulus_radii(shape, rin_cfg, rout_cfg):
    """Annulus radii clamped into a stamp of ``shape``: returns (rin, rout)."""
    h, w = shape
    rmax = max(2.0, min((w - 1) / 2.0, (h - 1) / 2.0) - 1.0)
    rout = float(np.clip(rout_cfg, 2.0, rmax))
    rin = float(np.clip(rin_cfg, 0.0, max(0.0, rout - 1.0)))
    return rin, rout


def annulus_mask(shape, rin, rout) -> np.ndarray:
    """Pixels with rin^2 <= r^2 <= rout^2 around the geometric stamp centre."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = (xx - (w - 1) / 2.0) ** 2 + (yy - (h - 1) / 2.0) ** 2
    return (r2 >= rin * rin) & (r2 <= rout * rout)


def star_local_backgrounds(data, weights, rin_cfg, rout_cfg, nsig, minpix, iters=5):
    """Annulus medians of a stack of stamps (n, H, W) after an iterative median/std sigma clip
    (``iters`` rounds, as the serial pipeline; a stamp stops clipping when nothing is clipped or
    its spread is 0): returns (values (n,), statuses, annulus masks (n, H, W)).

    status is ``ok`` or ``fallback_zero`` (fewer than ``minpix`` usable pixels before or after the
    sigma clip); the value is 0 on fallback. ``weights`` (None: all usable) > 0 marks usable pixels.
    """
    data = np.asarray(data, float)
    rin, rout = annulus_radii(data.shape[1:], rin_cfg, rout_cfg)
    ring = annulus_mask(data.shape[1:], rin, rout)
    m = ring[None] & np.isfinite(data)
    if weights is not None:
        m &= np.asarray(weights) > 0
    v = np.where(m, data, np.nan)[:, ring]                     # (n, pixels of the annulus)
    enough = m.sum(axis=(1, 2)) >= minpix
    live = enough.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(iters):
            cnt = np.count_nonzero(~np.isnan(v), axis=1)
            live &= cnt > 0
            med = nanmedian_axis0(v.T)
            mean = np.nansum(v, axis=1) / cnt
            std = np.sqrt(np.nansum((v - mean[:, None]) ** 2, axis=1) / cnt)
            live &= std > 0
            far = np.abs(v - med[:, None]) > nsig * std[:, None]      # NaN: not there, not far
            live &= far.any(axis=1)
            v = np.where(live[:, None] & far, np.nan, v)
        cnt = np.count_nonzero(~np.isnan(v), axis=1)
        ok = enough & (cnt >= minpix) & (cnt > 0)
        values = np.where(ok, nanmedian_axis0(v.T), 0.0)
    return values, ["ok" if o else "fallback_zero" for o in ok], m


def star_local_background(data, weights, rin_cfg, rout_cfg, nsig, minpix):
    """:func:`star_local_backgrounds` of one stamp: returns (value, status, mask used)."""
    vals, stats, m = star_local_backgrounds(np.asarray(data)[None], None if weights is None else
                                            np.asarray(weights)[None], rin_cfg, rout_cfg, nsig, minpix)
    return float(vals[0]), stats[0], m[0]


def symmetric_fluxes(data, valid, centers) -> np.ndarray:
    """Flux of each stamp of ``data`` (n, H, W) with its invalid pixels filled from their mirror
    image through the star's centre ``centers[i]`` = (x, y).

    A cheap, PSF-shape-free stand-in for interpolating masked pixels (a PSF is close to point
    symmetric); pixels whose mirror is invalid or outside the stamp count as 0. A stamp whose
    filled sum is not positive gives its valid sum, and 1.0 if that is not positive either.
    """
    data = np.asarray(data, float)
    valid = np.asarray(valid, bool)
    n, h, w = data.shape
    c = np.asarray(centers, float).reshape(n, 2)
    mx = np.rint(2 * c[:, 0, None, None] - np.arange(w)[None, None, :]).astype(int)   # (n, 1, W)
    my = np.rint(2 * c[:, 1, None, None] - np.arange(h)[None, :, None]).astype(int)   # (n, H, 1)
    inside = (mx >= 0) & (mx < w) & (my >= 0) & (my < h)
    k = np.arange(n)[:, None, None]
    iy, ix = np.clip(my, 0, h - 1), np.clip(mx, 0, w - 1)
    ok = inside & valid[k, iy, ix]
    filled = np.where(valid, data, np.where(ok, data[k, iy, ix], 0.0))
    total = np.where(np.isfinite(filled), filled, 0.0).sum(axis=(1, 2))
    plain = np.where(valid & np.isfinite(data), data, 0.0).sum(axis=(1, 2))
    total = np.where(total > 0, total, plain)
    return np.where(total > 0, total, 1.0)


def symmetric_flux(data, valid, center) -> float:
    """:func:`symmetric_fluxes` of one stamp."""
    return float(symmetric_fluxes(np.asarray(data)[None], np.asarray(valid)[None], [center])[0])


def local_bkg_summary(values, statuses) -> dict:
    """The meta ``local_star_background`` record."""
    ok = [v for v, st in zip(values, statuses) if st == "ok"]
    return {
        "local_bkg_nstars": len(values),
        "local_bkg_ok_nstars": len(ok),
        "local_bkg_median": float(np.median(ok)) if ok else NAN,
        "local_bkg_mean": float(np.mean(ok)) if ok else NAN,
    }


# ------------------------------------------------------------------------------------ growth curve

def growth_curve(stamp):
    """Encircled energy about the geometric centre at integer radii 0..ceil(r_max).

    r_max is the radius of the largest circle inscribed in the stamp, so EE(r_max) ("ee_edge") tells
    how much light lies outside that circle. Returns (radii, ee).
    """
    h, w = stamp.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - (w - 1) / 2.0, yy - (h - 1) / 2.0)
    r_max = min((w - 1) / 2.0, (h - 1) / 2.0)
    radii = np.arange(0, int(math.ceil(r_max)) + 1, dtype=float)
    total = float(stamp.sum())
    if not total or not np.isfinite(total):
        return radii, np.full(radii.size, NAN)
    ee = np.array([stamp[r <= rr].sum() for rr in radii]) / total
    return radii, ee


def growth_metrics(stamp) -> dict:
    """The meta ``epsf_qa`` record: r50/r80/r90 (px), ee_edge, border median/mean, min/max."""
    radii, ee = growth_curve(stamp)

    def first(level):
        hit = np.flatnonzero(ee >= level)
        return float(radii[hit[0]]) if hit.size else NAN

    border = np.concatenate([stamp[0, :], stamp[-1, :], stamp[1:-1, 0], stamp[1:-1, -1]])
    return {
        "ee_r50_pix": first(0.5), "ee_r80_pix": first(0.8), "ee_r90_pix": first(0.9),
        "ee_edge": float(ee[-1]) if ee.size else NAN,
        "epsf_edge_median": float(np.median(border)), "epsf_edge_mean": float(np.mean(border)),
        "epsf_min": float(stamp.min()), "epsf_max": float(stamp.max()),
    }


# ---------------------------------------------------------------------------------------- residuals

def empty_residual_qa() -> dict:
    return {"resid_nstars": 0, "resid_bias": NAN, "resid_rms": NAN,
            "resid_norm_bias": NAN, "resid_norm_rms": NAN}


def residual_stats(datas, models, weights, fluxes):
    """Median stacks and residual QA of flux-normalised star stamps and their registered models.

    ``datas``/``models``/``weights`` are lists of equal-shape arrays (data and model already divided
    by each star's fitted flux ``fluxes``; weights are inverse variances in image units).
    resid_bias / resid_rms are the mean / rms of the median residual stack relative to the peak of
    the median model stack; resid_norm_* are the mean / std of the
    per-pixel normalised residuals (data - model) * flux * sqrt(weight) (expected ~0 / ~1).
    Returns (qa dict, stacks dict or None).
    """
    if not datas:
        return empty_residual_qa(), None
    d = np.stack(datas)
    m = np.stack(models)
    res = d - m
    d_st, m_st, r_st = nanmedian_axis0(d), nanmedian_axis0(m), nanmedian_axis0(res)
    peak = float(np.nanmax(m_st))
    norm = []
    for rr, ww, ff in zip(res, weights, fluxes):
        ok = np.isfinite(rr) & (ww > 0)
        norm.append(rr[ok] * float(ff) * np.sqrt(ww[ok]))
    norm = np.concatenate(norm) if norm else np.zeros(0)
    qa = {
        "resid_nstars": len(datas),
        "resid_bias": float(np.nanmean(r_st) / peak) if peak > 0 else NAN,
        "resid_rms": float(np.sqrt(np.nanmean(r_st ** 2)) / peak) if peak > 0 else NAN,
        "resid_norm_bias": float(np.mean(norm)) if norm.size else NAN,
        "resid_norm_rms": float(np.std(norm)) if norm.size else NAN,
    }
    return qa, {"data": d_st, "model": m_st, "resid": r_st, "norm": norm}
