"""PSFEx ``.psf`` files: read the model and evaluate its PSF stamp at an image position.

Format (PSFEx output): a binary-table extension ``PSF_DATA`` with one row whose column
``PSF_MASK`` holds the basis cube, numpy shape ``(PSFAXIS3, PSFAXIS2, PSFAXIS1)`` = (number of
polynomial terms, ny, nx). Header keys: ``POLNAXIS`` (2, or 0 for a constant PSF), ``POLGRP1/2``
(1), ``POLNAME1/2`` (``X_IMAGE``/``Y_IMAGE`` or their ``*WIN`` forms), ``POLZERO1/2`` and
``POLSCAL1/2`` (the polynomial variable is ``(x - POLZERO) / POLSCAL`` with x, y 1-based image
pixels, as SExtractor measures them), ``POLDEG1`` (total degree d), ``PSF_SAMP`` (image pixels per
model pixel), ``PSF_FWHM`` (image pixels), ``ACCEPTED`` (stars used).

The terms are ordered by the power of y, then of x: for ``j = 0..d``, ``i = 0..d-j``, term
``x^i y^j`` (degree 2: 1, x, x², y, xy, y²). The model stamp is centred on pixel
``(PSFAXIS1 // 2, PSFAXIS2 // 2)`` (0-based) and sampled every ``PSF_SAMP`` image pixels; it is the
effective PSF (pixel response included), so resampling it to the image grid is interpolation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from ..errors import InputError

__all__ = ["PsfexModel", "read_psfex", "poly_terms"]


def poly_terms(u: float, v: float, degree: int) -> np.ndarray:
    """PSFEx basis values [u^i v^j for j in 0..d for i in 0..d-j]."""
    return np.array([u ** i * v ** j for j in range(degree + 1) for i in range(degree + 1 - j)])


@dataclass(frozen=True)
class PsfexModel:
    """One PSFEx model (see the module doc for the conventions)."""

    path: str
    basis: np.ndarray            # (n_terms, ny, nx) float64
    degree: int                  # 0 with a constant PSF
    zero: tuple[float, float]    # POLZERO1/2
    scale: tuple[float, float]   # POLSCAL1/2
    samp: float                  # PSF_SAMP: image pixels per model pixel
    fwhm: float                  # PSF_FWHM [image px]; nan when absent
    accepted: int | None         # ACCEPTED stars; None when absent

    def model_stamp(self, x: float, y: float) -> np.ndarray:
        """The model-grid stamp at 1-based image pixel (x, y)."""
        if self.degree == 0 or self.basis.shape[0] == 1:
            return self.basis[0].copy()
        p = poly_terms((x - self.zero[0]) / self.scale[0], (y - self.zero[1]) / self.scale[1],
                       self.degree)
        return np.tensordot(p, self.basis, axes=(0, 0))

    def stamp(self, x: float, y: float) -> np.ndarray:
        """Unit-sum PSF stamp on the image pixel grid (odd side, centred) at 1-based (x, y).

        With ``PSF_SAMP != 1`` the model is interpolated (cubic spline) at image-pixel offsets
        ``m / PSF_SAMP`` from its centre, over the model's extent."""
        m = self.model_stamp(x, y)
        ny, nx = m.shape
        cy, cx = ny // 2, nx // 2
        if abs(self.samp - 1.0) < 1e-6:
            h = min(cy, ny - 1 - cy, cx, nx - 1 - cx)
            out = m[cy - h:cy + h + 1, cx - h:cx + h + 1]
        else:
            from scipy.ndimage import map_coordinates
            h = int(np.floor(min(cy, ny - 1 - cy, cx, nx - 1 - cx) * self.samp))
            off = np.arange(-h, h + 1) / self.samp
            yy, xx = np.meshgrid(cy + off, cx + off, indexing="ij")
            out = map_coordinates(m, [yy, xx], order=3, mode="constant", cval=0.0)
        out = np.asarray(out, dtype=np.float64)
        tot = out.sum()
        return (out / tot if tot > 0 else out).astype(np.float32)


def _key(h, key, path, cast=float):
    if key not in h:
        raise InputError(f"PSFEx file {path}: missing header key {key}")
    try:
        return cast(h[key])
    except (TypeError, ValueError):
        raise InputError(f"PSFEx file {path}: bad {key} = {h[key]!r}") from None


def read_psfex(path: str) -> PsfexModel:
    """Read a PSFEx ``.psf`` file; InputError naming the file and key on anything unexpected."""
    if not os.path.exists(path):
        raise InputError(f"PSFEx file not found: {path}")
    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul["PSF_DATA"] if "PSF_DATA" in hdul else (hdul[1] if len(hdul) > 1 else None)
            if not isinstance(hdu, fits.BinTableHDU) or "PSF_MASK" not in hdu.columns.names:
                raise InputError(f"PSFEx file {path}: no PSF_DATA table with a PSF_MASK column")
            h = hdu.header.copy()
            mask = np.array(hdu.data["PSF_MASK"][0], dtype=np.float64)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"Cannot read PSFEx file {path}: {exc.__class__.__name__}: {exc}") from None
    naxis = _key(h, "POLNAXIS", path, int)
    if naxis not in (0, 2):
        raise InputError(f"PSFEx file {path}: POLNAXIS = {naxis}, expected 2 (x, y) or 0")
    if naxis == 2:
        for i in (1, 2):
            name = str(_key(h, f"POLNAME{i}", path, str)).strip().upper()
            if not (name.startswith("XY"[i - 1]) and name.endswith("IMAGE")):
                raise InputError(f"PSFEx file {path}: POLNAME{i} = {name!r}, expected {'XY'[i - 1]}*_IMAGE")
            if _key(h, f"POLGRP{i}", path, int) != 1:
                raise InputError(f"PSFEx file {path}: POLGRP{i} != 1 (one context group expected)")
        if int(h.get("POLNGRP", 1)) != 1:
            raise InputError(f"PSFEx file {path}: POLNGRP = {h['POLNGRP']}, expected 1")
        deg = _key(h, "POLDEG1", path, int)
        zero = (_key(h, "POLZERO1", path), _key(h, "POLZERO2", path))
        scale = (_key(h, "POLSCAL1", path), _key(h, "POLSCAL2", path))
        if not (scale[0] != 0 and scale[1] != 0):
            raise InputError(f"PSFEx file {path}: POLSCAL1/2 must be non-zero, got {scale}")
    else:
        deg, zero, scale = 0, (0.0, 0.0), (1.0, 1.0)
    n_terms = (deg + 1) * (deg + 2) // 2
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] != n_terms:
        raise InputError(f"PSFEx file {path}: PSF_MASK shape {mask.shape}, expected ({n_terms}, ny, nx) "
                         f"for POLDEG1 = {deg}")
    samp = _key(h, "PSF_SAMP", path)
    if not samp > 0:
        raise InputError(f"PSFEx file {path}: PSF_SAMP = {samp}, expected > 0")
    fwhm = float(h.get("PSF_FWHM", np.nan) or np.nan)
    acc = h.get("ACCEPTED")
    return PsfexModel(path=path, basis=mask, degree=deg, zero=zero, scale=scale, samp=float(samp),
                      fwhm=fwhm, accepted=int(acc) if acc is not None else None)
