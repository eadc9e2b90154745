"""Input-catalog reading, case-insensitive column lookup and validation.

One rule for every documented column: names are matched after stripping and lower-casing, an
exact-case match wins when several columns differ only by case. ``FLUX_{band}`` columns match the
prefix in any case and the band suffix exactly (it must equal the FITS FILTER value); columns
ending in ``_ERR`` are flux errors, never bands.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.tables import read_catalog_csv

__all__ = ["ColumnMap", "read_catalog", "validate_catalog", "catalog_bands", "check_bands",
           "find_column"]

log = logging.getLogger("tract7dt_mpi.stages.catalog")

_SCALARS = {  # attribute -> canonical column name
    "ra": "RA", "dec": "DEC", "id": "ID", "type": "TYPE", "ell": "ELL", "theta": "THETA",
    "re": "Re", "sersic_n": "SERSIC_n", "pos_err": "POS_ERR", "re_err": "Re_ERR",
    "ell_err": "ELL_ERR", "theta_err": "THETA_ERR",
}


def find_column(columns, name: str) -> str | None:
    """Column whose stripped, lower-cased name equals ``name`` lower-cased (exact case first)."""
    cols = [str(c) for c in columns]
    if name in cols:
        return name
    key = name.strip().lower()
    for c in cols:
        if c.strip().lower() == key:
            return c
    return None


def _flux_suffix(col: str) -> str | None:
    c = str(col).strip()
    if len(c) <= 5 or c[:5].lower() != "flux_":
        return None
    return c[5:].strip() or None


def catalog_bands(columns) -> dict[str, str]:
    """Band -> column for every ``FLUX_{band}`` column (``FLUX_`` alone and ``*_ERR`` skipped)."""
    out: dict[str, str] = {}
    for c in columns:
        suf = _flux_suffix(c)
        if suf is None or suf.lower().endswith("_err"):
            continue
        out.setdefault(suf, str(c))
    return out


@dataclass
class ColumnMap:
    """Names of the documented catalog columns in one table (None when absent)."""

    ra: str | None = None
    dec: str | None = None
    id: str | None = None
    type: str | None = None
    ell: str | None = None
    theta: str | None = None
    re: str | None = None
    sersic_n: str | None = None
    pos_err: str | None = None
    re_err: str | None = None
    ell_err: str | None = None
    theta_err: str | None = None
    flux: dict = field(default_factory=dict)      # band -> column
    flux_err: dict = field(default_factory=dict)  # band -> column

    @classmethod
    def from_frame(cls, df: pd.DataFrame, bands=None) -> "ColumnMap":
        """Locate columns in ``df``; ``bands`` limits/orders the flux dicts (default: catalog bands)."""
        cols = [str(c) for c in df.columns]
        kw = {attr: find_column(cols, canon) for attr, canon in _SCALARS.items()}
        cat_bands = catalog_bands(cols)
        lower = {b.lower(): c for b, c in cat_bands.items()}
        flux, flux_err = {}, {}
        for b in (list(bands) if bands is not None else list(cat_bands)):
            col = cat_bands.get(b) or lower.get(str(b).lower())
            if col is not None:
                flux[b] = col
            ecol = find_column(cols, f"FLUX_{b}_ERR")
            if ecol is not None:
                flux_err[b] = ecol
        return cls(flux=flux, flux_err=flux_err, **kw)


def read_catalog(path: str) -> pd.DataFrame:
    """Read the catalog CSV (ID and gaia_source_id as text, missing -> "")."""
    return read_catalog_csv(path)


def _check_numeric(df: pd.DataFrame, col: str, path: str) -> None:
    s = df[col]
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & s.notna() & (s.astype(str).str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"input catalog {path}: column {col!r} must be numeric degrees; "
                         f"data row {i + 1} has {s.iloc[i]!r}")


def validate_catalog(df: pd.DataFrame, path: str, logger: logging.Logger | None = None) -> ColumnMap:
    """Check the catalog for the problems a user must fix; returns its ColumnMap.

    RA/DEC must exist (any case) and be numeric; the table must have rows; non-empty IDs must be
    unique. RA/DEC columns are converted to float in place (blank cells -> NaN).
    """
    logger = logger or log
    cmap = ColumnMap.from_frame(df)
    if cmap.ra is None or cmap.dec is None:
        raise InputError(f"input_catalog must have RA/DEC columns: {path} has "
                         f"{[str(c) for c in df.columns][:20]}")
    if len(df) == 0:
        raise InputError(f"input catalog {path} has no rows")
    for col in (cmap.ra, cmap.dec):
        _check_numeric(df, col, path)
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    if (cmap.ra, cmap.dec) != ("RA", "DEC"):
        logger.warning("Catalog columns %r/%r are interpreted as right ascension/declination "
                       "(degrees).", cmap.ra, cmap.dec)
    if cmap.id is not None:
        ids = df[cmap.id].astype(str)
        nonempty = ids[ids.str.strip() != ""]
        dup = nonempty[nonempty.duplicated(keep=False)]
        if len(dup):
            sample = list(dict.fromkeys(dup.tolist()))[:5]
            raise InputError(f"input catalog {path}: column {cmap.id!r} has "
                             f"{dup.nunique()} duplicated ID value(s), e.g. {sample}; IDs must be unique")
        n_empty = int(len(ids) - len(nonempty))
        if n_empty:
            logger.warning("input catalog %s: %d row(s) have an empty %s.", path, n_empty, cmap.id)
    return cmap


def check_bands(df: pd.DataFrame, filters, path: str = "input catalog",
                logger: logging.Logger | None = None) -> None:
    """Catalog ``FLUX_{band}`` set must equal the image FILTER set (skipped without FLUX columns)."""
    logger = logger or log
    cat = set(catalog_bands(df.columns))
    if not cat:
        logger.info("No FLUX_{band} columns in the input catalog; initial fluxes from apertures.")
        return
    img = set(filters)
    if cat != img:
        raise InputError("Band mismatch between input catalog and image list: "
                         f"catalog-only {sorted(cat - img)}, image-only {sorted(img - cat)} "
                         f"(catalog {path})")
    logger.info("[CHECK] Input catalog bands match image FILTERs.")
