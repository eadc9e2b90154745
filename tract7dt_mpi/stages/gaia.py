"""GaiaXP augmentation of the working catalog (when ``zp.enabled``).

Gaia stars in the G-magnitude window and inside a square box around the active sources are
matched on the sky to catalog rows (``gaia_source_id``), used to backfill missing/zero
``FLUX_{band}`` values, and (optionally) injected as new ``STAR`` rows when unmatched and not
near a saturated pixel. :func:`augment_with_gaia` is pure; :func:`run_augment_gaia` adds the
file reading and the ``ZP/{stem}_with_Gaia.csv`` product (the pipeline draws the overlay).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..io.tables import read_gaiaxp, write_csv
from .catalog import ColumnMap

__all__ = ["GAIA_REQUIRED", "gaia_missing_columns", "selection_box", "sky_match", "augment_with_gaia",
           "run_augment_gaia", "GaiaOptions", "INTERNAL_COLUMNS"]

log = logging.getLogger("tract7dt_mpi.stages.gaia")

GAIA_REQUIRED = ("source_id", "ra", "dec", "phot_g_mean_mag")
#: working-catalog columns not written to the augmented CSV
INTERNAL_COLUMNS = ("_row", "x_pix_white", "y_pix_white")


@dataclass(frozen=True)
class GaiaOptions:
    """What the augmentation reads from the config (built by :func:`tract7dt_mpi.stage_options.gaia_options`).

    ``gaiaxp_csv``: ``inputs.gaiaxp_synphot_csv`` (None: none given); ``zp`` and
    ``saturation_cut``: the ``zp`` and ``source_saturation_cut`` sections; ``zp_ref``:
    ``image_scaling.zp_ref``.
    """

    gaiaxp_csv: str | None
    work_dir: str
    zp: object
    zp_ref: float
    saturation_cut: object


def gaia_missing_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in GAIA_REQUIRED if c not in df.columns]


def selection_box(x, y, shape, min_side: int) -> tuple[int, int, int, int]:
    """Square (x0, x1, y0, y1) around the points: side = max(min_side, extent), shifted
    back inside the frame, then floor/ceil and clamped; image-centred when there are no points."""
    H, W = shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.any():
        cx = 0.5 * (x[ok].min() + x[ok].max())
        cy = 0.5 * (y[ok].min() + y[ok].max())
        ext = max(x[ok].max() - x[ok].min(), y[ok].max() - y[ok].min())
    else:
        cx, cy, ext = W / 2.0, H / 2.0, 0.0
    side = max(float(min_side), float(math.ceil(ext)))

    def fit(c, n):
        lo, hi = c - side / 2.0, c + side / 2.0
        if lo < 0:
            lo, hi = 0.0, hi - lo
        if hi > n:
            lo, hi = lo - (hi - n), float(n)
        return max(0, int(math.floor(lo))), min(n, int(math.ceil(hi)))

    bx0, bx1 = fit(cx, W)
    by0, by1 = fit(cy, H)
    return bx0, bx1, by0, by1


def _unit(ra_deg, dec_deg):
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def sky_match(ra, dec, ra_ref, dec_ref, radius_arcsec: float) -> np.ndarray:
    """Index into the reference list of each point's nearest reference within the radius, else -1."""
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    out = np.full(len(ra), -1, dtype=np.int64)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.any() or len(ra_ref) == 0:
        return out
    from scipy.spatial import cKDTree
    tree = cKDTree(_unit(ra_ref, dec_ref))
    d, idx = tree.query(_unit(ra[ok], dec[ok]), k=1)
    sep_arcsec = np.degrees(2.0 * np.arcsin(np.clip(d / 2.0, 0, 1))) * 3600.0
    good = sep_arcsec <= radius_arcsec
    sub = np.full(ok.sum(), -1, dtype=np.int64)
    sub[good] = idx[good]
    out[ok] = sub
    return out


def _mag_to_flux(mag, zp_ref):
    return 10.0 ** ((zp_ref - np.asarray(mag, float)) / 2.5)


