"""Per-band ePSF summary numbers for the ``plotting.level: summary`` figures (no drawing here).

The FWHM of a cell's ePSF is the diameter of the circle with the area above half maximum, measured
on the stamp upsampled by a cubic spline (counting whole pixels is off by up to ~8 % at 4 px); its
ellipticity and orientation come from adaptive
(Gaussian-weighted) second moments: the weight is iterated to the stamp's own covariance, which
gives the exact covariance of a Gaussian and keeps noisy or Moffat wings from dominating as they do
in unweighted moments (the size of those moments is a Gaussian-equivalent one, ~15 % above the
true FWHM for a Moffat, hence not used for the FWHM).  The example stars are the
highest-weighted stars the cells' ePSFs were made of.
"""

from __future__ import annotations

import math
import re

import numpy as np

UPSAMPLE = 5


def half_max_fwhm(stamp, up: int = UPSAMPLE) -> float:
    """Diameter (px) of the circle with the stamp's area above half its peak (spline-upsampled)."""
    from scipy.ndimage import zoom
    a = np.nan_to_num(np.asarray(stamp, float))
    if not a.size or not a.max() > 0:
        return math.nan
    z = zoom(a, up, order=3, grid_mode=True, mode="grid-constant")
    return 2.0 * math.sqrt(np.count_nonzero(z >= z.max() / 2.0) / (up * up) / math.pi)

_TAG = re.compile(r"^r(\d+)_c(\d+)$")


def stamp_moments(stamp, n_iter: int = 50) -> dict:
    """Shape of a PSF stamp: ``fwhm_pix`` (from the half-maximum area), and from adaptive moments
    ``ellipticity`` (1 - b/a), ``theta_deg`` (major axis from +x towards +y) and the centroid
    ``x``, ``y`` (pixels, origin 0). NaN everywhere when the stamp has no positive flux.
    """
    a = np.nan_to_num(np.asarray(stamp, float))
    nan = {"fwhm_pix": math.nan, "ellipticity": math.nan, "theta_deg": math.nan, "x": math.nan,
           "y": math.nan}
    if a.ndim != 2 or not a.sum() > 0:
        return nan
    yy, xx = np.mgrid[:a.shape[0], :a.shape[1]].astype(float)
    cx, cy = float(np.unravel_index(np.argmax(a), a.shape)[1]), float(np.unravel_index(np.argmax(a), a.shape)[0])
    m = np.array([[4.0, 0.0], [0.0, 4.0]])
    for _ in range(n_iter):
        inv = np.linalg.inv(m)
        dx, dy = xx - cx, yy - cy
        w = a * np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))
        s = w.sum()
        if not s > 0:
            return nan
        cx, cy = float((w * xx).sum() / s), float((w * yy).sum() / s)
        dx, dy = xx - cx, yy - cy
        c = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / s
        new = 2.0 * c        # weight and source of equal covariance: product has half of it
        if not (np.all(np.isfinite(new)) and np.linalg.det(new) > 0):
            return nan
        done = np.allclose(new, m, rtol=1e-6, atol=1e-9)
        m = new
        if done:
            break
    lam = np.linalg.eigvalsh(m)              # ascending: minor, major variance
    b, a_ = math.sqrt(lam[0]), math.sqrt(lam[1])
    theta = 0.5 * math.degrees(math.atan2(2 * m[0, 1], m[0, 0] - m[1, 1]))
    return {"fwhm_pix": half_max_fwhm(a), "ellipticity": 1.0 - b / a_, "theta_deg": theta, "x": cx, "y": cy}


def cell_index(tag: str):
    """(row, col) of a cell tag ``rRR_cCC``; None for anything else."""
    m = _TAG.match(str(tag))
    return (int(m.group(1)), int(m.group(2))) if m else None


def band_cell_maps(cells: dict, n: int) -> dict:
    """``cells``: tag -> (meta, stamp or None) of one band. Returns (n, n) arrays indexed [row, col]
    (row = y): ``fwhm_pix``, ``ellipticity``, ``theta_deg``, ``nstars`` (NaN where no ePSF)."""
    out = {k: np.full((n, n), np.nan) for k in ("fwhm_pix", "ellipticity", "theta_deg", "nstars")}
    for tag, (meta, stamp) in cells.items():
        rc = cell_index(tag)
        if rc is None or not (0 <= rc[0] < n and 0 <= rc[1] < n) or stamp is None:
            continue
        mom = stamp_moments(stamp)
        for k in ("fwhm_pix", "ellipticity", "theta_deg"):
            out[k][rc] = mom[k]
        out["nstars"][rc] = float((meta or {}).get("nstars_used") or 0)
    return out


def example_stars(metas, k: int = 6) -> list[tuple[float, float, float]]:
    """Up to ``k`` (x, y, weight) of the stars the band's ePSFs were built from, highest weight
    first (working-frame pixels)."""
    stars = []
    for m in metas:
        xy, wt = (m or {}).get("used_stars_xy") or [], (m or {}).get("used_stars_weight") or []
        if len(wt) != len(xy):
            wt = [math.nan] * len(xy)
        stars += [(float(x), float(y), float(w)) for (x, y), w in zip(xy, wt)]
    stars.sort(key=lambda s: -s[2] if np.isfinite(s[2]) else math.inf)
    return stars[:k]


__all__ = ["half_max_fwhm", "stamp_moments", "cell_index", "band_cell_maps", "example_stars"]
