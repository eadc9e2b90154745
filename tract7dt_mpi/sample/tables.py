"""Tables of the synthetic tile: the input catalogue, the GaiaXP-like table and the truth table.

The input catalogue imitates a detection catalogue made elsewhere: positions perturbed by ~0.3 px
rms, shapes and sizes perturbed, initial fluxes off by ~15 % with some blanks, ~10 % blank TYPE
(the perturbations and the blank fraction are options, :class:`~.options.SampleOptions`).
The GaiaXP-like table holds every star with a broad-band magnitude brighter than G = 18.5 inside the
image (also the bright stars missing from the input catalogue), with 0.01-mag noise on the band
magnitudes. ``truth.csv`` holds the exact values used for rendering: per band the true AB
magnitude, the total flux of the rendered profile (``flux_{band}``, scaled system), the fraction of
it drawn into the image (``drawn_frac_{band}``: < 1 where a stamp or the image edge cuts the
wings) and the ideal S/N (``snr_{band}``: optimal weighting of the object's own noise-free pixels
against sky + its Poisson noise, neighbours ignored).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from .bands import PIXEL_SCALE_ARCSEC, BandTruth
from .options import SampleOptions
from .sources import GAIA_G_MAX, gaia_source_ids

TILE_RA, TILE_DEC = 150.1, 2.2


def wcs_cards(width: int, height: int, ra0: float = TILE_RA, dec0: float = TILE_DEC) -> list[tuple]:
    """FITS cards of the tile's TAN WCS (north up, east left, 0.505"/px, centred on (ra0, dec0))."""
    cd = PIXEL_SCALE_ARCSEC / 3600.0
    return [
        ("CTYPE1", "RA---TAN", ""), ("CTYPE2", "DEC--TAN", ""),
        ("CRVAL1", float(ra0), "[deg]"), ("CRVAL2", float(dec0), "[deg]"),
        ("CRPIX1", (width + 1) / 2.0, "[px] 1-based"), ("CRPIX2", (height + 1) / 2.0, "[px] 1-based"),
        ("CD1_1", -cd, "[deg/px]"), ("CD1_2", 0.0, ""), ("CD2_1", 0.0, ""), ("CD2_2", cd, "[deg/px]"),
        ("CUNIT1", "deg", ""), ("CUNIT2", "deg", ""), ("RADESYS", "ICRS", ""), ("EQUINOX", 2000.0, ""),
    ]


def tile_wcs(width: int, height: int) -> WCS:
    hdr = fits.Header()
    hdr["NAXIS"], hdr["NAXIS1"], hdr["NAXIS2"] = 2, int(width), int(height)
    for k, v, c in wcs_cards(width, height):
        hdr[k] = (v, c)
    return WCS(hdr)


def _fmt(values, fmt: str) -> list[str]:
    """Format floats as text; NaN becomes an empty cell (a blank value in the CSV)."""
    return ["" if not np.isfinite(v) else fmt % v for v in np.asarray(values, dtype=float)]


def truth_table(pop: pd.DataFrame, mags: np.ndarray, bts: list[BandTruth], radec: np.ndarray,
                peak_ratio: np.ndarray, gaia_ids: np.ndarray, zp_ref: float,
                drawn: np.ndarray, snr: np.ndarray) -> pd.DataFrame:
    """``truth.csv`` content (see the package and module docstrings for the column meanings).

    ``drawn`` and ``snr`` are (n_objects, n_bands) arrays from the renderer."""
    cols = {"ID": pop["id"], "type": pop["kind"], "x": pop["x"], "y": pop["y"],
            "ra": radec[:, 0], "dec": radec[:, 1]}
    cols.update({f"mag_{bt.band}": mags[:, j] for j, bt in enumerate(bts)})
    cols.update({f"flux_{bt.band}": bt.mag_to_scaled(mags[:, j], zp_ref) for j, bt in enumerate(bts)})
    cols.update({"g_mag": pop["g_mag"], "re": pop["re"], "ab": pop["ab"], "theta": pop["theta"],
                 "sersic_n": pop["sersic_n"], "in_catalog": pop["in_catalog"].astype(bool),
                 "saturated": peak_ratio >= 1.0, "peak_over_saturate": peak_ratio,
                 "near_edge": pop["near_edge"].astype(bool), "gaia_source_id": gaia_ids})
    cols.update({f"drawn_frac_{bt.band}": drawn[:, j] for j, bt in enumerate(bts)})
    cols.update({f"snr_{bt.band}": snr[:, j] for j, bt in enumerate(bts)})
    host = pop["blend_host"].to_numpy()
    cols["blend_host_id"] = np.where(host >= 0, pop["id"].to_numpy()[np.maximum(host, 0)], "")
    t = pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in cols.items()},
                     index=pop.index)
    return t


