"""PSF models: pixelized stamps, Gaussian mixtures (+ EM fit of a stamp), hybrid, N-circular, Moffat.

Every PSF offers two views:
* ``point_patch(px, py, derivs)`` -> (ix0, iy0, arr): the unit-flux point-source image on a box with
  lower-left pixel (ix0, iy0); arr is (1 or 3, h, w) = value, d/dx, d/dy.
* ``fourier(sz)`` -> complex (sz, sz//2+1): the transform of the PSF centred on pixel (0, 0) of an
  sz x sz periodic box, used to convolve galaxies (cached per size).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from scipy import fft as sfft

from .fshift import aliased, core_weight, psf_shift

_TWO_PI2 = 2.0 * np.pi ** 2


def _check_stamp(stamp, what: str) -> np.ndarray:
    a = np.asarray(stamp, dtype=float)
    if a.ndim != 2 or a.shape[0] % 2 == 0 or a.shape[1] % 2 == 0:
        raise ValueError(f"{what}: PSF stamp must be a 2-D array with odd sides, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: PSF stamp contains non-finite values")
    if a.sum() <= 0:
        raise ValueError(f"{what}: PSF stamp must have a positive sum")
    return a


def freq_grids(sz: int):
    """(U, V): x and y frequencies (cycles/px) on the rfft2 grid of an sz x sz box."""
    return sfft.rfftfreq(sz)[None, :], sfft.fftfreq(sz)[:, None]


def mog_fourier(amp, mean, var, sz: int) -> np.ndarray:
    """Analytic Fourier transform of a Gaussian mixture sampled on the rfft2 grid."""
    U, V = freq_grids(sz)
    out = np.zeros((sz, sz // 2 + 1), dtype=complex)
    for a, m, c in zip(amp, mean, var):
        q = c[0, 0] * U * U + 2.0 * c[0, 1] * U * V + c[1, 1] * V * V
        out += a * np.exp(-_TWO_PI2 * q - 2j * np.pi * (U * m[0] + V * m[1]))
    return out


def _radius_from_profile(r, v, eps: float) -> float:
    """Smallest radius outside which at most ``eps`` of sum(|v|) lies (r, v: pixel radii and values)."""
    a = np.abs(np.asarray(v, dtype=float)).ravel()
    r = np.asarray(r, dtype=float).ravel()
    tot = a.sum()
    if not tot > 0:
        return 0.0
    order = np.argsort(r)[::-1]
    outside = np.cumsum(a[order]) / tot          # flux at radius >= r[order[i]]
    i = int(np.searchsorted(outside, eps, side="right"))
    return float(r[order[min(i, r.size - 1)]])


class _FourierCache:
    """Per-PSF caches: complex64 transforms for the most recent FFT sizes, and flux radii."""

    #: transforms kept per PSF (galaxy FFT sizes come from a short ladder, see render.fft_size)
    MAX_SIZES = 8

    def __init__(self):
        self._ft = OrderedDict()
        self._rad = {}

    def flux_radius(self, eps: float) -> float:
        """Radius (px) outside which at most ``eps`` of the PSF's absolute flux lies (cached)."""
        v = self._rad.get(eps)
        if v is None:
            v = self._rad[eps] = self._flux_radius(eps)
        return v

    def fourier(self, sz: int) -> np.ndarray:
        """complex128 transform (not cached; see :meth:`fourier32`)."""
        return self._make_fourier(sz)

    def fourier32(self, sz: int) -> np.ndarray:
        """complex64 transform for an sz x sz box (LRU-cached per size)."""
        ft = self._ft.get(sz)
        if ft is None:
            ft = self._ft[sz] = self._make_fourier(sz).astype(np.complex64)
            while len(self._ft) > self.MAX_SIZES:
                self._ft.popitem(last=False)
        else:
            self._ft.move_to_end(sz)
        return ft