def augment_with_gaia(catalog: pd.DataFrame, gaia_df: pd.DataFrame, wcs, shape, bands, opts: GaiaOptions,
                      satur_hits_fn=None, cmap: ColumnMap | None = None):
    """Return (augmented catalog, info) (no file I/O).

    ``satur_hits_fn(x, y) -> bool array`` applies the saturation-cut rule at working-frame pixel
    positions (``LoadResult.satur_hits`` with the configured radius/rule); None disables it.
    """
    zc = opts.zp
    zp_ref = float(opts.zp_ref)
    cmap = cmap or ColumnMap.from_frame(catalog, bands)
    cat = catalog.copy()
    H, W = shape
    g = gaia_df.copy()
    gmag = pd.to_numeric(g["phot_g_mean_mag"], errors="coerce")
    g = g[(gmag >= zc.gaia_mag_min) & (gmag <= zc.gaia_mag_max)]
    g = g.drop_duplicates("source_id", keep="first").reset_index(drop=True)
    gra = pd.to_numeric(g["ra"], errors="coerce").to_numpy(float)
    gdec = pd.to_numeric(g["dec"], errors="coerce").to_numpy(float)
    gx = np.full(len(g), np.nan)
    gy = np.full(len(g), np.nan)
    fin = np.isfinite(gra) & np.isfinite(gdec)
    if fin.any():
        gx[fin], gy[fin] = wcs.all_world2pix(gra[fin], gdec[fin], 0)
    if "x_pix_white" not in cat:
        from .load import project_catalog
        cat["x_pix_white"], cat["y_pix_white"] = project_catalog(cat, cmap, wcs)
    x = cat["x_pix_white"].to_numpy(float)
    y = cat["y_pix_white"].to_numpy(float)
    excl = cat["excluded_any"].to_numpy(bool) if "excluded_any" in cat else np.zeros(len(cat), bool)
    act = ~excl & np.isfinite(x) & np.isfinite(y)
    box = selection_box(x[act], y[act], shape, int(zc.min_box_size_pix))
    bx0, bx1, by0, by1 = box
    inbox = np.isfinite(gx) & np.isfinite(gy) & (gx >= bx0) & (gx < bx1) & (gy >= by0) & (gy < by1)
    cand = np.flatnonzero(inbox)
    info = dict(box=box, n_gaia_window=int(len(g)), n_candidates=int(len(cand)), n_matched_rows=0,
                n_matched_gaia=0, n_injected=0, n_sat_rejected=0, matched_rows=np.zeros(0, int),
                injected_xy=np.zeros((0, 2)), rejected_xy=np.zeros((0, 2)), n_original=int(len(cat)))
    cat["gaia_source_id"] = ""
    if len(cand) == 0 or len(cat) == 0:
        return cat, info

    sids = g["source_id"].astype(str).to_numpy()
    ra = pd.to_numeric(cat[cmap.ra], errors="coerce").to_numpy(float)
    dec = pd.to_numeric(cat[cmap.dec], errors="coerce").to_numpy(float)
    m = sky_match(ra, dec, gra[cand], gdec[cand], float(zc.match_radius_arcsec))
    matched = m >= 0
    gid = np.where(matched, sids[cand[np.maximum(m, 0)]], "")
    cat["gaia_source_id"] = gid.astype(object)
    info["n_matched_rows"] = int(matched.sum())
    info["matched_rows"] = np.flatnonzero(matched)
    used = set(gid[matched].tolist())
    info["n_matched_gaia"] = len(used)

    mags = {b: pd.to_numeric(g[f"mag_{b}"], errors="coerce").to_numpy(float) if f"mag_{b}" in g else None
            for b in bands}
    rows = np.flatnonzero(matched)
    for b in bands:
        col = cmap.flux.get(b)
        if col is None or mags[b] is None or len(rows) == 0:
            continue
        vals = pd.to_numeric(cat[col], errors="coerce").to_numpy(dtype=float, copy=True)
        gm = mags[b][cand[m[rows]]]
        need = (~np.isfinite(vals[rows]) | (vals[rows] == 0)) & np.isfinite(gm)
        if need.any():
            vals[rows[need]] = _mag_to_flux(gm[need], zp_ref)
            cat[col] = vals

    unm = np.array([i for i in cand if sids[i] not in used], dtype=np.int64)
    if not zc.inject_gaia_sources:
        log.info("Gaia augmentation: matched %d catalog row(s); %d unmatched Gaia star(s) not injected "
                 "(zp.inject_gaia_sources=false).", info["n_matched_rows"], len(unm))
        return cat, info
    if len(unm) and satur_hits_fn is not None:
        hit = np.asarray(satur_hits_fn(gx[unm], gy[unm]), bool)
        info["rejected_xy"] = np.column_stack([gx[unm[hit]], gy[unm[hit]]])
        info["n_sat_rejected"] = int(hit.sum())
        unm = unm[~hit]
    if len(unm) == 0:
        return cat, info
    new = pd.DataFrame(index=range(len(unm)), columns=cat.columns, dtype=object)
    if cmap.id is not None:
        new[cmap.id] = [f"gaia_{s}" for s in sids[unm]]
    new[cmap.ra] = gra[unm]
    new[cmap.dec] = gdec[unm]
    new[cmap.type or "TYPE"] = "STAR"
    new["gaia_source_id"] = sids[unm]
    for b in bands:
        col = cmap.flux.get(b) or f"FLUX_{b}"
        f = _mag_to_flux(mags[b][unm], zp_ref) if mags[b] is not None else np.zeros(len(unm))
        new[col] = np.where(np.isfinite(f), f, 0.0)
    if zc.gaia_pos_err_pix is not None:
        new[cmap.pos_err or "POS_ERR"] = float(zc.gaia_pos_err_pix)
    for c in ("excluded_crop", "excluded_saturation", "excluded_any"):
        if c in cat:
            new[c] = False
    new["x_pix_white"], new["y_pix_white"] = gx[unm], gy[unm]
    if "_row" in cat:
        new["_row"] = np.arange(len(unm)) + (int(cat["_row"].max()) + 1 if len(cat) else 0)
    new = new.infer_objects()
    out = pd.concat([cat, new], ignore_index=True)
    for c in ("excluded_crop", "excluded_saturation", "excluded_any"):
        if c in out:
            out[c] = out[c].fillna(False).astype(bool)
    for c in [cmap.ra, cmap.dec, "x_pix_white", "y_pix_white"] + [cmap.flux.get(b) or f"FLUX_{b}" for b in bands]:
        if c in out:
            out[c] = pd.to_numeric(out[c], errors="coerce")
    if "_row" in out:
        out["_row"] = out["_row"].astype(np.int64)
    info["n_injected"] = int(len(unm))
    info["injected_xy"] = np.column_stack([gx[unm], gy[unm]])
    return out, info


