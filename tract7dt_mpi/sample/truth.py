"""Truth helpers for tests: the exact PSF, fluxes and instrument values behind a synthetic tile.

``true_psf_stamp`` rebuilds the PSF the generator used at any position from an image header, a
:class:`~tract7dt_mpi.sample.psf.PsfParams`, a FITS file or the tile folder; ``load_truth`` returns
``truth.csv`` (IDs and Gaia IDs as text) and ``truth_meta.json``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .psf import PsfParams, draw_psf_stamp


def load_meta(sample_dir) -> dict:
    """``truth_meta.json`` of a tile folder (per-band zp_true, zp_auto, egain, sky_e, psf, ...)."""
    path = Path(sample_dir) / "truth_meta.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; expected a folder written by make-sample")
    return json.loads(path.read_text())


def load_truth(sample_dir) -> tuple[pd.DataFrame, dict]:
    """(truth table, meta). ``ID``, ``gaia_source_id`` and ``blend_host_id`` stay text (leading
    zeros, 19 digits; empty text where not set)."""
    path = Path(sample_dir) / "truth.csv"
    if not path.is_file():
        raise InputError(f"{path}: not found; expected a folder written by make-sample")
    t = pd.read_csv(path, dtype={"ID": str, "gaia_source_id": str, "blend_host_id": str}, keep_default_na=True)
    for col in ("gaia_source_id", "blend_host_id"):
        if col in t:
            t[col] = t[col].fillna("")
    return t, load_meta(sample_dir)


def band_meta(meta: dict, band: str) -> dict:
    """The ``bands`` entry of ``meta`` for one band (InputError naming the band if absent)."""
    for b in meta["bands"]:
        if b["band"] == band:
            return b
    raise InputError(f"truth_meta.json: no band {band!r}; have {[b['band'] for b in meta['bands']]}")


def psf_params(band: str, header_or_params) -> PsfParams:
    """PsfParams of ``band`` from a header/mapping, a PsfParams, a FITS path or a tile folder."""
    src = header_or_params
    if isinstance(src, PsfParams):
        return src
    if isinstance(src, (str, Path)):
        p = Path(src)
        if p.is_dir():
            return PsfParams.from_dict(band_meta(load_meta(p), band)["psf"])
        from astropy.io import fits
        if not p.is_file():
            raise InputError(f"{p}: not found; expected a make-sample image or tile folder")
        src = fits.getheader(p)
    if isinstance(src, Mapping) or hasattr(src, "keys"):
        if "fwhm0" in src:                                  # a PsfParams.to_dict() mapping
            return PsfParams.from_dict(dict(src))
        filt = str(src.get("FILTER", band)).strip()
        if filt != band:
            raise InputError(f"true_psf_stamp: header FILTER is {filt!r}, asked for band {band!r}")
        return PsfParams.from_header(src, where=f"header of band {band}")
    raise InputError(f"true_psf_stamp: cannot read PSF parameters from {type(src).__name__}")


def true_psf_stamp(band: str, x: float, y: float, size: int = 55, header_or_params=None,
                   offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The generator's PSF of ``band`` at full-frame pixel (x, y): pixel-integrated, unit sum.

    The stamp is ``size`` x ``size`` (odd) with the PSF centred on the central pixel (plus the
    optional sub-pixel ``offset`` (dx, dy)). ``header_or_params``: the image's FITS header (or any
    mapping with its PSF* cards), a PsfParams, a path to the image, or the tile folder.
    """
    if header_or_params is None:
        raise InputError("true_psf_stamp: header_or_params is required (image header, PsfParams, "
                         "image path or tile folder)")
    return draw_psf_stamp(psf_params(band, header_or_params), float(x), float(y), size, offset)