class PixelizedPSF(_FourierCache):
    """An odd-sized pixelized (effective) PSF stamp, used as given (the caller normalises it)."""

    kind = "pixelized"

    def __init__(self, stamp):
        super().__init__()
        self.stamp = _check_stamp(stamp, "PixelizedPSF")
        self.hy, self.hx = self.stamp.shape[0] // 2, self.stamp.shape[1] // 2
        self._fwhm = None
        self._aliased = None
        self._weights = {}

    def shift_weight(self, cy: int, cx: int):
        """fshift.core_weight of the (2 cy + 1, 2 cx + 1) central crop (cached per crop, the
        stamp's FWHM measured once), or None (Fourier only) for a band-limited stamp
        (fshift.aliased False, tested once)."""
        if self._aliased is None:
            self._aliased = aliased(self.stamp)
        if not self._aliased:
            return None
        key = (cy, cx)
        if key not in self._weights:
            if self._fwhm is None:
                self._fwhm = stamp_fwhm(self.stamp)
            self._weights[key] = core_weight((2 * cy + 1, 2 * cx + 1), self._fwhm)
        return self._weights[key]

    @property
    def half_size(self) -> int:
        """Half-width of the point-source box (px)."""
        return max(self.hx, self.hy)

    @property
    def tractor_radius(self) -> float:
        return float(np.hypot(self.stamp.shape[0] / 2.0, self.stamp.shape[1] / 2.0))

    def _flux_radius(self, eps: float) -> float:
        yy, xx = np.mgrid[-self.hy:self.hy + 1, -self.hx:self.hx + 1]
        return _radius_from_profile(np.hypot(xx, yy), self.stamp, eps)

    def point_patch(self, px: float, py: float, derivs: bool = False, half: int | None = None):
        """Shifted stamp; with ``half`` only the central (2 half + 1)^2 box (saves work on wide stamps)."""
        ix, iy = int(np.rint(px)), int(np.rint(py))
        st, hy, hx = self.stamp, self.hy, self.hx
        if half is not None and half < max(hy, hx):
            cy, cx = min(hy, half + 3), min(hx, half + 3)    # 3 extra px feed the Lanczos taps
            st = st[hy - cy:hy + cy + 1, hx - cx:hx + cx + 1]
            arr = psf_shift(st, px - ix, py - iy, derivs, self.shift_weight(cy, cx))
            ky, kx = min(cy, half), min(cx, half)
            arr = arr[:, cy - ky:cy + ky + 1, cx - kx:cx + kx + 1]
            return ix - kx, iy - ky, arr
        arr = psf_shift(st, px - ix, py - iy, derivs, self.shift_weight(hy, hx))
        return ix - hx, iy - hy, arr

    def _make_fourier(self, sz: int) -> np.ndarray:
        pad = np.zeros((sz, sz))
        st = self.stamp
        hy, hx = self.hy, self.hx
        if sz < st.shape[0] or sz < st.shape[1]:  # crop a stamp larger than the box (centred)
            cy, cx = min(hy, (sz - 1) // 2), min(hx, (sz - 1) // 2)
            st = st[hy - cy:hy + cy + 1, hx - cx:hx + cx + 1]
            hy, hx = cy, cx
        pad[:st.shape[0], :st.shape[1]] = st
        pad = np.roll(pad, (-hy, -hx), axis=(0, 1))
        return sfft.rfft2(pad)


class GaussianMixturePSF(_FourierCache):
    """A mixture of 2-D Gaussians, evaluated at pixel centres (amp (K,), mean (K,2), var (K,2,2))."""

    kind = "gaussian_mixture"

    def __init__(self, amp, mean, var):
        super().__init__()
        self.amp = np.atleast_1d(np.asarray(amp, dtype=float))
        k = self.amp.size
        self.mean = np.asarray(mean, dtype=float).reshape(k, 2)
        self.var = np.asarray(var, dtype=float).reshape(k, 2, 2)
        if not (np.all(np.isfinite(self.amp)) and np.all(np.isfinite(self.var))):
            raise ValueError("GaussianMixturePSF: amplitudes and variances must be finite")
        det = self.var[:, 0, 0] * self.var[:, 1, 1] - self.var[:, 0, 1] ** 2
        if np.any(det <= 0) or np.any(self.var[:, 0, 0] <= 0):
            raise ValueError("GaussianMixturePSF: every component covariance must be positive definite")
        self._ivar = np.linalg.inv(self.var)
        self._norm = self.amp / (2.0 * np.pi * np.sqrt(det))

    @classmethod
    def from_stamp(cls, stamp, n: int = 4, max_iter: int = 1000, tol: float = 1e-10):
        """EM fit of an ``n``-component mixture to a stamp (see :func:`em_fit_stamp`)."""
        amp, mean, var = em_fit_stamp(stamp, n, max_iter=max_iter, tol=tol)
        return cls(amp, mean, var)

    @property
    def sigma_max(self) -> float:
        return float(np.sqrt(np.max(np.linalg.eigvalsh(self.var))))

    @property
    def half_size(self) -> int:
        return int(np.ceil(min(25.0, max(3.0, 5.0 * self.sigma_max + np.abs(self.mean).max()))))

    @property
    def tractor_radius(self) -> float:
        return 25.0

    def evaluate(self, dx: np.ndarray, dy: np.ndarray, derivs: bool = False) -> np.ndarray:
        """Mixture value (and d/d(source x, y)) at offsets (dx, dy) = pixel - source position."""
        out = np.zeros((3 if derivs else 1,) + np.broadcast(dx, dy).shape)
        for a, m, iv in zip(self._norm, self.mean, self._ivar):
            ux, uy = dx - m[0], dy - m[1]
            gx = iv[0, 0] * ux + iv[0, 1] * uy
            gy = iv[1, 0] * ux + iv[1, 1] * uy
            d2 = ux * gx + uy * gy
            g = np.where(d2 < 100.0, a * np.exp(-0.5 * d2), 0.0)
            out[0] += g
            if derivs:
                out[1] += g * gx
                out[2] += g * gy
        return out

    def _flux_radius(self, eps: float) -> float:
        h = self.half_size
        yy, xx = np.mgrid[-h:h + 1, -h:h + 1].astype(float)
        return _radius_from_profile(np.hypot(xx, yy), self.evaluate(xx, yy)[0], eps)

    def point_patch(self, px: float, py: float, derivs: bool = False, half: int | None = None):
        h = self.half_size if half is None else min(self.half_size, int(half))
        ix, iy = int(np.rint(px)), int(np.rint(py))
        off = np.arange(-h, h + 1, dtype=float)
        arr = self.evaluate((ix - px) + off[None, :], (iy - py) + off[:, None], derivs)
        return ix - h, iy - h, arr

    def _make_fourier(self, sz: int) -> np.ndarray:
        return mog_fourier(self.amp, self.mean, self.var, sz)


class NCircularGaussianPSF(GaussianMixturePSF):
    """Concentric circular Gaussians N(0, sigma_k^2 I) with the given (unnormalised) weights."""

    kind = "ncircular_gaussian"

    def __init__(self, sigmas, weights):
        s = np.atleast_1d(np.asarray(sigmas, dtype=float))
        w = np.atleast_1d(np.asarray(weights, dtype=float))
        if s.shape != w.shape or np.any(~np.isfinite(s)) or np.any(s <= 0):
            raise ValueError("NCircularGaussianPSF: sigmas must be positive and match weights in length")
        super().__init__(w, np.zeros((s.size, 2)), s[:, None, None] ** 2 * np.eye(2)[None])


class HybridPSF(PixelizedPSF):
    """Pixelized stamp for point sources and galaxy cores, plus an EM mixture for wide galaxy parts."""

    kind = "hybrid"

    def __init__(self, stamp, n_gauss: int = 9):
        super().__init__(stamp)
        self.mixture = GaussianMixturePSF.from_stamp(self.stamp, max(1, int(n_gauss)))


class MoffatPSF(PixelizedPSF):
    """Pixelized Moffat (point sources) with a 3-Gaussian EM mixture (galaxies), like tract7dt."""

    kind = "moffat"

    def __init__(self, fwhm: float, beta: float = 3.5, radius: float = 25.0):
        if not (np.isfinite(fwhm) and fwhm > 0):
            raise ValueError(f"MoffatPSF: fwhm must be > 0, got {fwhm}")
        if not (np.isfinite(beta) and beta > 1):
            raise ValueError(f"MoffatPSF: beta must be > 1, got {beta}")
        if not (np.isfinite(radius) and radius >= 1):
            raise ValueError(f"MoffatPSF: radius must be >= 1, got {radius}")
        h = int(np.ceil(radius))
        alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
        off = np.arange(-h, h + 1, dtype=float)
        r2 = off[None, :] ** 2 + off[:, None] ** 2
        st = (1.0 + r2 / alpha ** 2) ** (-beta)
        super().__init__(st / st.sum())
        self.fwhm, self.beta, self.radius = float(fwhm), float(beta), float(radius)
        self.mixture = GaussianMixturePSF.from_stamp(self.stamp, 3)

    def _make_fourier(self, sz: int) -> np.ndarray:  # galaxies use the mixture
        return self.mixture.fourier(sz)


def em_fit_stamp(stamp, n: int, max_iter: int = 1000, tol: float = 1e-10):
    """Fit a K=n Gaussian mixture to a stamp by EM (pixel values as weights), like the Tractor.

    The stamp is normalised to unit sum and negative pixels set to 0; coordinates are relative to the
    central pixel; start: amp 1/n, mean 0, cov (k+1) I.  Stops after ``max_iter`` iterations or when
    no parameter moves by more than ``tol``.  Returns (amp (n,), mean (n,2), var (n,2,2)).
    """
    a = _check_stamp(stamp, "GaussianMixturePSF.from_stamp")
    n = max(1, int(n))
    img = a / a.sum()
    img = np.where(img > 0, img, 0.0)
    hy, hx = a.shape[0] // 2, a.shape[1] // 2
    yy, xx = np.mgrid[-hy:hy + 1, -hx:hx + 1]
    keep = img > 0
    x = np.stack([xx[keep], yy[keep]], axis=1).astype(float)
    w = img[keep]
    amp = np.full(n, 1.0 / n)
    mean = np.zeros((n, 2))
    var = np.array([(k + 1.0) * np.eye(2) for k in range(n)])
    for _ in range(max_iter):
        det = var[:, 0, 0] * var[:, 1, 1] - var[:, 0, 1] ** 2
        iv = np.linalg.inv(var)
        d = x[None, :, :] - mean[:, None, :]                       # (n, P, 2)
        d2 = np.einsum("kpi,kij,kpj->kp", d, iv, d)
        z = np.where(d2 < 100.0, amp[:, None] / (2 * np.pi * np.sqrt(det))[:, None] * np.exp(-0.5 * d2), 0.0)
        zs = z.sum(axis=0)
        z = np.divide(z, zs, out=np.zeros_like(z), where=zs > 0)
        wk = z * w[None, :]
        new_amp = wk.sum(axis=1)
        safe = np.maximum(new_amp, 1e-300)
        new_mean = (wk @ x) / safe[:, None]
        dd = x[None, :, :] - new_mean[:, None, :]
        new_var = np.einsum("kp,kpi,kpj->kij", wk, dd, dd) / safe[:, None, None]
        new_var = new_var + 1e-9 * np.eye(2)[None]
        delta = max(np.abs(new_amp - amp).max(), np.abs(new_mean - mean).max(), np.abs(new_var - var).max())
        amp, mean, var = new_amp, new_mean, new_var
        if delta < tol:
            break
    return amp, mean, var


class PsfBank(list):
    """The per-band PSFs of one problem, with caches stacked over bands (vectorised rendering).

    * ``fourier_stack(sz)``: (nb, sz, sz//2+1) complex64 transforms for galaxies (LRU, few sizes);
    * ``stamp_stack(half)``: (nb, 2cy+1, 2cx+1) stamps cropped to ``half`` + 3 px (at most the stamp)
      when every band has a pixelized stamp, else None.
    """

    MAX_SIZES = 10
    #: relative L2 residual (per band) of a low-rank PSF basis that renders galaxies' model columns
    #: (float32 rounding level: met by banks in which bands share PSFs or PSFs vary smoothly)
    EXACT_TOL = 1e-6
    #: the same for a basis that renders only the derivative columns (the Jacobian)
    JAC_TOL = 1e-2
    #: the basis is used only when its rank is at most this fraction of the number of bands
    JAC_MAX_RANK_FRAC = 0.75

    def __init__(self, psfs):
        super().__init__(psfs)
        self._ft = OrderedDict()
        self._st = {}
        self._jb = OrderedDict()
        self._eig = OrderedDict()
        #: galaxies may render their derivative columns through a JAC_TOL basis (see low_rank)
        self.approx_jacobian = True
        #: set when a rendering did so (the flux errors are then computed with exact derivatives)
        self.approx_used = False
        #: per-bank maxima over the bands (box sizes; filled by engine.render)
        self.maxima = {}

    def fourier_stack(self, sz: int) -> np.ndarray:
        ft = self._ft.get(sz)
        if ft is None:
            ft = np.empty((len(self), sz, sz // 2 + 1), dtype=np.complex64)
            for b, p in enumerate(self):
                ft[b] = p._make_fourier(sz)
            self._ft[sz] = ft
            while len(self._ft) > self.MAX_SIZES:
                self._ft.popitem(last=False)
        else:
            self._ft.move_to_end(sz)
        return ft

    def low_rank(self, sz: int, tol: float):
        """(C (nb, r) float32, B (r, sz, sz//2+1) complex64) with fourier_stack(sz)[b] ~ sum_k C[b, k]
        B[k] to a relative L2 residual <= ``tol`` in every band, or None (hybrid PSFs, or a rank
        above JAC_MAX_RANK_FRAC x nb).

        Galaxies render through it with r inverse FFTs per column instead of nb: every column when
        the basis meets EXACT_TOL, else only the derivative columns (used for the Gauss-Newton
        matrix and gradient, not for ln p) with JAC_TOL. The coefficients are real, so the
        combination of the real renderings is the rendering with the combined PSF.
        """
        key = (sz, float(tol))
        if key in self._jb:
            self._jb.move_to_end(key)
            return self._jb[key]
        out = None
        nb = len(self)
        if nb > 1 and not any(isinstance(p, HybridPSF) for p in self):
            F = self.fourier_stack(sz)
            X = F.reshape(nb, -1).view(np.float32)                      # real view (nb, 2M)
            lam, V, norm2 = self._gram_eig(sz, X)
            kept = np.cumsum(V ** 2 * np.clip(lam, 0.0, None)[None, :], axis=1)   # (nb, r)
            rel = np.sqrt(np.clip(1.0 - kept / norm2[:, None], 0.0, None))
            ok = np.flatnonzero(np.all(rel <= tol, axis=0))
            r = int(ok[0]) + 1 if ok.size else nb
            if r <= self.JAC_MAX_RANK_FRAC * nb:
                Vr = V[:, :r]
                B = np.empty((r, X.shape[1]), dtype=np.float32)
                for j in range(0, X.shape[1], self._CHUNK):
                    B[:, j:j + self._CHUNK] = Vr.T @ X[:, j:j + self._CHUNK].astype(np.float64)
                out = (np.ascontiguousarray(Vr, dtype=np.float32), B.view(np.complex64).reshape(r, *F.shape[1:]))
        self._jb[key] = out
        while len(self._jb) > 2 * self.MAX_SIZES:
            self._jb.popitem(last=False)
        return out

    #: columns per float64 chunk of the Gram matrix and basis products (bounded temporary memory)
    _CHUNK = 1 << 16

    def _gram_eig(self, sz, X):
        """(eigenvalues, eigenvectors) of the bands' Gram matrix X X^T (descending) and its diagonal,
        accumulated in float64 chunks; cached per FFT size (both tolerances share it)."""
        e = self._eig.get(sz)
        if e is None:
            K = np.zeros((X.shape[0], X.shape[0]))
            for j in range(0, X.shape[1], self._CHUNK):
                c = X[:, j:j + self._CHUNK].astype(np.float64)
                K += c @ c.T
            lam, V = np.linalg.eigh(K)
            e = self._eig[sz] = (lam[::-1], V[:, ::-1], np.maximum(np.diagonal(K).copy(), 1e-300))
            while len(self._eig) > self.MAX_SIZES:
                self._eig.popitem(last=False)
        return e

    def stamp_stack(self, half: int):
        """(stack (nb, 2 cy + 1, 2 cx + 1), weights (the same shape, or None), cy, cx): every
        band's stamp cropped as
        :meth:`PixelizedPSF.point_patch` crops it for a box of half-size ``half`` (``half`` + 3 px,
        at most the stamp), or None unless every band has a pixelized stamp and the crops agree."""
        if half in self._st:
            return self._st[half]
        out = None
        if all(isinstance(p, PixelizedPSF) for p in self):
            crops = {(min(p.hy, half + 3), min(p.hx, half + 3)) for p in self}
            if len(crops) == 1:
                cy, cx = crops.pop()
                ws = [p.shift_weight(cy, cx) for p in self]
                shape = (2 * cy + 1, 2 * cx + 1)
                # a band-limited band's weight is 1 everywhere (Fourier only); None when all are
                wt = None if all(w is None for w in ws) else \
                    np.stack([np.ones(shape) if w is None else w for w in ws])
                out = (np.stack([p.stamp[p.hy - cy:p.hy + cy + 1, p.hx - cx:p.hx + cx + 1] for p in self]),
                       wt, cy, cx)
        self._st[half] = out
        return out


#: stamp_fwhm's sampling: the core (at least UPSAMPLE_HALF px around the peak) UPSAMPLE x finer
UPSAMPLE = 5
UPSAMPLE_HALF = 10


def stamp_fwhm(stamp) -> float:
    """FWHM (px) of a pixelized PSF stamp: 2 sqrt(A / pi), A the area above half the maximum of
    the stamp's core Fourier-interpolated onto a grid UPSAMPLE times finer (a pixelized PSF is
    band-limited). Counting whole pixels instead made the FWHM of a 2.3-4 px PSF jump by 5-15 %
    with where in its pixel the peak sits and with the PSF's shape (a centred GalSim Moffat
    beta = 2 of 3.6 px: 3.39; shifted by half a pixel: 3.91); this is within 1-3 % of itself
    at any shift, the pixel's width included (3.74-3.76)."""
    a = np.nan_to_num(np.asarray(stamp, float))
    if not (a.ndim == 2 and a.size and a.max() > 0):
        return float("nan")
    coarse = 2.0 * math.sqrt(np.count_nonzero(a >= a.max() / 2.0) / math.pi)
    iy, ix = np.unravel_index(int(np.argmax(a)), a.shape)
    h = min(max(UPSAMPLE_HALF, int(math.ceil(1.5 * coarse))), iy, ix, a.shape[0] - 1 - iy, a.shape[1] - 1 - ix)
    if h < 2 or h < coarse:          # the half-maximum area reaches the stamp's edge
        return coarse
    box = a[iy - h:iy + h + 1, ix - h:ix + h + 1]
    n, m = box.shape[0], box.shape[0] * UPSAMPLE           # both odd: the centres line up
    spec = np.zeros((m, m), complex)
    o = (m - n) // 2
    spec[o:o + n, o:o + n] = np.fft.fftshift(np.fft.fft2(box))
    fine = np.fft.ifft2(np.fft.ifftshift(spec)).real
    area = np.count_nonzero(fine >= fine.max() / 2.0) / float(UPSAMPLE * UPSAMPLE)
    return 2.0 * math.sqrt(area / math.pi)