def run_augment_gaia(opts: GaiaOptions, load_result, logger: logging.Logger | None = None):
    """Stage wrapper: read the GaiaXP CSV, augment, write ``ZP/{stem}_with_Gaia.csv``.

    A missing file or a file without the required columns only warns: the catalog comes back
    unchanged and ``info['status']`` says why (the ZP stage is skipped in the same situations).
    """
    logger = logger or log
    res = load_result
    path = opts.gaiaxp_csv
    if not path:
        logger.warning("no GaiaXP table given: Gaia augmentation skipped.")
        return res.catalog, {"status": "skipped", "reason": "no table given"}
    if not os.path.exists(path):
        logger.warning("GaiaXP CSV not found: %s; Gaia augmentation skipped.", path)
        return res.catalog, {"status": "skipped", "reason": "missing file"}
    gaia = read_gaiaxp(path)
    miss = gaia_missing_columns(gaia)
    if miss:
        logger.warning("GaiaXP CSV missing required column: %s (%s); Gaia augmentation skipped "
                       "(zero points can still match its ra, dec by position).", ", ".join(miss), path)
        return res.catalog, {"status": "skipped", "reason": f"missing columns {miss}"}
    sc = opts.saturation_cut
    hits = None
    if sc.enabled:
        def hits(xx, yy):
            return res.satur_hits(xx, yy, sc.radius_pix, sc.require_all_bands)
    cat, info = augment_with_gaia(res.catalog, gaia, res.wcs, res.shape, res.bands, opts, hits, None)
    info["status"] = "ok"
    logger.info("Gaia augmentation: %d Gaia star(s) in G window, %d in box %s; matched %d catalog row(s) "
                "to %d star(s); injected %d; rejected %d near saturation.", info["n_gaia_window"],
                info["n_candidates"], list(info["box"]), info["n_matched_rows"], info["n_matched_gaia"],
                info["n_injected"], info["n_sat_rejected"])
    stem = os.path.splitext(os.path.basename(res.catalog_path))[0]
    out_csv = os.path.join(opts.work_dir, "ZP", f"{stem}_with_Gaia.csv")
    write_csv(cat.drop(columns=[c for c in INTERNAL_COLUMNS if c in cat.columns]), out_csv)
    info["csv_path"] = out_csv
    logger.info("Saved Gaia-augmented catalog: %s (%d rows)", out_csv, len(cat))
    return cat, info
