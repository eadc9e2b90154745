"""Each band's PSFs after the ePSF phase, assembled on rank 0 and shared with every rank.

The cells' ePSF stamps and their PSF flux error (stages.psf_error), the band's polynomial PSF
field (stages.psf_poly) with its outer wing measured on the band's bright stars
(stages.psf_wing; candidates ranked on the white stack, cut-outs read from the prepared
store), the per-patch PSF choices, and the same read back from the ePSF folders for commands
that start after the ePSF phase (``run-patches``, ``build-patch-inputs``).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
from scipy import ndimage

from .flags import as_bool
from .stages.psf_poly import evaluate_field
from .stages.psf_wing import measure_wing, with_bright_wing
from .tasks import read_saturated_stars, read_working_catalog

log = logging.getLogger("tract7dt_mpi.pipeline")

#: candidates ranked on the white stack (per band the brightest isolated ones are used)
N_CANDIDATES = 60
#: bright stars measured per band
BRIGHT_WING_STARS = 20
#: a catalogue neighbour of a wing or halo star is masked out to this many FWHM (or NEIGHBOUR_RE
#: times its catalogue Re, if larger): its light is no wing
NEIGHBOUR_FWHM = 3.0
NEIGHBOUR_RE = 2.5


def star_candidates(catalog, prepared, fwhm: float, saturated: bool = True) -> np.ndarray:
    """(n, 2) working-frame (x, y) of the catalogue's likely stars (typed STAR, Gaia-matched and,
    with ``saturated``, excluded by the saturation cut: a source near a saturated star is excluded
    as well), brightest first on the white stack (saturated ones first), at most
    ``N_CANDIDATES``."""
    if catalog is None or len(catalog) == 0 or not {"x_pix_white", "y_pix_white"} <= set(catalog.columns):
        return np.zeros((0, 2))
    star = np.zeros(len(catalog), bool)
    if "TYPE" in catalog.columns:
        star |= catalog["TYPE"].astype(str).str.strip().str.upper().eq("STAR").to_numpy()
    if "gaia_source_id" in catalog.columns:
        gid = catalog["gaia_source_id"].astype(str).str.strip()
        star |= ~gid.isin(("", "nan", "None", "<NA>")).to_numpy()
    sat = as_bool(catalog["excluded_saturation"]) if "excluded_saturation" in catalog.columns \
        else np.zeros(len(catalog), bool)
    if saturated:
        star |= sat
    x = catalog["x_pix_white"].to_numpy(float)
    y = catalog["y_pix_white"].to_numpy(float)
    h, w = prepared.shape
    ok = star & np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x < w) & (y < h)
    idx = np.where(ok)[0]
    if idx.size == 0 or not prepared.has_white:
        return np.zeros((0, 2))
    r = max(3.0 * float(fwhm), 3.0)
    light = np.zeros(idx.size)
    for j, i in enumerate(idx):
        x0, y0 = int(x[i] - r), int(y[i] - r)
        img, _ = prepared.read_white(max(y0, 0), int(y[i] + r) + 1, max(x0, 0), int(x[i] + r) + 1)
        light[j] = np.nansum(img)
    order = np.lexsort((-light, ~sat[idx]))[:N_CANDIDATES]
    return np.stack([x[idx[order]], y[idx[order]]], axis=1)


def neighbour_disks(catalog, fwhm: float) -> np.ndarray:
    """(n, 3) working-frame (x, y, radius) of every catalogue source, the radius
    ``NEIGHBOUR_FWHM`` FWHM or ``NEIGHBOUR_RE`` times its catalogue Re (px) if larger."""
    if catalog is None or len(catalog) == 0 or not {"x_pix_white", "y_pix_white"} <= set(catalog.columns):
        return np.zeros((0, 3))
    x = catalog["x_pix_white"].to_numpy(float)
    y = catalog["y_pix_white"].to_numpy(float)
    r = np.full(len(catalog), NEIGHBOUR_FWHM * float(fwhm))
    if "Re" in catalog.columns:
        re = pd.to_numeric(catalog["Re"], errors="coerce").to_numpy(float)
        r = np.fmax(r, NEIGHBOUR_RE * np.where(np.isfinite(re) & (re > 0), re, 0.0))
    ok = np.isfinite(x) & np.isfinite(y)
    return np.column_stack([x[ok], y[ok], r[ok]])


def _mask_neighbours(good, x: float, y: float, cx: float, cy: float, disks) -> None:
    """Set ``good`` False within the ``disks`` (frame (x, y, r)) other than the star's own row
    (within 1.5 px of frame (x, y)); (cx, cy): the star in the cut-out."""
    if disks is None or not len(disks):
        return
    h, w = good.shape
    d = np.hypot(disks[:, 0] - x, disks[:, 1] - y)
    near = disks[(d > 1.5) & (d < np.hypot(h, w) + disks[:, 2])]
    if not len(near):
        return
    yy, xx = np.indices(good.shape)
    for nx, ny, r in near:
        good &= (xx - (nx - x + cx)) ** 2 + (yy - (ny - y + cy)) ** 2 >= r * r


def _cutout(prepared, band: str, x: float, y: float, r_max: float, fwhm: float, disks=None):
    """(image, good, x, y, r_core) of ``band`` within ``r_max`` of (x, y): (x, y) in the cut-out,
    ``r_core`` the radius inside which the star's own saturated or non-finite pixels lie (the
    masked region that reaches within 2 px of its centre; 0 if none: a saturated neighbour's
    core is not the star's); ``disks`` (:func:`neighbour_disks`) are not good."""
    R = int(np.ceil(r_max)) + 1
    ix, iy = int(round(x)), int(round(y))
    y0, x0 = max(iy - R, 0), max(ix - R, 0)
    cut = prepared.read(band, y0, iy + R + 1, x0, ix + R + 1, with_bright=False)
    bad = cut.nonfinite | cut.saturated
    cx, cy = x - x0, y - y0
    yy, xx = np.indices(bad.shape)
    rr = np.hypot(xx - cx, yy - cy)
    lab, _ = ndimage.label(bad & (rr < 10.0 * fwhm))
    own = np.unique(lab[(rr <= 2.0) & (lab > 0)])
    core = np.isin(lab, own) & (lab > 0)
    r_core = float(rr[core].max()) if core.any() else 0.0
    good = ~bad
    _mask_neighbours(good, x, y, cx, cy, disks)
    return cut.img, good, cx, cy, r_core


