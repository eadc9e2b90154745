"""How well an ePSF predicts star fluxes: the PSF term of the flux error budget.

A PSF-fit flux is only as good as the PSF: a model 1 % too narrow for a source gives a flux about
1 % off, whatever the source's S/N. The ePSF stage measures this on its own stars: after the
build, each used star's residual (data - fitted ePSF model) summed within ``2 FWHM`` is the
fraction of its flux the model misses (``delta``; divided by 1 - the star's weight in the stack,
since the ePSF partly fits the star itself), with its noise (``sigma``). Across the stars of a
band the spread of ``delta`` beyond ``sigma`` is the PSF error of a source fitted with these
ePSFs (the change of the PSF within cells, between cells, and the ePSF's own noise). The fit
stage adds that fraction of the flux to ``FLUXERR`` in quadrature (``flux_error_model: total``).
"""
from __future__ import annotations

import math

import numpy as np

#: stars in a band needed for an estimate (else no PSF term)
MIN_STARS = 5


def stamp_fwhm(stamp) -> float:
    """FWHM (px) from the area above half maximum of a stamp."""
    a = np.asarray(stamp, float)
    if not (a.size and np.nanmax(a) > 0):
        return float("nan")
    return 2.0 * math.sqrt(np.count_nonzero(a >= np.nanmax(a) / 2.0) / math.pi)


def star_flux_checks(stars, models, shares, gain, radius, n_bkg_pix=None):
    """(delta, sigma) per star: missed-flux fraction within ``radius`` and its 1-sigma noise.

    ``stars``: fitted EPSFStar-like objects (data, weights = 1/sigma, flux, cutout_center);
    ``models``: each star's fitted ePSF model image (same shape as its data); ``shares``: each
    star's weight in the stack; ``gain``: electrons per image unit (None: sky noise only);
    ``n_bkg_pix``: pixels of the annulus each stamp's background was measured in (its error,
    1.25 sigma / sqrt(n) per pixel of a median, is summed over the aperture; None: not counted).
    Stars with less than 80 % of the aperture usable get NaN.
    """
    deltas, sigmas = [], []
    for st, model, share in zip(stars, models, shares):
        f = float(st.flux)
        data = np.asarray(st.data, float)
        wt = np.asarray(st.weights, float)
        cx, cy = (float(v) for v in st.cutout_center)
        yy, xx = np.indices(data.shape)
        ap = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius
        use = ap & (wt > 0) & np.isfinite(data) & np.isfinite(model)
        if not (np.isfinite(f) and f > 0 and use.sum() >= 0.8 * ap.sum() and ap.any()):
            deltas.append(float("nan"))
            sigmas.append(float("nan"))
            continue
        m = np.asarray(model, float)
        var = 1.0 / wt[use] ** 2 + (np.maximum(m[use], 0.0) / gain if gain else 0.0)
        tot = float(var.sum())
        if n_bkg_pix:
            sky = float(np.median(1.0 / wt[use]))
            tot += (use.sum() * 1.2533 * sky / math.sqrt(n_bkg_pix)) ** 2
        k = 1.0 / max(1.0 - float(share), 0.05)
        deltas.append(float((data[use] - m[use]).sum() / f * k))
        sigmas.append(float(math.sqrt(tot) / f * k))
    return deltas, sigmas


def excess_scatter(deltas, sigmas, clip: float = 3.0, iters: int = 10) -> float:
    """Spread of ``deltas`` beyond their own ``sigmas`` (DerSimonian-Laird-style moment estimate).

    Solves sum (d - mu)^2 / (s^2 + tau^2) = n - 1 for tau >= 0 with the weighted mean mu, clipping
    values more than ``clip`` of their total sigma from mu (a neighbour in one star's aperture).
    NaN with fewer than MIN_STARS usable values.
    """
    d = np.asarray(deltas, float)
    s = np.asarray(sigmas, float)
    ok = np.isfinite(d) & np.isfinite(s) & (s > 0)
    d, s = d[ok], s[ok]
    keep = np.ones(d.size, bool)
    tau2 = 0.0
    for _ in range(iters):
        if keep.sum() < MIN_STARS:
            return float("nan")
        dk, sk = d[keep], s[keep]

        def excess(t2):
            w = 1.0 / (sk ** 2 + t2)
            mu = (w * dk).sum() / w.sum()
            return (w * (dk - mu) ** 2).sum() - (dk.size - 1)

        if excess(0.0) <= 0:
            tau2 = 0.0
        else:
            lo, hi = 0.0, max(float(np.var(dk)) * 4.0, 1e-12)
            while excess(hi) > 0:
                hi *= 4.0
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
            tau2 = 0.5 * (lo + hi)
        w = 1.0 / (s ** 2 + tau2)
        mu = (w[keep] * d[keep]).sum() / w[keep].sum()
        new = np.abs(d - mu) <= clip * np.sqrt(s ** 2 + tau2)
        if np.array_equal(new, keep):
            break
        keep = new
    return float(math.sqrt(tau2))


def band_psf_flux_errors(metas) -> dict:
    """band -> fractional PSF flux error pooled over the band's ePSF cells (NaN when unknown)."""
    by_band: dict = {}
    for m in metas:
        chk = (m or {}).get("psf_flux_check") or {}
        if m.get("status") != "ok" or not chk:
            continue
        d, s = by_band.setdefault(m["band"], ([], []))
        d.extend(chk.get("delta", []))
        s.extend(chk.get("sigma", []))
    return {b: excess_scatter(d, s) for b, (d, s) in by_band.items()}
