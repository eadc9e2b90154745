"""Which catalog rows are reference stars for the zero points, and which reference row each is.

Two ways, chosen from the columns present (names matched case-insensitively):

* by identifier: the reference table has ``source_id`` and the catalog ``gaia_source_id`` (the
  GaiaXP table after the Gaia augmentation stage);
* by position: the reference table has ``ra`` and ``dec`` (deg) and the catalog ``RA``/``DEC``;
  each reference star takes its nearest catalog row within ``zp.match_radius_arcsec``.

Either way the magnitudes are the ``mag_<band>`` columns, so a table of ``ra, dec, mag_g,
mag_r, ...`` from any survey calibrates the bands it covers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger("tract7dt_mpi.stages.zp")

__all__ = ["RefMatch", "reference_match", "find_column"]


def find_column(df: pd.DataFrame, name: str) -> str | None:
    """The column of ``df`` called ``name`` in any letter case (exact spelling first)."""
    if name in df.columns:
        return name
    low = name.lower()
    return next((c for c in df.columns if str(c).lower() == low), None)


@dataclass
class RefMatch:
    """``rows``: catalog row positions; ``ref_rows``: the matched reference row positions;
    ``labels``: reference identifiers (``source_id``, or ``ref<row>`` by position)."""

    rows: np.ndarray
    ref_rows: np.ndarray
    labels: np.ndarray
    mode: str

    def mags(self, ref: pd.DataFrame, band: str) -> np.ndarray | None:
        """``mag_<band>`` of the matched reference rows (None when the table has no such column)."""
        col = find_column(ref, f"mag_{band}")
        if col is None:
            return None
        return pd.to_numeric(ref[col], errors="coerce").to_numpy(float)[self.ref_rows]


def _by_id(catalog, ref, id_col):
    ids = ref[id_col].astype(str).str.strip()
    first = ~ids.duplicated(keep="first")
    lookup = pd.Index(ids[first].to_numpy())
    pos = np.flatnonzero(first.to_numpy())
    raw = catalog["gaia_source_id"]
    sid = raw.astype(str).str.strip()
    ok = ((sid != "") & (sid.str.lower() != "nan") & (sid.str.lower() != "none") & raw.notna()).to_numpy()
    k = lookup.get_indexer(sid.to_numpy())
    rows = np.flatnonzero(ok & (k >= 0))
    return RefMatch(rows=rows, ref_rows=pos[k[rows]], labels=sid.to_numpy()[rows].astype(str), mode="id")


def _by_position(catalog, ref, ra_col, dec_col, radius_arcsec):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    cra, cdec = find_column(catalog, "ra"), find_column(catalog, "dec")
    c_ra = pd.to_numeric(catalog[cra], errors="coerce").to_numpy(float)
    c_dec = pd.to_numeric(catalog[cdec], errors="coerce").to_numpy(float)
    r_ra = pd.to_numeric(ref[ra_col], errors="coerce").to_numpy(float)
    r_dec = pd.to_numeric(ref[dec_col], errors="coerce").to_numpy(float)
    cok = np.flatnonzero(np.isfinite(c_ra) & np.isfinite(c_dec))
    rok = np.flatnonzero(np.isfinite(r_ra) & np.isfinite(r_dec))
    empty = np.zeros(0, np.int64)
    if len(cok) == 0 or len(rok) == 0:
        return RefMatch(rows=empty, ref_rows=empty, labels=np.zeros(0, str), mode="position")
    cat_c = SkyCoord(c_ra[cok] * u.deg, c_dec[cok] * u.deg)
    ref_c = SkyCoord(r_ra[rok] * u.deg, r_dec[rok] * u.deg)
    j, d2d, _ = ref_c.match_to_catalog_sky(cat_c)
    sep = d2d.arcsec
    near = sep <= radius_arcsec
    # one reference star per catalog row: the nearest one wins
    order = np.argsort(sep[near], kind="stable")
    ref_i = np.flatnonzero(near)[order]
    cat_i = j[near][order]
    _, first = np.unique(cat_i, return_index=True)
    ref_i, cat_i = ref_i[first], cat_i[first]
    rows = cok[cat_i]
    srt = np.argsort(rows)
    ref_rows = rok[ref_i][srt]
    return RefMatch(rows=rows[srt], ref_rows=ref_rows, labels=np.array([f"ref{r}" for r in ref_rows]),
                    mode="position")


def reference_match(catalog: pd.DataFrame, ref: pd.DataFrame, radius_arcsec: float,
                    logger=None) -> RefMatch | None:
    """Match by identifier when both sides have one, else by position; None (with a warning that
    names the missing columns) when neither is possible."""
    logger = logger or log
    id_col = find_column(ref, "source_id")
    if id_col is not None and "gaia_source_id" in catalog.columns:
        return _by_id(catalog, ref, id_col)
    ra_col, dec_col = find_column(ref, "ra"), find_column(ref, "dec")
    if ra_col is None or dec_col is None:
        miss = [n for n, c in (("ra", ra_col), ("dec", dec_col)) if c is None]
        logger.warning("ZP: reference table lacks column(s) %s (needs ra, dec and mag_<band>, or "
                       "source_id matched to the catalog's gaia_source_id); zero points skipped. "
                       "Columns present: %s", ", ".join(miss), ", ".join(map(str, ref.columns)))
        return None
    miss = [n for n in ("RA", "DEC") if find_column(catalog, n) is None]
    if miss:
        logger.warning("ZP: catalog lacks column(s) %s to match the reference table by position; "
                       "zero points skipped", ", ".join(miss))
        return None
    return _by_position(catalog, ref, ra_col, dec_col, float(radius_arcsec))
