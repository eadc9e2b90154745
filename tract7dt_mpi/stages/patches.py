"""Patch plan and source assignment with a per-patch cost estimate.

Every active ePSF cell is split into ``ngrid x ngrid`` base boxes that tile the cell; the fitting
region (ROI) is the base box grown by a halo wide enough to hold the PSF wings of sources near
the edge. A source is *base* in exactly one patch (half-open boxes) and *halo* in the neighbours
whose ROI contains it; halo sources are fitted (so neighbours' light is modelled) but reported
only by their home patch. Pure geometry: no files, no MPI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import InputError

#: patch fields that go into patches.csv / patches.json (docs/outputs.md), in order
RECORD_FIELDS = ("epsf_r", "epsf_c", "patch_r", "patch_c", "epsf_tag", "patch_tag",
                 "x0_base", "x1_base", "y0_base", "y1_base",
                 "x0_roi", "x1_roi", "y0_roi", "y1_roi", "halo_pix")


@dataclass(frozen=True)
class PatchSpec:
    """One fitting patch: geometry (half-open pixel boxes, working frame) + assigned rows."""

    epsf_r: int
    epsf_c: int
    patch_r: int
    patch_c: int
    epsf_tag: str
    patch_tag: str
    x0_base: int
    x1_base: int
    y0_base: int
    y1_base: int
    x0_roi: int
    x1_roi: int
    y0_roi: int
    y1_roi: int
    halo_pix: int
    base_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    halo_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cost: float = 0.0

    @property
    def roi_shape(self) -> tuple[int, int]:
        """(height, width) of the ROI."""
        return (self.y1_roi - self.y0_roi, self.x1_roi - self.x0_roi)

    @property
    def n_sources(self) -> int:
        return int(len(self.base_rows))

    @property
    def n_halo_sources(self) -> int:
        return int(len(self.halo_rows))

    def record(self) -> dict:
        """The patches.csv/json record (plain Python types): the patch fields, then the source
        counts and the cost estimate (extra columns, useful when reading the plan)."""
        out = {}
        for k in RECORD_FIELDS:
            v = getattr(self, k)
            out[k] = v if isinstance(v, str) else int(v)
        out["n_sources"] = self.n_sources
        out["n_halo_sources"] = self.n_halo_sources
        out["cost"] = float(self.cost)
        return out


def halo_pix(final_psf_size: int, halo_pix_min: int) -> int:
    """Halo width: ``max((final_psf_size - 1)//2 + 2, halo_pix_min)`` (29 px with defaults)."""
    return int(max((int(final_psf_size) - 1) // 2 + 2, int(halo_pix_min)))


def _splits(lo: int, hi: int, n: int, what: str) -> list[tuple[int, int]]:
    """Split ``[lo, hi)`` into n pieces of ``(hi-lo)//n``; the last one ends at ``hi``."""
    step = (hi - lo) // n
    if step <= 0:
        raise InputError(f"{what} too fine: {hi - lo} px cannot be split into {n} parts")
    return [(lo + i * step, hi if i == n - 1 else lo + (i + 1) * step) for i in range(n)]


def cell_bounds(shape: tuple[int, int], epsf_ngrid: int) -> tuple[list, list]:
    """ePSF cell boundaries: ``(rows[(y0, y1)], cols[(x0, x1)])``."""
    h, w = int(shape[0]), int(shape[1])
    n = int(epsf_ngrid)
    if n < 1:
        raise InputError(f"epsf.epsf_ngrid: expected an integer >= 1, got {epsf_ngrid}")
    return _splits(0, h, n, "epsf.epsf_ngrid"), _splits(0, w, n, "epsf.epsf_ngrid")


@dataclass(frozen=True)
class PlanOptions:
    """The grid of the patch plan (built by :func:`tract7dt_mpi.stage_options.plan_options`):
    ``epsf.epsf_ngrid``, ``epsf.ngrid``, ``epsf.final_psf_size`` and ``patches.halo_pix_min``."""

    epsf_ngrid: int
    ngrid: int
    final_psf_size: int
    halo_pix_min: int


def build_patch_plan(shape, active_cells: Iterable[tuple[int, int]] | None, opts: PlanOptions) -> list[PatchSpec]:
    """Patch geometry for every active cell (row-major er, ec, pr, pc); no sources yet.

    ``shape`` is the working-frame (H, W); ``active_cells`` an iterable of (epsf_r, epsf_c) or None
    for all cells.
    """
    h, w = int(shape[0]), int(shape[1])
    n_cell = int(opts.epsf_ngrid)
    ngrid = int(opts.ngrid)
    if ngrid < 1:
        raise InputError(f"epsf.ngrid: expected an integer >= 1, got {ngrid}")
    halo = halo_pix(opts.final_psf_size, opts.halo_pix_min)
    rows, cols = cell_bounds((h, w), n_cell)
    if active_cells is None:
        cells = [(r, c) for r in range(n_cell) for c in range(n_cell)]
    else:
        cells = sorted({(int(r), int(c)) for r, c in active_cells})
        bad = [rc for rc in cells if not (0 <= rc[0] < n_cell and 0 <= rc[1] < n_cell)]
        if bad:
            raise InputError(f"active ePSF cell {bad[0]} outside the {n_cell}x{n_cell} grid")
    plan = []
    for er, ec in cells:
        (cy0, cy1), (cx0, cx1) = rows[er], cols[ec]
        prs = _splits(cy0, cy1, ngrid, "epsf.ngrid")
        pcs = _splits(cx0, cx1, ngrid, "epsf.ngrid")
        for pr, (y0, y1) in enumerate(prs):
            for pc, (x0, x1) in enumerate(pcs):
                plan.append(PatchSpec(
                    epsf_r=er, epsf_c=ec, patch_r=pr, patch_c=pc,
                    epsf_tag=f"r{er:02d}_c{ec:02d}",
                    patch_tag=f"r{er:02d}_c{ec:02d}_pr{pr:02d}_pc{pc:02d}",
                    x0_base=x0, x1_base=x1, y0_base=y0, y1_base=y1,
                    x0_roi=max(0, x0 - halo), x1_roi=min(w, x1 + halo),
                    y0_roi=max(0, y0 - halo), y1_roi=min(h, y1 + halo), halo_pix=halo))
    return plan


def active_positions(catalog: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(_row, x, y)`` of active rows (``excluded_any`` False or missing) with finite pixels."""
    from ..flags import as_bool

    for col in ("x_pix_white", "y_pix_white"):
        if col not in catalog.columns:
            raise InputError(f"working catalog: missing column '{col}' (project RA/DEC first)")
    rows = (catalog["_row"].to_numpy(np.int64) if "_row" in catalog.columns
            else np.arange(len(catalog), dtype=np.int64))
    x = pd.to_numeric(catalog["x_pix_white"], errors="coerce").to_numpy(float)
    y = pd.to_numeric(catalog["y_pix_white"], errors="coerce").to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    if "excluded_any" in catalog.columns:
        ok &= ~as_bool(catalog["excluded_any"])
    return rows[ok], x[ok], y[ok]


def assign_sources(plan: list[PatchSpec], catalog: pd.DataFrame, skip_empty: bool,
                   n_bands: int = 1, outer: int = 0) -> list[PatchSpec]:
    """Fill base/halo rows (catalog ``_row`` values) and the cost of every patch.

    Base = inside the half-open base box; halo = inside the half-open ROI grown by ``outer`` px
    but not the base box. The serial pipeline's halo stops at the ROI edge; a bright source just outside it
    then shines into the ROI unmodelled and the fit bends every model near it, so the pipeline
    passes ``outer`` = the PSF radius (those sources are fitted with their position and shape
    held, and never written).
    With ``skip_empty`` patches without base rows are dropped (even if they have halo rows).
    cost = (n_base + n_halo) x n_bands x ROI area: proportional to the fit's work, used to
    dispatch the largest patches first.
    """
    rows, x, y = active_positions(catalog)
    order = np.argsort(x, kind="stable")
    rows, x, y = rows[order], x[order], y[order]
    out = []
    for p in plan:
        lo = np.searchsorted(x, p.x0_roi - outer, side="left")
        hi = np.searchsorted(x, p.x1_roi + outer, side="left")
        xs, ys, rs = x[lo:hi], y[lo:hi], rows[lo:hi]
        in_roi = (ys >= p.y0_roi - outer) & (ys < p.y1_roi + outer)
        in_base = (in_roi & (xs >= p.x0_base) & (xs < p.x1_base)
                   & (ys >= p.y0_base) & (ys < p.y1_base))
        base = np.sort(rs[in_base])
        halo = np.sort(rs[in_roi & ~in_base])
        if skip_empty and len(base) == 0:
            continue
        hh, ww = p.roi_shape
        cost = float((len(base) + len(halo)) * max(1, int(n_bands)) * hh * ww)
        out.append(dataclasses.replace(p, base_rows=base.astype(np.int64),
                                       halo_rows=halo.astype(np.int64), cost=cost))
    return out


#: growth-curve radii (px) of :func:`light_radii`; light beyond the last one is not measured
LIGHT_RADII = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 32.0,
                        40.0, 50.0, 64.0, 80.0, 100.0])


def light_radii(image: np.ndarray, x, y, sigma: np.ndarray | None = None) -> np.ndarray:
    """Half-light radius (px) of the light around each (x, y) of ``image`` (0-based pixel
    centres): the radius holding half of the flux inside ``LIGHT_RADII[-1]``, the background
    the median of an annulus just beyond it. For sources without a catalogue size; neighbours'
    light counts too, so it is an upper bound, which is what the patch plan needs. NaN where the
    flux inside the largest radius is not positive, or (with the per-pixel ``sigma``) below 5x
    its noise."""
    import sep

    img = np.ascontiguousarray(np.where(np.isfinite(image), image, 0.0), dtype=np.float64)
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    rmax = float(LIGHT_RADII[-1])
    ann = (rmax, rmax + 12.0)
    growth = np.stack([sep.sum_circle(img, x, y, float(r), bkgann=ann, subpix=5)[0] for r in LIGHT_RADII],
                      axis=1)
    total = growth[:, -1]
    ok = np.isfinite(total) & (total > 0)
    if sigma is not None:
        err = np.ascontiguousarray(np.where(np.isfinite(sigma), sigma, 0.0), dtype=np.float64)
        noise = sep.sum_circle(img, x, y, rmax, err=err, bkgann=ann, subpix=5)[1]
        ok &= total > 5.0 * noise
    out = np.full(x.size, np.nan)
    for i in np.flatnonzero(ok):
        g = np.maximum.accumulate(growth[i] / total[i])
        out[i] = float(np.interp(0.5, g, LIGHT_RADII))
    return out


def _catalog_sizes(catalog: pd.DataFrame):
    """(_row, x, y, catalogue Re (NaN where absent), typed STAR) of the active rows."""
    from .catalog import find_column

    rows, x, y = active_positions(catalog)
    by_row = catalog.set_index(catalog["_row"].to_numpy(np.int64)) if "_row" in catalog.columns \
        else catalog.set_index(np.arange(len(catalog), dtype=np.int64))
    col, tcol = find_column(catalog.columns, "Re"), find_column(catalog.columns, "TYPE")
    re = pd.to_numeric(by_row[col], errors="coerce").reindex(rows).to_numpy(float) if col is not None \
        else np.full(rows.size, np.nan)
    star = (by_row[tcol].reindex(rows).fillna("").astype(str).str.strip().str.upper() == "STAR").to_numpy() \
        if tcol is not None else np.zeros(rows.size, bool)
    return rows, x, y, np.where(re > 0, re, np.nan), star


def rows_without_size(catalog: pd.DataFrame):
    """(_row, x, y) of the active rows not typed STAR without a positive catalogue Re: those
    whose size :func:`light_radii` measures."""
    rows, x, y, re, star = _catalog_sizes(catalog)
    need = ~np.isfinite(re) & ~star
    return rows[need], x[need], y[need]


def source_extents(catalog: pd.DataFrame, re_factor: float, light_r50: dict | None = None) -> dict:
    """_row -> (x, y, radius px) of the active galaxies: ``re_factor`` x their catalogue ``Re``
    (px), else x their half-light radius on the image (``light_r50``: _row -> px, from
    :func:`light_radii`). Rows typed STAR and rows without a positive size are left out."""
    if not re_factor > 0:
        return {}
    rows, x, y, re, star = _catalog_sizes(catalog)
    if light_r50:
        lr = np.array([light_r50.get(int(r), np.nan) for r in rows], float)
        re = np.where(np.isfinite(re), re, lr)
    ok = np.isfinite(re) & (re > 0) & ~star
    return {int(r): (float(a), float(b), float(re_factor * e)) for r, a, b, e in
            zip(rows[ok], x[ok], y[ok], re[ok])}


def grow_for_big_sources(plan: list[PatchSpec], extents: dict, shape, max_side: int) -> tuple[list, int]:
    """Patches whose ROI does not hold the extent (plus the halo) of one of their base sources,
    with the ROI grown to hold it (clipped to the frame; at most ``max_side`` px a side, centred
    on the largest such source). Run :func:`assign_sources` again afterwards: the sources inside
    the grown ROI become halo rows and are fitted together with the big one. Returns (plan,
    number of patches grown)."""
    h, w = int(shape[0]), int(shape[1])
    out, n = [], 0
    for p in plan:
        boxes = []
        for r in p.base_rows:
            e = extents.get(int(r))
            if e is None:
                continue
            x, y, rad = e
            reach = rad + p.halo_pix
            bx0, bx1 = int(np.floor(x - reach)), int(np.ceil(x + reach)) + 1
            by0, by1 = int(np.floor(y - reach)), int(np.ceil(y + reach)) + 1
            if bx0 < p.x0_roi or bx1 > p.x1_roi or by0 < p.y0_roi or by1 > p.y1_roi:
                boxes.append((rad, x, y, bx0, bx1, by0, by1))
        if not boxes:
            out.append(p)
            continue
        x0, x1 = min([p.x0_roi] + [b[3] for b in boxes]), max([p.x1_roi] + [b[4] for b in boxes])
        y0, y1 = min([p.y0_roi] + [b[5] for b in boxes]), max([p.y1_roi] + [b[6] for b in boxes])
        _, cx, cy = max(boxes)[:3]
        x0, x1 = _limit(x0, x1, cx, max_side, p.x0_base, p.x1_base)
        y0, y1 = _limit(y0, y1, cy, max_side, p.y0_base, p.y1_base)
        out.append(dataclasses.replace(p, x0_roi=max(0, x0), x1_roi=min(w, x1),
                                       y0_roi=max(0, y0), y1_roi=min(h, y1)))
        n += 1
    return out, n


def _limit(lo: int, hi: int, centre: float, max_side: int, base_lo: int, base_hi: int):
    """[lo, hi) cut to ``max_side`` around ``centre``, never smaller than the base box."""
    if hi - lo <= max_side:
        return lo, hi
    half = max_side // 2
    lo2, hi2 = int(round(centre)) - half, int(round(centre)) - half + max_side
    return min(lo2, base_lo), max(hi2, base_hi)


def patches_records(plan: list[PatchSpec]) -> list[dict]:
    """Records for patches.csv / patches.json (docs/outputs.md), plan order."""
    return [p.record() for p in plan]


def patches_frame(plan: list[PatchSpec]) -> pd.DataFrame:
    """patches.csv as a DataFrame with the patch columns."""
    cols = list(RECORD_FIELDS) + ["n_sources", "n_halo_sources", "cost"]
    return pd.DataFrame(patches_records(plan), columns=cols)


def write_patch_plan(plan: list[PatchSpec], patches_dir: str) -> tuple[str, str]:
    """Write ``patches.csv`` and ``patches.json`` (same records) atomically; returns both paths."""
    import os

    from ..io.atomic import atomic_write_csv, atomic_write_json

    os.makedirs(patches_dir, exist_ok=True)
    csv = atomic_write_csv(os.path.join(patches_dir, "patches.csv"), patches_frame(plan))
    js = atomic_write_json(os.path.join(patches_dir, "patches.json"), patches_records(plan))
    return csv, js
