"""Sub-pixel shifts of PSF stamps by a Fourier phase (band-limited, sinc interpolation).

A pixelized PSF is a band-limited function sampled on the pixel grid (it is the optical PSF
convolved with the pixel), so its exact sub-pixel translate is the Fourier phase shift -- the same
one the engine's galaxy renderer applies. A short interpolating kernel (Lanczos-3) is only an
approximation of it: for a PSF of 3.5-4.5 px FWHM it changes the peak of a half-pixel shifted
stamp by ~1 %, so point-source fluxes would depend on where in its pixel a star sits (by
0.5-1 %, corners against centres). The stamp is zero-padded (its edges are ~0) so nothing wraps.

A PSF sharper than ~2.5 px FWHM is not band-limited (the pixel grid aliases its core), and its
Fourier translate rings along the rows and columns through the peak: for a 2.3 px Kolmogorov x
Airy PSF the ringing 10-25 px out is ~1e-3 of the peak, four times the PSF there. A saturated
star fitted on the pixels outside its masked core sees only that ringing (on GalSim tiles such
stars came out at 0.2-2 times their flux, and the patch sky took up the difference), and an
unsaturated star's wing carries it too. :func:`psf_shift` therefore takes the Fourier translate
within ``CORE_FWHM[0]`` FWHM of the centre and the Lanczos-3 translate (local, 1e-5 of the peak
there) beyond ``CORE_FWHM[1]``, blended by a raised cosine (:func:`core_weight`). A stamp that
is band-limited (:func:`aliased` False: its spectrum at the Nyquist frequency below ``ALIAS_TOL``
of its sum, as for a Moffat beta = 3 of 4.4 px or a Kolmogorov x Airy of 3.7 px) keeps the exact
Fourier translate everywhere, and its point sources skip the Lanczos pass (a sixth of a patch fit).
"""
from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from .lanczos import shift_stamp as lanczos_shift

__all__ = ["fourier_shift", "fourier_shifts", "psf_shift", "core_weight", "aliased", "CORE_FWHM", "ALIAS_TOL"]

_PAD = 4
#: radii (in FWHM) inside which the Fourier translate is used alone, and beyond which Lanczos-3
CORE_FWHM = (1.5, 2.5)
#: largest |FT| of a stamp on its highest frequencies (over its sum) for which it counts as
#: band-limited. GalSim PSFs (pixel-convolved): Moffat beta = 3 of 4.4 px 4e-5, 3.5 px 5e-4,
#: 3.0 px 2.7e-3; Kolmogorov x Airy of 3.7 px 1e-4, 3.0 px 1.7e-3, 2.3 px 1.7e-2. Its Fourier
#: translate rings beyond 2.5 FWHM by 3e-4 to 3e-3 of the peak above it and by <= 1e-4 below
#: (Lanczos-3's own error there), and noise of 1e-4 of the peak per pixel adds ~5e-4.
ALIAS_TOL = 1e-3


def _spectrum(a: np.ndarray):
    """(rfft2 of ``a`` zero-padded by _PAD, padded shape, fy column, fx row)."""
    h, w = a.shape[-2:]
    sy = sfft.next_fast_len(h + 2 * _PAD, real=True)
    sx = sfft.next_fast_len(w + 2 * _PAD, real=True)
    pad = np.zeros(a.shape[:-2] + (sy, sx))
    pad[..., _PAD:_PAD + h, _PAD:_PAD + w] = a
    return sfft.rfft2(pad, axes=(-2, -1)), (sy, sx), sfft.fftfreq(sy)[:, None], sfft.rfftfreq(sx)[None, :]


def fourier_shift(stamp: np.ndarray, dx: float, dy: float, derivs: bool = False) -> np.ndarray:
    """Shift ``stamp`` (..., H, W) by (dx, dy) px; returns (1 or 3, ..., H, W): the value and its
    derivatives with respect to dx and dy (content moves by +dx, as engine.lanczos.shift_stamp)."""
    a = np.asarray(stamp, dtype=float)
    h, w = a.shape[-2:]
    F, (sy, sx), fy, fx = _spectrum(a)
    G = F * np.exp(-2j * np.pi * (fx * dx + fy * dy))
    parts = [G]
    if derivs:
        parts += [G * (-2j * np.pi * fx), G * (-2j * np.pi * fy)]
    out = sfft.irfft2(np.stack(parts), s=(sy, sx), axes=(-2, -1))
    return out[..., _PAD:_PAD + h, _PAD:_PAD + w]


