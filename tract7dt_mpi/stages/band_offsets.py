"""Each band's registration offset from the other bands, measured on the ePSF stars.

The bands of a tile are resampled onto one pixel grid from exposures calibrated one by one (on 7DT
a different telescope takes each filter), so a star's centre differs between bands by a few
hundredths to a few tenths of a pixel, smoothly over the frame. A forced multi-band fit gives a
source one position for all bands: in a band that is off by ``d`` the PSF sits ``d`` away from the
star, and its point-source flux comes out low by about d^2 / (4 sigma^2) of itself (sigma =
FWHM / 2.355): 1 % at d = 0.2 px for a 2.3 px FWHM, 5 % at 0.45 px. Real KiDS/VIKING bands on one
grid are off by 0.1-0.5 px, varying over the field.

Each band's ePSF stars are fitted at their own centre against that band's ePSF (the cells record
them). Those centres are matched across bands; a star's position is the mean of its centres less
their bands' offsets, and each band's offset is a polynomial of position (``degree``, lowered
when the band's stars are few: four stars per term) fitted with 3-sigma clipping to its stars'
differences, in turns; the offsets' mean over the bands is held at 0, so a fitted position is the
bands' mean. The band's PSF field is then shifted by its offset wherever it is evaluated
(stages.psf_poly.evaluate_field), and one position fits every band. Pure numpy on star lists.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .psf_poly import _basis, _degree, n_terms

__all__ = ["BandOffset", "match_across_bands", "fit_band_offsets"]

#: centres of one star in two bands are at most this far apart (px)
MATCH_RADIUS = 1.0
#: fewest matched stars (seen in at least one other band) for a band's offset
MIN_STARS = 5
#: the clipping's sigma is at least this (px): bright stars are centred to ~0.003 px, their
#: centres' differences are not (PSF asymmetry, a star's own motion)
MIN_SCATTER = 0.01
#: stars per polynomial term (the degree is lowered below it)
STARS_PER_TERM = 4
#: rounds of (star positions, band offsets)
ROUNDS = 6
#: a star's difference is clipped beyond this many robust sigma of its band's
CLIP_SIGMA = 3.0
#: median of a 2-D Gaussian's radial distance, in its per-axis sigma
_RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class BandOffset:
    """(dx, dy) = polynomial of degree ``degree`` in ((x - x0) / scale, (y - y0) / scale) with
    coefficients ``cx``, ``cy``: where a source at (x, y) appears in the band; from ``n_stars``
    stars (``n_clipped`` left out); ``scatter``: the robust per-axis sigma (px) of the stars'
    differences about it (their centring noise and anything the polynomial does not follow)."""

    cx: tuple
    cy: tuple
    degree: int
    x0: float
    y0: float
    scale: float
    n_stars: int
    n_clipped: int
    scatter: float

    def at(self, x, y):
        b = _basis((np.asarray(x, float) - self.x0) / self.scale,
                   (np.asarray(y, float) - self.y0) / self.scale, self.degree)
        return b @ np.asarray(self.cx, float), b @ np.asarray(self.cy, float)


def match_across_bands(xy_by_band: dict, radius: float = MATCH_RADIUS):
    """Group the bands' star centres into stars: returns (bands, groups) with groups an (n, B, 2)
    array of each star's centre per band (NaN where the band lacks it). A centre joins the nearest
    group within ``radius`` that has none in its band yet."""
    bands = sorted(b for b, v in xy_by_band.items() if len(v))
    groups = np.full((0, len(bands), 2), np.nan)
    for j, b in enumerate(bands):
        pts = np.asarray(xy_by_band[b], float).reshape(-1, 2)
        pts = pts[np.isfinite(pts).all(axis=1)]
        new = []
        if len(groups):
            centre = np.nanmean(groups, axis=1)
            d, k = cKDTree(centre).query(pts, distance_upper_bound=radius)
            taken = set()
            for p, dist, g in zip(pts, d, k):
                if np.isfinite(dist) and g not in taken and np.isnan(groups[g, j, 0]):
                    groups[g, j] = p
                    taken.add(g)
                else:
                    new.append(p)
        else:
            new = list(pts)
        if new:
            add = np.full((len(new), len(bands), 2), np.nan)
            add[:, j] = np.asarray(new)
            groups = np.concatenate([groups, add])
    return bands, groups


def _fit_one(p, d, degree, x0, y0, scale):
    """Clipped polynomial fit of the differences ``d`` (n, 2) at positions ``p`` (n, 2)."""
    deg = _degree(int(max(degree, 0)), len(p), STARS_PER_TERM)
    X = _basis((p[:, 0] - x0) / scale, (p[:, 1] - y0) / scale, deg)
    keep = np.ones(len(p), bool)
    for _ in range(5):
        coef = np.linalg.lstsq(X[keep], d[keep], rcond=None)[0]
        r = np.hypot(*(d - X @ coef).T)
        s = max(float(np.median(r[keep])) / _RAYLEIGH_MEDIAN, MIN_SCATTER)
        new = r <= CLIP_SIGMA * s
        if new.sum() < max(MIN_STARS, X.shape[1]) or (new == keep).all():
            break
        keep = new
    return deg, coef, keep, s


def fit_band_offsets(xy_by_band: dict, frame_shape, degree: int = 2) -> dict:
    """band -> :class:`BandOffset` from each band's ePSF star centres (working-frame (x, y)
    arrays). Bands with fewer than MIN_STARS stars also seen in another band get none (they keep
    the mean frame); so does every band when fewer than two bands have offsets."""
    bands, groups = match_across_bands(xy_by_band)
    if len(bands) < 2 or not len(groups):
        return {}
    seen = np.isfinite(groups[..., 0])
    groups = groups[seen.sum(axis=1) >= 2]
    seen = np.isfinite(groups[..., 0])
    h, w = frame_shape
    x0, y0, scale = (w - 1) / 2.0, (h - 1) / 2.0, max(h, w) / 2.0
    off = np.zeros_like(groups)
    fits = {}
    for _ in range(ROUNDS):
        pos = np.nanmean(np.where(seen[..., None], groups - off, np.nan), axis=1)
        fits = {}
        for j, b in enumerate(bands):
            s = seen[:, j]
            if s.sum() < MIN_STARS:
                continue
            fits[j] = _fit_one(pos[s], groups[s, j] - pos[s], degree, x0, y0, scale)
        if len(fits) < 2:
            return {}
        # hold the mean over the fitted bands at 0 (one common shift is the stars' positions')
        deg = max(f[0] for f in fits.values())
        k = n_terms(deg)
        pad = {j: np.vstack([f[1], np.zeros((k - len(f[1]), 2))]) for j, f in fits.items()}
        mean = sum(pad.values()) / len(pad)
        pad = {j: c - mean for j, c in pad.items()}
        fits = {j: (deg, pad[j]) + fits[j][2:] for j in fits}
        X = _basis((groups[..., 0] - x0) / scale, (groups[..., 1] - y0) / scale, deg)
        off = np.zeros_like(groups)
        for j, f in fits.items():
            off[:, j] = np.nan_to_num(X[:, j] @ f[1])
    out = {}
    for j, (deg, coef, keep, s) in fits.items():
        out[bands[j]] = BandOffset(cx=tuple(map(float, coef[:, 0])), cy=tuple(map(float, coef[:, 1])),
                                   degree=int(deg), x0=x0, y0=y0, scale=scale,
                                   n_stars=int(keep.sum()), n_clipped=int((~keep).sum()),
                                   scatter=float(s))
    return out