def truth_csv_frame(t: pd.DataFrame) -> pd.DataFrame:
    """The truth table with every float written at full useful precision."""
    out = t.copy()
    for c in out.columns:
        if c in ("ra", "dec"):
            out[c] = _fmt(out[c], "%.10f")
        elif out[c].dtype.kind == "f":
            out[c] = _fmt(out[c], "%.9g")
    return out


def input_catalog(truth: pd.DataFrame, bts: list[BandTruth], wcs: WCS, seed: int,
                  options: SampleOptions | None = None) -> pd.DataFrame:
    """The detection-like input catalogue (catalogued objects only, sorted by ID)."""
    o = options or SampleOptions()
    k = o.catalog_shape_noise
    rng = np.random.default_rng([int(seed), 3])
    t = truth[truth["in_catalog"]].sort_values("ID").reset_index(drop=True)
    n = len(t)
    x = t["x"].to_numpy() + rng.normal(0, o.catalog_pos_sigma, n)     # 0.21: ~0.3 px rms in radius
    y = t["y"].to_numpy() + rng.normal(0, o.catalog_pos_sigma, n)
    ra, dec = wcs.all_pix2world(x, y, 0)
    typ = t["type"].to_numpy().astype(object)
    typ[rng.uniform(size=n) < o.blank_type_frac] = ""
    cat = pd.DataFrame({"ID": t["ID"], "RA": _fmt(ra, "%.9f"), "DEC": _fmt(dec, "%.9f"), "TYPE": typ})
    for bt in bts:
        f = t[f"flux_{bt.band}"].to_numpy() * np.clip(1.0 + rng.normal(0, 0.15, n), 0.3, None)
        f[rng.uniform(size=n) < 0.05] = np.nan
        cat[f"FLUX_{bt.band}"] = _fmt(f, "%.6g")
    is_star = (t["type"] == "STAR").to_numpy()
    ab = t["ab"].to_numpy()
    ell = np.where(is_star, rng.uniform(0.0, 0.08, n), np.clip(1.0 - ab + rng.normal(0, 0.05 * k, n), 0.0, 0.9))
    theta = np.where(is_star, rng.uniform(-90, 90, n), t["theta"].to_numpy() + rng.normal(0, 8.0 * k, n))
    theta = 90.0 - np.mod(90.0 - theta, 180.0)                     # wrap into (-90, 90]
    re = np.where(is_star, rng.uniform(1.5, 2.5, n),
                  t["re"].to_numpy() * np.clip(1 + rng.normal(0, 0.15 * k, n), 0.5, 2))
    cat["ELL"], cat["THETA"], cat["Re"] = _fmt(ell, "%.4f"), _fmt(theta, "%.3f"), _fmt(re, "%.4f")
    return cat


def gaia_table(truth: pd.DataFrame, bts: list[BandTruth], width: int, height: int, seed: int) -> pd.DataFrame:
    """GaiaXP-like synthetic photometry for the stars brighter than G = 18.5 inside the image."""
    rng = np.random.default_rng([int(seed), 5])
    sel = ((truth["type"] == "STAR") & (truth["g_mag"] <= GAIA_G_MAX) & truth["gaia_source_id"].ne("")
           & truth["x"].between(0, width - 1) & truth["y"].between(0, height - 1))
    t = truth[sel].sort_values("gaia_source_id").reset_index(drop=True)
    n = len(t)
    out = pd.DataFrame({"source_id": t["gaia_source_id"],
                        "ra": _fmt(t["ra"] + rng.normal(0, 0.003, n) / 3600 / np.cos(np.radians(t["dec"])), "%.10f"),
                        "dec": _fmt(t["dec"] + rng.normal(0, 0.003, n) / 3600, "%.10f"),
                        "phot_g_mean_mag": _fmt(t["g_mag"] + rng.normal(0, 0.003, n), "%.5f")})
    for bt in bts:
        out[f"mag_{bt.band}"] = _fmt(t[f"mag_{bt.band}"] + rng.normal(0, 0.01, n), "%.5f")
    return out


def assign_gaia_ids(truth_kind: pd.Series, g_mag: np.ndarray, seed: int) -> np.ndarray:
    """19-digit Gaia IDs for the stars with g_mag <= 18.5 (empty text for every other object)."""
    rng = np.random.default_rng([int(seed), 4])
    sel = np.flatnonzero((truth_kind.to_numpy() == "STAR") & (g_mag <= GAIA_G_MAX))
    ids = np.array([""] * len(g_mag), dtype=object)
    ids[sel] = gaia_source_ids(rng, len(sel))
    return ids
