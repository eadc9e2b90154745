"""The one registry of fit-quality tags and exclusion reasons.

Every place that decides whether a fitted row is trustworthy (merge, ZP star selection, the docs)
uses these names and this order, so the ``fit_quality_issues`` strings are identical everywhere.

Hard tags make ``fit_is_reliable`` False; soft tags are informational only. Each tag also owns
one fixed bit of the integer ``FIT_FLAGS`` column (like SExtractor's ``FLAGS``), so that programs
can select rows with bit masks instead of parsing text.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd


class Tag(NamedTuple):
    """One fit-quality tag: its name in ``fit_quality_issues``, its bit in ``FIT_FLAGS``."""

    name: str
    bit: int          # FIT_FLAGS value = 2**bit; fixed forever (never renumber, only append)
    hard: bool        # hard tags make fit_is_reliable False
    doc: str


#: every tag, in the order it appears in ``fit_quality_issues`` (hard ones first)
TAGS = (
    Tag("excluded", 0, True,
        "row excluded before fitting (crop, saturation cut or no coordinates; see excluded_reason)"),
    Tag("no_fit_result", 1, True,
        "row not excluded but no fit result (off-footprint, NaN position, failed patch)"),
    Tag("hit_max_iters", 2, True,
        "optimizer stopped at the iteration limit without converging (any band)"),
    Tag("bound_stalled", 3, True, "a bounded parameter ended at its limit (any band)"),
    Tag("bright_mask", 4, True,
        "source lies inside the bright-source mask (affected_by_bright_mask)"),
    Tag("core_masked", 5, True,
        "in some band no usable pixel lies within 2 px of the fitted position "
        "(flag_core_masked): the flux rests on the wings only"),
    Tag("dead_data", 8, True,
        "in some band every usable pixel within 3 px of the fitted position has one value "
        "(flag_dead_data): no light was recorded there (e.g. a zero-filled gap)"),
    Tag("not_converged", 6, False,
        "optimizer did not reach dlnp_stop but did not hit the iteration limit either"),
    Tag("all_psf_fallback", 7, False, "no band of the patch used a real ePSF (all fallback PSFs)"),
    Tag("model_close", 9, False,
        "the model choice of patch_run.model_selection was close (flag_model_close): one of its "
        "decisions lies within 4 in penalised chi^2 of its boundary"),
    Tag("shape_fallback", 10, False,
        "the galaxy's free shape ran away (Re > 5x catalog) or ended at the upper "
        "Re bound or a bound of ellipticity or Sersic n; its flux is from a refit with the catalog shape held "
        "(or, when only n reached its upper bound, with n held at 4) (flag_shape_fallback)"),
)
#: hard-fail tags, in the order they appear in ``fit_quality_issues``
HARD_TAGS = tuple(t.name for t in TAGS if t.hard)
#: soft (warning) tags, listed after the hard ones
SOFT_TAGS = tuple(t.name for t in TAGS if not t.hard)
#: registry order of every tag
TAG_ORDER = HARD_TAGS + SOFT_TAGS
TAG_DOCS = {t.name: t.doc for t in TAGS}
#: tag -> its ``FIT_FLAGS`` bit value (2**bit)
TAG_BITS = {t.name: 1 << t.bit for t in TAGS}

#: values of ``excluded_reason``; ``coords``: blank or non-finite RA/DEC (never fitted)
EXCLUDED_REASONS = ("crop+saturation", "crop", "saturation", "coords", "coords+saturation", "")


def as_bool(values) -> np.ndarray:
    """Coerce a column that may hold bools, NaN/None, 0/1 or 'True'/'False' text into a bool array.

    Missing cells count as False. Used on merged tables where left-joined bool columns
    became object dtype and on catalogs read back from CSV.
    """
    s = pd.Series(values, copy=False)
    if s.dtype == bool:
        return s.to_numpy(copy=True)
    out = np.zeros(len(s), dtype=bool)
    for i, v in enumerate(s.to_numpy(dtype=object)):
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)):
            out[i] = bool(v)
        elif isinstance(v, (bytes, np.bytes_)):
            out[i] = v.strip().lower() in (b"true", b"1", b"t", b"yes")
        elif isinstance(v, str):
            out[i] = v.strip().lower() in ("true", "1", "t", "yes")
        else:
            try:
                fv = float(v)
            except (TypeError, ValueError):
                continue
            out[i] = bool(np.isfinite(fv) and fv != 0.0)
    return out


def _col_bool(df: pd.DataFrame, name: str) -> np.ndarray:
    return as_bool(df[name]) if name in df.columns else np.zeros(len(df), dtype=bool)


def excluded_reason(excluded_crop, excluded_saturation, excluded_coords=None) -> np.ndarray:
    """``crop+saturation`` / ``crop`` / ``saturation`` / ``coords`` / ``""`` per row (object array
    of str); ``coords`` (no usable RA/DEC) takes the place of ``crop``."""
    c = as_bool(excluded_crop)
    s = as_bool(excluded_saturation)
    out = np.full(len(c), "", dtype=object)
    out[c & s] = "crop+saturation"
    out[c & ~s] = "crop"
    out[~c & s] = "saturation"
    if excluded_coords is not None:
        k = as_bool(excluded_coords)
        out[k & s] = "coords+saturation"
        out[k & ~s] = "coords"
    return out


def fit_bands(df: pd.DataFrame) -> list[str]:
    """Bands that have ``FLUX_{band}_fit`` columns, sorted."""
    return sorted(c[5:-4] for c in df.columns
                  if c.startswith("FLUX_") and c.endswith("_fit") and len(c) > 9)


def has_fit_result(df: pd.DataFrame) -> np.ndarray:
    """True where a fitted position exists (multi-band: x/y_pix_white_fit; single-band: any band)."""
    n = len(df)
    if "x_pix_white_fit" in df.columns:
        x = pd.to_numeric(df["x_pix_white_fit"], errors="coerce").to_numpy(float)
        y = pd.to_numeric(df["y_pix_white_fit"], errors="coerce").to_numpy(float)
        return np.isfinite(x) & np.isfinite(y)
    out = np.zeros(n, dtype=bool)
    for b in fit_bands(df):
        cx, cy = f"x_pix_white_{b}_fit", f"y_pix_white_{b}_fit"
        if cx in df.columns and cy in df.columns:
            x = pd.to_numeric(df[cx], errors="coerce").to_numpy(float)
            y = pd.to_numeric(df[cy], errors="coerce").to_numpy(float)
            out |= np.isfinite(x) & np.isfinite(y)
    return out


def _opt_cols(df: pd.DataFrame, stem: str) -> list[str]:
    """The un-suffixed ``stem`` column (multi-band) or every ``stem_{band}`` column (single-band)."""
    if stem in df.columns:
        return [stem]
    return [f"{stem}_{b}" for b in fit_bands(df) if f"{stem}_{b}" in df.columns]


def tag_masks(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean mask per tag (keys in :data:`TAG_ORDER`) for a merged catalog."""
    n = len(df)
    excluded = _col_bool(df, "excluded_any") | _col_bool(df, "excluded_crop") | _col_bool(
        df, "excluded_saturation") | _col_bool(df, "excluded_coords")
    fitted = has_fit_result(df)
    hit = np.zeros(n, dtype=bool)
    for c in _opt_cols(df, "opt_hit_max_iters"):
        hit |= as_bool(df[c])
    stalled = np.zeros(n, dtype=bool)
    for c in _opt_cols(df, "flag_bound_stalled"):
        stalled |= as_bool(df[c])
    not_conv = np.zeros(n, dtype=bool)
    conv_cols = _opt_cols(df, "opt_converged")
    for c in conv_cols:
        hit_c = c.replace("opt_converged", "opt_hit_max_iters", 1)
        h = as_bool(df[hit_c]) if hit_c in df.columns else np.zeros(n, dtype=bool)
        not_conv |= ~as_bool(df[c]) & ~h
    all_fb = np.zeros(n, dtype=bool)
    if "psf_used_epsf_band_count" in df.columns:
        used = pd.to_numeric(df["psf_used_epsf_band_count"], errors="coerce").to_numpy(float)
        all_fb = np.isfinite(used) & (used <= 0)
    return {
        "excluded": excluded,
        "no_fit_result": ~excluded & ~fitted,
        "hit_max_iters": fitted & hit,
        "bound_stalled": fitted & stalled,
        "bright_mask": _col_bool(df, "affected_by_bright_mask"),
        "core_masked": fitted & _col_bool(df, "flag_core_masked"),
        "dead_data": fitted & _col_bool(df, "flag_dead_data"),
        "not_converged": fitted & not_conv & (len(conv_cols) > 0),
        "all_psf_fallback": fitted & all_fb,
        "model_close": fitted & _col_bool(df, "flag_model_close"),
        "shape_fallback": fitted & _col_bool(df, "flag_shape_fallback"),
    }


