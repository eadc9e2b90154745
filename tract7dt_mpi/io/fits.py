"""FITS reading and writing: input images (any image HDU, tile-compressed or not), the WCS snapshot
and mask images.

An image is named by a *spec*: a path, optionally followed by an HDU in brackets, the cfitsio
convention: ``image.fits[1]`` (HDU number, 0 = primary), ``image.fits[SCI]`` (EXTNAME) or
``image.fits[SCI,2]`` (EXTNAME, EXTVER). Without brackets the first HDU holding 2-D image data is
used, so a ``.fits.fz`` file (RICE ``CompImageHDU`` in HDU 1) needs no suffix. The header of an
extension is merged with the primary header: a key the extension lacks (FILTER, ZP_AUTO, ...) is
taken from the primary HDU.

Reading turns every way a FITS file can be unusable (missing, unreadable, no image data, not 2-D)
into a one-line :class:`InputError` naming the file. Uncompressed images are memory-mapped and a box
read goes through the HDU's ``section``, so a caller can read just the crop box of a big frame (for
a tile-compressed image only the tiles that overlap the box are decompressed).
"""
from __future__ import annotations

import io as _io
import os
import re
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..errors import InputError

__all__ = [
    "split_hdu_spec", "read_header", "read_image", "image_shape", "header_to_text",
    "header_from_text", "wcs_from_header", "write_wcs_snapshot", "write_mask_fits", "read_mask_fits",
]

_HDU_SUFFIX = re.compile(r"^(?P<path>.+?)\[(?P<hdu>[^\[\]]+)\]$")
#: structural keys of the primary HDU that never describe an extension's image
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME",
               "EXTVER", "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "COMMENT", "HISTORY",
               "", "INHERIT", "ZIMAGE", "ZBITPIX", "ZCMPTYPE", "ZTILE1", "ZTILE2"}


def split_hdu_spec(spec: str) -> tuple[str, int | str | tuple | None]:
    """``"f.fits[1]"`` -> ``("f.fits", 1)``; ``"f.fits[SCI]"`` -> ``("f.fits", "SCI")``;
    ``"f.fits[SCI,2]"`` -> ``("f.fits", ("SCI", 2))``; no brackets (or an existing file whose name
    ends in brackets) -> ``(spec, None)``."""
    m = _HDU_SUFFIX.match(spec)
    if m is None or os.path.exists(spec):
        return spec, None
    hdu = m.group("hdu").strip()
    if re.fullmatch(r"\d+", hdu):
        return m.group("path"), int(hdu)
    parts = [p.strip() for p in hdu.split(",")]
    if len(parts) == 2 and re.fullmatch(r"\d+", parts[1]):
        return m.group("path"), (parts[0], int(parts[1]))
    return m.group("path"), hdu


def _open(spec):
    path, _ = split_hdu_spec(spec)
    if not os.path.exists(path):
        raise InputError(f"FITS image not found: {path}")
    try:
        return fits.open(path, memmap=True, lazy_load_hdus=True)
    except Exception as exc:  # astropy raises OSError / TypeError / ValueError for junk files
        raise InputError(f"Cannot read FITS image {path}: {exc.__class__.__name__}: {exc}") from None


def _is_2d_image(hdu) -> bool:
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return False
    h = hdu.header
    naxis = int(h.get("NAXIS", 0) or 0)
    if naxis < 2:
        return False
    return all(int(h.get(f"NAXIS{i}", 1) or 1) == 1 for i in range(3, naxis + 1))


def _select_hdu(hdul, spec: str):
    """(hdu, index) named by ``spec`` or the first 2-D image HDU; InputError otherwise."""
    path, which = split_hdu_spec(spec)
    try:
        if which is None:
            for i, hdu in enumerate(hdul):
                if _is_2d_image(hdu):
                    return hdu, i
            hdu0 = hdul[0]
        else:
            try:
                hdu0 = hdul[which]
            except (KeyError, IndexError):
                names = [f"{i}:{h.name}" for i, h in enumerate(hdul)]
                raise InputError(f"FITS file {path} has no HDU {which!r} (HDUs: {', '.join(names)})") from None
            if not isinstance(hdu0, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                raise InputError(f"HDU {which!r} of {path} is not a 2-D image ({type(hdu0).__name__})")
            return hdu0, hdul.index_of(which)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"Cannot read FITS header of {path}: {exc}") from None
    naxis = int(hdu0.header.get("NAXIS", 0) or 0)
    if naxis == 0 and len(hdul) == 1:
        raise InputError(f"FITS file has no image data in its primary HDU: {path}")
    if naxis == 0:
        raise InputError(f"FITS file has no 2-D image HDU: {path}")
    return hdu0, 0


#: WCS keys: taken from the primary header only when the image HDU has no WCS of its own, so a
#: CD matrix there never mixes with the extension's PC/CDELT (or SIP terms with a TPV solution)
_WCS_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|"
                      r"PV\d_\d+|PS\d_\d+|[AB]P?_\d+_\d+|[AB]P?_ORDER|[AB]P?_DMAX|LONPOLE|LATPOLE|"
                      r"RADESYS|RADECSYS|EQUINOX|EPOCH|MJDREF|WCSNAME)$")


