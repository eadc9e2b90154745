"""How well an ePSF predicts star fluxes: the PSF term of the flux error budget.

A PSF-fit flux is only as good as the PSF: a model 1 % too narrow for a source gives a flux about
1 % off, whatever the source's S/N. The ePSF stage measures this on its own stars: after the
build, each used star's flux is refitted as the patch fit does (sky-weighted least squares of the
ePSF over its stamp), and the residual (data - that model) summed within ``radius`` (3 FWHM) is the
fraction of its flux the PSF fit misses (``delta``; divided by 1 - the star's weight in the
stack, since the ePSF partly fits the star itself), with its noise (``sigma``). Across the stars of
a band the spread of ``delta`` beyond ``sigma`` is the PSF error of a source fitted with these
ePSFs (the change of the PSF within cells, between cells, and the ePSF's own noise). The fit
stage adds that fraction of the flux to ``FLUXERR`` in quadrature (``flux_error_model: total``).

After the patch fits the check is repeated on every fitted star (``fitted_star_checks``), with
the PSF the fit actually used and the fitted sky and neighbours subtracted: aperture photometry of
the residual within 2 FWHM, minus its local background from an annulus out to 4 FWHM (a neighbour's
or the sky's smooth misfit moves an aperture sum ~10 times more than the PSF-fit flux, and is no
PSF error), over the PSF's own annulus-subtracted aperture sum and the share of a width error the
aperture sees (``width_capture``). Its noise is that of the linear estimate with the fit's flux
taken out: the part of the aperture's noise the fit already put into the flux (and FLUXERR_STAT)
is not counted again. Pooled over the band's brightest stars at merge (``fitted_psf_flux_errors``)
it replaces the ePSF-stage estimate when enough stars have it.
"""
from __future__ import annotations

import math

import numpy as np

from ..engine.psf import stamp_fwhm  # noqa: F401  (the stages' FWHM of a stamp)

#: stars in a band needed for an estimate (else no PSF term)
MIN_STARS = 5


