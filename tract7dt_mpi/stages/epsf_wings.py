"""Smooth Moffat tail for the noise-dominated outer ring of an ePSF.

Beyond a few FWHM an ePSF stacked from a handful of stars is noise: on the sample tiles its
pixels scatter by ~6e-5 of the total flux around a true wing of ~1e-6.  Multiplied by the flux of
a 10^6-count star, that is a pattern of +-60 counts per pixel that the fit of every neighbour
tries to absorb (faint galaxies grow into sheets, fits do not converge).  The azimuthal mean of
the same pixels is far better determined.  So, per ePSF:

1. ring means m(r) and robust per-pixel scatters s(r) (about the radial profile) over 1-px rings;
2. the wing radius r_w is the first ring beyond 1.5 FWHM whose pixels are no longer significant,
   m(r) < ``min_snr`` * s(r);
3. a Moffat profile A (1 + (r/alpha)^2)^-beta is fitted to the ring means between 1 FWHM and r_w
   (log space, each ring at most a 5 % measurement so the wings weigh as much as the core); a
   pure power law fitted there is too shallow (the profile still curves) and puts ~1 % of the
   flux too much in the tail;
4. outside r_w the ePSF becomes that circular tail, blended linearly over ``BLEND_PIX``; the
   stamp is renormalised to unit sum.

The core, where the ePSF's shape (ellipticity, asymmetry) is measured, is left untouched.
"""
from __future__ import annotations

import numpy as np

from .small_lsq import fit_bounded

__all__ = ["with_wing_tail", "SLOPE_RANGE", "BLEND_PIX"]

#: allowed asymptotic logarithmic slope 2 beta of the tail (real PSFs with scattered-light wings
#: are shallow, ~2-3; a Gaussian-like core is steep)
SLOPE_RANGE = (2.0, 10.0)
#: width of the linear blend between the measured ePSF and the tail (px)
BLEND_PIX = 3.0
_MAD = 1.4826


