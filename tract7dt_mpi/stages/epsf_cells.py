"""The ePSF cell grid: cell bounds and tags, the cells worth building, the region each one reads.

A band's frame is cut into an ``epsf.epsf_ngrid`` x ``epsf.epsf_ngrid`` grid; each cell is one
task (:mod:`.epsf`). A cell reads its own area and a margin of a star stamp around it
(:func:`halo_box`), and its stars are those centred inside it.
"""
from __future__ import annotations

import logging

import numpy as np

__all__ = ["cell_tag", "cell_bounds", "active_cells", "star_margin", "min_cell_side", "halo_box",
           "too_small_cells"]

log = logging.getLogger(__name__)


def cell_tag(r: int, c: int) -> str:
    """Cell tag ``rRR_cCC``."""
    return f"r{int(r):02d}_c{int(c):02d}"


def cell_bounds(shape, n: int, r: int, c: int):
    """Bounds (x0, x1, y0, y1), half-open, of cell (row r, column c) of an n x n grid.

    step = W // n (H // n for rows); the last column/row extends to the frame edge.
    """
    h, w = int(shape[0]), int(shape[1])
    xstep, ystep = max(1, w // n), max(1, h // n)
    x0, y0 = c * xstep, r * ystep
    x1 = w if c == n - 1 else min(w, (c + 1) * xstep)
    y1 = h if r == n - 1 else min(h, (r + 1) * ystep)
    return x0, x1, y0, y1


def active_cells(catalog_xy_active, shape, n: int):
    """Sorted (r, c) cells holding at least one active source with finite in-frame pixels."""
    h, w = int(shape[0]), int(shape[1])
    xy = np.asarray(catalog_xy_active, dtype=float).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    ok = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    xstep, ystep = max(1, w // n), max(1, h // n)
    cc = np.clip(np.floor(x[ok] / xstep).astype(int), 0, n - 1)
    rr = np.clip(np.floor(y[ok] / ystep).astype(int), 0, n - 1)
    return sorted({(int(r), int(c)) for r, c in zip(rr, cc)})


def star_margin(s) -> int:
    """A PSF star's clearance (px) from the edge of the arrays it is cut from: half its stamp and
    its pad, ``epsf.cutout_size`` // 2 + ``epsf.edge_pad``."""
    return int(s.cutout_size) // 2 + int(s.edge_pad)


def min_cell_side(s) -> int:
    """Smallest side (px) of the region a cell reads that can hold a star: a candidate needs
    ``need`` < x < side - need - 1 (``need``: :func:`star_margin`)."""
    return 2 * star_margin(s) + 2


def halo_box(box, shape, s) -> tuple[int, int, int, int]:
    """``box`` (x0, x1, y0, y1) grown by a star stamp and its pad (``epsf.cutout_size`` // 2 +
    ``epsf.edge_pad``) on every side and clipped to the frame ``shape``: the region a cell reads.
    A star centred anywhere in the cell then has its whole stamp (read from the neighbouring
    cells), not only one ``need`` px inside the cell's edges: with cells read alone, a 2 x 2 grid
    lost the ~15 % of its stars near the inner cell edges and a 7 x 7 grid ~35 %."""
    m = star_margin(s)
    x0, x1, y0, y1 = (int(v) for v in box)
    h, w = int(shape[0]), int(shape[1])
    return max(0, x0 - m), min(w, x1 + m), max(0, y0 - m), min(h, y1 + m)


def too_small_cells(boxes: dict, s, shape=None) -> list:
    """Cells (keys of ``boxes``: key -> (x0, x1, y0, y1)) whose region read (:func:`halo_box` in
    a frame of ``shape``; None: the cell alone) is too small to hold a star, said once in the
    log with the numbers (the cells' own failures then stay at DEBUG)."""
    side = min_cell_side(s)
    read = {k: halo_box(b, shape, s) if shape is not None else b for k, b in boxes.items()}
    small = [k for k, (x0, x1, y0, y1) in read.items() if min(x1 - x0, y1 - y0) < side]
    if small:
        w = min(read[k][1] - read[k][0] for k in small)
        h = min(read[k][3] - read[k][2] for k in small)
        log.warning("ePSF: %d of %d cells (down to %dx%d px) are smaller than a star cut-out plus "
                    "its pad, %d px = 2 x (epsf.cutout_size // 2 + epsf.edge_pad) + 2 with cutout_size=%d, "
                    "edge_pad=%d: they can hold no PSF star (lower epsf.epsf_ngrid, cutout_size or edge_pad)",
                    len(small), len(boxes), w, h, side, int(s.cutout_size), int(s.edge_pad))
    return small
