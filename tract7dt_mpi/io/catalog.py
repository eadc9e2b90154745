"""The final catalog's files: ``output_catalog.csv`` and ``output_catalog.fits``.

Both hold the product columns only (the registry in :mod:`tract7dt_mpi.columns` names those kept
in the results store alone). The FITS binary table carries a TUNIT card for every numeric column
and the run's provenance as header cards (:func:`provenance_cards`).
"""
from __future__ import annotations

import logging
import os
import textwrap

import numpy as np
import pandas as pd

from .. import columns, flags
from .atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["product_frame", "fits_table", "provenance_cards", "write_final_catalog"]


def product_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without the columns kept only in the results store, input columns first (in their
    order), then the pipeline's columns in registry order."""
    drop = set(columns.store_only(df.columns))
    keep = [c for c in df.columns if c not in drop]
    return df[sorted(keep, key=columns.order_key)]


def fits_table(df: pd.DataFrame):
    """An astropy Table for the FITS copy: bools as L, text as A, numbers as floats/ints.

    Object columns are classified by their non-missing values: all bool -> bool (missing False),
    all numeric -> float (missing NaN), else text (missing "").
    """
    from astropy.table import MaskedColumn, Table

    t = Table()
    for c in df.columns:
        col = df[c]
        if isinstance(col.dtype, pd.api.extensions.ExtensionDtype) and col.dtype.kind in "iu":
            t[c] = MaskedColumn(col.to_numpy(dtype=np.int64, na_value=0), mask=col.isna().to_numpy())
            continue
        if col.dtype.kind in "biuf":
            reg = columns.lookup(c)
            t[c] = col.to_numpy(dtype=np.int32) if reg is not None and reg.kind == "int32" \
                else col.to_numpy()
            continue
        vals = col.to_numpy(dtype=object)
        present = [v for v in vals if v is not None and not (isinstance(v, float) and np.isnan(v))]
        if present and all(isinstance(v, (bool, np.bool_)) for v in present):
            t[c] = flags.as_bool(col)
        elif present and all(isinstance(v, (int, float, np.integer, np.floating))
                             for v in present):
            t[c] = pd.to_numeric(col, errors="coerce").to_numpy(float)
        else:
            txt = ["" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v)
                   for v in vals]
            t[c] = np.array(txt, dtype=str) if txt else np.zeros(0, dtype="U1")
    return t


def _num(v):
    """A finite float for a header card, else None (an undefined FITS value)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def provenance_cards(prov: dict) -> list[tuple[str, object, str]]:
    """(keyword, value, comment) header cards of a provenance dict (see ``provenance.py``).

    Band-wise cards are numbered in image-list order (``BAND01``, ``ZP01``, ``ZPERR01``, ...)
    to stay within the 8-character FITS keyword limit; their comments name the band. An
    uncalibrated band's ZP is undefined (its fluxes are on the nominal ``ZP_REF`` scale).
    """
    bands = list(prov.get("bands") or [])
    width = max(2, len(str(len(bands))))
    zp, zperr = prov.get("zp") or {}, prov.get("zp_err") or {}
    cards = [
        ("PROGRAM", str(prov.get("program", "tract7dt-mpi")), "program that wrote this catalog"),
        ("PROGVER", str(prov.get("version", "unknown")), "program version"),
        ("GITHASH", str(prov.get("git_hash", "unknown")), "program git commit"),
        ("CFGHASH", str(prov.get("config_hash", "unknown")), "SHA-256 prefix of the result-relevant config"),
        ("DATE", str(prov.get("date", "")), "UTC time the catalog was written"),
        ("NRANKS", prov.get("n_ranks"), "MPI ranks of the fitting run"),
        ("ZP_REF", _num(prov.get("zp_ref")), "[mag] AB zero point of the scaled counts"),
        ("NBANDS", len(bands), "number of bands (image-list order)"),
    ]
    for i, b in enumerate(bands, 1):
        k = f"{i:0{width}d}"
        cal = _num(zp.get(b)) is not None
        cards += [(f"BAND{k}", str(b), f"band {i} (FITS FILTER)"),
                  (f"ZP{k}", _num(zp.get(b)),
                   f"[mag] AB zero point of band {b}" if cal else f"band {b} not calibrated: use ZP_REF"),
                  (f"ZPERR{k}", _num(zperr.get(b)), f"[mag] error of the zero point of band {b}")]
    return cards


_FLUX_NOTE = ("FLUX*, FLUXERR* columns (TUNIT count) are counts of images scaled to the common "
              "zero point ZP_REF: mag_AB = ZPnn - 2.5 log10(FLUX) for band BANDnn when "
              "calibrated, else nominally ZP_REF - 2.5 log10(FLUX).")


def _fits_hdul(df: pd.DataFrame, prov: dict | None):
    from astropy.io import fits

    t = fits_table(df)
    hdu = fits.table_to_hdu(t)
    hdr = hdu.header
    for i, name in enumerate(t.colnames, 1):
        if t[name].dtype.kind not in "iuf":
            continue
        unit = columns.fits_unit(name)
        if unit is None:
            log.debug("catalog column %s has no registered unit", name)
            continue
        hdr[f"TUNIT{i}"] = (unit, "dimensionless" if unit == "" else None)
    if prov is not None:
        for key, value, comment in provenance_cards(prov):
            hdr[key] = (value, comment)
        for line in textwrap.wrap(_FLUX_NOTE, 70):
            hdr.add_comment(line)
    hdr["EXTNAME"] = "CATALOG"
    return fits.HDUList([fits.PrimaryHDU(), hdu])


def write_final_catalog(df: pd.DataFrame, path: str, provenance: dict | None = None
                        ) -> tuple[str, str]:
    """Write the product columns of ``df`` as CSV at ``path`` and as a FITS table (``.fits``).

    ``provenance`` (``provenance.catalog_provenance``) becomes header cards of the FITS table.
    Both files are written under a temporary name in the same folder and renamed. Returns both
    paths.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fits_path = os.path.splitext(path)[0] + ".fits"
    out = product_frame(df)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    hdul = _fits_hdul(out, provenance)
    with atomic_path(fits_path) as tmp:
        hdul.writeto(tmp, overwrite=True, output_verify="exception")
    log.info("Saved final catalog: %s (+ %s)", path, os.path.basename(fits_path))
    return path, fits_path