def _group_medians(v, k, nk):
    """Median of ``v`` over each group ``k`` (0..nk-1) by one sort (NaN for an empty group)."""
    order = np.lexsort((v, k))
    cnt = np.bincount(k, minlength=nk)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    vs = v[order]
    lo = vs[np.minimum(start + np.maximum(cnt - 1, 0) // 2, v.size - 1)]
    hi = vs[np.minimum(start + cnt // 2, v.size - 1)]
    return np.where(cnt > 0, (lo + hi) / 2.0, np.nan)


def _rings(stamp):
    n0, n1 = stamp.shape
    yy, xx = np.indices(stamp.shape)
    r = np.hypot(xx - (n1 - 1) / 2.0, yy - (n0 - 1) / 2.0)
    k = np.rint(r).astype(int)
    kmax = int(min(n0, n1) // 2)
    inside = (k <= kmax).ravel()
    kk, vv, rr = k.ravel()[inside], stamp.ravel()[inside], r.ravel()[inside]
    cnt = np.bincount(kk, minlength=kmax + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, np.bincount(kk, vv, minlength=kmax + 1) / cnt, np.nan)
        rbar = np.where(cnt > 0, np.bincount(kk, rr, minlength=kmax + 1) / cnt, np.nan)
    # scatter about the radial profile at each pixel's own radius (a 1-px ring of a steep core
    # spans a factor ~2 in brightness)
    ok = np.isfinite(mean)
    dev = (stamp - np.interp(r, rbar[ok], mean[ok])).ravel()[inside]
    med = _group_medians(dev, kk, kmax + 1)
    mad = _group_medians(np.abs(dev - med[kk]), kk, kmax + 1)
    scat = np.where(cnt >= 4, _MAD * mad, np.nan)
    return r, rbar, mean, scat, cnt


def _moffat_profile_fit(rad, m, err, fwhm):
    """(beta, alpha, ln A) of A (1 + (r/alpha)^2)^-beta fitted to ring means in log space; each
    ring counts as at most a 5 % measurement, so the wings weigh as much as the core."""
    sig = np.maximum(err / m, 0.05)
    lr, lm = np.log(rad), np.log(m)

    def resid(q):
        b, la, c = q
        return (c - b * np.log1p(np.exp(2.0 * (lr - la))) - lm) / sig

    def jac(q):
        b, la, c = q
        e = np.exp(2.0 * (lr - la))
        return np.column_stack([-np.log1p(e), 2.0 * b * e / (1.0 + e), np.ones_like(e)]) / sig[:, None]

    b0 = 3.0
    a0 = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / b0) - 1.0))
    q0 = np.array([b0, np.log(a0), lm.max() + b0 * np.log1p((rad[np.argmax(m)] / a0) ** 2)])
    lo, hi = [SLOPE_RANGE[0] / 2, np.log(0.1), -np.inf], [SLOPE_RANGE[1] / 2, np.log(100.0), np.inf]
    q = fit_bounded(resid, jac, np.clip(q0, np.array(lo) + 1e-9, np.array(hi) - 1e-9), lo, hi)
    return float(q[0]), float(np.exp(q[1])), float(q[2])


#: the tail is extrapolated beyond the stamp with at least this Moffat beta (an r^-3 wing): a
#: flatter fitted tail is noise or a background error (on real co-adds the outer rings can fit
#: beta = 1, which would put 10x the stamp's flux beyond it), not a PSF
BETA_EXTRAP_MIN = 1.5
#: and the light beyond the stamp is at most this fraction of the light inside
MAX_BEYOND = 0.05


def _light_beyond(amp, alpha, beta, half_size):
    """Flux of the tail A (1 + (r/alpha)^2)^-beta outside a square of half-size ``half_size``
    (taken as the circle of equal area), with beta >= ``BETA_EXTRAP_MIN``, at most
    ``MAX_BEYOND``."""
    r0 = 2.0 * half_size / np.sqrt(np.pi)
    b = max(float(beta), BETA_EXTRAP_MIN)
    amp_r0 = amp * (1.0 + (r0 / alpha) ** 2) ** (-beta)        # keep the tail's level at r0
    out = np.pi * amp_r0 * (1.0 + (r0 / alpha) ** 2) ** b * alpha ** 2 / (b - 1.0) \
        * (1.0 + (r0 / alpha) ** 2) ** (1.0 - b)
    return float(min(out, MAX_BEYOND)) if np.isfinite(out) else 0.0


def with_wing_tail(stamp, fwhm_pix: float, min_snr: float = 3.0):
    """Return (stamp with the tail, info dict).

    The stamp keeps unit sum; ``info['tail_beyond_stamp']`` is the tail's flux outside the stamp
    in the same units (so the PSF's total is 1 + that), also when every ring is significant and
    the stamp itself is kept. The input is returned unchanged (``applied`` False, with the
    reason, ``tail_beyond_stamp`` 0) when too few rings are significant to fit the tail.
    ``wing_slope`` in info is the tail's asymptotic slope 2 beta."""
    a = np.asarray(stamp, dtype=float)
    info = {"applied": False, "reason": "", "wing_radius_pix": None, "wing_slope": None,
            "tail_beyond_stamp": 0.0}
    if not (np.isfinite(fwhm_pix) and fwhm_pix > 0):
        info["reason"] = "no FWHM"
        return np.asarray(stamp), info
    r, rbar, mean, scat, cnt = _rings(a)
    k0 = max(int(np.ceil(1.5 * fwhm_pix)), 2)
    ks = np.arange(mean.size)
    noisy = (ks >= k0) & ~(mean >= min_snr * scat)
    rw = int(ks[noisy][0]) if noisy.any() else int(ks[-1])
    err = scat / np.sqrt(np.maximum(cnt, 1))
    # a ring's mean is far better measured than its pixels: beyond rw the ePSF takes the radial
    # profile of the ring means while they are significant (out to rm), the Moffat beyond
    ring_ok = (mean > min_snr * err) & (cnt > 0)
    late = (ks >= rw) & ~ring_ok
    rm = int(ks[late][0]) if late.any() else int(ks[-1]) + 1
    fit = (ks >= max(1, int(np.floor(fwhm_pix)))) & (ks < rm) & ring_ok
    if fit.sum() < 3:
        info.update(reason=f"fewer than 3 significant rings inside {rw} px", wing_radius_pix=rw)
        return np.asarray(stamp), info
    try:
        beta, alpha, lnA = _moffat_profile_fit(rbar[fit], mean[fit], err[fit], fwhm_pix)
    except (ValueError, np.linalg.LinAlgError) as exc:   # degenerate profile: keep the stamp
        info.update(reason=f"tail fit failed: {exc}", wing_radius_pix=rw)
        return np.asarray(stamp), info
    tail = np.exp(lnA) * (1.0 + (r / alpha) ** 2) ** (-beta)
    prof_ok = ring_ok & (ks < rm) & np.isfinite(rbar)
    radial = np.interp(r, rbar[prof_ok], mean[prof_ok]) if prof_ok.sum() >= 2 else tail
    to_tail = np.clip((r - (rm - BLEND_PIX)) / BLEND_PIX, 0.0, 1.0)
    smooth = (1.0 - to_tail) * radial + to_tail * tail
    if noisy.any():
        blend = np.clip((r - (rw - BLEND_PIX)) / BLEND_PIX, 0.0, 1.0)
        out = (1.0 - blend) * a + blend * smooth
    else:
        blend = np.zeros_like(a)
        out = a.copy()
        info["reason"] = "every ring significant: stamp kept, tail fitted for the light beyond it"
    tot = out.sum()
    if not tot > 0:
        info["reason"] = "tail left no positive flux"
        return np.asarray(stamp), info
    before = float(a[blend > 0].sum() / a.sum())
    out /= tot
    # the light beyond the stamp follows the outermost measured rings: a Moffat fitted from
    # 1 FWHM out is pulled by the core, whose shape need not be Moffat (Kolmogorov, Airy)
    outer = fit & (ks >= 2.5 * fwhm_pix)
    bo, ao, lo = beta, alpha, lnA
    if outer.sum() >= 4:
        try:
            bo, ao, lo = _moffat_profile_fit(rbar[outer], mean[outer], err[outer], fwhm_pix)
        except (ValueError, np.linalg.LinAlgError):
            bo, ao, lo = beta, alpha, lnA
    beyond = _light_beyond(np.exp(lo) / tot, ao, bo, min(a.shape) / 2.0)
    info.update(applied=bool(noisy.any()), wing_radius_pix=rw, profile_radius_pix=rm,
                wing_slope=round(2.0 * beta, 3),
                wing_alpha_pix=round(alpha, 3), tail_beyond_stamp=round(beyond, 7),
                wing_flux_before=round(before, 6), wing_flux_after=round(float(out[blend > 0].sum()), 6))
    return out.astype(np.asarray(stamp).dtype), info
