"""Final catalog: every base row left-joined with its patch fit result on ``_row``.

The base catalog (augmented when Gaia ran, else the input catalog — always with the exclusion
flags) keeps its row order and every original column; fit columns come from the concatenated
``PatchResult`` tables (only columns the base does not have). Sky positions of the fits come from
the working-frame WCS (origin 0), ``X_IMAGE``/``Y_IMAGE`` from the crop offset; the reliability
columns (``fit_is_reliable``, ``fit_quality_issues``, ``FIT_FLAGS``) use the tag registry in
``flags.py``. Writing the files is ``io.catalog.write_final_catalog``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .. import flags
from ..errors import InputError

log = logging.getLogger(__name__)

_FLAG_COLS = ("excluded_crop", "excluded_saturation", "excluded_coords")


def _decode_bytes(df: pd.DataFrame) -> pd.DataFrame:
    """Turn fixed-width byte-string columns (as read from the HDF5 store) into str."""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if col.dtype.kind == "S":
            out[c] = [v.decode("utf-8", "replace") for v in col]
        elif col.dtype == object and len(col) and isinstance(col.iloc[0], (bytes, np.bytes_)):
            out[c] = [v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else v
                      for v in col]
    return out


def _fill_sky(df: pd.DataFrame, wcs, xcol: str, ycol: str, racol: str, deccol: str) -> None:
    """Fill ``racol``/``deccol`` from white-frame pixels (origin 0) where missing, in place."""
    if xcol not in df.columns or ycol not in df.columns:
        return
    x = pd.to_numeric(df[xcol], errors="coerce").to_numpy(float)
    y = pd.to_numeric(df[ycol], errors="coerce").to_numpy(float)
    # copies: to_numpy() may return a read-only view (pandas copy-on-write)
    ra = (pd.to_numeric(df[racol], errors="coerce").to_numpy(float, copy=True) if racol in df.columns
          else np.full(len(df), np.nan))
    dec = (pd.to_numeric(df[deccol], errors="coerce").to_numpy(float, copy=True) if deccol in df.columns
           else np.full(len(df), np.nan))
    need = np.isfinite(x) & np.isfinite(y) & ~(np.isfinite(ra) & np.isfinite(dec))
    if need.any():
        r, d = wcs.all_pix2world(x[need], y[need], 0)
        ra[need] = r
        dec[need] = d
    df[racol] = ra
    df[deccol] = dec


def merge_catalog(base_catalog: pd.DataFrame, results_table: pd.DataFrame | None, wcs,
                  crop_offset=(0, 0)) -> pd.DataFrame:
    """Left-join ``results_table`` (concatenated PatchResult tables) onto ``base_catalog``.

    ``base_catalog`` needs ``_row`` (else its positional index is used); ``wcs`` is the working
    frame's astropy WCS (None: RA/DEC_fit stay NaN, with a warning); ``crop_offset`` = (x0, y0)
    of the working frame in the input images (``LoadResult.crop``), for ``X_IMAGE``/``Y_IMAGE``.
    Duplicate ``_row`` in the results: warning, first kept. Returns the final catalog in base
    order, without ``_row``; the columns of the results store only (``columns.py``) are still in
    it and are dropped when it is written.
    """
    base = base_catalog.copy()
    if "_row" not in base.columns:
        base["_row"] = np.arange(len(base), dtype=np.int64)
    if base["_row"].duplicated().any():
        raise InputError("base catalog: column '_row' must be unique")
    for c in _FLAG_COLS:
        base[c] = flags.as_bool(base[c]) if c in base.columns else np.zeros(len(base), bool)
    base["excluded_any"] = flags.as_bool(base["excluded_crop"]) | flags.as_bool(
        base["excluded_saturation"]) | base["excluded_coords"] | (flags.as_bool(base["excluded_any"])
                                        if "excluded_any" in base.columns else False)
    base["excluded_reason"] = flags.excluded_reason(base["excluded_crop"],
                                                    base["excluded_saturation"],
                                                    base["excluded_coords"])
    if "affected_by_bright_mask" in base.columns:
        base["affected_by_bright_mask"] = flags.as_bool(base["affected_by_bright_mask"])

    if results_table is None or len(results_table) == 0:
        fits = pd.DataFrame({"_row": np.zeros(0, dtype=np.int64)})
        if results_table is not None:
            fits = _decode_bytes(results_table)
    else:
        fits = _decode_bytes(results_table)
    if "_row" not in fits.columns:
        raise InputError("patch results: missing key column '_row'")
    dup = fits["_row"].duplicated(keep="first")
    if dup.any():
        sample = fits.loc[dup, "_row"].head(5).tolist()
        log.warning("Dropping %d duplicate key(s) in patch results (keeping first); sample _row: %s",
                    int(dup.sum()), sample)
        fits = fits.loc[~dup]
    keep = ["_row"] + [c for c in fits.columns if c != "_row" and c not in base.columns]
    out = base.merge(fits[keep], on="_row", how="left", sort=False, validate="one_to_one")
    for c in keep[1:]:            # rows without a fit must not turn counts into floats (7.0)
        if pd.api.types.is_integer_dtype(fits[c].dtype) and not pd.api.types.is_bool_dtype(fits[c].dtype):
            out[c] = out[c].astype("Int64")

    if wcs is None:
        log.warning("merge: no working WCS available; RA_fit/DEC_fit left empty")
    else:
        if "x_pix_white_fit" in out.columns:
            _fill_sky(out, wcs, "x_pix_white_fit", "y_pix_white_fit", "RA_fit", "DEC_fit")
        for b in flags.fit_bands(out):
            _fill_sky(out, wcs, f"x_pix_white_{b}_fit", f"y_pix_white_{b}_fit",
                      f"RA_{b}_fit", f"DEC_{b}_fit")
    if "_is_halo_source" in out.columns:
        out["_is_halo_source"] = flags.as_bool(out["_is_halo_source"])
    out = _with_image_positions(out, crop_offset)

    masks = flags.tag_masks(out)
    reliable, issues = flags.reliability(out, masks)
    out["fit_is_reliable"] = reliable
    out["fit_quality_issues"] = issues
    out["FIT_FLAGS"] = flags.fit_flags(out, masks)
    out = out.drop(columns=["_row"])
    _log_summary(out)
    return out


def _with_image_positions(df: pd.DataFrame, crop_offset) -> pd.DataFrame:
    """Add 1-based ``X_IMAGE``/``Y_IMAGE`` (per band ``X_IMAGE_{b}`` in single-band mode) of the
    fitted position in the input images' frame: working frame (0-based) + crop offset + 1.
    Inserted right after the working-frame columns they come from. Input columns of those names
    (e.g. a SExtractor catalog's) win, as every input column does, with a warning."""
    x0, y0 = (float(v) for v in crop_offset)
    pairs = [("x_pix_white_fit", "y_pix_white_fit", "X_IMAGE", "Y_IMAGE")]
    pairs += [(f"x_pix_white_{b}_fit", f"y_pix_white_{b}_fit", f"X_IMAGE_{b}", f"Y_IMAGE_{b}")
              for b in flags.fit_bands(df)]
    for xc, yc, X, Y in pairs:
        if xc not in df.columns or yc not in df.columns:
            continue
        if X in df.columns or Y in df.columns:
            log.warning("merge: the input catalog has %s/%s columns; kept as they are (the fitted "
                        "position in input pixels, 1-based, is %s + %g + 1)", X, Y, xc, x0)
            continue
        at = list(df.columns).index(yc) + 1
        df.insert(at, X, pd.to_numeric(df[xc], errors="coerce").to_numpy(float) + x0 + 1.0)
        df.insert(at + 1, Y, pd.to_numeric(df[yc], errors="coerce").to_numpy(float) + y0 + 1.0)
    return df


def fit_summary(df: pd.DataFrame) -> dict:
    """Counts for the "Fit summary" line: rows with a fit, converged, hit_max_iters.

    Single-band catalogs count a row converged when every band converged and hit-max when any
    band hit the limit.
    """
    fitted = flags.has_fit_result(df)
    conv_cols = flags._opt_cols(df, "opt_converged")
    hit_cols = flags._opt_cols(df, "opt_hit_max_iters")
    conv = np.ones(len(df), bool) if conv_cols else np.zeros(len(df), bool)
    for c in conv_cols:
        conv &= flags.as_bool(df[c])
    hit = np.zeros(len(df), bool)
    for c in hit_cols:
        hit |= flags.as_bool(df[c])
    return {"converged": int((conv & fitted).sum()), "hit_max_iters": int((hit & fitted).sum()),
            "total": int(fitted.sum())}


def _log_summary(df: pd.DataFrame) -> None:
    n_fit = int(flags.has_fit_result(df).sum())
    log.info("Merged catalog: %d rows x %d columns", len(df), df.shape[1])
    log.info("Excluded: crop=%d, saturation=%d, any=%d",
             int(flags.as_bool(df["excluded_crop"]).sum()),
             int(flags.as_bool(df["excluded_saturation"]).sum()),
             int(flags.as_bool(df["excluded_any"]).sum()))
    log.info("merge-missing (left join rows without fit): %d", len(df) - n_fit)
    s = fit_summary(df)
    log.info("Fit summary: converged=%d, hit_max_iters=%d, total=%d",
             s["converged"], s["hit_max_iters"], s["total"])
    log.info("Reliable fits: %d/%d", int(df["fit_is_reliable"].sum()), len(df))