def _cutouts(prepared, band: str, xy, r_max: float, n_stars: int, fwhm: float, disks=None):
    """Up to ``n_stars`` :func:`_cutout` s of ``band`` around isolated candidates (no brighter
    candidate within ``r_max``), catalogue neighbours (``disks``) masked."""
    out, used = [], []
    for k, (x, y) in enumerate(xy):
        if len(out) >= n_stars:
            break
        if k and np.any(np.hypot(xy[:k, 0] - x, xy[:k, 1] - y) < r_max):
            continue
        out.append(_cutout(prepared, band, x, y, r_max, fwhm, disks))
        used.append((x, y))
    return out, np.asarray(used).reshape(-1, 2)


def add_bright_wing(field, prepared, band: str, xy, fwhm: float, r_max_fwhm: float, n_stars: int,
                    disks=None):
    """``field`` with its outer wing and light beyond the stamp measured on the band's bright
    stars (stages.psf_wing), their catalogue neighbours (``disks``) masked, or ``field``
    unchanged (logged) when too few stars show one."""
    r_join = field.wings.get("wing_radius_pix") or 3.0 * fwhm
    r_max = float(min(r_max_fwhm * fwhm, 0.5 * min(prepared.shape)))
    cuts, used = _cutouts(prepared, band, np.asarray(xy, float).reshape(-1, 2), r_max, n_stars, fwhm,
                          disks)
    keep, stamps = [], []
    for cut, (x, y) in zip(cuts, used):
        st, ef = evaluate_field(field, float(x), float(y))
        if st is not None:                    # no positive field there: the star cannot anchor
            keep.append(cut)
            stamps.append(np.asarray(st, float) * ef)
    cuts = keep
    wing = measure_wing(cuts, stamps, fwhm, float(r_join), r_max) if cuts else None
    if wing is None:
        log.info("ePSF %s: no bright-star wing (%d candidate stars); the field's own tail is kept",
                 band, len(cuts))
        return field
    new = with_bright_wing(field, wing, stamps, fwhm)
    log.info("ePSF %s: wing r^-%.2f beyond %.0f px from %d bright stars (%d dropped), out to %.0f px; "
             "light beyond the stamp %.2f%% (field's own tail: %.2f%%)", band, wing.slope, wing.r_join,
             wing.n_stars, wing.n_rejected, wing.r_max, 100 * new.tail_beyond, 100 * field.tail_beyond)
    return new


