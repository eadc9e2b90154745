"""Photometric zero points from reference stars.

The reference table is the GaiaXP CSV (matched through ``gaia_source_id``) or any table with
``ra, dec, mag_<band>`` columns (matched by position; :mod:`.zp_match`).
Per band: ``ZP_i = mag_ref + 2.5 log10(FLUX_fit)`` for reliable matched rows, iterative
MAD clipping, an inverse-variance weighted median, two error estimates (``zp_err_mad``: median
absolute deviation without the Gaussian 1.4826 factor; ``zp_err_std``: scatter of high-S/N stars
with S/N fallbacks) and ``MAG_{b}_fit`` / ``MAGERR_{b}_fit`` for every catalog row.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from .. import flags
from .zp_match import find_column, reference_match

log = logging.getLogger(__name__)

LN10 = np.log(10.0)
#: minimum number of high-S/N stars for ``zp_err_std`` before the S/N cut is relaxed
MIN_STD_STARS = 10
SUMMARY_COLUMNS = ["band", "n_raw", "n_kept", "n_clipped", "n_unreliable", "clip_sigma",
                   "zp_median", "zp_err_mad", "zp_err_std", "n_zp_err_src", "zp_err_snr_used"]
PER_OBJECT_COLUMNS = ["band", "gaia_source_id", "gaiaxp_mag", "flux", "fluxerr", "zp", "zp_err",
                      "is_kept", "is_clipped"]
_FLUX_FIT = re.compile(r"^FLUX_(.+)_fit$")


def mad_clip(z: np.ndarray, clip_sigma: float, max_iters: int) -> np.ndarray:
    """Keep-mask of iterative clipping at ``clip_sigma`` x 1.4826 MAD around the median."""
    z = np.asarray(z, float)
    finite = np.isfinite(z)
    keep = finite.copy()
    for _ in range(int(max_iters)):
        if keep.sum() < 3:
            break
        med = np.median(z[keep])
        sigma = 1.4826 * np.median(np.abs(z[keep] - med))
        if not sigma > 0:
            break
        new = finite & (np.abs(z - med) <= clip_sigma * sigma)
        if np.array_equal(new, keep):
            break
        keep = new
    return keep


def weighted_median(values: np.ndarray, errors: np.ndarray) -> float:
    """Weighted median with weights 1/err² over values with finite err > 0.

    Sorted by value; the first value whose cumulative weight reaches half the total. Without any
    valid error the plain median.
    """
    v = np.asarray(values, float)
    e = np.asarray(errors, float)
    ok = np.isfinite(v) & np.isfinite(e) & (e > 0)
    if not ok.any():
        return float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else np.nan
    order = np.argsort(v[ok], kind="stable")
    vs = v[ok][order]
    w = 1.0 / e[ok][order] ** 2
    cw = np.cumsum(w)
    return float(vs[np.searchsorted(cw, 0.5 * cw[-1], side="left")])


def zp_err_std(zp: np.ndarray, snr: np.ndarray, snr_min: float, fallback: float,
               band: str = "") -> tuple[float, int, float]:
    """Std (ddof=1) of ``zp`` for S/N > snr_min; relax to /2 then /4 when < 10 stars, else fallback.

    Returns ``(value, n_used, snr_used)``; on fallback ``n_used`` is the number of stars behind
    the MAD value and ``snr_used`` is NaN.
    """
    for div in (1.0, 2.0, 4.0):
        cut = snr_min / div
        sel = np.isfinite(zp) & np.isfinite(snr) & (snr > cut)
        if sel.sum() >= MIN_STD_STARS:
            return float(np.std(zp[sel], ddof=1)), int(sel.sum()), float(cut)
        log.warning("[%s] zp_err_std: only %d stars with S/N > %g", band, int(sel.sum()), cut)
    log.warning("[%s] zp_err_std: falling back to zp_err_mad", band)
    return float(fallback), int(np.isfinite(zp).sum()), float("nan")


def catalog_bands(catalog: pd.DataFrame) -> list[str]:
    """Sorted bands of the ``FLUX_{b}_fit`` columns."""
    return sorted(m.group(1) for c in catalog.columns if (m := _FLUX_FIT.match(c)))


def compute_zero_points(catalog: pd.DataFrame, gaia_df: pd.DataFrame | None, cfg_zp,
                        zp_ref: float = 25.0):
    """Zero points per band and MAG/MAGERR columns.

    Returns ``(catalog_out, summary, per_object)``; ``per_object`` holds the reliable Gaia stars
    only (the unreliable ones, shown grey in the plots, come from :func:`unreliable_points`).
    ``cfg_zp`` is the ``zp`` config section; ``zp_ref`` is the nominal flux system (only
    logged). When no band is calibrated the catalog is returned unchanged with empty tables.
    """
    empty = (catalog, pd.DataFrame(columns=SUMMARY_COLUMNS),
             pd.DataFrame(columns=PER_OBJECT_COLUMNS))
    if gaia_df is None:
        log.warning("ZP: no reference table; skipping zero points")
        return empty
    radius = float(cfg_zp.match_radius_arcsec)
    match = reference_match(catalog, gaia_df, radius)
    if match is None:
        return empty
    log.info("ZP: %d catalog row(s) matched to the reference table by %s%s", len(match.rows), match.mode,
             f" (radius {radius:g} arcsec)" if match.mode == "position" else "")
    bands = catalog_bands(catalog)
    if not any(find_column(gaia_df, f"mag_{b}") is not None for b in bands):
        log.warning("ZP: reference table has no mag_<band> column for any fitted band (expected one of %s); "
                    "zero points skipped", ", ".join(f"mag_{b}" for b in bands))
        return empty
    reliable = (flags.as_bool(catalog["fit_is_reliable"]) if "fit_is_reliable" in catalog.columns
                else np.ones(len(catalog), bool))
    clip_sigma = float(cfg_zp.clip_sigma)
    method = str(cfg_zp.zp_err_method)
    snr_min = float(cfg_zp.zp_err_snr_min)
    summaries, per_obj, zps = [], [], {}
    for b in bands:
        mag = match.mags(gaia_df, b)
        if mag is None:
            log.info("[%s] no mag_%s in the reference table; skip", b, b)
            continue
        idx = match.rows
        f = pd.to_numeric(catalog[f"FLUX_{b}_fit"], errors="coerce").to_numpy(float)[idx]
        # S/N cuts and weights use the statistical error: the band's PSF term (in FLUXERR) is the
        # same fraction for every star and would cap every star's S/N at 1 / that fraction
        ecol = f"FLUXERR_STAT_{b}_fit" if f"FLUXERR_STAT_{b}_fit" in catalog.columns else f"FLUXERR_{b}_fit"
        fe = (pd.to_numeric(catalog[ecol], errors="coerce").to_numpy(float)[idx]
              if ecol in catalog.columns else np.full(len(idx), np.nan))
        valid = np.isfinite(mag) & np.isfinite(f) & (f > 0)
        rel = reliable[idx]
        n_unrel = int((valid & ~rel).sum())
        use = valid & rel
        if not use.any():
            log.warning("[%s] ZP: no reliable reference star with a positive flux; skip", b)
            continue
        z = mag[use] + 2.5 * np.log10(f[use])
        fe_u = fe[use]
        with np.errstate(divide="ignore", invalid="ignore"):
            zerr = np.where(np.isfinite(fe_u) & (fe_u > 0), (2.5 / LN10) * fe_u / f[use], np.nan)
        keep = mad_clip(z, clip_sigma, int(cfg_zp.clip_max_iters))
        if not keep.any():
            log.warning("[%s] ZP: every star clipped; skip", b)
            continue
        zp_med = weighted_median(z[keep], zerr[keep])
        err_mad = float(np.median(np.abs(z[keep] - zp_med)))
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(np.isfinite(fe_u) & (fe_u > 0), f[use] / fe_u, np.nan)
        err_std, n_std, snr_used = zp_err_std(z[keep], snr[keep], snr_min, err_mad, b)
        active = err_std if method == "bright_std" else err_mad
        zps[b] = (zp_med, active)
        n_kept = int(keep.sum())
        summaries.append({"band": b, "n_raw": int(len(z)), "n_kept": n_kept,
                          "n_clipped": int(len(z) - n_kept), "n_unreliable": n_unrel,
                          "clip_sigma": clip_sigma, "zp_median": zp_med, "zp_err_mad": err_mad,
                          "zp_err_std": err_std, "n_zp_err_src": n_std,
                          "zp_err_snr_used": snr_used})
        per_obj.append(pd.DataFrame({
            "band": b, "gaia_source_id": match.labels[use], "gaiaxp_mag": mag[use],
            "flux": f[use], "fluxerr": fe_u, "zp": z, "zp_err": zerr,
            "is_kept": keep, "is_clipped": ~keep}))
        log.info("[%s] ZP=%.4f +/- %.4f | kept=%d clipped=%d (zp_ref=%g)", b, zp_med, active,
                 n_kept, len(z) - n_kept, zp_ref)
    if not zps:
        log.warning("ZP: no band calibrated; catalog unchanged")
        return empty
    return (add_magnitudes(catalog, zps), pd.DataFrame(summaries, columns=SUMMARY_COLUMNS),
            pd.concat(per_obj, ignore_index=True)[PER_OBJECT_COLUMNS])


def add_magnitudes(catalog: pd.DataFrame, zps: dict) -> pd.DataFrame:
    """Replace every ``MAG_{b}_fit``/``MAGERR_{b}_fit`` column; ``zps[b] = (zp, zp_err)``.

    Bands without an entry get NaN columns. Idempotent: existing MAG columns are dropped first.
    """
    bands = catalog_bands(catalog)
    drop = [c for b in bands for c in (f"MAG_{b}_fit", f"MAGERR_{b}_fit") if c in catalog.columns]
    out = catalog.drop(columns=drop).copy()
    for b in bands:
        f = pd.to_numeric(out[f"FLUX_{b}_fit"], errors="coerce").to_numpy(float)
        ecol = f"FLUXERR_{b}_fit"
        fe = (pd.to_numeric(out[ecol], errors="coerce").to_numpy(float) if ecol in out.columns
              else np.full(len(out), np.nan))
        mag = np.full(len(out), np.nan)
        magerr = np.full(len(out), np.nan)
        if b in zps:
            zp, zerr = zps[b]
            pos = np.isfinite(f) & (f > 0)
            mag[pos] = zp - 2.5 * np.log10(f[pos])
            ok = pos & np.isfinite(fe) & (fe > 0)
            magerr[ok] = np.sqrt(((2.5 / LN10) * fe[ok] / f[ok]) ** 2 + zerr ** 2)
        out[f"MAG_{b}_fit"] = mag
        out[f"MAGERR_{b}_fit"] = magerr
    return out


def unreliable_points(catalog: pd.DataFrame, gaia_df: pd.DataFrame, band: str,
                      radius_arcsec: float = 3.0) -> pd.DataFrame:
    """Matched rows with ``fit_is_reliable`` False and a valid ZP in ``band`` (for plots)."""
    empty = pd.DataFrame(columns=["gaiaxp_mag", "zp"])
    if find_column(gaia_df, f"mag_{band}") is None or f"FLUX_{band}_fit" not in catalog.columns:
        return empty
    match = reference_match(catalog, gaia_df, radius_arcsec)
    if match is None:
        return empty
    rel = (flags.as_bool(catalog["fit_is_reliable"]) if "fit_is_reliable" in catalog.columns
           else np.ones(len(catalog), bool))
    sel = ~np.asarray(rel, bool)[match.rows]
    mag = match.mags(gaia_df, band)[sel]
    f = pd.to_numeric(catalog[f"FLUX_{band}_fit"], errors="coerce").to_numpy(float)[match.rows[sel]]
    ok = np.isfinite(mag) & np.isfinite(f) & (f > 0)
    return pd.DataFrame({"gaiaxp_mag": mag[ok], "zp": mag[ok] + 2.5 * np.log10(f[ok])})


def gaia_mag_range(gaia_df: pd.DataFrame, band: str) -> tuple[float, float]:
    """Finite min/max of ``mag_{band}`` in the GaiaXP table (for the coverage shading)."""
    col = find_column(gaia_df, f"mag_{band}") if gaia_df is not None else None
    if col is None:
        return (np.nan, np.nan)
    m = pd.to_numeric(gaia_df[col], errors="coerce").to_numpy(float)
    m = m[np.isfinite(m)]
    return (float(m.min()), float(m.max())) if len(m) else (np.nan, np.nan)


def write_zp_products(summary: pd.DataFrame, per_object: pd.DataFrame, zp_dir: str) -> list[str]:
    """Write ``zp_summary.csv`` and ``zp_all_bands__per_object.csv`` into ``zp_dir``; returns the
    paths. Nothing is written when no band was calibrated. (The per-band plots are drawn by the
    pipeline from the same frames, :func:`tract7dt_mpi.figures.draw_zp`.)
    """
    import os

    from ..io.atomic import atomic_write_csv

    if summary is None or len(summary) == 0:
        return []
    os.makedirs(zp_dir, exist_ok=True)
    return [atomic_write_csv(os.path.join(zp_dir, "zp_summary.csv"), summary),
            atomic_write_csv(os.path.join(zp_dir, "zp_all_bands__per_object.csv"), per_object)]
