"""Bright stars' halos beyond the PSF stamp, measured per star and subtracted from the patches.

A source is fitted with the band's PSF stamp (55 px by default), so a bright star's light beyond
the stamp is modelled by nothing: the galaxies and the sky of every patch it shines into take it
up. On GalSim tiles a galaxy 75 px from an unmatched mag-9 star came out 9 % too bright (its Re 11
% too large) with the exact PSF; galaxies whose error the halos of the tile's stars exceed had
pulls of 2-4. As legacypipe does for Gaia stars, the halo is subtracted before the fit:

1. each bright star's total flux ``F``: a saturated star's is measured on its own far rings (from
   the band's wing radius, outside the saturated core, to ``r_out``): sigma-clipped ring means
   fitted by weighted least squares as ``F A r^-slope + b`` with the band's wing
   (stages.psf_wing: ``A``, ``slope`` for a unit-total PSF) and a local background ``b``. An
   unsaturated star's is its core's (:func:`core_flux`): the far rings of a star of moderate
   flux hold more of its neighbours' light than of its own (on GalSim tiles they gave 2-90 times
   the true flux of stars near saturated ones);
2. a star whose halo at the stamp's edge is below ``min_sigma`` of the sky noise is left alone;
3. a patch's image loses ``F A r^-slope`` of every kept star on its pixels outside that star's
   stamp square, out to where the halo falls below ``floor_sigma`` of the sky noise. Inside the
   square the star's own model (or, for a star the patch does not fit, nothing) stays as before.

Pure numpy on arrays: the caller reads the cut-outs and owns the stars' list.
"""
from __future__ import annotations

import numpy as np

from .psf_wing import ring_edges, ring_profile

__all__ = ["halo_flux", "core_flux", "halo_image", "halo_reach", "MIN_SIGMA", "FLOOR_SIGMA"]

#: a star is subtracted when its halo at the stamp's edge exceeds this fraction of the sky sigma
MIN_SIGMA = 0.01
#: each halo is drawn out to where it falls below this fraction of the sky sigma
FLOOR_SIGMA = 0.002
#: fewest usable rings for a flux
MIN_RINGS = 3


def halo_flux(img, good, x: float, y: float, r_in: float, r_out: float, amp: float, slope: float) -> float:
    """Total flux of the star at (x, y) of ``img`` from its rings between ``r_in`` and ``r_out``
    (pixel-centre radius, ``good`` pixels only), fitted as F amp r^-slope + b (weighted least
    squares of the sigma-clipped ring means); NaN when fewer than MIN_RINGS rings are usable or
    the fit gives no positive flux."""
    if not (r_out > r_in > 0 and amp > 0 and slope > 2):
        return float("nan")
    edges = ring_edges(r_in, r_out)
    if edges.size < MIN_RINGS + 1:
        return float("nan")
    rc = 0.5 * (edges[1:] + edges[:-1])
    m, e = ring_profile(img, good, x, y, edges)
    ok = np.isfinite(m) & np.isfinite(e) & (e > 0)
    if ok.sum() < MIN_RINGS:
        return float("nan")
    w = 1.0 / e[ok] ** 2
    A = np.stack([amp * rc[ok] ** (-slope), np.ones(ok.sum())], axis=1)
    N = A.T @ (A * w[:, None])
    try:
        f, _ = np.linalg.solve(N, A.T @ (w * m[ok]))
    except np.linalg.LinAlgError:
        return float("nan")
    return float(f) if np.isfinite(f) and f > 0 else float("nan")


def core_flux(img, good, x: float, y: float, r_ap: float, enclosed: float) -> float:
    """Total flux of the unsaturated star at (x, y): its sum within ``r_ap`` px (good pixels;
    background the median of the ring 1.5-2.5 ``r_ap``), divided by ``enclosed``, the PSF's
    fraction of its total flux within ``r_ap``; NaN when a tenth of the aperture is masked."""
    img = np.asarray(img, float)
    yy, xx = np.indices(img.shape)
    r = np.hypot(xx - x, yy - y)
    ok = np.asarray(good, bool) & np.isfinite(img)
    ap, ring = r <= r_ap, (r > 1.5 * r_ap) & (r <= 2.5 * r_ap)
    if not (enclosed > 0) or (ap & ~ok).sum() > 0.1 * ap.sum() or (ring & ok).sum() < 8:
        return float("nan")
    bkg = float(np.median(img[ring & ok]))
    f = float((img[ap & ok] - bkg).sum() * ap.sum() / (ap & ok).sum()) / enclosed
    return f if np.isfinite(f) and f > 0 else float("nan")


def halo_reach(flux, amp: float, slope: float, sigma: float, floor_sigma: float = FLOOR_SIGMA):
    """Radius (px) where a halo of total flux ``flux`` falls to ``floor_sigma`` x ``sigma``."""
    flux = np.asarray(flux, float)
    return (np.maximum(flux, 0.0) * amp / (floor_sigma * sigma)) ** (1.0 / slope)


def halo_image(shape, x0: int, y0: int, stars, amp: float, slope: float, half: int, sigma: float,
               floor_sigma: float = FLOOR_SIGMA) -> np.ndarray:
    """The halos of ``stars`` ((n, 3): frame x, y, total flux) on the box of ``shape`` whose
    pixel (0, 0) is frame pixel (``x0``, ``y0``): F amp r^-slope outside each star's stamp
    square (|dx| or |dy| > ``half``), out to its :func:`halo_reach`; float64."""
    h, w = shape
    out = np.zeros((h, w))
    stars = np.asarray(stars, float).reshape(-1, 3)
    if not stars.size or not (amp > 0 and slope > 2 and sigma > 0):
        return out
    reach = halo_reach(stars[:, 2], amp, slope, sigma, floor_sigma)
    gx = np.arange(w) + x0
    gy = np.arange(h) + y0
    for (sx, sy, f), r_s in zip(stars, reach):
        if not (np.isfinite(f) and f > 0 and r_s > half):
            continue
        # the part of the box within the star's reach
        ix0, ix1 = np.searchsorted(gx, sx - r_s), np.searchsorted(gx, sx + r_s, side="right")
        iy0, iy1 = np.searchsorted(gy, sy - r_s), np.searchsorted(gy, sy + r_s, side="right")
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        dx = gx[ix0:ix1][None, :] - sx
        dy = gy[iy0:iy1][:, None] - sy
        r = np.hypot(dx, dy)
        outside = ((np.abs(dx) > half) | (np.abs(dy) > half)) & (r <= r_s)
        out[iy0:iy1, ix0:ix1] += np.where(outside, f * amp * np.maximum(r, 1.0) ** (-slope), 0.0)
    return out