def saturated_detections(cfg) -> np.ndarray:
    """(n, 2) working-frame (x, y) of the bright-mask stage's saturated detections that match no
    catalogue row (stars too bright for the catalogue), brightest (white-stack flux) first."""
    sat = read_saturated_stars(cfg)
    if "flux" in sat.columns and len(sat):
        sat = sat.sort_values("flux", ascending=False, kind="stable")
    return sat[["x", "y"]].to_numpy(float).reshape(-1, 2)


def bright_stars(sat_xy, catalog, prepared, fwhm: float, saturated: bool = True) -> np.ndarray:
    """(n, 2) bright stars, brightest first, each once: the saturated detections no catalogue row
    matches (``sat_xy``, :func:`saturated_detections`), then :func:`star_candidates` (with
    ``saturated``). The wing stars and the halo stars both start from the uncatalogued saturated
    ones: the brightest stars of a field are often missing from its catalogue, and only they show
    the wing far out (on a GalSim Kolmogorov x Airy tile the catalogue's stars alone, 20-100 times
    fainter, gave r^-4.0 instead of r^-3.5 and 0.16 % of the light beyond the stamp instead of
    0.39 %)."""
    return distinct_positions(np.concatenate([np.asarray(sat_xy, float).reshape(-1, 2),
                                              star_candidates(catalog, prepared, fwhm, saturated)]),
                              2.0 * fwhm)


def distinct_positions(xy, radius: float) -> np.ndarray:
    """``xy`` without the rows within ``radius`` of an earlier row (a saturated catalogue star is
    also an unmatched saturated detection of the bright mask: its halo must be taken once)."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    keep = np.ones(len(xy), bool)
    for k in range(1, len(xy)):
        prev = xy[:k][keep[:k]]
        keep[k] = not np.any(np.hypot(prev[:, 0] - xy[k, 0], prev[:, 1] - xy[k, 1]) < radius)
    return xy[keep]


def _enclosed(field, x: float, y: float, radius: float) -> float:
    """The field's fraction of its total flux within ``radius`` px of its centre at (x, y)."""
    st, ef = evaluate_field(field, float(x), float(y))
    if st is None:
        return float("nan")
    st = np.asarray(st, float)
    c = (st.shape[0] - 1) / 2.0
    yy, xx = np.indices(st.shape)
    return float(st[np.hypot(xx - c, yy - c) <= radius].sum() * ef)


