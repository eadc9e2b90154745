"""GalSim renderings used as independent truth by the engine tests (0-based pixel centres)."""
from __future__ import annotations

import galsim
import numpy as np

FWHM, BETA = 4.0, 3.5


def moffat(fwhm=FWHM, beta=BETA):
    return galsim.Moffat(beta=beta, fwhm=fwhm)


def psf_stamp(half=15, fwhm=FWHM, beta=BETA):
    """Pixel-convolved PSF image (effective PSF) of side 2*half+1, unit sum."""
    im = moffat(fwhm, beta).drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=1.0)
    a = im.array.astype(float)
    return a / a.sum()


def draw(objs, shape, psf=None):
    """Sum of (GSObject, x, y) drawn at 0-based pixel positions, convolved with ``psf``."""
    H, W = shape
    img = galsim.ImageD(W, H, scale=1.0)
    for obj, x, y in objs:
        o = galsim.Convolve(obj, psf) if psf is not None else obj
        o.drawImage(image=img, center=galsim.PositionD(x + 1.0, y + 1.0), add_to_image=True)
    return img.array.copy()


def galaxy(kind, flux, re, ab, phi_deg, n=None, r_out=None):
    """GalSim profile with the engine's conventions: re = semi-major, major axis at phi + 90 deg.

    exp/dev are truncated like the Tractor's tables (4 re / 8 re); ``r_out`` (re units) truncates
    a Sersic profile.  Flux refers to the untruncated law; draw it to get the true total.
    """
    n = {"exp": 1.0, "dev": 4.0}.get(kind, n)
    trunc = {"exp": 4.0, "dev": 8.0}.get(kind, r_out)
    hlr = re * np.sqrt(ab)
    prof = galsim.Sersic(n=n, half_light_radius=hlr, trunc=trunc * hlr if trunc else 0.0,
                         flux_untruncated=True, flux=flux)
    return prof.shear(q=ab, beta=(phi_deg + 90.0) * galsim.degrees)
