"""Where a band's PSF changes faster than its polynomial field follows: per-cell core corrections.

A co-add's PSF can change abruptly over the frame: a strip made of other exposures or another
detector (a survey's tiling pattern, a mosaic of frames) has a wider or narrower core than its
neighbours. A polynomial of degree 2 follows the smooth part and leaves the strip out as stars
"not following the field". On the real VIKING Z band one row of cells had a PSF ~50 % wider
than the rest; there the stars' PSF fits missed +9 to +14 % of their flux within 2 FWHM, and
the row below -7 to -15 %. On a GalSim strip 33 % wider than the rest, the field's PSF fluxes
there were 26 % low (the strip's stars were left out of it), 0.4 % high with the correction.

Each ePSF cell with at least ``MIN_STARS`` stars measures the field's error on its own stars:
the weighted mean over its stars of their registered, flux-normalised stamps minus the field at
each star's position (stars far off the cell's mean, a galaxy or a blend, left out), within
``CORE_FWHM`` FWHM (blended to 0 by the second radius; beyond, the field's wing model follows
the core's width). Its chi^2 over those pixels against its noise gives the James-Stein factor
max(0, 1 - K / chi^2) (K pixels), which leaves a cell whose stars agree with the field
(chi^2 ~ K, noise) at about 0 and a real change at about 1. A cell's shrunk
residual is added to the field's polynomial core everywhere in the cell
(stages.psf_poly.PsfField.raw), before its wing and normalisation, so the wing follows the
corrected core's width. Pure numpy on the cells' star stamps.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CellCores", "cell_of", "fit_cell_cores"]

#: stars in a cell needed for its correction (one odd star among three is seen as one)
MIN_STARS = 3
#: the correction's zone: full inside the first radius, blended to 0 at the second (FWHM)
CORE_FWHM = (2.5, 3.5)
#: a star whose mean squared normalised deviation from the cell's mean exceeds this many times
#: the cell's median one (and 1) is left out of the cell's correction
OUTLIER = 5.0


class CellCores:
    """Core corrections of an ``n`` x ``n`` cell grid over a frame of ``shape``: ``corr`` maps
    (row, col) to an (S, S) float32 stamp (shrinkage applied); ``factors`` maps (row, col) to
    (shrinkage factor, chi^2 / K, stars) for every cell that had enough stars."""

    def __init__(self, shape, n: int, corr: dict, factors: dict):
        self.shape, self.n, self.corr, self.factors = tuple(shape), int(n), corr, factors

    def at(self, x: float, y: float):
        """The correction of the cell that holds (x, y) (None: it has none). A cell's own value,
        not one interpolated between cells: what the polynomial misses is a change of the PSF
        from one part of the frame to the next, and interpolating across it put a strip's edges
        halfway between the two PSFs."""
        return self.corr.get(cell_of(self.shape, self.n, x, y))


def cell_of(shape, n: int, x: float, y: float) -> tuple[int, int]:
    """(row, col) of the cell of an ``n`` x ``n`` grid over ``shape`` that holds (x, y): the cells
    of stages.epsf_cells.cell_bounds (the last row and column reach the frame's edge)."""
    h, w = shape
    return (min(max(int(y // max(1, h // n)), 0), n - 1), min(max(int(x // max(1, w // n)), 0), n - 1))


def core_zone(size: int, fwhm: float) -> np.ndarray:
    """(S, S) weights: 1 within CORE_FWHM[0] FWHM of the centre, 0 beyond CORE_FWHM[1]."""
    c = (size - 1) / 2.0
    yy, xx = np.indices((size, size))
    r = np.hypot(xx - c, yy - c)
    a, b = CORE_FWHM[0] * fwhm, CORE_FWHM[1] * fwhm
    return np.clip((b - r) / (b - a), 0.0, 1.0)


def fit_cell_cores(field, vals, w, xy, shape, n: int, fwhm: float) -> CellCores | None:
    """Per-cell core corrections of ``field`` (a PsfField without them) on an ``n`` x ``n`` grid
    over ``shape`` from the stars' stamps ``vals`` (N, S, S; flux-normalised, registered), their
    inverse variances ``w`` and positions ``xy`` (N, 2); None when no cell has enough stars."""
    vals = np.asarray(vals, float)
    w = np.where(np.isfinite(vals), np.asarray(w, float), 0.0)
    xy = np.asarray(xy, float).reshape(-1, 2)
    cells = np.array([cell_of(shape, n, x, y) for x, y in xy], int).reshape(-1, 2)
    if not len(vals):
        return None
    size = vals.shape[1]
    zone = core_zone(size, float(fwhm))
    inner = zone > 0
    corr, factors = {}, {}
    for rc in {tuple(v) for v in cells}:
        idx = np.where((cells == rc).all(axis=1))[0]
        if len(idx) < MIN_STARS:
            continue
        diff = np.nan_to_num(np.stack([vals[i] - field.raw(*xy[i]) for i in idx]))
        wi = w[idx] * inner
        keep = np.ones(len(idx), bool)
        for _ in range(3):       # the weighted mean, without stars far off it (a galaxy, a blend)
            sw = wi[keep].sum(axis=0)
            with np.errstate(all="ignore"):
                mean = np.where(sw > 0, (wi[keep] * diff[keep]).sum(axis=0) / sw, 0.0)
            dev = (wi * (diff - mean) ** 2).sum(axis=(1, 2)) / np.maximum((wi > 0).sum(axis=(1, 2)), 1)
            new = dev <= OUTLIER * max(float(np.median(dev[keep])), 1.0)
            if new.sum() < MIN_STARS or (new == keep).all():
                break
            keep = new
        use = inner & (sw > 0) & ((wi[keep] > 0).sum(axis=0) >= MIN_STARS)
        var = 1.0 / np.where(sw > 0, sw, np.inf)
        k = int(use.sum())
        if k < 5:
            continue
        chi2 = float((mean[use] ** 2 / var[use]).sum())
        s = max(0.0, 1.0 - k / chi2) if chi2 > 0 else 0.0
        factors[rc] = (s, chi2 / k, int(keep.sum()))
        if s > 0:
            corr[rc] = (s * np.where(use, mean, 0.0) * zone).astype(np.float32)
    return CellCores(shape, n, corr, factors) if factors else None
