"""The load stage's header pass: every band's required keywords, scale and FWHM, and the checks
between bands (duplicate FILTER, one shape, aligned WCS), all before any pixel is read."""
from __future__ import annotations

import logging

import numpy as np
from astropy.wcs import WCS

from ..errors import InputError
from ..io import fits as fio
from ..io.prepared import BandInfo

__all__ = ["parse_band_header", "check_alignment", "headers_pass"]

log = logging.getLogger("tract7dt_mpi.stages.load")


def _hfloat(header, key):
    """Header value as float, or None when absent/blank/non-numeric."""
    if key not in header:
        return None
    try:
        return float(header[key])
    except (TypeError, ValueError):
        return None


def parse_band_header(header, path: str, zp_ref: float, logger=None) -> BandInfo:
    """Check the required keywords (inputs spec 2.1) and derive scale and FWHM."""
    logger = logger or log
    if "FILTER" not in header:
        raise InputError(f"Missing FILTER in {path}")
    band = str(header["FILTER"]).strip()
    if not band:
        raise InputError(f"Empty FILTER in {path}")
    if "ZP_AUTO" not in header:
        raise InputError(f"Missing ZP_AUTO in {path}")
    zp = _hfloat(header, "ZP_AUTO")
    if zp is None or not np.isfinite(zp):
        raise InputError(f"Bad ZP_AUTO in {path}: expected a finite magnitude, got {header['ZP_AUTO']!r}")
    skysig = _hfloat(header, "SKYSIG")
    if skysig is None or not np.isfinite(skysig) or skysig <= 0:
        raise InputError(f"Bad/Missing SKYSIG in {path}: expected a finite number > 0 (ADU), "
                         f"got {header.get('SKYSIG')!r}")
    egain = _hfloat(header, "EGAIN")
    if egain is None or not np.isfinite(egain) or egain <= 0:
        raise InputError(f"Bad/Missing EGAIN (e-/ADU) in {path}: expected a finite number > 0, "
                         f"got {header.get('EGAIN')!r}")
    saturate = _hfloat(header, "SATURATE")
    if "SATURATE" not in header:
        logger.warning("SATURATE missing in %s; using inf.", path)
        saturate = np.inf
    elif saturate is None or not np.isfinite(saturate) or saturate <= 0:
        logger.warning("SATURATE invalid in %s (%r); using inf.", path, header["SATURATE"])
        saturate = np.inf
    fwhm = _hfloat(header, "PEEING")
    if fwhm is None or not np.isfinite(fwhm) or fwhm <= 0:
        fwhm = np.nan
        seeing = _hfloat(header, "SEEING")
        if seeing is not None and np.isfinite(seeing) and seeing > 0:
            try:
                from astropy.wcs.utils import proj_plane_pixel_scales
                w = fio.wcs_from_header(header)
                pixscale = float(np.median(proj_plane_pixel_scales(w.celestial))) * 3600.0  # deg -> "
            except Exception:
                pixscale = np.nan
            if np.isfinite(pixscale) and pixscale > 0:
                fwhm = seeing / pixscale
    scale = float(10.0 ** (-0.4 * (zp - zp_ref)))
    return BandInfo(band=band, filter=band, path=path, scale=scale, zp_auto=float(zp),
                    skysig=float(skysig), egain=float(egain), saturate=float(saturate),
                    fwhm_pix=float(fwhm), header=fio.header_to_text(header))


def _wcs_terms(w: WCS):
    ww = w.wcs
    if ww.has_cd():
        return "cd", np.asarray(ww.cd, float), None
    return "pc", np.asarray(ww.get_pc(), float), np.asarray(ww.cdelt, float)


def check_alignment(ref: WCS, other: WCS, checks, path: str, logger=None) -> None:
    """Raise InputError "WCS mismatch with reference: <file> (...)" when ``other`` differs from
    ``ref`` beyond ``checks.wcs_tolerance`` (CRVAL, CRPIX, CD or CDELT+PC, CTYPE)."""
    logger = logger or log
    tol = checks.wcs_tolerance
    why = None
    a, b = ref.wcs, other.wcs
    if tuple(a.ctype) != tuple(b.ctype):
        why = f"CTYPE {tuple(b.ctype)} != {tuple(a.ctype)}"
    elif not np.allclose(a.crval, b.crval, rtol=0, atol=tol.crval):
        why = f"CRVAL differs by {np.max(np.abs(np.subtract(a.crval, b.crval))):.3g} deg > {tol.crval}"
    elif not np.allclose(a.crpix, b.crpix, rtol=0, atol=tol.crpix):
        why = f"CRPIX differs by {np.max(np.abs(np.subtract(a.crpix, b.crpix))):.3g} px > {tol.crpix}"
    else:
        ka, ma, da = _wcs_terms(ref)
        kb, mb, db = _wcs_terms(other)
        if ka != kb:
            why = "one header uses CD, the other CDELT/PC"
        elif not np.allclose(ma, mb, rtol=0, atol=tol.cd):
            why = f"{ka.upper()} differs by {np.max(np.abs(ma - mb)):.3g} > {tol.cd}"
        elif ka == "pc" and not np.allclose(da, db, rtol=0, atol=tol.cdelt):
            why = f"CDELT differs by {np.max(np.abs(da - db)):.3g} > {tol.cdelt}"
    if why:
        logger.error("[CHECK] WCS alignment FAILED for %s", path)
        raise InputError(f"WCS mismatch with reference: {path} ({why})")


def headers_pass(paths, zp_ref, checks, logger):
    """Read and check every header; returns (infos, shape, ref_wcs) without touching pixels."""
    infos, shape, ref_wcs, seen = [], None, None, {}
    for path in paths:
        hdr = fio.read_header(path)
        shp = fio.image_shape(hdr, path)
        info = parse_band_header(hdr, path, zp_ref, logger)
        if info.band in seen:
            raise InputError(f"Duplicate FILTER {info.band!r} in {path} (already used by {seen[info.band]})")
        seen[info.band] = path
        wcs = fio.wcs_from_header(hdr)
        if shape is None:
            shape, ref_wcs = shp, wcs
        else:
            if shp != shape:
                extra = "" if checks.require_same_shape else \
                    " (checks.require_same_shape is off, but stacking needs one shape)"
                raise InputError(f"Image shape mismatch: {path} has {shp}, expected {shape}{extra}")
            if checks.require_wcs_alignment:
                check_alignment(ref_wcs, wcs, checks, path, logger)
        infos.append(info)
    if checks.require_wcs_alignment:
        logger.info("[CHECK] WCS alignment PASSED for all images.")
    return infos, shape, ref_wcs
