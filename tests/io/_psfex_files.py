"""Hand-written PSFEx files for the tests (the PSFEx format: primary HDU + binary table PSF_DATA
with one row, column PSF_MASK of shape (terms, ny, nx), POL*/PSF* header keys)."""
from __future__ import annotations

import numpy as np
from astropy.io import fits


def gauss(n, sigma, cx=None, cy=None, step=1.0):
    """n x n circular Gaussian of width ``sigma`` (image px) sampled every ``step`` image px
    around the centre pixel n // 2 (+ an optional offset (cx, cy) in model pixels)."""
    c = n // 2
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    dx = (xx - c - (cx or 0.0)) * step
    dy = (yy - c - (cy or 0.0)) * step
    return np.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))


def write_psfex(path, basis, deg, zero=(1000.0, 500.0), scale=(800.0, 400.0), samp=1.0,
                names=("X_IMAGE", "Y_IMAGE"), drop=(), accepted=25):
    """A .psf file as PSFEx writes it: primary HDU + binary table PSF_DATA, one row."""
    basis = np.asarray(basis, np.float32)
    n, ny, nx = basis.shape
    col = fits.Column(name="PSF_MASK", format=f"{n * ny * nx}E", dim=f"({nx}, {ny}, {n})",
                      array=basis[None])
    hdu = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
    cards = {"LOADED": 30, "ACCEPTED": accepted, "CHI2": 1.1, "POLNAXIS": 2 if deg else 0,
             "POLGRP1": 1, "POLNAME1": names[0], "POLZERO1": zero[0], "POLSCAL1": scale[0],
             "POLGRP2": 1, "POLNAME2": names[1], "POLZERO2": zero[1], "POLSCAL2": scale[1],
             "POLNGRP": 1, "POLDEG1": deg, "PSF_FWHM": 3.1, "PSF_SAMP": samp, "PSFNAXIS": 3,
             "PSFAXIS1": nx, "PSFAXIS2": ny, "PSFAXIS3": n}
    for k, v in cards.items():
        if k not in drop and (deg or not k.startswith("POL") or k == "POLNAXIS"):
            hdu.header[k] = v
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path