def _merged_header(hdul, hdu, index: int) -> fits.Header:
    """The HDU's header plus every non-structural primary key it lacks (WCS keys only when the
    HDU has no WCS: no CTYPE1)."""
    header = hdu.header.copy()
    if index == 0:
        return header
    own_wcs = "CTYPE1" in header
    for card in hdul[0].header.cards:
        key = card.keyword
        if key in _STRUCTURAL or key.startswith("NAXIS") or key in header:
            continue
        if own_wcs and _WCS_KEY.match(key):
            continue
        header.append(card, end=True)
    return header


def read_header(spec: str) -> fits.Header:
    """Header of the image HDU of ``spec`` (merged with the primary header); InputError when
    the file is missing or unreadable or has no 2-D image HDU."""
    with _open(spec) as hdul:
        hdu, index = _select_hdu(hdul, spec)
        try:
            return _merged_header(hdul, hdu, index)
        except Exception as exc:
            raise InputError(f"Cannot read FITS header of {split_hdu_spec(spec)[0]}: {exc}") from None


def image_shape(header: fits.Header, path: str) -> tuple[int, int]:
    """(ny, nx) of a 2-D image from its header; InputError when there is no 2-D image."""
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis == 0:
        raise InputError(f"FITS file has no image data in its primary HDU: {path}")
    dims = [int(header.get(f"NAXIS{i}", 1) or 1) for i in range(1, naxis + 1)]
    extra = [d for d in dims[2:] if d != 1]
    if naxis < 2 or extra or dims[0] < 1 or dims[1] < 1:
        raise InputError(f"FITS image HDU of {path} is not a 2-D image (NAXISn={dims})")
    return dims[1], dims[0]


def read_image(spec: str, box: tuple[int, int, int, int] | None = None, step: int = 1
               ) -> tuple[np.ndarray, fits.Header]:
    """Image of ``spec`` as float32 and its (merged) header; optionally only
    ``box = (y0, y1, x0, x1)`` and/or every ``step``-th pixel. A box read goes through the HDU's
    ``section`` (memory-mapped, or only the overlapping compressed tiles; scaled integers are
    scaled by astropy)."""
    path = split_hdu_spec(spec)[0]
    with _open(spec) as hdul:
        hdu, index = _select_hdu(hdul, spec)
        try:
            header = _merged_header(hdul, hdu, index)
        except Exception as exc:
            raise InputError(f"Cannot read FITS header of {path}: {exc}") from None
        ny, nx = image_shape(header, path)
        y0, y1, x0, x1 = box if box is not None else (0, ny, 0, nx)
        extra = (0,) * (int(header.get("NAXIS", 2)) - 2)
        try:
            if box is not None and step == 1:
                data = hdu.section[extra + (slice(y0, y1), slice(x0, x1))]
            else:
                data = hdu.data
                if data is None:
                    raise InputError(f"FITS file has no image data in its image HDU: {path}")
                data = data.reshape(ny, nx)[y0:y1, x0:x1]
            if step > 1:
                data = data[::step, ::step]
            out = np.array(data, dtype=np.float32, order="C")
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"Cannot read image data of {path}: {exc.__class__.__name__}: {exc}") from None
    return out, header


def header_to_text(header: fits.Header) -> str:
    """Header as a FITS card string (round-trips through :func:`header_from_text`)."""
    return header.tostring(sep="\n")


def header_from_text(text: str) -> fits.Header:
    return fits.Header.fromstring(text, sep="\n")


def wcs_from_header(header: fits.Header) -> WCS:
    """Celestial WCS of a header with astropy's 'fixed a header card' chatter silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)


def _hdu_bytes(hdu: fits.PrimaryHDU) -> bytes:
    buf = _io.BytesIO()
    hdu.writeto(buf, output_verify="silentfix")
    return buf.getvalue()


def _write_bytes(path: str, data: bytes) -> None:
    from .atomic import atomic_write_bytes
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, data)


def write_wcs_snapshot(path: str, wcs: WCS, shape: tuple[int, int]) -> None:
    """Write ``wcs.fits``: a 1x1 uint8 primary HDU whose header is the working-frame WCS.

    NAXIS1/2 of the working frame are kept as ``IMAGEW``/``IMAGEH`` cards so that readers know
    the frame size although the dummy data is 1x1.
    """
    hdr = wcs.to_header(relax=True)
    hdr["IMAGEW"] = (int(shape[1]), "working-frame width [px]")
    hdr["IMAGEH"] = (int(shape[0]), "working-frame height [px]")
    hdu = fits.PrimaryHDU(data=np.zeros((1, 1), dtype=np.uint8), header=hdr)
    _write_bytes(path, _hdu_bytes(hdu))


def write_mask_fits(path: str, mask: np.ndarray, wcs: WCS | None = None) -> None:
    """Write a 2-D mask as uint8 (1 = masked) with the working-frame WCS in the header."""
    hdr = wcs.to_header(relax=True) if wcs is not None else fits.Header()
    hdu = fits.PrimaryHDU(data=np.asarray(mask, dtype=np.uint8), header=hdr)
    _write_bytes(path, _hdu_bytes(hdu))


def read_mask_fits(path: str) -> np.ndarray:
    data, _ = read_image(path)
    return data > 0