def add_star_halos(field, prepared, band: str, xy, fwhm: float, r_max_fwhm: float, disks=None):
    """``field`` with ``halos``: the (x, y, total flux) of the stars among ``xy`` whose halo beyond
    the stamp reaches ``star_halos.MIN_SIGMA`` of the band's sky noise at the stamp's edge, a
    saturated star's flux measured on its own far rings with the band's bright-star wing, an
    unsaturated star's on its core within 3 FWHM (stages.star_halos); ``field`` unchanged
    without a bright-star wing."""
    from dataclasses import replace

    from .stages.star_halos import MIN_SIGMA, core_flux, halo_flux
    bw = field.wings.get("bright_wing")
    if not bw or not len(xy):
        return field
    amp, slope = float(bw["amp"]), float(bw["slope"])
    half = (int(field.final_size) - 1) // 2
    info = prepared.band_info(band)
    sigma = float(info.skysig) * float(info.scale)
    r_max = float(min(r_max_fwhm * fwhm, 0.5 * min(prepared.shape)))
    xy = np.asarray(xy, float).reshape(-1, 2)
    r_other = max(5.0 * fwhm, 15.0)
    r_ap = 3.0 * fwhm
    keep = []
    for k, (x, y) in enumerate(xy):
        img, good, cx, cy, r_core = _cutout(prepared, band, x, y, r_max, fwhm, disks)
        d = np.hypot(xy[:, 0] - x, xy[:, 1] - y)
        others = xy[(d > 0) & (d < r_max + r_other)]
        if len(others):                                 # the other bright stars' cores are not its halo
            yy, xx = np.indices(good.shape)
            for ox, oy in others:
                good &= (xx - (ox - x + cx)) ** 2 + (yy - (oy - y + cy)) ** 2 >= r_other ** 2
        if r_core > 0:                       # saturated: only its wing measures it
            f = halo_flux(img, good, cx, cy, max(float(bw["r_join"]), r_core + 2.0), r_max, amp, slope)
        else:
            f = core_flux(img, good, cx, cy, r_ap, _enclosed(field, x, y, r_ap))
        if np.isfinite(f) and f * amp * half ** (-slope) > MIN_SIGMA * sigma:
            keep.append((float(x), float(y), f))
    log.info("ePSF %s: halos beyond the stamp subtracted for %d of %d bright stars", band, len(keep), len(xy))
    return replace(field, halos=tuple(keep))


def with_psf_flux_errors(stamps: dict, metas) -> dict:
    """{band: {tag: (stamp, n)}} -> {band: {tag: (stamp, n, PSF flux-error fraction of the band,
    ((x, y, share), ...) of the cell's ePSF stars, fraction of the PSF's total flux in the stamp)}}."""
    from .stages.psf_error import band_psf_flux_errors
    frac = band_psf_flux_errors(metas)
    stars, ef = {}, {}
    for m in metas:
        if m and m.get("psf_flux_in_stamp") is not None:
            ef[(m.get("band"), m.get("patch"))] = float(m["psf_flux_in_stamp"])
        xy, wt = (m or {}).get("used_stars_xy") or [], (m or {}).get("used_stars_weight") or []
        if m and len(xy) == len(wt):
            stars[(m.get("band"), m.get("patch"))] = tuple((float(a), float(b), float(w))
                                                           for (a, b), w in zip(xy, wt))
    for band in sorted(stamps):
        v = frac.get(band, float("nan"))
        log.info("ePSF %s: PSF flux error %s (ePSF stars: PSF-fit flux vs their flux within 3 FWHM)", band,
                 f"{100 * v:.2f}%" if np.isfinite(v) else "unknown (fewer than 5 usable stars)")
    return {b: {t: (v[0], v[1], frac.get(b, float("nan")), stars.get((b, t), ()), ef.get((b, t), 1.0))
                for t, v in cells.items()} for b, cells in stamps.items()}


def _ok_metas_by_band(metas) -> dict:
    by_band = {}
    for m in metas:
        if m and m.get("status") == "ok":
            by_band.setdefault(m.get("band"), []).append(m)
    return dict(sorted(by_band.items()))


def _band_fwhm(ms) -> float:
    return float(np.nanmedian([((m.get("builder") or {}).get("fwhm_pix") or np.nan) for m in ms]))


