"""A band's PSF size and wing (Moffat FWHM and beta) from its own stars, for the analytic fallback.

When a band has no usable ePSF the patches fit it with an analytic Moffat PSF. A header seeing
and one global beta are not that band's PSF: on real DES images beta = 3.5 put a star 0.4 mag
too faint where the stars' own beta was 1.8, and co-adds often carry no seeing keyword at all.
So each band's brightest unsaturated, isolated candidates (catalogue stars when the catalogue
types any, else every row) are fitted with a pixel-integrated circular Moffat (free position,
flux, alpha, beta and background); the FWHM is the half-sample mode of the fits (stars cluster
there, galaxies scatter wider), beta the median over the fits within ``LOCUS_TOL`` of it.
Arrays in, numbers out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from .psf_poly import half_sample_mode

__all__ = ["StarMoffat", "fit_star_moffat", "band_moffat"]

#: candidates fitted per band (brightest first)
N_FIT = 15
#: fits within this fraction of the modal FWHM count as stars
LOCUS_TOL = 0.12
#: fewest star fits for a result
MIN_STARS = 3
_SUB = 2                      # sub-pixel samples per axis for the pixel integration


@dataclass(frozen=True)
class StarMoffat:
    fwhm: float
    beta: float
    n_stars: int


def _moffat_pix(xx, yy, x0, y0, alpha, beta):
    """Unit-flux circular Moffat integrated over pixels (``_SUB`` x ``_SUB`` samples)."""
    off = (np.arange(_SUB) + 0.5) / _SUB - 0.5
    acc = 0.0
    for dy in off:
        for dx in off:
            r2 = (xx + dx - x0) ** 2 + (yy + dy - y0) ** 2
            acc = acc + (1.0 + r2 / alpha ** 2) ** (-beta)
    return acc / _SUB ** 2 * (beta - 1.0) / (np.pi * alpha ** 2)


def fit_star_moffat(stamp, x0: float, y0: float, fwhm_guess: float):
    """(fwhm, beta) of a Moffat fitted to one star's ``stamp`` (its finite pixels) starting at
    (x0, y0) in stamp pixels, or None when the fit fails or ends at a bound."""
    yy, xx = np.indices(stamp.shape, dtype=float)
    m = np.isfinite(stamp)
    if m.sum() < 20:
        return None
    d = np.asarray(stamp, float)[m]
    X, Y = xx[m], yy[m]
    bkg0 = float(np.median(d))
    f0 = float(max((d - bkg0).sum(), 1e-12))
    a0 = max(fwhm_guess, 1.0) / (2.0 * np.sqrt(2.0 ** (1.0 / 3.0) - 1.0))

    def resid(q):                     # sky-limited: equal weights
        xc, yc, lf, la, b, c = q
        return np.exp(lf) * _moffat_pix(X, Y, xc, yc, np.exp(la), b) + c - d

    lo = [x0 - 2.0, y0 - 2.0, np.log(f0) - 3.0, np.log(0.3), 1.05, -np.inf]
    hi = [x0 + 2.0, y0 + 2.0, np.log(f0) + 3.0, np.log(30.0), 15.0, np.inf]
    q0 = np.clip([x0, y0, np.log(f0), np.log(a0), 3.0, bkg0], np.array(lo) + 1e-6, np.array(hi) - 1e-6)
    try:
        q = least_squares(resid, q0, bounds=(lo, hi), x_scale="jac", max_nfev=200).x
    except (ValueError, np.linalg.LinAlgError):
        return None
    alpha, beta = float(np.exp(q[3])), float(q[4])
    if not (1.06 < beta < 14.9 and 0.31 < alpha < 29.0):
        return None
    return 2.0 * alpha * np.sqrt(2.0 ** (1.0 / beta) - 1.0), beta


def band_moffat(img, bad, xy, fwhm_guess: float) -> StarMoffat | None:
    """The band's Moffat from the candidates ``xy`` (n, 2; working-frame pixels, any order) on
    ``img`` with ``bad`` (saturated / missing) pixels; None with fewer than ``MIN_STARS`` fits."""
    img = np.asarray(img)
    bad = np.asarray(bad, bool)
    g = float(fwhm_guess) if np.isfinite(fwhm_guess) and fwhm_guess > 0 else 3.0
    h = int(np.ceil(4.0 * g)) + 2
    H, W = img.shape
    peaks, boxes = [], []
    for x, y in np.asarray(xy, float).reshape(-1, 2):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        ix, iy = int(round(x)), int(round(y))
        if ix - h < 0 or iy - h < 0 or ix + h >= W or iy + h >= H:
            continue
        sl = (slice(iy - h, iy + h + 1), slice(ix - h, ix + h + 1))
        if bad[sl].any():                     # saturated or missing pixels near the star
            continue
        st = np.asarray(img[sl], float)
        peaks.append(float(st[h - 1:h + 2, h - 1:h + 2].max() - np.median(st)))
        boxes.append((st, x - (ix - h), y - (iy - h)))
    order = np.argsort(peaks)[::-1]
    fits = []
    for k in order[:N_FIT]:
        st, cx, cy = boxes[k]
        got = fit_star_moffat(st, cx, cy, g)
        if got is not None:
            fits.append(got)
    if len(fits) < MIN_STARS:
        return None
    fw = np.array([f[0] for f in fits])
    be = np.array([f[1] for f in fits])
    mode = half_sample_mode(fw)
    near = np.abs(fw / mode - 1.0) <= LOCUS_TOL
    if near.sum() < MIN_STARS:
        return None
    return StarMoffat(fwhm=float(np.median(fw[near])), beta=float(np.median(be[near])),
                      n_stars=int(near.sum()))
