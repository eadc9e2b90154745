"""FITS reading and writing: input images (primary HDU), the WCS snapshot and mask images.

Reading turns every way a FITS file can be unusable (missing, unreadable, no image data, not 2-D)
into a one-line :class:`InputError` naming the file. Images are opened memory-mapped so that a
caller can read just the crop box of a big frame without loading the border.
"""
from __future__ import annotations

import io as _io
import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..errors import InputError

__all__ = [
    "read_header", "read_image", "image_shape", "header_to_text", "header_from_text",
    "wcs_from_header", "write_wcs_snapshot", "write_mask_fits", "read_mask_fits",
]


def _open(path):
    if not os.path.exists(path):
        raise InputError(f"FITS image not found: {path}")
    try:
        return fits.open(path, memmap=True, lazy_load_hdus=True)
    except Exception as exc:  # astropy raises OSError / TypeError / ValueError for junk files
        raise InputError(f"Cannot read FITS image {path}: {exc.__class__.__name__}: {exc}") from None


def read_header(path: str) -> fits.Header:
    """Primary header of ``path`` (InputError when missing or unreadable)."""
    with _open(path) as hdul:
        try:
            return hdul[0].header.copy()
        except Exception as exc:
            raise InputError(f"Cannot read FITS header of {path}: {exc}") from None


def image_shape(header: fits.Header, path: str) -> tuple[int, int]:
    """(ny, nx) of a 2-D primary image from its header; InputError when there is no 2-D image."""
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis == 0:
        raise InputError(f"FITS file has no image data in its primary HDU: {path}")
    dims = [int(header.get(f"NAXIS{i}", 1) or 1) for i in range(1, naxis + 1)]
    extra = [d for d in dims[2:] if d != 1]
    if naxis < 2 or extra or dims[0] < 1 or dims[1] < 1:
        raise InputError(f"FITS primary HDU of {path} is not a 2-D image (NAXISn={dims})")
    return dims[1], dims[0]


def read_image(path: str, box: tuple[int, int, int, int] | None = None, step: int = 1
               ) -> tuple[np.ndarray, fits.Header]:
    """Primary image as float32 and its header; optionally only ``box = (y0, y1, x0, x1)``
    and/or every ``step``-th pixel. The file is memory-mapped, so a sub-box read copies only
    that box (scaled-integer images are scaled by astropy first)."""
    with _open(path) as hdul:
        try:
            hdu = hdul[0]
            header = hdu.header.copy()
        except Exception as exc:
            raise InputError(f"Cannot read FITS header of {path}: {exc}") from None
        ny, nx = image_shape(header, path)
        try:
            data = hdu.data
        except Exception as exc:
            raise InputError(f"Cannot read image data of {path}: {exc}") from None
        if data is None:
            raise InputError(f"FITS file has no image data in its primary HDU: {path}")
        data = data.reshape(ny, nx)
        if box is not None:
            y0, y1, x0, x1 = box
            data = data[y0:y1, x0:x1]
        if step > 1:
            data = data[::step, ::step]
        try:
            out = np.array(data, dtype=np.float32, order="C")
        except Exception as exc:
            raise InputError(f"Cannot read image data of {path}: {exc}") from None
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