def fourier_shifts(stamp: np.ndarray, dx, dy, derivs: bool = False, single: bool = False) -> np.ndarray:
    """Shift one stamp (H, W), or each of a stack (n, H, W), by its own (dx[i], dy[i]) px: n shifted
    copies from one forward transform of the stamp (or one batched transform of the stack) and one
    batched inverse. Returns (1 or 3, n, H, W) as :func:`fourier_shift` does for each.

    ``single``: the inverse transforms in single precision (~2x faster; errors ~1e-7 of the
    stamp's peak, far below any star's noise), the result as float32 (else float64)."""
    a = np.asarray(stamp, dtype=float)
    dx = np.asarray(dx, dtype=float).reshape(-1)
    dy = np.asarray(dy, dtype=float).reshape(-1)
    h, w = a.shape[-2:]
    F, (sy, sx), fy, fx = _spectrum(a)
    # separable phase: exp(-2 pi i fx dx) (n, 1, X) times exp(-2 pi i fy dy) (n, Y, 1)
    G = np.empty((3 if derivs else 1, dx.size, sy, fx.size), np.complex64 if single else complex)
    np.multiply(F, np.exp(-2j * np.pi * fx[None] * dx[:, None, None])
                * np.exp(-2j * np.pi * fy[None] * dy[:, None, None]), out=G[0])
    if derivs:
        np.multiply(G[0], -2j * np.pi * fx, out=G[1])
        np.multiply(G[0], -2j * np.pi * fy, out=G[2])
    out = sfft.irfft2(G, s=(sy, sx), axes=(-2, -1))
    return out[..., _PAD:_PAD + h, _PAD:_PAD + w]


def core_weight(shape, fwhm: float) -> np.ndarray | None:
    """Weight (H, W) of the Fourier translate in :func:`psf_shift` for a stamp of ``shape``
    centred on its middle pixel: 1 within ``CORE_FWHM[0]`` x ``fwhm`` px, 0 beyond
    ``CORE_FWHM[1]`` x ``fwhm``, a raised cosine in between; None (Fourier everywhere) for a
    non-finite or non-positive ``fwhm``."""
    if not (np.isfinite(fwhm) and fwhm > 0):
        return None
    h, w = shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(xx - (w - 1) / 2.0, yy - (h - 1) / 2.0)
    r1, r2 = CORE_FWHM[0] * fwhm, CORE_FWHM[1] * fwhm
    t = np.clip((r2 - r) / (r2 - r1), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def aliased(stamp: np.ndarray) -> bool:
    """True when ``stamp`` (H, W) holds power near the Nyquist frequency (more than ``ALIAS_TOL``
    of its sum on the highest frequencies of either axis): its Fourier translate rings."""
    a = np.asarray(stamp, dtype=float)
    tot = abs(float(a.sum()))
    if not tot > 0:
        return False
    F = np.abs(sfft.fft2(a))
    ky = [a.shape[0] // 2, (a.shape[0] + 1) // 2]
    kx = [a.shape[1] // 2, (a.shape[1] + 1) // 2]
    return float(max(F[ky, :].max(), F[:, kx].max())) > ALIAS_TOL * tot


def psf_shift(stamp: np.ndarray, dx: float, dy: float, derivs: bool = False, weight=None) -> np.ndarray:
    """:func:`fourier_shift` of ``stamp`` (..., H, W) blended outside its core with the
    Lanczos-3 translate by ``weight`` (:func:`core_weight`, broadcast over the leading axes);
    the plain Fourier translate when ``weight`` is None. Same output as :func:`fourier_shift`."""
    f = fourier_shift(stamp, dx, dy, derivs)
    if weight is None:
        return f
    lz = lanczos_shift(np.asarray(stamp, dtype=float), dx, dy, derivs)
    return lz + weight * (f - lz)
