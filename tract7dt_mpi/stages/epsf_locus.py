"""The band's stellar locus for ePSF star selection.

A cell with 1-4 star candidates cannot tell a star from a compact galaxy or a galaxy nucleus by
itself; the band's stars elsewhere in the tile can. :func:`band_size_locus` measures, once per band
(a task per band, before the cell tasks), the half-flux radii of the candidates that pass the same cuts as
the cells' own selection; each cell then rejects candidates above that locus
(:func:`.epsf_select.stellar_locus_cut`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .epsf_cells import min_cell_side
from .epsf_select import (cell_background, filter_candidates, half_flux_radii, neighbour_geometry,
                          selection_limits, sep_detect)

log = logging.getLogger(__name__)

#: band-wide locus: its tolerance is 3 robust sigma of the candidates' r50 over the tile (the PSF
#: changes across it), kept within these bounds; fewer than BAND_LOCUS_MIN_N candidates: no locus
BAND_LOCUS_TOL = (0.10, 0.30)
BAND_LOCUS_MIN_N = 5
#: the band locus is measured on cells taken coarse to fine over the tile until they hold this
#: many candidates or this many pixels (SEP costs ~10 us per pixel; rank 0 does it for every band)
BAND_LOCUS_TARGET_N = 60
BAND_LOCUS_MAX_PIX = 4_000_000


@dataclass(frozen=True)
class SizeLocus:
    """The band's stellar locus: median half-flux radius ``r50`` (px) of its star candidates over
    the tile and the relative tolerance ``tol`` above which a candidate is resolved."""

    r50: float
    tol: float
    n: int

    def resolved(self, r) -> np.ndarray:
        return ~(np.asarray(r, float) <= self.r50 * (1.0 + self.tol))

    @classmethod
    def from_sizes(cls, sizes, min_n=BAND_LOCUS_MIN_N) -> "SizeLocus | None":
        """Locus of a set of candidate radii. Stars are the tightest clump at small radii; galaxies,
        even where they outnumber the stars, spread over larger ones. So the locus is the median
        of the densest window 10 % wide (in ln r50), and the tolerance is 3 x the robust relative
        scatter of the radii within 25 % of it, kept within BAND_LOCUS_TOL."""
        r = np.asarray(sizes, float)
        r = r[np.isfinite(r) & (r > 0)]
        if r.size < min_n:
            return None
        lr = np.sort(np.log(r))
        end = np.searchsorted(lr, lr + np.log(1.10), side="right")
        i = int(np.argmax(end - np.arange(lr.size)))
        med = float(np.exp(np.median(lr[i:end[i]])))
        near = r[(r > med / 1.25) & (r < med * 1.25)]
        scatter = 1.4826 * float(np.median(np.abs(near - med))) / med
        tol = float(np.clip(3.0 * scatter, *BAND_LOCUS_TOL))
        return cls(round(med, 4), round(tol, 4), int(r.size))


def cell_candidate_sizes(img, sigma, bad, satur, s, fwhm_pix, saturate_scaled) -> np.ndarray:
    """Half-flux radii of one cell's star candidates (background, SEP, candidate and blend cuts
    exactly as the cell's own selection) for the band's locus."""
    img = np.asarray(img, np.float64)
    sigma = np.asarray(sigma, np.float64)
    bad = np.asarray(bad, bool) | ~np.isfinite(img)
    if not (~bad).any() or min(img.shape) < min_cell_side(s):
        return np.zeros(0)
    work = cell_background(img, sigma, bad, s).work
    cand = sep_detect(work, sigma, bad, s)
    need, sat_thr, sat_r = selection_limits(s, saturate_scaled)
    satur = np.asarray(satur, bool) if satur is not None else None
    filter_candidates(cand, img.shape, need, sat_thr, satur, sat_r, s.q_range, neighbour_geometry(fwhm_pix))
    ok = cand.ok
    return half_flux_radii(work, bad, cand.x[ok], cand.y[ok], cand.a[ok])


def locus_cells(cells, cell_pix, max_pix=BAND_LOCUS_MAX_PIX) -> list:
    """The cells that may measure the band locus, coarse to fine: the first, the last, then ever
    finer evenly spaced ones of the given order, at most ``max_pix`` pixels in all."""
    cells = list(cells)
    n = len(cells)
    if n == 0:
        return []
    k_max = int(max(1, min(n, max_pix // max(int(cell_pix), 1))))
    order, seen, k = [], set(), 1
    while len(order) < k_max:
        k = min(2 * k, n) if order else 1
        for i in np.round(np.linspace(0, n - 1, k)).astype(int) if k > 1 else [0]:
            if int(i) not in seen and len(order) < k_max:
                seen.add(int(i))
                order.append(int(i))
        if k == n:
            break
    return [cells[i] for i in order]


def band_size_locus(cell_arrays, s, fwhm_pix, saturate_scaled,
                    target_n=BAND_LOCUS_TARGET_N) -> "tuple[SizeLocus | None, int]":
    """The band's stellar locus from the candidates of the cells ``cell_arrays`` yields as
    (img, sigma_sky, bad, satur), read until ``target_n`` candidates are in; returns (locus or
    None, number of cells measured)."""
    sizes, n, total = [], 0, 0
    for img, sigma, bad, satur in cell_arrays:
        n += 1
        try:
            r = cell_candidate_sizes(img, sigma, bad, satur, s, fwhm_pix, saturate_scaled)
        except Exception as exc:  # SEP on odd data: the cell's own selection reports it
            log.debug("band locus: a cell failed (%s)", exc)
            continue
        sizes.append(r)
        total += int(np.isfinite(r).sum())
        if total >= target_n:
            break
    return SizeLocus.from_sizes(np.concatenate(sizes) if sizes else []), n


def locus_cell_boxes(boxes: dict, s) -> list:
    """The (x0, x1, y0, y1) of the cells in ``boxes`` (key -> box) that measure a band's locus:
    those that can hold a star, coarse to fine, at most BAND_LOCUS_MAX_PIX pixels."""
    side = min_cell_side(s)
    usable = [k for k, (x0, x1, y0, y1) in boxes.items() if min(x1 - x0, y1 - y0) >= side]
    if not usable:
        return []
    pix = max((x1 - x0) * (y1 - y0) for x0, x1, y0, y1 in (boxes[k] for k in usable))
    return [boxes[k] for k in locus_cells(usable, pix)]


def band_locus(prepared, band: str, cell_boxes, s) -> "SizeLocus | None":
    """The band's SizeLocus (or None) from ``cell_boxes`` (:func:`locus_cell_boxes`), read
    through ``prepared`` (:class:`tract7dt_mpi.io.prepared.PreparedImages`). One INFO line."""
    info = prepared.band_info(band)

    def arrays():
        for x0, x1, y0, y1 in cell_boxes:
            cut = prepared.read(band, y0, y1, x0, x1, with_bright=False)
            yield cut.img, cut.sigma_sky, cut.nonfinite, cut.saturated

    locus, n = band_size_locus(arrays(), s, info.fwhm_pix, info.saturate_scaled)
    if locus is None:
        log.info("ePSF %s: fewer than %d star candidates in %d cell(s): no band-wide size locus "
                 "(cells with 1-4 candidates cannot reject compact galaxies)", band, BAND_LOCUS_MIN_N, n)
    else:
        log.info("ePSF %s: stellar size locus r50 = %.2f px from %d candidates in %d cell(s); "
                 "candidates above %.2f px (+%.0f %%) are resolved", band, locus.r50, locus.n, n,
                 locus.r50 * (1 + locus.tol), 100 * locus.tol)
    return locus


def band_loci(prepared, bands, boxes: dict, s) -> dict:
    """band -> :func:`band_locus` of every band, one after another (the single-tile pipeline runs
    them as tasks: ``tasks.Worker.band_locus``)."""
    use = locus_cell_boxes(boxes, s)
    return {b: band_locus(prepared, b, use, s) if use else None for b in bands}
