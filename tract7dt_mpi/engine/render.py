"""Render one source in every band: unit-flux model and its derivatives on one shared pixel box.

Point sources use each band's ``PSF.point_patch`` (a stamp shifted by engine.fshift.psf_shift, or
a Gaussian mixture).
Galaxies are rendered in Fourier space: the mixture's analytic transform (band independent) times
each band's PSF transform, placed with an exact Fourier phase shift, so position, shape and Sersic-n
derivatives are analytic as well (d/dx = -2 pi i u).  All bands of a source share one square box
centred on round(x, y), clipped to the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import fft as sfft

from .profiles import NRE, enclosed_fraction, mixture_for
from .fshift import psf_shift
from .psf import HybridPSF, PsfBank, freq_grids
from .shapes import unit_covariance, unit_covariance_derivs

POS = ("pos.x", "pos.y")
SHAPE = ("shape.logre", "shape.ee1", "shape.ee2")
SERSIC = ("sersicindex",)
_TWO_PI2 = 2.0 * math.pi ** 2
#: storage type of rendered columns (float32 like the Tractor; sums are accumulated in float64)
DTYPE = np.float32


def param_names(kind: str) -> tuple:
    if kind == "star":
        return POS
    return POS + SHAPE + (SERSIC if kind == "sersic" else ())


@dataclass
class Rendered:
    """Box [y0:y1, x0:x1] in image pixels and A (nb, 1 + k, y1 - y0, x1 - x0): model, d/d(free params)."""

    y0: int
    y1: int
    x0: int
    x1: int
    A: np.ndarray
    #: per-rendering products cached by the problem (e.g. sum w d A); dropped with the rendering
    cache: dict = field(default_factory=dict)
    #: identity used by the problem's pair-block cache (0 = not registered)
    uid: int = 0
    #: identity of the model column (a rendering with derivatives that reuses a model-only
    #: rendering's column keeps that one's; 0 = uid)
    muid: int = 0

    @property
    def empty(self) -> bool:
        return self.y1 <= self.y0 or self.x1 <= self.x0


def _clip_box(ix, iy, h, shape):
    H, W = shape
    return max(iy - h, 0), min(iy + h + 1, H), max(ix - h, 0), min(ix + h + 1, W)


#: temporary memory per batched galaxy transform (bands are processed in chunks of about this size)
BAND_CHUNK_BYTES = 24 << 20
#: footprints hold all but this fraction of a source's flux (the rest is left unmodelled)
FLUX_EPS = 1e-3


def _over_bands(psfs, key, f):
    """max over the bands of f(psf), cached on a PsfBank under ``key`` (PSFs do not change)."""
    if isinstance(psfs, PsfBank):
        v = psfs.maxima.get(key)
        if v is None:
            v = psfs.maxima[key] = max(f(p) for p in psfs)
        return v
    return max(f(p) for p in psfs)


def star_half_size(psfs, eps: float = FLUX_EPS) -> int:
    """Point-source box half-size: the PSF radius enclosing 1 - eps of its flux (<= the stamp)."""
    return _over_bands(psfs, ("star", eps), lambda p: min(p.half_size, int(math.ceil(p.flux_radius(eps)))))


def render_star(px, py, psfs, shape, free, eps: float = FLUX_EPS) -> Rendered:
    derivs = "pos.x" in free
    ix, iy = int(np.rint(px)), int(np.rint(py))
    h = star_half_size(psfs, eps)
    y0, y1, x0, x1 = _clip_box(ix, iy, h, shape)
    k = 2 if derivs else 0
    A = np.zeros((len(psfs), 1 + k, max(y1 - y0, 0), max(x1 - x0, 0)), dtype=DTYPE)
    if A.size == 0:
        return Rendered(y0, y1, x0, x1, A)
    st = psfs.stamp_stack(h) if isinstance(psfs, PsfBank) else None
    if st is not None:   # every band at once: same sub-pixel shift, one batched psf_shift
        stack, wt, cy, cx = st
        ky, kx = min(cy, h), min(cx, h)
        arr = psf_shift(stack, px - ix, py - iy, derivs, wt)          # (1 or 3, nb, 2cy+1, 2cx+1)
        sub = np.moveaxis(arr[:, :, cy - ky:cy + ky + 1, cx - kx:cx + kx + 1], 0, 1)   # ix-kx .. ix+kx
        ya, yb = max(iy - ky, y0), min(iy + ky + 1, y1)
        xa, xb = max(ix - kx, x0), min(ix + kx + 1, x1)
        if yb > ya and xb > xa:
            A[:, :, ya - y0:yb - y0, xa - x0:xb - x0] = sub[:, :, ya - (iy - ky):yb - (iy - ky),
                                                           xa - (ix - kx):xb - (ix - kx)]
        return Rendered(y0, y1, x0, x1, A)
    for b, psf in enumerate(psfs):
        bx0, by0, arr = psf.point_patch(px, py, derivs, half=h)
        # overlap of the band patch with the clipped box
        ya, yb = max(by0, y0), min(by0 + arr.shape[-2], y1)
        xa, xb = max(bx0, x0), min(bx0 + arr.shape[-1], x1)
        if yb > ya and xb > xa:
            A[b, :, ya - y0:yb - y0, xa - x0:xb - x0] = arr[:, ya - by0:yb - by0, xa - bx0:xb - bx0]
    return Rendered(y0, y1, x0, x1, A)


def _ladder(limit=8192, step=1.08):
    """Even 2-3-5-smooth FFT sizes at least ``step`` apart (few sizes -> few cached PSF transforms)."""
    sm = sorted({2 ** a * 3 ** b * 5 ** c for a in range(1, 14) for b in range(0, 9) for c in range(0, 6)
                 if 2 ** a * 3 ** b * 5 ** c <= limit})
    out = [sm[0]]
    for v in sm[1:]:
        if v >= step * out[-1]:
            out.append(v)
    return np.array(out)


_LADDER = _ladder()


def fft_size(n: int) -> int:
    """Smallest ladder size >= n."""
    i = int(np.searchsorted(_LADDER, n))
    return int(_LADDER[i]) if i < _LADDER.size else int(sfft.next_fast_len(n, real=True))


@lru_cache(maxsize=64)
def _grids(sz):
    U, V = freq_grids(sz)
    return U, V, U * U, 2.0 * U * V, V * V


@lru_cache(maxsize=64)
def _deriv_factors(sz):
    """complex64 -2 pi i u and -2 pi i v on the rfft2 grid (the d/dx, d/dy factors)."""
    U, V = freq_grids(sz)
    return (-2j * math.pi * U).astype(np.complex64), (-2j * math.pi * V).astype(np.complex64)


_RGRID = np.linspace(0.05, 15.0, 600)


def mixture_flux_radius(mix, eps: float) -> float:
    """Radius (re units) of a circular unit mixture enclosing all but ``eps`` of its flux."""
    f = enclosed_fraction(mix, _RGRID)
    i = int(np.argmax(f >= 1.0 - eps)) if f[-1] >= 1.0 - eps else _RGRID.size - 1
    return float(_RGRID[i])


@lru_cache(maxsize=16)
def _fixed_flux_radius(kind: str, eps: float) -> float:
    """:func:`mixture_flux_radius` of the fixed exp / dev mixtures (cached)."""
    return mixture_flux_radius(mixture_for(kind, np.nan), eps)


def galaxy_half_size(re: float, kind: str, psfs, ix: int, iy: int, shape, mix=None,
                     eps: float = FLUX_EPS) -> int:
    """Box half-size of a galaxy (px).

    The Tractor's box is max(nre re, PSF radius); we use the smaller radius that encloses all but
    ``eps`` of the PSF-convolved profile (profile and PSF radii for eps/2 each, added in quadrature;
    re is the semi-major axis, so elliptical sources are covered), never more than the Tractor's box
    and never more than the farthest image edge.
    """
    mix = mixture_for(kind, np.nan) if mix is None else mix
    r_psf = _over_bands(psfs, "half", lambda p: p.half_size)
    r_mix = _fixed_flux_radius(kind, 0.5 * eps) if kind in ("exp", "dev") else mixture_flux_radius(mix, 0.5 * eps)
    r_conv = math.hypot(r_mix * re, _over_bands(psfs, ("flux", 0.5 * eps), lambda p: p.flux_radius(0.5 * eps)))
    H, W = shape
    dmax = max(ix, W - 1 - ix, iy, H - 1 - iy) + 1
    h = min(r_conv, max(NRE[kind] * re, r_psf), dmax)
    return max(1, int(math.ceil(h)))


def _hybrid_mog_weights(var_unit, S, re, kind, psf, sz_fft):
    """Tractor rule: component share rendered with the PSF's Gaussian mixture."""
    r_t = psf.tractor_radius
    hs = max(NRE[kind] * re, r_t)
    sz_t = 2 ** int(math.ceil(math.log2(max(2.0 * hs, 1.0))))
    s_k = np.sqrt(var_unit * (S[0, 0] + S[1, 1]))
    ns = np.where(s_k > 0, (sz_t / 2.0) / np.maximum(s_k, 1e-300), np.inf)
    return np.clip(4.0 - ns, 0.0, 1.0)


