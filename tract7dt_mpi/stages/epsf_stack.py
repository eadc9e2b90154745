"""The native-sampling ePSF builder: a vectorised, weighted, sub-pixel registered star stack.

Each pass, every star at once (one Fourier transform of the ePSF shifted to all stars' positions,
per-star arrays stacked along a first axis):

1. every star's stamp is moved onto the ePSF grid by its sub-pixel offset (its current model by the
   Fourier phase shift the fitter moves the ePSF with, the residual from it by Lanczos-3) and
   divided by its flux after its own background is removed;
2. the stamps are reduced per pixel to an inverse-variance weighted, sigma-clipped mean (sky noise,
   the star's Poisson noise as the current ePSF predicts it, a 2 % floor of the PSF value);
3. the stack is recentred, its noise-dominated outer rings are replaced by a Moffat tail fitted to
   its ring means (:mod:`.epsf_wings`), and it is normalised to unit flux *including the tail's
   light beyond the stamp*, so a flux fitted with it is a total flux;
4. every star's flux, background and position are refitted to that ePSF by weighted least squares
   over its whole unmasked stamp.  The background is a free constant fitted together with the
   PSF (wings included), not an annulus median: an annulus 20-30 px out still holds ~1e-5 of the
   flux per pixel of a Moffat beta = 2 star, which an annulus median removes from every pixel;
5. pixels that sit well above that star's model (neighbours' light beyond their detection
   segments, galaxy outskirts) are masked for the next pass, and stars whose core does not follow
   the common ePSF (a galaxy under the star, a binary) are dropped.

The pass whose stack differs from the previous one by less than ``CONVERGED`` of its peak is the
last (it refits the stars but masks and drops none); at most ``N_PASSES``. Clean cells stop after 3.

Pure numpy/scipy: arrays in, arrays out; no photutils.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..engine.fshift import fourier_shift, fourier_shifts
from ..engine.lanczos import _lanczos   # the kernel of engine.lanczos.taps, on arrays of shifts
from .epsf_build import MIN_COVER, SYSTEMATIC_FLOOR, sky_variances, weighted_clipped_mean
from .epsf_qa import nanmedian_axis0
from .epsf_wings import with_wing_tail
from .psf_error import stamp_fwhm
from .small_lsq import fit_bounded

__all__ = ["StackStar", "StackResult", "stack_epsf", "normalised_stamps", "finish_psf", "N_PASSES"]

#: most refinement passes (stack -> refit every star)
N_PASSES = 6
#: a pass whose stack moved by less than this fraction of its peak (anywhere) is the last
CONVERGED = 3e-4
#: a pixel more than this many sigma above its star's model (outside the core) is a neighbour's
OUTLIER_SIGMA = 4.0
#: fraction of the star's model value that a pixel may exceed it by without being masked
MODEL_TOL = 0.25
#: no pixel within this many FWHM of its star is masked as an outlier (detected neighbours within
#: 2 FWHM are rejected as blends, farther ones masked by their segments); at 1.5 FWHM a bright
#: star's own profile, where an early pass's ePSF is wrong, was masked (then grown by 5 px) and
#: the stack settled on a core 5 % off the true PSF (GalSim Moffat beta = 2 cell of 10 stars;
#: 0.6 % with the mask from 3 FWHM, or none)
OUTLIER_INNER_FWHM = 3.0
#: clip level of the per-pixel stack, in units of the pixel's robust spread
STACK_CLIP = 3.0
_MAD = 1.4826
#: smallest excess spread (fraction of the flux) that marks a star as resolved
SPREAD_MIN = 0.01


@dataclass
class StackStar:
    """One star of the stack, in the stamp frame of its cut-out.

    ``data``: the stamp minus the fitted background; ``weights``: 1/sigma (0 = masked);
    ``cutout_center``: fitted (x, y) in the stamp; ``center``: the same in the cell frame;
    ``flux``: fitted total flux; ``background``: fitted constant; ``used``: kept in the ePSF;
    ``model``: flux x ePSF at the fitted position (stamp frame).
    """

    id_label: int
    origin: tuple
    data: np.ndarray
    weights: np.ndarray
    cutout_center: tuple
    flux: float
    background: float = 0.0
    used: bool = True
    reason: str = ""
    model: np.ndarray | None = None

    @property
    def center(self):
        return (self.origin[0] + self.cutout_center[0], self.origin[1] + self.cutout_center[1])


@dataclass
class StackResult:
    """``psf``: the ePSF on the cut-out grid (centre pixel (S-1)/2), unit total flux including
    the tail beyond the grid; ``stars``: every star with its fit; ``info``: wings, passes."""

    psf: np.ndarray
    stars: list
    info: dict = field(default_factory=dict)


def grid_radius(size):
    """Distance (px) of every pixel of a ``size`` x ``size`` grid from its centre ((size-1)/2)."""
    c = (size - 1) / 2.0
    yy, xx = np.indices((size, size))
    return np.hypot(xx - c, yy - c)


def _moment_centroid(p, radius):
    size = p.shape[0]
    c = (size - 1) / 2.0
    yy, xx = np.indices(p.shape)
    m = (np.hypot(xx - c, yy - c) <= radius) & (p > 0)
    w = np.where(m, p, 0.0)
    s = w.sum()
    if not s > 0:
        return 0.0, 0.0
    return float((w * (xx - c)).sum() / s), float((w * (yy - c)).sum() / s)


def _recentre(p, fwhm):
    """Shift the stack so that its core centroid (within ~1 FWHM) is the grid centre."""
    dx, dy = _moment_centroid(p, max(1.0 * fwhm, 2.0))
    for _ in range(3):
        if abs(dx) < 1e-5 and abs(dy) < 1e-5:
            break
        p = fourier_shift(p, -np.clip(dx, -0.5, 0.5), -np.clip(dy, -0.5, 0.5))[0]
        dx, dy = _moment_centroid(p, max(1.0 * fwhm, 2.0))
    return p


def _pedestal(p, fwhm):
    """Constant c of a fit A (1 + (r/alpha)^2)^-beta + c to the ring means of ``p`` beyond 2 FWHM.

    Per-star backgrounds fitted together with the stack can trade a constant against the PSF's
    wing (a pedestal in the stack is the same as a shift of every star's background); a wing
    decays, a pedestal does not, so the fit separates them and the pedestal is removed.
    """
    size = p.shape[0]
    k = np.rint(grid_radius(size)).astype(int).ravel()
    rmax = size // 2
    ks = np.arange(int(np.ceil(2.0 * fwhm)), rmax + 1)
    if ks.size < 6:
        return 0.0
    v = p.ravel()
    cnt = np.bincount(k, minlength=rmax + 1)[ks]
    m = np.bincount(k, v, minlength=rmax + 1)[ks] / cnt
    mean_k = np.zeros(k.max() + 1)
    mean_k[ks] = m
    dev2 = np.bincount(k, (v - mean_k[k]) ** 2, minlength=rmax + 1)[ks]
    e = np.sqrt(dev2 / cnt) / np.sqrt(np.maximum(cnt, 1))
    e = np.maximum(e, 1e-3 * np.abs(m).max() / np.sqrt(ks.size) + 1e-12)
    k2 = ks.astype(float) ** 2

    def resid(q):
        la, b, lA, c = q
        return (np.exp(lA) * (1.0 + k2 * np.exp(-2.0 * la)) ** (-b) + c - m) / e

    def jac(q):
        la, b, lA, c = q
        u = 1.0 + k2 * np.exp(-2.0 * la)
        mof = np.exp(lA) * u ** (-b)
        return np.column_stack([2.0 * b * mof * (u - 1.0) / u, -mof * np.log(u), mof, np.ones_like(u)]) / e[:, None]

    a0 = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / 3.0) - 1.0))
    amp0 = max(float(m[0]) * (1.0 + (ks[0] / a0) ** 2) ** 3.0, 1e-12)
    q0 = [np.log(a0), 3.0, np.log(amp0), 0.0]
    try:
        q = fit_bounded(resid, jac, q0, [np.log(0.1), 1.05, -np.inf, -np.inf],
                        [np.log(100.0), 6.0, np.inf, np.inf])
    except (ValueError, np.linalg.LinAlgError):
        return 0.0
    return float(q[3])


def finish_psf(p, fwhm, wing_tail=True):
    """Recentre, remove the pedestal, Moffat tail (fitted always, applied when ``wing_tail``),
    unit total flux including the tail's light beyond the grid."""
    p = np.where(np.isfinite(p), p, 0.0)
    p = _recentre(p, fwhm)
    tot = p.sum()
    if tot > 0:
        p = p - _pedestal(p / tot, fwhm) * tot
    tot = p.sum()
    if not tot > 0:
        raise ValueError("stack has no positive flux")
    p = p / tot
    tailed, wings = with_wing_tail(p, fwhm)
    if wing_tail:
        p = np.asarray(tailed, float)
    beyond = float(wings.get("tail_beyond_stamp") or 0.0)
    return p / (1.0 + beyond), wings


_CROSS3 = np.zeros((3, 3, 3), bool)
_CROSS3[1] = ndimage.generate_binary_structure(2, 1)   # per-stamp 4-connectivity, stamps apart


def _dilate_each(mask, iterations):
    """Binary dilation (4-connected, ``iterations`` times) of each (S, S) plane of ``mask`` alone."""
    out = mask.copy()
    hit = mask.any(axis=(1, 2))
    if hit.any():
        out[hit] = ndimage.binary_dilation(mask[hit], structure=_CROSS3, iterations=iterations)
    return out


def _corr_each(a, w, axis):
    """out[n, ..., i] = sum_k w[n, k] a[n, ..., i + k - 3] along ``axis`` (1 or 2; zeros outside):
    the Lanczos correlation of :mod:`tract7dt_mpi.engine.lanczos` with each plane's own taps."""
    m = a.shape[axis]
    pad_shape = list(a.shape)
    pad_shape[axis] += 6
    pad = np.zeros(pad_shape)
    if axis == 1:
        pad[:, 3:3 + m] = a
    else:
        pad[:, :, 3:3 + m] = a
    out = np.zeros(a.shape)
    for k in range(7):
        out += w[:, k, None, None] * (pad[:, k:k + m] if axis == 1 else pad[:, :, k:k + m])
    return out


def _taps_each(d):
    """engine.lanczos.taps for every shift of ``d`` at once: (n, 7) unit-sum Lanczos-3 taps."""
    lv = _lanczos(np.arange(7)[None, :] - 3.0 + np.asarray(d, float).reshape(-1, 1))[0]
    return lv / lv.sum(axis=1, keepdims=True)


def _lanczos_shifts(stack, dx, dy):
    """Each stamp of ``stack`` (n, S, S) moved by its own (dx, dy): engine.lanczos.shift_stamp."""
    return _corr_each(_corr_each(stack, _taps_each(dy), 1), _taps_each(dx), 2)


def _aligned_arrays(data, weights, cx, cy, model=None, psf=None, flux=None):
    """Stamps ``data`` (n, S, S) moved from their centres (cx, cy) onto the grid centre, and where
    they are valid (3 px from a masked pixel or the stamp edge); NaN-free.

    With ``model`` (n, S, S: each star's current model, ``flux`` x ``psf`` Fourier-shifted to
    (cx, cy), as the fit renders it; a star without a fit has an all-zero model) the model part
    moves back exactly (it is ``flux`` x ``psf`` on the grid) and only the residual data - model
    (0 where masked) by the local Lanczos-3 kernel, so that neighbours, holes and stamp edges ring
    no further than 3 px. Lanczos-3 on the whole stamp against a Fourier shift in the fit made
    every PSF-fit flux 0.1 % (4 px FWHM Moffat) to 0.6 % (2.5 px Kolmogorov) low; the model part
    carries the shape, the residual only the correction to it."""
    n, size = data.shape[0], data.shape[1]
    c = (size - 1) // 2
    bad = ~(weights > 0)
    dx, dy = -(cx - c), -(cy - c)
    if model is None:
        vals = _lanczos_shifts(np.where(bad, 0.0, data), dx, dy)
    else:
        has = np.abs(model).reshape(n, -1).max(axis=1) > 0
        back = np.where(has[:, None, None], np.asarray(flux, float)[:, None, None] * psf[None], 0.0)
        vals = back + _lanczos_shifts(np.where(bad, 0.0, data - model), dx, dy)
    b = _dilate_each(bad, 3)
    b[:, :3, :] = b[:, -3:, :] = True
    b[:, :, :3] = b[:, :, -3:] = True
    return vals, ~b


def _normalised(data, weights, cx, cy, flux, psf_now, gain, floor=SYSTEMATIC_FLOOR, model=None):
    """Array form of :func:`normalised_stamps`: (values (n, S, S), weights (n, S, S))."""
    vals, valid = _aligned_arrays(data, weights, cx, cy, model, psf_now, flux)
    m = np.maximum(psf_now, 0.0)[None]
    f = flux[:, None, None]
    sky = sky_variances(weights)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (sky + (f * m / gain if gain else 0.0)) / (f * f) + (floor * m) ** 2
        w = np.where(valid, 1.0 / var, 0.0)
    return vals / f, w


def normalised_stamps(stars, psf_now, gain, floor=SYSTEMATIC_FLOOR):
    """The used stars' stamps moved onto the grid and divided by their fluxes, and their inverse
    variances (sky, the star's Poisson noise as ``psf_now`` predicts it, ``floor`` of the PSF):
    (used stars, values (n, S, S), weights (n, S, S), 0 where a value is missing)."""
    use = [st for st in stars if st.used]
    size = psf_now.shape[0]
    if not use:
        return use, np.zeros((0, size, size)), np.zeros((0, size, size))
    vals, w = _normalised(np.array([st.data for st in use], float), np.array([st.weights for st in use], float),
                          np.array([st.cutout_center[0] for st in use], float),
                          np.array([st.cutout_center[1] for st in use], float),
                          np.array([st.flux for st in use], float), psf_now, gain, floor,
                          np.array([np.zeros((size, size)) if st.model is None else st.model for st in use], float))
    return use, vals, w


def _stack(vals, w, psf_now, combine="weighted_mean"):
    """Weighted clipped mean (or plain median) of the used stars' flux-normalised, grid-aligned
    stamps ``vals`` with inverse variances ``w``."""
    n = vals.shape[0]
    if combine == "median":
        mean = nanmedian_axis0(np.where(w > 0, vals, np.nan))
    else:
        mean = weighted_clipped_mean(vals, w, STACK_CLIP)
    # grid points few stars cover keep the current estimate
    thin = (w > 0).sum(axis=0) < min(n, max(2, int(np.ceil(MIN_COVER * n))))
    return np.where(thin | ~np.isfinite(mean), psf_now, mean)


def _solve_each(A, g):
    """Solutions of the systems A[i] x = g[i] (NaN rows where A[i] is singular)."""
    try:
        return np.linalg.solve(A, g[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full(g.shape, np.nan)
        for i in range(A.shape[0]):
            try:
                out[i] = np.linalg.solve(A[i], g[i])
            except np.linalg.LinAlgError:
                pass
        return out


def _fit_stars(raw, base_w, x, y, f, b, psf, gain, fit_background=True, iters=2):
    """Weighted least squares of flux, background (unless held) and position of every star of
    ``raw`` (n, S, S) against ``psf``, all stars at once. A star whose normal equations are
    singular keeps its last values. Returns (x, y, flux, background, model = flux x shifted psf)."""
    n, size = raw.shape[0], raw.shape[1]
    c = (size - 1) // 2
    x, y, f, b = (np.array(v, float) for v in (x, y, f, b))
    good = base_w > 0
    sky_var = 1.0 / np.where(good, base_w, 1.0) ** 2
    alive = np.ones(n, bool)
    npar = 4 if fit_background else 3
    J = np.empty((n, npar, size, size))      # the columns of each star's Jacobian
    Jw = np.empty((n, npar, size * size))
    if fit_background:
        J[:, 1] = 1.0
    Jf = J.reshape(n, npar, -1)
    for _ in range(iters):
        val32, ddx, ddy = fourier_shifts(psf, x - c, y - c, derivs=True, single=True)
        J[:, 0] = val32
        val = J[:, 0]
        fb = f[:, None, None]
        model = fb * val + b[:, None, None]
        var = sky_var + (np.maximum(fb * val, 0.0) / gain if gain else 0.0)
        w = np.where(good, 1.0 / var, 0.0).reshape(n, 1, -1)
        np.multiply(fb, ddx, out=J[:, npar - 2])
        np.multiply(fb, ddy, out=J[:, npar - 1])
        np.multiply(Jf, w, out=Jw)
        A = Jw @ np.swapaxes(Jf, 1, 2)
        g = (Jw @ (raw - model).reshape(n, -1, 1))[..., 0]
        diag = np.einsum("nii->ni", A)
        A = A + 1e-12 * diag[:, :, None] * np.eye(npar)
        step = _solve_each(A, g)
        alive &= np.isfinite(step).all(axis=1) | ~np.isfinite(A).all(axis=(1, 2))
        step = np.where(alive[:, None], step, 0.0)
        if not fit_background:
            step = np.concatenate([step[:, :1], np.zeros((n, 1)), step[:, 1:]], axis=1)
        f, b = f + step[:, 0], b + step[:, 1]
        x = np.clip(x + np.clip(step[:, 2], -1.0, 1.0), c - 3, c + 3)
        y = np.clip(y + np.clip(step[:, 3], -1.0, 1.0), c - 3, c + 3)
    model = f[:, None, None] * fourier_shifts(psf, x - c, y - c, single=True)[0].astype(float)
    return x, y, f, b, model


def _radii(cx, cy, size):
    """Distance of every pixel of each (size, size) stamp from its own centre (cx[i], cy[i])."""
    g = np.arange(size, dtype=float)
    return np.sqrt((g[None, None, :] - cx[:, None, None]) ** 2 + (g[None, :, None] - cy[:, None, None]) ** 2)


def _mask_outliers(raw, base_w, bkg, model, cx, cy, gain, fwhm):
    """Zero the weight of pixels (outside ``OUTLIER_INNER_FWHM`` of their star) far above the star's
    model (by ``OUTLIER_SIGMA`` sigma, the model's own ``MODEL_TOL`` included in sigma), every star
    at once: (new weights (n, S, S), masked fraction of each stamp)."""
    size = raw.shape[1]
    outside = _radii(cx, cy, size) > OUTLIER_INNER_FWHM * fwhm
    good = base_w > 0
    m = np.maximum(model, 0.0)
    # the ePSF of the early passes is itself off by a few per cent: a tolerance of a quarter of the
    # model keeps the star's own wing, which masking would otherwise cut away pass after pass
    var = 1.0 / np.where(good, base_w, 1.0) ** 2 + (m / gain if gain else 0.0) + (MODEL_TOL * m) ** 2
    z = (raw - bkg[:, None, None] - model) / np.sqrt(var)
    hot = good & (z > OUTLIER_SIGMA) & outside
    hot = _dilate_each(hot, 2) & outside
    return np.where(hot, 0.0, base_w), hot.sum(axis=(1, 2)) / float(size * size)


def _spread(data, base_w, model, flux, cx, cy, gain, fwhm):
    """(spread, sigma) per star: how much more flux a slightly broadened ePSF (the ePSF blurred by
    a Gaussian of sigma FWHM/6) takes from the stamp than the ePSF itself, as a fraction (the idea
    of SExtractor's SPREAD_MODEL): ~0 for a point source, > 0 for a resolved one."""
    size = data.shape[1]
    use = (_radii(cx, cy, size) <= 3.0 * fwhm) & (base_w > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = model / flux[:, None, None]
        g = ndimage.gaussian_filter(p, (0.0, fwhm / 6.0, fwhm / 6.0))
        var = 1.0 / np.where(base_w > 0, base_w, 1.0) ** 2 + (np.maximum(model, 0.0) / gain if gain else 0.0)
        w = np.where(use, 1.0 / var, 0.0)
        gp, pp = (w * g * p).sum(axis=(1, 2)), (w * p * p).sum(axis=(1, 2))
        a = (w * g * data).sum(axis=(1, 2)) / gp
        c = (w * p * data).sum(axis=(1, 2)) / pp
        sig = np.sqrt((w * g * g).sum(axis=(1, 2)) / gp ** 2 + 1.0 / pp) / c
        ok = (gp > 0) & (pp > 0) & (c > 0) & (flux > 0)
        return np.where(ok, a / c - 1.0, np.nan), np.where(ok, sig, np.nan)


def _concentrations(data, w, cx, cy, fwhm):
    """Flux within 1 FWHM over flux within 3 FWHM of each background-subtracted stamp (NaN where
    the outer flux is not positive)."""
    r = _radii(cx, cy, data.shape[1])
    d = np.where(w > 0, data, 0.0)
    inner = np.where(r <= fwhm, d, 0.0).sum(axis=(1, 2))
    outer = np.where(r <= 3.0 * fwhm, d, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(outer > 0, inner / outer, np.nan)


def _most_concentrated(stars, c):
    """Mark as used only the more concentrated half of the stars (concentrations ``c``, at least
    3): nothing is more concentrated than the PSF, so the first stack is made of point sources even
    when the candidates hold as many compact galaxies as stars; :func:`_classify` re-admits the rest."""
    ok = np.isfinite(c)
    if ok.sum() < 4:
        return
    cut = np.sort(c[ok])[::-1][max(3, int(np.ceil(ok.sum() / 2.0))) - 1]
    for st, ck in zip(stars, c):
        if not (np.isfinite(ck) and ck >= cut):
            st.used = False


def _classify(stars, spread, sigma):
    """Use the stars that are point sources for the current ePSF: drop resolved objects (galaxy
    nuclei, compact galaxies, blends) whose ``spread`` (:func:`_spread`, with its ``sigma``) lies
    well above that of the stars used so far (by 5 sigma and at least ``SPREAD_MIN``), re-admit
    the others. Returns the number of stars left out."""
    cand = [k for k, st in enumerate(stars) if st.reason != "no_flux"]
    ref = np.array([spread[k] for k in cand if stars[k].used and np.isfinite(spread[k])])
    if ref.size == 0:
        return sum(not st.used for st in stars)
    med = float(np.median(ref))
    for k in cand:
        point = np.isfinite(spread[k]) and spread[k] - med <= max(5.0 * sigma[k], SPREAD_MIN)
        stars[k].used, stars[k].reason = (True, "") if point else (False, "resolved")
    return sum(not st.used for st in stars)


def stack_epsf(raws, base_ws, centers, origins, ids, gain, fwhm, fluxes0, backgrounds0,
               n_passes: int = N_PASSES, fit_background: bool = True, wing_tail: bool = True,
               combine: str = "weighted_mean", tol: float = CONVERGED) -> StackResult:
    """Build the ePSF from star stamps.

    ``raws``: (n, S, S) stamps (cell background removed, S odd); ``base_ws``: (n, S, S) 1/sigma,
    0 on masked pixels; ``centers``: (n, 2) stamp-frame (x, y) first guesses; ``origins``: stamp
    origins in the cell frame; ``gain``: electrons per image unit (None: sky noise only);
    ``fwhm``: first guess of the FWHM in px; ``fluxes0``/``backgrounds0``: first guesses;
    ``n_passes``: most refinement passes; the pass whose stack differs from the previous one by
    less than ``tol`` of its peak everywhere is the last;
    ``fit_background``: fit each star's constant background (else hold it at ``backgrounds0``);
    ``wing_tail``: replace the noisy outer rings by the Moffat tail; ``combine``:
    ``weighted_mean`` (inverse-variance, clipped) or ``median`` (unweighted) per-pixel stack.
    """
    raws = np.asarray(raws, float)
    orig_ws = np.array(base_ws, float)
    n, size = raws.shape[0], raws.shape[1]
    if raws.shape[1] != raws.shape[2] or size % 2 == 0:
        raise ValueError(f"stamps must be odd and square, got {raws.shape[1:]}")
    ws = orig_ws.copy()                        # this pass's weights: neighbour + outlier masks
    cen = np.array(centers, float).reshape(n, 2)
    cx, cy = cen[:, 0].copy(), cen[:, 1].copy()
    flux = np.array(fluxes0, float).reshape(n)
    bkg = np.array(backgrounds0, float).reshape(n)
    model = np.zeros_like(raws)
    fitted = np.zeros(n, bool)
    stars = [StackStar(id_label=int(ids[k]), origin=tuple(origins[k]), data=raws[k] - bkg[k], weights=ws[k],
                       cutout_center=(float(cx[k]), float(cy[k])), flux=float(flux[k]), background=float(bkg[k]))
             for k in range(n)]
    gain = float(gain) if gain is not None and np.isfinite(gain) and gain > 0 else None
    psf = np.zeros((size, size))
    info = {"passes": 0, "n_rejected": 0, "masked_frac": 0.0}
    wings = {}
    fwhm0 = float(fwhm) if fwhm is not None and np.isfinite(fwhm) and fwhm > 0 else 4.0
    fwhm = fwhm0
    _most_concentrated(stars, _concentrations(raws - bkg[:, None, None], ws, cx, cy, fwhm0))
    for it in range(int(n_passes)):
        used = np.array([st.used for st in stars])
        vals, w = _normalised(raws[used] - bkg[used, None, None], ws[used], cx[used], cy[used], flux[used],
                              psf, gain, model=model[used] if it else None)
        raw_stack = _stack(vals, w, psf, combine)
        f_now = stamp_fwhm(np.where(np.isfinite(raw_stack), raw_stack, 0.0))
        fwhm = f_now if np.isfinite(f_now) and f_now > 1.0 else fwhm0
        prev, (psf, wings) = psf, finish_psf(raw_stack, fwhm, wing_tail)
        info["passes"] = it + 1
        last = it == int(n_passes) - 1 or (it > 0 and np.abs(psf - prev).max() < tol * psf.max())
        for k, st in enumerate(stars):
            if not st.flux > 0:
                st.used, st.reason = False, "no_flux"
        act = np.array([st.reason != "no_flux" for st in stars])
        if act.any():
            cx[act], cy[act], flux[act], bkg[act], model[act] = _fit_stars(
                raws[act], ws[act], cx[act], cy[act], flux[act], bkg[act], psf, gain, fit_background)
            fitted |= act
            if not last:   # masks are redone each pass, from the neighbour mask only
                ws[act], frac = _mask_outliers(raws[act], orig_ws[act], bkg[act], model[act], cx[act], cy[act],
                                               gain, fwhm)
                info["masked_frac"] = round(float(np.mean(frac)), 4)
        for k in np.flatnonzero(act):
            st = stars[k]
            st.flux, st.background, st.cutout_center = float(flux[k]), float(bkg[k]), (float(cx[k]), float(cy[k]))
            if not (np.isfinite(st.flux) and st.flux > 0):
                st.used, st.reason = False, "no_flux"
        if not any(st.used for st in stars):
            raise ValueError("no star has a positive flux")
        if not last:
            data = raws - bkg[:, None, None]
            spread, sigma = _spread(data, ws, model, flux, cx, cy, gain, fwhm)
            info["n_rejected"] = _classify(stars, spread, sigma)
        if not any(st.used for st in stars):
            raise ValueError("every star was rejected")
        if last:
            break
    for k, st in enumerate(stars):
        st.data, st.weights = raws[k] - bkg[k], ws[k]
        st.model = model[k] if fitted[k] else None
    info["wings"] = wings
    info["fwhm_pix"] = round(float(fwhm), 3)
    return StackResult(psf, stars, info)
