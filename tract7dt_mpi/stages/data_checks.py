"""Checks that refuse inputs holding no data, and flag fits that rest on dead pixels.

Why: a catalog entirely off the images, or an image of one constant value (an all-zero frame
written by a failed reduction), would otherwise run to the end and produce a catalog of
meaningless numbers that look like measurements.  Those inputs stop the run (``InputError``,
exit 2) naming the file; a source whose pixels in some band are constant (a zero-filled gap)
is flagged (``flag_dead_data``) so that its fit is never called reliable.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError

log = logging.getLogger("tract7dt_mpi.stages.data_checks")

#: pixels around a source inspected by :func:`dead_near` (px)
DEAD_RADIUS_PIX = 3.0


def check_not_constant(raw: np.ndarray, path: str) -> None:
    """InputError when every finite pixel of ``raw`` has one value (no finite pixel: no error,
    that case is the loader's all-NaN band)."""
    finite = raw[np.isfinite(raw)]
    if finite.size and float(finite.min()) == float(finite.max()):
        raise InputError(f"image {path} is constant (every pixel of the working frame is "
                         f"{float(finite[0]):g}): it holds no data; remove it from the image list")


def bad_coordinates(ra, dec) -> np.ndarray:
    """True where RA or DEC is blank, non-numeric or non-finite."""
    import pandas as pd
    r = pd.to_numeric(pd.Series(ra), errors="coerce").to_numpy(float)
    d = pd.to_numeric(pd.Series(dec), errors="coerce").to_numpy(float)
    return ~(np.isfinite(r) & np.isfinite(d))


def warn_bad_coordinates(bad: np.ndarray, path: str, logger=None) -> None:
    n = int(np.count_nonzero(bad))
    if n:
        (logger or log).warning("input catalog %s: %d row(s) have a blank or non-finite RA/DEC; they "
                                "are excluded (excluded_reason 'coords')", path, n)


def footprint_text(wcs, shape) -> str:
    """``'1024x1024 px, RA 149.8..150.2 deg, Dec 1.9..2.3 deg'`` of a working frame."""
    h, w = shape
    try:
        ra, dec = wcs.all_pix2world(np.array([0, w - 1, 0, w - 1], float),
                                    np.array([0, 0, h - 1, h - 1], float), 0)
        return (f"{w}x{h} px, RA {np.min(ra):.5f}..{np.max(ra):.5f} deg, "
                f"Dec {np.min(dec):.5f}..{np.max(dec):.5f} deg")
    except Exception:  # noqa: BLE001 - the message must not fail
        return f"{w}x{h} px"


def check_rows_on_image(x, y, shape, wcs, path: str) -> None:
    """InputError when no catalog row falls inside the working frame (``x``, ``y`` 0-based)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < shape[1] - 0.5) & \
            (y >= -0.5) & (y < shape[0] - 0.5)
    if len(x) and not inside.any():
        raise InputError(f"input catalog {path}: none of its {len(x)} rows lies on the image "
                         f"(working frame {footprint_text(wcs, shape)}); check RA/DEC and the "
                         f"images' WCS")


def dead_near(images, x: float, y: float, radius: float = DEAD_RADIUS_PIX) -> bool:
    """True when in some band the usable pixels (invvar > 0) within ``radius`` of (x, y) all have
    one value: no light was recorded there, whatever the fitted flux says."""
    if not (np.isfinite(x) and np.isfinite(y)):
        return False
    for im in images:
        h, w = im.invvar.shape
        x0, x1 = max(0, int(np.floor(x - radius))), min(w, int(np.ceil(x + radius)) + 1)
        y0, y1 = max(0, int(np.floor(y - radius))), min(h, int(np.ceil(y + radius)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        near = ((xx - x) ** 2 + (yy - y) ** 2 <= radius * radius) & (im.invvar[y0:y1, x0:x1] > 0)
        vals = im.data[y0:y1, x0:x1][near]
        if vals.size >= 2 and float(vals.min()) == float(vals.max()):
            return True
    return False