def render_galaxy(kind, px, py, logre, ee1, ee2, n, psfs, shape, free, pad_max=6,
                  eps: float = FLUX_EPS, with_model: bool = True) -> Rendered:
    """Galaxy model (unless ``with_model`` is False) and its derivatives in the ``free`` parameters."""
    mix = mixture_for(kind, n)
    re = math.exp(logre)
    ix, iy = int(np.rint(px)), int(np.rint(py))
    h = galaxy_half_size(re, kind, psfs, ix, iy, shape, mix, eps)
    y0, y1, x0, x1 = _clip_box(ix, iy, h, shape)
    names = [p for p in param_names(kind) if p in free]
    nb = len(psfs)
    if y1 <= y0 or x1 <= x0:
        k = len(names) + (1 if with_model else 0)
        return Rendered(y0, y1, x0, x1, np.zeros((nb, k, max(y1 - y0, 0), max(x1 - x0, 0)), DTYPE))
    r_psf = _over_bands(psfs, "half", lambda p: p.half_size)
    sz = fft_size(2 * h + 1 + 2 * min(r_psf, pad_max))
    c = sz // 2
    U, V, UU, UV2, VV = _grids(sz)
    S = unit_covariance(logre, ee1, ee2)
    Q = (S[0, 0] * UU + S[0, 1] * UV2 + S[1, 1] * VV).astype(np.float32)
    E = np.exp((-_TWO_PI2 * mix.var).astype(np.float32)[:, None, None] * Q[None])   # (K, sz, szr)
    need_shape = any(p in free for p in SHAPE)
    dQ = None
    if need_shape:
        dS = unit_covariance_derivs(logre, ee1, ee2)
        dQ = [(dS[j, 0, 0] * UU + dS[j, 0, 1] * UV2 + dS[j, 1, 1] * VV).astype(np.float32) for j in range(3)]
    ox, oy = c + (px - ix), c + (py - iy)
    # separable phase, complex64 like every column (the products below stay in single precision)
    phase = (np.exp(-2j * math.pi * U * ox).astype(np.complex64) * np.exp(-2j * math.pi * V * oy).astype(np.complex64))

    def stack(w):
        a = (mix.amp * w).astype(np.float32)
        cols = 1 + (2 if "pos.x" in free else 0) + sum(p in free for p in SHAPE) + ("sersicindex" in free)
        out = np.empty((cols,) + phase.shape, dtype=np.complex64)
        base = out[0]
        np.multiply(np.tensordot(a, E, axes=1), phase, out=base)
        k = 1
        if "pos.x" in free:
            du, dv = _deriv_factors(sz)
            np.multiply(base, du, out=out[k])
            np.multiply(base, dv, out=out[k + 1])
            k += 2
        if need_shape:
            Fq = np.tensordot((a * (-_TWO_PI2 * mix.var)).astype(np.float32), E, axes=1) * phase
            for j, p in enumerate(SHAPE):
                if p in free:
                    np.multiply(Fq, dQ[j], out=out[k])
                    k += 1
        if "sersicindex" in free:
            np.multiply(np.tensordot((mix.damp_dn * w).astype(np.float32), E, axes=1), phase, out=out[k])
        return out if with_model else out[1:]

    full = stack(np.ones(mix.amp.size))
    bank = psfs.fourier_stack(sz) if isinstance(psfs, PsfBank) else None
    fy0, fx0 = iy - c, ix - c   # image coordinates of FFT pixel (0, 0)
    A = np.empty((nb, full.shape[0], y1 - y0, x1 - x0), dtype=DTYPE)
    m0 = 1 if with_model else 0
    jb = psfs.low_rank(sz, psfs.EXACT_TOL) if bank is not None else None
    if jb is not None:
        m0 = 0     # every column through the bank's (float32-exact) low-rank PSF basis
    elif bank is not None and full.shape[0] > m0 and psfs.approx_jacobian:
        jb = psfs.low_rank(sz, psfs.JAC_TOL)    # derivative columns only
        psfs.approx_used |= jb is not None
    if jb is not None:
        C, B = jb
        step = max(1, int(BAND_CHUNK_BYTES // (full[m0:].nbytes * 3)))
        for k0 in range(0, B.shape[0], step):
            k1 = min(B.shape[0], k0 + step)
            d = _inverse_crop(full[None, m0:] * B[k0:k1, None], sz, y0 - fy0, y1 - fy0, x0 - fx0, x1 - fx0)
            part = np.tensordot(C[:, k0:k1], d, axes=1)
            if k0 == 0:
                A[:, m0:] = part
            else:
                A[:, m0:] += part
        if m0 == 0:
            return Rendered(y0, y1, x0, x1, A)
        full = full[:1]
    mog_cache = {}
    # a few bands per batched transform: bounded temporary memory for large galaxies and many bands
    step = max(1, int(BAND_CHUNK_BYTES // (full.nbytes * 3)))
    for b0 in range(0, nb, step):
        b1 = min(nb, b0 + step)
        if bank is not None:
            spec = full[None] * bank[b0:b1, None]
        else:
            spec = np.stack([full * psfs[b].fourier32(sz)[None] for b in range(b0, b1)])
        for b in range(b0, b1):
            psf = psfs[b]
            if isinstance(psf, HybridPSF):
                w = _hybrid_mog_weights(mix.var, S, re, kind, psf, sz)
                if np.any(w > 0):
                    key = w.tobytes()
                    if key not in mog_cache:
                        mog_cache[key] = stack(w)
                    spec[b - b0] += mog_cache[key] * (psf.mixture.fourier32(sz) - psf.fourier32(sz))[None]
        A[b0:b1, :full.shape[0]] = _inverse_crop(spec, sz, y0 - fy0, y1 - fy0, x0 - fx0, x1 - fx0)
    return Rendered(y0, y1, x0, x1, A)


def _inverse_crop(spec, sz, ya, yb, xa, xb):
    """Inverse real FFT of a (..., sz, sz//2+1) spectrum stack, cropped to [ya:yb, xa:xb]."""
    img = sfft.irfft2(spec, s=(sz, sz), axes=(-2, -1), overwrite_x=True)
    return img[..., ya:yb, xa:xb]


def render_source(kind, params: dict, psfs, shape, free, model=None) -> Rendered:
    """Render a source given its parameter dict (names of :func:`param_names`).

    ``model``: a model-only rendering at the same parameters; galaxies then transform only the
    derivative columns and reuse its model column.
    """
    if kind == "star":
        return render_star(params["pos.x"], params["pos.y"], psfs, shape, free)
    args = (kind, params["pos.x"], params["pos.y"], params["shape.logre"], params["shape.ee1"],
            params["shape.ee2"], params.get("sersicindex", np.nan), psfs, shape, free)
    if model is None or not free or model.A.shape[1] != 1:
        return render_galaxy(*args)
    d = render_galaxy(*args, with_model=False)
    if (d.y0, d.y1, d.x0, d.x1) != (model.y0, model.y1, model.x0, model.x1):
        return render_galaxy(*args)
    A = np.empty((d.A.shape[0], d.A.shape[1] + 1) + d.A.shape[2:], dtype=d.A.dtype)
    A[:, 0] = model.A[:, 0]
    A[:, 1:] = d.A
    return Rendered(d.y0, d.y1, d.x0, d.x1, A)