def band_offsets(cfg, by_band: dict, shape) -> dict:
    """band -> stages.band_offsets.BandOffset from the ePSF stars' centres in each band's cells
    (``epsf.band_offsets``; empty when off, or when fewer than two bands have enough stars)."""
    from .stages.band_offsets import MIN_STARS as MIN_OFFSET_STARS, fit_band_offsets
    if not cfg.epsf.band_offsets or shape is None:
        return {}
    xy = {b: np.asarray([p for m in ms for p in (m.get("used_stars_xy") or [])], float).reshape(-1, 2)
          for b, ms in by_band.items()}
    offsets = fit_band_offsets(xy, shape, int(cfg.epsf.field_degree))
    for b, o in offsets.items():
        g = np.linspace(0.0, 1.0, 9)
        gx, gy = np.meshgrid(g * (shape[1] - 1), g * (shape[0] - 1))
        dx, dy = o.at(gx.ravel(), gy.ravel())
        d = np.hypot(dx, dy)
        log.info("ePSF %s: registration offset from the other bands %.3f px (median over the frame), "
                 "%.3f px at most; degree %d from %d stars (%d clipped), star scatter %.3f px",
                 b, float(np.median(d)), float(d.max()), o.degree, o.n_stars, o.n_clipped, o.scatter)
        if d.max() > 1.0:
            log.warning("ePSF %s: the band is off the others by up to %.2f px: check its WCS and "
                        "resampling", b, float(d.max()))
    missing = sorted(b for b in xy if b not in offsets)
    if missing and len(xy) > 1:
        log.info("ePSF %s: no registration offset (fewer than %d ePSF stars matched in another band); "
                 "fitted in the bands' mean frame", ",".join(missing), MIN_OFFSET_STARS)
    return offsets


def field_stars(cfg, metas, prepared, catalog):
    """(ok cell metas by band, wing candidates, halo stars, neighbour disks, band offsets) for
    :func:`band_field`: the bright-star lists come from the white stack and the catalogue once for
    all bands (ranked with the first band's FWHM), so every band, on whichever rank, gets the same
    ones; the registration offsets need every band's stars."""
    by_band = _ok_metas_by_band(metas)
    offsets = band_offsets(cfg, by_band, getattr(prepared, "shape", None))
    candidates = halo_xy = disks = None
    if by_band and prepared is not None and cfg.epsf.bright_wing:
        fwhm = _band_fwhm(next(iter(by_band.values())))
        sat = saturated_detections(cfg)
        candidates = bright_stars(sat, catalog, prepared, fwhm)
        disks = neighbour_disks(catalog, fwhm)
        if cfg.epsf.star_halos:
            halo_xy = bright_stars(sat, catalog, prepared, fwhm, saturated=False)
    return by_band, candidates, halo_xy, disks, offsets


def band_field(cfg, band: str, ms, shape, prepared=None, candidates=None, halo_xy=None, disks=None,
               offset=None):
    """The band's polynomial PSF field (stages.psf_poly) fitted to the stars of its successful
    cells ``ms`` (their ``stars.npz``), with its outer wing from the bright ``candidates`` on the
    ``prepared`` images (``epsf.bright_wing``), the halos of ``halo_xy`` (``epsf.star_halos``)
    and its registration ``offset`` from the other bands (:func:`band_offsets`); None when the
    band has no field."""
    from .stages.psf_poly import fit_psf_field
    xy, vals, w = [], [], []
    for m in ms:
        path = os.path.join(cfg.outputs.epsf_dir, band, m["patch"], "stars.npz")
        try:
            with np.load(path) as z:
                xy.append(z["xy"]), vals.append(z["vals"]), w.append(z["w"])
        except (OSError, KeyError, ValueError):
            continue
    if not xy or len({v.shape[1:] for v in vals}) != 1:
        return None
    fwhm = _band_fwhm(ms)
    n_cells = len(xy)
    xy, vals, w = np.concatenate(xy), np.concatenate(vals), np.concatenate(w)
    field = fit_psf_field(xy, vals, w, int(cfg.epsf.field_degree), shape, int(cfg.epsf.final_psf_size),
                          fwhm, wing_tail=bool(cfg.epsf.wing_tail))
    if field is None:
        log.warning("ePSF %s: no PSF field from %d stars (no positive flux); patches use the cells' "
                    "ePSFs", band, len(xy))
        return None
    log.info("ePSF %s: PSF field of degree %d from %d stars in %d cells (%d left out: core not covered "
             "or not following the field)", band, field.degree, field.n_stars, n_cells, field.n_rejected)
    field.offset = offset
    if cfg.epsf.cell_cores:
        field = with_cell_cores(field, band, vals, w, xy, shape, int(cfg.epsf.epsf_ngrid), fwhm)
    if prepared is not None and candidates is not None:
        field = add_bright_wing(field, prepared, band, candidates, fwhm,
                                float(cfg.epsf.bright_wing_radius_fwhm), BRIGHT_WING_STARS, disks)
        if halo_xy is not None:
            field = add_star_halos(field, prepared, band, halo_xy, fwhm,
                                   float(cfg.epsf.bright_wing_radius_fwhm), disks)
    return field


