"""CSV and text-list reading/writing for the catalog, the image list and the GaiaXP table.

Identifier columns (catalog ``ID``, ``gaia_source_id``; GaiaXP ``source_id``) are always read as
text so that leading zeros and 19-digit Gaia ids survive; a missing identifier becomes ``""``.
"""
from __future__ import annotations

import os

import pandas as pd

from ..errors import InputError

__all__ = ["read_catalog_csv", "read_gaiaxp", "read_text_lines", "write_csv", "TEXT_ID_COLUMNS"]

#: catalog columns that are identifiers (matched case-insensitively) and must stay text
TEXT_ID_COLUMNS = ("id", "gaia_source_id")


def _read_csv(path: str, what: str, **kw) -> pd.DataFrame:
    if path is None or not os.path.exists(path):
        raise InputError(f"{what} not found: {path}")
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} is empty (no header row): {path}") from None
    except Exception as exc:
        raise InputError(f"Cannot read {what} {path}: {exc.__class__.__name__}: {exc}") from None


def _as_text(series: pd.Series) -> pd.Series:
    return series.astype(object).where(series.notna(), "").astype(str)


def read_catalog_csv(path: str) -> pd.DataFrame:
    """Read the source catalog; identifier columns (any case) are text with missing -> ""."""
    head = _read_csv(path, "input catalog", nrows=0)
    cols = [str(c) for c in head.columns]
    text_cols = [c for c in cols if c.strip().lower() in TEXT_ID_COLUMNS]
    df = _read_csv(path, "input catalog", dtype={c: str for c in text_cols}, keep_default_na=True)
    for c in text_cols:
        df[c] = _as_text(df[c])
    return df


def read_gaiaxp(path: str) -> pd.DataFrame:
    """Read the GaiaXP synthetic-photometry CSV with ``source_id`` as text."""
    head = _read_csv(path, "GaiaXP CSV", nrows=0)
    dtype = {"source_id": str} if "source_id" in head.columns else None
    df = _read_csv(path, "GaiaXP CSV", dtype=dtype)
    if "source_id" in df.columns:
        df["source_id"] = _as_text(df["source_id"])
    for c in df.columns:                  # positions and magnitudes must be numbers (or blank)
        if (c in ("ra", "dec") or str(c).startswith(("phot_", "mag_"))) \
                and not pd.api.types.is_numeric_dtype(df[c]):
            num = pd.to_numeric(df[c], errors="coerce")
            bad = num.isna() & df[c].notna() & (df[c].astype(str).str.strip() != "")
            if bad.any():
                raise InputError(f"GaiaXP CSV {path}: column {c!r} must be numeric, got "
                                 f"{df[c][bad].iloc[0]!r}")
            df[c] = num
    return df


def read_text_lines(path: str, what: str) -> list[str]:
    """Lines of a small text file (InputError naming ``what`` when missing/unreadable)."""
    if path is None or not os.path.exists(path):
        raise InputError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read {what} {path}: {exc}") from None


def write_csv(df: pd.DataFrame, path: str) -> None:
    """Atomic CSV write (no index), creating the parent folder."""
    from .atomic import atomic_write_csv
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_csv(df, path)
