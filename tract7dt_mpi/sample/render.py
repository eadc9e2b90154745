"""Render one band of the synthetic tile: GalSim stamps -> float32 image -> noise -> saturation.

Each object is drawn with GalSim's default pixel-integrated method (``method='auto'``, no photon
shooting, hence no random numbers inside GalSim) on a small stamp around it and added into a
float32 model image; each object's drawn flux (what its stamp holds, inside the image) and its
ideal S/N (inverse-variance weighted over its own stamp) are returned with the model. By default
a stamp reaches until a star's wing is below 1 % of SKYSIG (galaxies: 8 re + 4 FWHM); with
``stamp_flux_tol`` it holds all but that fraction of the object's total flux (up to
``STAMP_MAX_HALF_TOL``). Noise is then ``Poisson((model + sky) * egain) / egain - sky`` (ADU, sky
subtracted) from a numpy Generator seeded with (seed, band), so the per-pixel variance is
``(sky_e + source_e) / egain^2`` and ``SKYSIG = sqrt(sky_e)/egain``. Pixels at or above SATURATE
are clipped to SATURATE. Rows are processed in chunks so a full-size band needs only the image
itself plus a few small buffers.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .bands import BandTruth
from .psf import _gsparams, radial_profile

STAMP_MIN_HALF = 32        # px: every stamp reaches at least this far (20-px apertures are complete)
STAMP_MAX_HALF = 256
STAMP_MAX_HALF_TOL = 400   # px: largest stamp with ``stamp_flux_tol``
TRUNC_RE = 8.0             # Sersic profiles with n > 1.2 are truncated at this many re
TRUNC_N_MIN = 1.2


def galaxy_profiles(pop: pd.DataFrame, truncate: bool = True) -> list:
    """Unit-flux GalSim profiles (None for stars), built once and reused for every band.

    ``truncate=False`` draws every Sersic profile untruncated (its flux is the integral to infinity).
    """
    import galsim
    gsp = _gsparams()
    out = []
    for r in pop.itertuples(index=False):
        if r.kind == "STAR":
            out.append(None)
            continue
        hlr = r.re * math.sqrt(r.ab)                     # circular hlr before the area-preserving shear
        trunc = TRUNC_RE * hlr if truncate and r.sersic_n > TRUNC_N_MIN else 0.0
        prof = galsim.Sersic(n=r.sersic_n, half_light_radius=hlr, trunc=trunc, gsparams=gsp)
        out.append(prof.shear(q=r.ab, beta=r.theta * galsim.degrees))
    return out


def _half_size(r, flux_adu: float, bt: BandTruth, tol: float | None = None, truncated: bool = True) -> int:
    """Stamp half-size: galaxy extent + PSF, or where a star's wing falls below 1% of SKYSIG;
    with ``tol`` at least as far as needed to hold all but ``tol`` of the object's flux."""
    fwhm, beta, _, _ = bt.psf.at(r.x, r.y)
    if bt.psf.kind == "moffat":
        alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
        peak = max(flux_adu, 0.0) * (beta - 1.0) / (math.pi * alpha * alpha)
        ratio = peak / (0.01 * bt.skysig)
        r_star = alpha * math.sqrt(ratio ** (1.0 / beta) - 1.0) if ratio > 1 else 0.0
    else:
        r_star = _table_radius(bt, fwhm, sb_below=0.01 * bt.skysig / max(flux_adu, 1e-30))
    r_gal = 0.0 if r.kind == "STAR" else TRUNC_RE * r.re + 4.0 * fwhm
    if tol is None:
        return int(min(STAMP_MAX_HALF, max(STAMP_MIN_HALF, math.ceil(max(r_star, r_gal)))))
    if r.kind == "STAR":
        r_obj = max(r_star, _table_radius(bt, fwhm, outside_below=tol))
    else:
        x = sersic_radius_holding(r.sersic_n, 1.0 - tol / 2.0)
        if truncated and r.sersic_n > TRUNC_N_MIN:
            x = min(x, TRUNC_RE)
        r_obj = max(r_gal, x * r.re + _table_radius(bt, fwhm, outside_below=tol / 2.0))
    return int(min(STAMP_MAX_HALF_TOL, max(STAMP_MIN_HALF, math.ceil(r_obj))))