def with_cell_cores(field, band: str, vals, w, xy, shape, n: int, fwhm: float):
    """``field`` with its per-cell core corrections (stages.psf_local), logged."""
    from .stages.psf_local import fit_cell_cores
    cores = fit_cell_cores(field, vals, w, xy, shape, n, fwhm)
    if cores is None:
        return field
    field.cores = cores
    used = {rc: f for rc, f in cores.factors.items() if rc in cores.corr}
    strong = sorted(rc for rc, f in used.items() if f[0] >= 0.5)
    log.info("ePSF %s: core corrections in %d of %d cells with >= 3 stars (%d strong, chi^2/K up to %.1f%s)",
             band, len(used), len(cores.factors), len(strong),
             max((f[1] for f in cores.factors.values()), default=0.0),
             "; strong in " + " ".join(f"r{r:02d}_c{c:02d}" for r, c in strong[:12]) if strong else "")
    return field


def field_tasks(cfg, metas, prepared, catalog) -> list:
    """One queue task per band for :func:`band_field` (``tasks.Worker.psf_field``; none unless
    ``patch_run.epsf_interpolation: field``), costliest first (most ePSF stars)."""
    from .parallel.scheduler import Task
    if cfg.patch_run.epsf_interpolation != "field":
        return []
    by_band, candidates, halo_xy, disks, offsets = field_stars(cfg, metas, prepared, catalog)
    out = []
    for i, (band, ms) in enumerate(by_band.items()):
        cost = float(sum(int(m.get("nstars_used") or 0) for m in ms)) + 1.0
        out.append(Task(id=f"psf_field:{band}", kind="psf_field", cost=cost, index=i,
                        payload={"band": band, "metas": ms, "candidates": candidates, "halo_xy": halo_xy,
                                 "disks": disks, "offset": offsets.get(band)}))
    return out


def with_psf_fields(cfg, stamps: dict, metas, shape, prepared=None, catalog=None) -> dict:
    """Add each band's :func:`band_field` under ``psf_poly.FIELD_KEY`` of its entry in ``stamps``,
    one band after another (the pipeline runs the bands as tasks: ``tasks.Worker.psf_field``);
    only under ``patch_run.epsf_interpolation: field``."""
    from .stages.psf_poly import FIELD_KEY
    if cfg.patch_run.epsf_interpolation != "field":
        return stamps
    by_band, candidates, halo_xy, disks, offsets = field_stars(cfg, metas, prepared, catalog)
    for band, ms in by_band.items():
        field = band_field(cfg, band, ms, shape, prepared, candidates, halo_xy, disks, offsets.get(band))
        if field is not None:
            stamps.setdefault(band, {})[FIELD_KEY] = field
    return stamps


def psf_choices(cfg, stamps: dict):
    """epsf_tag -> band -> PsfChoiceInput from the broadcast stamps {band: {tag: (stamp, n[, frac])}}."""
    from .stages.patch_inputs import PsfChoiceInput
    from .stages.psf_poly import FIELD_KEY
    out = {}
    for band, cells in stamps.items():
        for tag, v in cells.items():
            if tag == FIELD_KEY:
                out.setdefault(FIELD_KEY, {})[band] = v
                continue
            stamp, nstars, *rest = v
            out.setdefault(tag, {})[band] = PsfChoiceInput(
                stamp=stamp, nstars_used=nstars,
                path=os.path.join(cfg.outputs.epsf_dir, band, tag, "epsf.npy"),
                flux_err_frac=float(rest[0]) if rest else float("nan"),
                stars=tuple(rest[1]) if len(rest) > 1 else (),
                flux_in_stamp=float(rest[2]) if len(rest) > 2 else 1.0)
    return out