def reliability(df: pd.DataFrame, masks: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_is_reliable, fit_quality_issues)`` per row; tags joined by ',' in registry order."""
    masks = tag_masks(df) if masks is None else masks
    n = len(df)
    hard = np.zeros(n, dtype=bool)
    for t in HARD_TAGS:
        hard |= masks[t]
    issues = np.full(n, "", dtype=object)
    for t in TAG_ORDER:
        m = masks[t]
        if m.any():
            issues[m] = [f"{s},{t}" if s else t for s in issues[m]]
    return ~hard, issues


def fit_flags(df: pd.DataFrame, masks: dict | None = None) -> np.ndarray:
    """``FIT_FLAGS`` per row (int32): the OR of the bits of every tag that applies."""
    masks = tag_masks(df) if masks is None else masks
    out = np.zeros(len(df), dtype=np.int32)
    for t, m in masks.items():
        out[m] |= np.int32(TAG_BITS[t])
    return out


def tags_from_flags(value: int) -> str:
    """The ``fit_quality_issues`` text of one ``FIT_FLAGS`` value (tags in registry order).

    Raises ValueError for bits no registered tag owns.
    """
    value = int(value)
    unknown = value & ~sum(TAG_BITS.values())
    if unknown:
        raise ValueError(f"FIT_FLAGS {value}: bits {unknown:#x} belong to no registered tag")
    return ",".join(t for t in TAG_ORDER if value & TAG_BITS[t])