def star_flux_checks(stars, models, shares, gain, radius, n_bkg_pix=None):
    """(delta, sigma) per star: the fraction of its flux a sky-weighted PSF fit misses, measured
    within ``radius``, and its 1-sigma noise (the star's flux is refitted by least squares of its
    model over the whole stamp first).

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
        # the flux a sky-weighted PSF fit over the whole stamp gives (as the patch fit does), not
        # the builder's fit of the star's central box, which is more sensitive to the core's mismatch
        whole = (wt > 0) & np.isfinite(data) & np.isfinite(m)
        unit = m[whole] / f
        w2 = wt[whole] ** 2
        den = float((w2 * unit * unit).sum())
        f_ls = float((w2 * data[whole] * unit).sum()) / den if den > 0 else f
        if np.isfinite(f_ls) and f_ls > 0:
            m = m * (f_ls / f)
            f = f_ls
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


# ---- the same check on the patch fits: every fitted star, with the PSF the fit used ----------

#: aperture of the post-fit check and the outer radius of its local-background annulus, in FWHM
#: of the band's PSF.  A smaller aperture is less noisy and less sensitive to the neighbours'
#: misfit; the part of a PSF-width error it does not see is restored by :func:`width_capture`.
CHECK_FWHM = 2.0
ANNULUS_FWHM = 4.0
#: statistical S/N cuts tried in turn for the fitted stars of a band: the first that leaves
#: CHECK_MIN_STARS stars is used.  Stars where the PSF term dominates their noise carry the
#: information; fainter ones mostly add noise and the errors of the noise model.
CHECK_SNR_CUTS = (100.0, 50.0, 20.0)
CHECK_MIN_STARS = 10


def _placed(stamp, shape, ix, iy):
    """``stamp`` (odd sides) centred on pixel (ix, iy) of a zero image of ``shape``."""
    out = np.zeros(shape)
    hy, hx = stamp.shape[0] // 2, stamp.shape[1] // 2
    y0, y1 = max(iy - hy, 0), min(iy + hy + 1, shape[0])
    x0, x1 = max(ix - hx, 0), min(ix + hx + 1, shape[1])
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = stamp[y0 - iy + hy:y1 - iy + hy, x0 - ix + hx:x1 - ix + hx]
    return out


def _aperture_weights(shape, cx, cy, radius, outer, ok=None):
    """1 within ``radius`` of (cx, cy), -N_ap / N_ann in the annulus up to ``outer`` (only where
    ``ok``), and the aperture and annulus masks."""
    yy, xx = np.indices(shape)
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    ap, ann = d2 <= radius * radius, (d2 > radius * radius) & (d2 <= outer * outer)
    if ok is not None:
        ap, ann = ap & ok, ann & ok
    a = ap.astype(float)
    if ann.any():
        a[ann] = -ap.sum() / ann.sum()
    return a, ap, ann


def width_capture(psf, radius, outer, stretch=0.02) -> float:
    """Share of a PSF-width error's flux error that the annulus-subtracted aperture sees.

    A source ``stretch`` wider than ``psf`` (unit-sum stamp), fitted by least squares with it,
    loses (1 - f) / f of its flux; the residual's annulus-subtracted sum over A (the same sum of
    the PSF) shows ``capture`` times that (1 for a large aperture; ~0.85 within 2 FWHM for a
    Moffat beta = 3, less for broad wings).  Dividing the check by it makes the check an
    unbiased measure of width errors of the PSF model.
    """
    from scipy.ndimage import map_coordinates
    p = np.asarray(psf, float)
    p = p / p.sum()
    cy, cx = (p.shape[0] - 1) / 2.0, (p.shape[1] - 1) / 2.0
    yy, xx = np.indices(p.shape, dtype=float)
    k = 1.0 + stretch
    wide = map_coordinates(p, [cy + (yy - cy) / k, cx + (xx - cx) / k], order=3, mode="constant")
    wide = wide / wide.sum()
    f = float((wide * p).sum() / (p * p).sum())
    a, _, _ = _aperture_weights(p.shape, cx, cy, radius, outer)
    A = float((a * p).sum())
    seen = float((a * (wide - f * p)).sum()) / (A * f) if A > 0 else float("nan")
    c = seen / ((1.0 - f) / f)
    return float(np.clip(c, 0.3, 1.2)) if np.isfinite(c) else 1.0


def fitted_star_checks(resid, invvar, src_model, gain, xy, fluxes, radius, psf, outer=None):
    """(delta, sigma) per star of one band from a patch fit: the flux the fit missed, as a
    fraction of the fitted flux, from aperture photometry of the residual of the whole model
    (data - every source - sky), and its 1-sigma noise.

    The reference is the residual summed within ``radius`` of the fitted position minus the
    aperture's share of the mean residual in the annulus ``radius``..``outer`` (default 2 radius),
    divided by A, the same sum of the PSF (``psf``: unit-sum stamp, odd sides), and by the
    :func:`width_capture` of that aperture: a flux error dF of a point source gives
    delta = dF / f, a width error of the PSF its whole flux error, while a smooth residual
    background under the star (a neighbour's or the sky's misfit, which moves the PSF-fit flux
    far less than an aperture sum) cancels.

    The noise is that of this linear estimate with the fit's least-squares flux taken out: the
    residual sum is sum_j c_j d_j with c = a - A w P / sum(w P^2) (a: the aperture weights, 1
    inside, -N_ap / N_ann in the annulus; w = ``invvar``, the fit's weights), so its variance is
    sum c^2 V, with V the pixel variance (1 / invvar plus ``src_model`` / ``gain``, the sources'
    Poisson noise; None: sky only).  The aperture's variance alone would count the part of the
    noise the fit already took into its flux (and FLUXERR_STAT) a second time.  NaN for a star
    with less than 80 % of its aperture or annulus usable or a flux <= 0."""
    r = float(radius)
    ro = float(outer) if outer else 2.0 * r
    psf = np.asarray(psf, float)
    psf = psf / psf.sum()
    cap = width_capture(psf, r, ro)
    rr = int(math.ceil(max(ro, psf.shape[0] // 2, psf.shape[1] // 2)))
    dy, dx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    P = _placed(psf, dx.shape, rr, rr)
    deltas, sigmas = [], []
    for (x, y), f in zip(xy, fluxes):
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(f) and f > 0):
            deltas.append(float("nan"))
            sigmas.append(float("nan"))
            continue
        ix, iy, ok, iv, res, var = star_window(resid, invvar, src_model, gain, x, y, dx, dy)
        a, ap, ann = _aperture_weights(dx.shape, rr + x - ix, rr + y - iy, r, ro, ok)
        full, _, ring = _aperture_weights(dx.shape, rr + x - ix, rr + y - iy, r, ro)
        A = float((a * P).sum())
        wP = np.where(ok, iv * P, 0.0)
        S = float((wP * P).sum())
        if ap.sum() < 0.8 * (full > 0).sum() or ann.sum() < 0.8 * ring.sum() or not (A > 0 and S > 0):
            deltas.append(float("nan"))
            sigmas.append(float("nan"))
            continue
        c = a - A * wP / S
        norm = A * f * cap
        deltas.append(float((a * res).sum() / norm))
        sigmas.append(float(math.sqrt(float((c * c * var).sum())) / norm))
    return deltas, sigmas


def star_window(resid, invvar, src_model, gain, x, y, dx, dy):
    """One star's box of a patch band: offsets ``dx``, ``dy`` (integer grids, same shape) around
    its rounded position. Returns (ix, iy, ok, iv, res, var): the rounded position, the usable
    pixels (inside the image, weight > 0, finite residual), the fit's weights, the residual (0
    where not usable) and the pixel variance (1 / weight, plus ``src_model`` / ``gain``, the
    sources' Poisson noise, when ``gain``; 0 where not usable)."""
    h, w = resid.shape
    ix, iy = int(round(x)), int(round(y))
    px, py = ix + dx, iy + dy
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    pxc, pyc = np.clip(px, 0, w - 1), np.clip(py, 0, h - 1)
    iv = np.where(inside, invvar[pyc, pxc], 0.0)
    res = resid[pyc, pxc]
    ok = inside & (iv > 0) & np.isfinite(res)
    var = np.where(ok, 1.0 / np.where(ok, iv, 1.0), 0.0)
    if gain:
        var = var + np.where(ok, np.maximum(src_model[pyc, pxc], 0.0), 0.0) / gain
    return ix, iy, ok, iv, np.where(ok, res, 0.0), var


def own_share_factors(xy, stars, match_pix: float = 1.0) -> np.ndarray:
    """1 / (1 - share) per position: ``share`` of the ePSF star within ``match_pix`` of it
    (``stars``: ((x, y, share), ...), same frame), 1 when none.  An ePSF built from a star fits
    that star better than any other source: its residual is (1 - share) of the true mismatch."""
    out = np.ones(len(xy))
    if not len(stars) or not len(xy):
        return out
    st = np.asarray(stars, float)
    for i, (x, y) in enumerate(xy):
        d2 = (st[:, 0] - x) ** 2 + (st[:, 1] - y) ** 2
        j = int(np.argmin(d2))
        if d2[j] <= match_pix ** 2:
            out[i] = 1.0 / max(1.0 - float(st[j, 2]), 0.05)
    return out


def fitted_psf_flux_errors(table, bands, snr_cuts=CHECK_SNR_CUTS) -> dict:
    """band -> (PSF flux-error fraction, number of stars, S/N cut) pooled over the fitted stars'
    checks (columns ``PSFCHK_{b}_fit`` / ``PSFCHK_ERR_{b}_fit``): the first cut of ``snr_cuts``
    that leaves CHECK_MIN_STARS stars (else the last cut)."""
    out = {}
    for b in bands:
        dc, sc = f"PSFCHK_{b}_fit", f"PSFCHK_ERR_{b}_fit"
        if dc not in table.columns or sc not in table.columns:
            continue
        d, s = np.asarray(table[dc], float), np.asarray(table[sc], float)
        use, cut = bright_checked_stars(table, b, np.isfinite(d) & np.isfinite(s) & (s > 0), snr_cuts)
        out[b] = (excess_scatter(d[use], s[use]), int(use.sum()), float(cut))
    return out


def bright_checked_stars(table, band, ok, snr_cuts=CHECK_SNR_CUTS):
    """(rows, cut): the rows ``ok`` (stars with a usable check in ``band``) whose S/N (FLUX over
    FLUXERR_STAT) is above the first cut of ``snr_cuts`` that leaves CHECK_MIN_STARS of them (else
    the last cut)."""
    f = np.asarray(table.get(f"FLUX_{band}_fit"), float)
    e = np.asarray(table.get(f"FLUXERR_STAT_{band}_fit", table.get(f"FLUXERR_{band}_fit")), float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(ok, f / e, np.nan)
    for cut in snr_cuts:
        use = ok & (snr > cut)
        if use.sum() >= CHECK_MIN_STARS:
            break
    return use, cut


def apply_fitted_psf_errors(catalog, bands, snr_cuts=CHECK_SNR_CUTS):
    """Replace the PSF term of ``FLUXERR_{b}_fit`` by the one measured on the fitted stars.

    Rows fitted with an ePSF in band b (not listed in their ``psf_fallback_bands``) get
    FLUXERR = hypot(FLUXERR_STAT, frac_b * FLUX, FLUXERR_WING) when the band's fitted stars give an estimate
    (at least MIN_STARS); otherwise the ePSF-stage term stays.  The PSFCHK columns are dropped.
    Returns (catalog, summary DataFrame: band, n_stars, min_snr, psf_flux_err_frac, source).
    """
    import pandas as pd

    out = catalog.copy()
    est = fitted_psf_flux_errors(out, bands, snr_cuts)
    fallback = out.get("psf_fallback_bands", pd.Series([""] * len(out), index=out.index))
    fallback = fallback.fillna("").astype(str).str.split(",")
    rows = []
    for b in bands:
        frac, n, cut = est.get(b, (float("nan"), 0, float("nan")))
        ecol, scol, fcol = f"FLUXERR_{b}_fit", f"FLUXERR_STAT_{b}_fit", f"FLUX_{b}_fit"
        if np.isfinite(frac) and ecol in out.columns and scol in out.columns:
            with_epsf = ~fallback.apply(lambda lst, b=b: b in lst).to_numpy(bool)
            stat = out[scol].to_numpy(float)
            wcol = f"FLUXERR_WING_{b}_fit"
            wing = np.nan_to_num(out[wcol].to_numpy(float)) if wcol in out.columns else 0.0
            new = np.hypot(np.hypot(stat, frac * out[fcol].to_numpy(float)), wing)
            fitted = np.isfinite(stat) & with_epsf
            out[ecol] = np.where(fitted, new, out[ecol].to_numpy(float))
            rows.append((b, n, cut, round(float(frac), 6), "fitted stars"))
        else:
            rows.append((b, n, cut, None, "ePSF stars (too few fitted stars)" if b in est else "none"))
    out = out.drop(columns=[c for c in out.columns if c.startswith("PSFCHK_")])
    return out, pd.DataFrame(rows, columns=["band", "n_stars", "min_snr", "psf_flux_err_frac", "source"])


# ---- used by the fit stage ----------------------------------------------------------------

def psf_term_fractions(bands, pin, audits, error_model: str) -> dict:
    """band -> PSF flux-error fraction added to FLUXERR (NaN: none): bands fitted with an ePSF
    under ``flux_error_model: total``, from the ePSF stage (replaced at merge by the fitted stars')."""
    out = {}
    for b in bands:
        ch = pin.psfs.get(b)
        v = float(getattr(ch, "flux_err_frac", float("nan")))
        out[b] = v if error_model == "total" and audits[b]["used_epsf"] and np.isfinite(v) else float("nan")
    return out


def add_fitted_star_checks(fit_all, images, res, per, bands, psf_frac, star, pin, shape_scales,
                           epsf_bands, stamp_fwhms=None) -> None:
    """PSFCHK_{b}_fit, PSFCHK_ERR_{b}_fit: each fitted base star's flux fraction missed by the fit
    and its noise (:func:`fitted_star_checks`); NaN for other sources and for bands without
    a PSF term (fallback PSF or flux_error_model: sky). WINGCHK_IN/OUT(_ERR)_{b}_fit: its inner
    and outer PSF wing's fractional error (:func:`.wing_error.fitted_wing_checks`), in the bands
    ``epsf_bands`` (fitted with an ePSF, wing errors on). A star that is one of the ePSF's own stars has its values divided by
    1 - its share of the ePSF (the ePSF partly fits it);
    ``shape_scales[j]``: per row, the shape factor of its own-position PSF in band j (the part of
    the miss its reported flux no longer has); ``stamp_fwhms``: band -> :func:`stamp_fwhm` of its
    stamp when the caller has it."""
    from .wing_error import fitted_wing_checks
    x0, y0 = pin.spec.x0_roi, pin.spec.y0_roi
    for j, b in enumerate(bands):
        d = np.full(len(fit_all), np.nan)
        e = d.copy()
        wd, we = np.full((len(fit_all), 2), np.nan), np.full((len(fit_all), 2), np.nan)
        stamp = getattr(images[j].psf, "stamp", None)
        if star.any() and stamp is not None and (b in epsf_bands or np.isfinite(psf_frac[b])):
            r = res if per is None else per[b]
            jj = j if per is None else 0
            model = np.asarray(r.model_images()[jj], float)
            im = images[j]
            idx = np.flatnonzero(star)
            srcs = [r.sources[i] for i in idx]
            resid, iv, src_model = np.asarray(im.data, float) - model, np.asarray(im.invvar, float), \
                model - float(r.sky[jj])
            xy, fl = [(s.x, s.y) for s in srcs], [float(s.fluxes[jj]) for s in srcs]
            k = own_share_factors([(s.x + x0, s.y + y0) for s in srcs],
                                  getattr(pin.psfs.get(b), "stars", ()))
            if b in epsf_bands:
                ww, wwe = fitted_wing_checks(resid, iv, src_model, im.gain, xy, fl, np.asarray(stamp, float))
                wd[idx], we[idx] = np.asarray(ww) * k[:, None], np.asarray(wwe) * k[:, None]
            if np.isfinite(psf_frac[b]):
                fwhm = (stamp_fwhms or {}).get(b) or stamp_fwhm(np.asarray(stamp, float))
                dd, ee = fitted_star_checks(resid, iv, src_model, im.gain, xy, fl, CHECK_FWHM * fwhm,
                                            np.asarray(stamp, float), ANNULUS_FWHM * fwhm)
                d[idx], e[idx] = np.asarray(dd) * k, np.asarray(ee) * k
                # the part of the miss that the star's own-position PSF takes out of its flux
                # (stages.psf_field.position_scale) is no PSF error of the reported flux
                d[idx] -= shape_scales[j][idx] - 1.0
        fit_all[f"PSFCHK_{b}_fit"] = d
        fit_all[f"PSFCHK_ERR_{b}_fit"] = e
        for i, part in enumerate(("IN", "OUT")):
            fit_all[f"WINGCHK_{part}_{b}_fit"] = wd[:, i]
            fit_all[f"WINGCHK_{part}_ERR_{b}_fit"] = we[:, i]


def with_psf_term(err, flux, frac) -> float:
    """sqrt(err^2 + (frac * flux)^2); ``err`` unchanged when ``frac`` is NaN."""
    err = float(err)
    if not np.isfinite(frac) or not np.isfinite(flux):
        return err
    return float(np.hypot(err, frac * float(flux)))
