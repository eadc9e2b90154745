"""The native-sampling ePSF builder: a vectorised, weighted, sub-pixel registered star stack.

Each pass (a fixed number, ``N_PASSES``):

1. every star's stamp is moved onto the ePSF grid by its sub-pixel offset (Lanczos-3, the shift the
   fitter uses) and divided by its flux after its own background is removed;
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

Pure numpy/scipy: arrays in, arrays out; no photutils.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..engine.fshift import fourier_shift
from ..engine.lanczos import shift_stamp
from .epsf_build import MIN_COVER, SYSTEMATIC_FLOOR, weighted_clipped_mean
from .epsf_wings import with_wing_tail
from .psf_error import stamp_fwhm

__all__ = ["StackStar", "StackResult", "stack_epsf", "normalised_stamps", "finish_psf", "N_PASSES"]

#: refinement passes (stack -> refit every star); the result changes by < 1e-4 of the peak after 4
N_PASSES = 6
#: a pixel more than this many sigma above its star's model (outside the core) is a neighbour's
OUTLIER_SIGMA = 4.0
#: fraction of the star's model value that a pixel may exceed it by without being masked
MODEL_TOL = 0.25
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
        if abs(dx) < 1e-3 and abs(dy) < 1e-3:
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
    from scipy.optimize import least_squares

    size = p.shape[0]
    r = grid_radius(size)
    k = np.rint(r).astype(int)
    rmax = size // 2
    ks = np.arange(int(np.ceil(2.0 * fwhm)), rmax + 1)
    if ks.size < 6:
        return 0.0
    m = np.array([p[k == i].mean() for i in ks])
    e = np.array([p[k == i].std() / np.sqrt(max((k == i).sum(), 1)) for i in ks])
    e = np.maximum(e, 1e-3 * np.abs(m).max() / np.sqrt(ks.size) + 1e-12)

    def resid(q):
        la, b, lA, c = q
        return (np.exp(lA) * (1.0 + (ks / np.exp(la)) ** 2) ** (-b) + c - m) / e

    a0 = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / 3.0) - 1.0))
    amp0 = max(float(m[0]) * (1.0 + (ks[0] / a0) ** 2) ** 3.0, 1e-12)
    q0 = [np.log(a0), 3.0, np.log(amp0), 0.0]
    try:
        q = least_squares(resid, q0, bounds=([np.log(0.1), 1.05, -np.inf, -np.inf],
                                             [np.log(100.0), 6.0, np.inf, np.inf])).x
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


def _aligned(stars, size):
    """Star stamps (data/flux) and their inverse variances moved onto the grid; NaN-free."""
    n = len(stars)
    vals = np.zeros((n, size, size))
    valid = np.zeros((n, size, size), bool)
    c = (size - 1) // 2
    for k, st in enumerate(stars):
        dx = st.cutout_center[0] - c
        dy = st.cutout_center[1] - c
        bad = ~(st.weights > 0)
        vals[k] = shift_stamp(np.where(bad, 0.0, st.data), -dx, -dy)[0]
        b = ndimage.binary_dilation(bad, iterations=3) if bad.any() else bad.copy()
        b[:3, :] = b[-3:, :] = True
        b[:, :3] = b[:, -3:] = True
        valid[k] = ~b
    return vals, valid


def normalised_stamps(stars, psf_now, gain, floor=SYSTEMATIC_FLOOR):
    """The used stars' stamps moved onto the grid and divided by their fluxes, and their inverse
    variances (sky, the star's Poisson noise as ``psf_now`` predicts it, ``floor`` of the PSF):
    (used stars, values (n, S, S), weights (n, S, S), 0 where a value is missing)."""
    use = [st for st in stars if st.used]
    size = psf_now.shape[0]
    vals, valid = _aligned(use, size)
    m = np.maximum(psf_now, 0.0)
    w = np.zeros(vals.shape)
    for k, st in enumerate(use):
        f = st.flux
        sky_var = float(np.median(1.0 / st.weights[st.weights > 0] ** 2))
        var = (sky_var + (f * m / gain if gain else 0.0)) / (f * f) + (floor * m) ** 2
        w[k] = np.where(valid[k], 1.0 / var, 0.0)
        vals[k] /= f
    return use, vals, w


def _stack(stars, psf_now, gain, size, combine="weighted_mean"):
    """Weighted clipped mean (or plain median) of the used stars' flux-normalised, grid-aligned
    stamps."""
    use, vals, w = normalised_stamps(stars, psf_now, gain)
    if combine == "median":
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmedian(np.where(w > 0, vals, np.nan), axis=0)
    else:
        mean = weighted_clipped_mean(vals, w, STACK_CLIP)
    # grid points few stars cover keep the current estimate
    thin = (w > 0).sum(axis=0) < min(len(use), max(2, int(np.ceil(MIN_COVER * len(use)))))
    return np.where(thin | ~np.isfinite(mean), psf_now, mean)


def _fit_star(st, raw, base_w, psf, gain, fit_background=True, iters=2):
    """Weighted least squares of flux, background (unless held) and position of one star."""
    size = raw.shape[0]
    c = (size - 1) // 2
    x, y = st.cutout_center
    f, b = st.flux, st.background
    good = base_w > 0
    sky_var = 1.0 / np.where(good, base_w, 1.0) ** 2
    for _ in range(iters):
        dx, dy = x - c, y - c
        val, ddx, ddy = fourier_shift(psf, dx, dy, derivs=True)
        model = f * val + b
        var = sky_var + (np.maximum(model - b, 0.0) / gain if gain else 0.0)
        w = np.where(good, 1.0 / var, 0.0)
        cols = [val, np.ones_like(val), f * ddx, f * ddy] if fit_background else \
            [val, f * ddx, f * ddy]
        J = np.stack(cols, axis=-1)[good]
        r = (raw - model)[good]
        ww = w[good]
        A = J.T @ (J * ww[:, None])
        g = J.T @ (ww * r)
        try:
            step = np.linalg.solve(A + 1e-12 * np.diag(np.diag(A)), g)
        except np.linalg.LinAlgError:
            break
        if not fit_background:
            step = np.r_[step[0], 0.0, step[1:]]
        f, b = f + step[0], b + step[1]
        x = float(np.clip(x + np.clip(step[2], -1.0, 1.0), c - 3, c + 3))
        y = float(np.clip(y + np.clip(step[3], -1.0, 1.0), c - 3, c + 3))
    st.flux, st.background, st.cutout_center = float(f), float(b), (x, y)
    st.model = f * fourier_shift(psf, x - c, y - c)[0]
    st.data = raw - b
    return st


def _mask_outliers(st, raw, base_w, gain, fwhm):
    """Zero the weight of pixels (outside 1.5 FWHM of the star) far above the star's model (by
    ``OUTLIER_SIGMA`` sigma, the model's own ``MODEL_TOL`` included in sigma)."""
    size = raw.shape[0]
    yy, xx = np.indices(raw.shape)
    r = np.hypot(xx - st.cutout_center[0], yy - st.cutout_center[1])
    good = base_w > 0
    m = np.maximum(st.model, 0.0)
    # the ePSF of the early passes is itself off by a few per cent: a tolerance of a quarter of the
    # model keeps the star's own wing, which masking would otherwise cut away pass after pass
    var = 1.0 / np.where(good, base_w, 1.0) ** 2 + (m / gain if gain else 0.0) + (MODEL_TOL * m) ** 2
    z = (raw - st.background - st.model) / np.sqrt(var)
    hot = good & (z > OUTLIER_SIGMA) & (r > 1.5 * fwhm)
    if hot.any():
        hot = ndimage.binary_dilation(hot, iterations=2) & (r > 1.5 * fwhm)
    return np.where(hot, 0.0, base_w), int(hot.sum()) / float(size * size)


def _spread(st, base_w, gain, fwhm):
    """(spread, sigma): how much more flux a slightly broadened ePSF (the ePSF blurred by a
    Gaussian of sigma FWHM/6) takes from the stamp than the ePSF itself, as a fraction (the
    idea of SExtractor's SPREAD_MODEL): ~0 for a point source, > 0 for a resolved one."""
    if st.model is None or not st.flux > 0:
        return np.nan, np.nan
    yy, xx = np.indices(st.data.shape)
    r = np.hypot(xx - st.cutout_center[0], yy - st.cutout_center[1])
    use = (r <= 3.0 * fwhm) & (base_w > 0)
    p = st.model / st.flux
    g = ndimage.gaussian_filter(p, fwhm / 6.0)
    var = 1.0 / np.where(base_w > 0, base_w, 1.0) ** 2 + (np.maximum(st.model, 0.0) / gain if gain else 0.0)
    w = np.where(use, 1.0 / var, 0.0)
    gp, pp = (w * g * p).sum(), (w * p * p).sum()
    if not (gp > 0 and pp > 0):
        return np.nan, np.nan
    a = (w * g * st.data).sum() / gp
    c = (w * p * st.data).sum() / pp
    if not c > 0:
        return np.nan, np.nan
    sig = np.sqrt((w * g * g).sum() / gp ** 2 + 1.0 / pp) / c
    return float(a / c - 1.0), float(sig)


def _concentration(raw, w, center, fwhm):
    """Flux within 1 FWHM over flux within 3 FWHM of a background-subtracted stamp."""
    yy, xx = np.indices(raw.shape)
    r = np.hypot(xx - center[0], yy - center[1])
    inner = raw[(r <= fwhm) & (w > 0)].sum()
    outer = raw[(r <= 3.0 * fwhm) & (w > 0)].sum()
    return float(inner / outer) if outer > 0 else np.nan


def _most_concentrated(stars, fwhm):
    """Mark as used only the more concentrated half of the stars (at least 3): nothing is more
    concentrated than the PSF, so the first stack is made of point sources even when the
    candidates hold as many compact galaxies as stars; :func:`_classify` re-admits the rest."""
    c = np.array([_concentration(st.data, st.weights, st.cutout_center, fwhm) for st in stars])
    ok = np.isfinite(c)
    if ok.sum() < 4:
        return
    cut = np.sort(c[ok])[::-1][max(3, int(np.ceil(ok.sum() / 2.0))) - 1]
    for st, ck in zip(stars, c):
        if not (np.isfinite(ck) and ck >= cut):
            st.used = False


def _classify(stars, base_ws, gain, fwhm):
    """Use the stars that are point sources for the current ePSF: drop resolved objects (galaxy
    nuclei, compact galaxies, blends) whose :func:`_spread` lies well above that of the stars
    used so far (by 5 sigma and at least ``SPREAD_MIN``), re-admit the others. Returns the number
    of stars left out."""
    vals = [(k, *_spread(st, base_ws[k], gain, fwhm)) for k, st in enumerate(stars) if st.reason != "no_flux"]
    ref = np.array([v[1] for v in vals if stars[v[0]].used and np.isfinite(v[1])])
    if ref.size == 0:
        return sum(not st.used for st in stars)
    med = float(np.median(ref))
    for (k, dk, sk) in vals:
        point = np.isfinite(dk) and dk - med <= max(5.0 * sk, SPREAD_MIN)
        stars[k].used, stars[k].reason = (True, "") if point else (False, "resolved")
    return sum(not st.used for st in stars)


def stack_epsf(raws, base_ws, centers, origins, ids, gain, fwhm, fluxes0, backgrounds0,
               n_passes: int = N_PASSES, fit_background: bool = True, wing_tail: bool = True,
               combine: str = "weighted_mean") -> StackResult:
    """Build the ePSF from star stamps.

    ``raws``: (n, S, S) stamps (cell background removed, S odd); ``base_ws``: (n, S, S) 1/sigma,
    0 on masked pixels; ``centers``: (n, 2) stamp-frame (x, y) first guesses; ``origins``: stamp
    origins in the cell frame; ``gain``: electrons per image unit (None: sky noise only);
    ``fwhm``: first guess of the FWHM in px; ``fluxes0``/``backgrounds0``: first guesses;
    ``fit_background``: fit each star's constant background (else hold it at ``backgrounds0``);
    ``wing_tail``: replace the noisy outer rings by the Moffat tail; ``combine``:
    ``weighted_mean`` (inverse-variance, clipped) or ``median`` (unweighted) per-pixel stack.
    """
    raws = np.asarray(raws, float)
    orig_ws = np.array(base_ws, float)
    base_ws = orig_ws.copy()
    n, size = raws.shape[0], raws.shape[1]
    if raws.shape[1] != raws.shape[2] or size % 2 == 0:
        raise ValueError(f"stamps must be odd and square, got {raws.shape[1:]}")
    stars = []
    for k in range(n):
        b0 = float(backgrounds0[k])
        stars.append(StackStar(id_label=int(ids[k]), origin=tuple(origins[k]), data=raws[k] - b0,
                               weights=base_ws[k], cutout_center=(float(centers[k][0]), float(centers[k][1])),
                               flux=float(fluxes0[k]), background=b0))
    gain = float(gain) if gain is not None and np.isfinite(gain) and gain > 0 else None
    psf = np.zeros((size, size))
    info = {"passes": int(n_passes), "n_rejected": 0, "masked_frac": 0.0}
    wings = {}
    fwhm0 = float(fwhm) if fwhm is not None and np.isfinite(fwhm) and fwhm > 0 else 4.0
    fwhm = fwhm0
    _most_concentrated(stars, fwhm0)
    for it in range(int(n_passes)):
        raw_stack = _stack(stars, psf, gain, size, combine)
        f_now = stamp_fwhm(np.where(np.isfinite(raw_stack), raw_stack, 0.0))
        fwhm = f_now if np.isfinite(f_now) and f_now > 1.0 else fwhm0
        psf, wings = finish_psf(raw_stack, fwhm, wing_tail)
        masked = []
        for k, st in enumerate(stars):
            if not st.flux > 0:
                st.used, st.reason = False, "no_flux"
                continue
            st.weights = base_ws[k]
            _fit_star(st, raws[k], st.weights, psf, gain, fit_background)
            if it < n_passes - 1:   # masks are redone each pass, from the neighbour mask only
                st.weights, frac = _mask_outliers(st, raws[k], orig_ws[k], gain, fwhm)
                base_ws[k] = st.weights
                masked.append(frac)
            if not (np.isfinite(st.flux) and st.flux > 0):
                st.used, st.reason = False, "no_flux"
        if not any(st.used for st in stars):
            raise ValueError("no star has a positive flux")
        if it < n_passes - 1:
            info["n_rejected"] = _classify(stars, base_ws, gain, fwhm)
        if masked:
            info["masked_frac"] = round(float(np.mean(masked)), 4)
        if not any(st.used for st in stars):
            raise ValueError("every star was rejected")
    info["wings"] = wings
    info["fwhm_pix"] = round(float(fwhm), 3)
    return StackResult(psf, stars, info)