def cells_to_build(cfg, tasks, done) -> tuple[list, dict]:
    """(the cell tasks to run, {task id: (meta, stamp)} of those an earlier run built): a cell is
    carried over when ``done(task id)`` (its journal record) and its products are complete."""
    run, skipped = [], {}
    for t in tasks:
        got = epsf_from_disk(cfg, t.payload["band"], t.payload["tag"]) if done(t.id) else None
        if got is None:
            run.append(t)
        else:
            skipped[t.id] = got
    return run, skipped


def cell_answer(task, data, info) -> tuple:
    """(meta, stamp) of an ePSF cell task's answer; a failed task's meta says why (no stamp)."""
    if data is not None:
        return data["meta"], data["stamp"]
    return {"band": task.payload["band"], "patch": task.payload["tag"], "status": "fail",
            "error": info.error_line}, None


def collect_epsf_cells(tasks, skipped, metas):
    """Stamps {band: {tag: (stamp, nstars)}} and the cell metas in task order, from the cells run
    now (``metas``: task id -> (meta, stamp)) and those carried over (``skipped``, same form)."""
    stamps, ordered = {}, []
    for t in tasks:
        meta, stamp = skipped.get(t.id) or metas.get(t.id) or (None, None)
        if meta is None:
            continue
        ordered.append(meta)
        if stamp is not None:
            stamps.setdefault(t.payload["band"], {})[t.payload["tag"]] = (
                stamp, meta.get("nstars_used"))
    return stamps, ordered


def write_epsf_summary(cfg, metas):
    """``epsf_summary.json`` of the cells and the count/failure lines of the log."""
    from .io.atomic import atomic_write_json
    from .stages.epsf import count_status, epsf_summary
    os.makedirs(cfg.outputs.epsf_dir, exist_ok=True)
    atomic_write_json(os.path.join(cfg.outputs.epsf_dir, "epsf_summary.json"), epsf_summary(metas))
    total, ok, fail = count_status(metas)
    log.info("ePSF cells: total=%d OK=%d FAIL=%d", total, ok, fail)
    from .stages.epsf_report import failure_summary
    for line in failure_summary(metas):
        log.info(line)


def stamps_from_disk(cfg, bands, cells, prepared):
    """The stamps of an earlier ePSF phase, as :func:`with_psf_fields` returns them after a run
    (``prepared``: the prepared store, for the bright-star wings)."""
    from .stages.epsf_cells import cell_tag
    stamps, metas = {}, []
    for b in bands:
        for r, c in cells:
            got = epsf_from_disk(cfg, b, cell_tag(r, c))
            if got is not None:
                metas.append(got[0])
            if got is not None and got[1] is not None:
                stamps.setdefault(b, {})[cell_tag(r, c)] = (got[1], got[0].get("nstars_used"))
    return with_psf_fields(cfg, with_psf_flux_errors(stamps, metas), metas, prepared.shape, prepared,
                           read_working_catalog(cfg))


def store_epsf_stamps(stamps):
    """band -> (tags, stacked stamps, nstars) for the results store; bands whose cells have mixed
    stamp sizes are left out (they stay in the ePSF folders only)."""
    from .stages.psf_poly import FIELD_KEY
    out = {}
    for band, cells in (stamps or {}).items():
        tags = sorted(t for t in cells if t != FIELD_KEY)
        shapes = {cells[t][0].shape for t in tags}
        if len(shapes) != 1:
            continue
        out[band] = (tags, np.stack([cells[t][0] for t in tags]), [cells[t][1] for t in tags])
    return out


def epsf_from_disk(cfg, band, tag):
    """(meta, stamp) of an ePSF cell written by an earlier run (resume); None when incomplete."""
    cell = os.path.join(cfg.outputs.epsf_dir, band, tag)
    try:
        with open(os.path.join(cell, "meta.json"), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    stamp = None
    if meta.get("status") == "ok":
        try:
            stamp = np.load(os.path.join(cell, "epsf.npy"), allow_pickle=False)
        except (OSError, ValueError):
            return None
    return meta, stamp