def _table_radius(bt: BandTruth, fwhm: float, sb_below: float | None = None,
                  outside_below: float | None = None) -> float:
    """Smallest radius [px] where the unit-flux PSF (scaled to ``fwhm``) is fainter than
    ``sb_below`` per px^2, or holds all but ``outside_below`` of its flux."""
    rad, sb, outside = radial_profile(bt.psf)
    s = fwhm / bt.psf.at((bt.psf.width - 1) / 2.0, (bt.psf.height - 1) / 2.0)[0]
    ok = sb / (s * s) < sb_below if sb_below is not None else outside < outside_below
    idx = np.flatnonzero(ok)
    return float((rad[idx[0]] if len(idx) else rad[-1]) * s)


def sersic_radius_holding(n: float, frac: float) -> float:
    """Major-axis radius, in units of re, inside which an untruncated Sersic profile holds ``frac``."""
    from scipy.special import gammaincinv
    b = gammaincinv(2.0 * n, 0.5)
    return float((gammaincinv(2.0 * n, frac) / b) ** n)


def render_model(pop: pd.DataFrame, profiles: list, flux_adu: np.ndarray, bt: BandTruth,
                 width: int, height: int, stamp_flux_tol: float | None = None,
                 truncated: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free model image (float32, ADU) and, per object, its own peak pixel value (ADU), the
    fraction of its flux drawn into the image and its ideal S/N.

    ``truncated`` says whether ``profiles`` are truncated (it only sizes the stamps).
    """
    import galsim
    model = np.zeros((height, width), dtype=np.float32)
    peaks = np.zeros(len(pop))
    drawn = np.zeros(len(pop))
    snr = np.zeros(len(pop))
    var_sky = float(bt.skysig) ** 2
    for i, r in enumerate(pop.itertuples(index=False)):
        f = float(flux_adu[i])
        psf = bt.psf.galsim_psf(r.x, r.y, flux=1.0)
        prof = psf.withFlux(f) if profiles[i] is None else galsim.Convolve(profiles[i].withFlux(f), psf)
        h = _half_size(r, f, bt, stamp_flux_tol, truncated)
        xc, yc = int(round(r.x)), int(round(r.y))
        x0, x1 = max(0, xc - h), min(width - 1, xc + h)
        y0, y1 = max(0, yc - h), min(height - 1, yc + h)
        if x1 < x0 or y1 < y0:
            continue
        stamp = galsim.ImageF(galsim.BoundsI(x0, x1, y0, y1), scale=1.0)
        prof.drawImage(image=stamp, center=galsim.PositionD(r.x, r.y), method="auto")
        model[y0:y1 + 1, x0:x1 + 1] += stamp.array
        peaks[i] = float(stamp.array.max())
        a = stamp.array.astype(np.float64)
        drawn[i] = float(a.sum()) / f if f > 0 else 1.0
        snr[i] = float(np.sqrt(np.sum(a * a / (var_sky + np.maximum(a, 0.0) / bt.egain))))
    return model, peaks, drawn, snr


def add_noise_and_saturate(model: np.ndarray, bt: BandTruth, seed: int, chunk_rows: int = 512,
                           pedestal: float = 0.0) -> np.ndarray:
    """In place: model (ADU) -> sky-subtracted noisy image (+ ``pedestal`` ADU) clipped at SATURATE."""
    rng = np.random.default_rng([int(seed), 23, int(bt.wave_nm * 10)])
    sky_adu = bt.sky_e / bt.egain
    for y0 in range(0, model.shape[0], chunk_rows):
        blk = model[y0:y0 + chunk_rows]
        lam = np.maximum(blk.astype(np.float64) + sky_adu, 0.0) * bt.egain
        noisy = rng.poisson(lam) / bt.egain - sky_adu
        if pedestal:
            noisy += pedestal
        np.minimum(noisy, bt.saturate, out=noisy)
        blk[...] = noisy
    return model
