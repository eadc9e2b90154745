"""The fractional error of the stars' PSF wings, measured on the fitted stars (FLUXERR_WING).

A source beside a star fits part of the error of that star's PSF wing (the model where it is
below :data:`~tract7dt_mpi.engine.flux_errors.WING_LEVEL` of its peak). The fit gives every
source its signed flux responses to a unit fractional error of its neighbours' inner wings
(down to :data:`~tract7dt_mpi.engine.flux_errors.INNER_WING_LEVEL` of the peak), of their outer
wings, and of the bright stars' subtracted halos
(:func:`~tract7dt_mpi.engine.flux_errors.neighbour_wing_responses`; store columns
``WINGRESP_IN/OUT/HALO``). How large those errors are depends on the band's ePSF -- ~1 % in the
inner wing of a field with many well-sampled stars, several per cent in the outer wing, more
with broad wings or few stars -- so they are measured where they show, in the fitted stars' own
wings:

* per star (:func:`fitted_wing_checks`): the residual of the patch model (data - every source -
  sky) over each zone of the star's wing (8 sectors in each ring), projected on the zone's wing
  model W = f P: eps = sum(w W r) / sum(w W^2) / (1 - kappa). A wing too faint there by eps
  leaves eps W in the data; the star's own flux fit takes the share kappa = sum(w W P) /
  (f sum(w P^2)) of it into the flux, which the division restores. The zones' noise is that of
  this linear estimate with the fitted flux taken out (as for the PSF check,
  :func:`~.psf_error.fitted_star_checks`). A galaxy beside the star sees the error of the zone it
  lies on (an elliptical or off-centre wing error cancels over a whole ring, not there), so the
  star reports, per ring, the rms of eps over its sectors and the rms of their noise;
* per band and ring (:func:`pooled_fraction`): over the bright fitted stars, the weighted mean
  of rms^2 - noise^2; the fraction is its square root, the ring's rms local wing error;
* at merge (:func:`apply_fitted_wing_errors`): FLUXERR_WING = |inner fraction x its response +
  outer fraction x its response + ``patch_run.flux_error_psf_wing`` x the halos' response| (the
  halos are not measured), and FLUXERR is recomputed with it. A ring with
  too few bright stars keeps the configured fraction.
"""
from __future__ import annotations

import math

import numpy as np

from ..engine.flux_errors import INNER_WING_LEVEL, WING_LEVEL, wing_errors
from .psf_error import CHECK_SNR_CUTS, MIN_STARS, _placed, bright_checked_stars, star_window

#: store-only columns behind the measured wing error, per band (``{name}_{band}_fit``): the
#: responses (inner wing, outer wing, halos) and the stars' checks per ring
RESPONSE_COLUMNS = ("WINGRESP_IN", "WINGRESP_OUT", "WINGRESP_HALO")
RINGS = ("IN", "OUT")
WING_COLUMNS = RESPONSE_COLUMNS + tuple(f"WINGCHK_{r}{e}" for r in RINGS for e in ("", "_ERR"))
#: each ring of a star's wing is cut into SECTORS azimuthal sectors (centred on the axes and
#: diagonals): a galaxy sees the error of the part of the wing it lies on, and an ellipticity or
#: centring error of the wing cancels over the whole ring
SECTORS = 8
#: usable pixels for a sector, and sectors for a ring of a star
MIN_ZONE_PIX = 5
MIN_ZONES = 4


def fitted_wing_checks(resid, invvar, src_model, gain, xy, fluxes, psf):
    """(rms, noise), each (n_stars, 2) for the inner and outer ring: per star of one band, the
    rms over the ring's sectors of the fractional wing error that the patch fit's residual shows
    (see the module) and the rms of the sectors' 1-sigma noise, so that rms^2 - noise^2 estimates
    the star's local wing error squared there. ``resid``: data - the whole model; ``invvar``: the
    fit's weights; ``src_model``: the sources' model (Poisson variance ``src_model / gain``;
    ``gain`` None: sky only); ``xy``, ``fluxes``: the stars' fitted positions and fluxes; ``psf``:
    the band's stamp (odd sides; normalised here). NaN for a star with a flux <= 0 or less than
    80 % of its stamp usable, and for a ring with fewer than MIN_ZONES usable sectors."""
    psf = np.asarray(psf, float)
    psf = psf / psf.sum()
    rr = max(psf.shape[0] // 2, psf.shape[1] // 2)
    dy, dx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    P = _placed(psf, dx.shape, rr, rr)
    peak = P.max()
    ring = np.where(P >= INNER_WING_LEVEL * peak, 0, 1)
    wing = (P > 0) & (P < WING_LEVEL * peak)
    support = P != 0
    rms, noise = np.full((len(xy), 2), np.nan), np.full((len(xy), 2), np.nan)
    for i, ((x, y), f) in enumerate(zip(xy, fluxes)):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        sector = np.floor((np.arctan2(dy - (y - round(y)), dx - (x - round(x))) + np.pi / SECTORS)
                          / (2 * np.pi / SECTORS)).astype(int) % SECTORS
        zones = np.where(wing, ring * SECTORS + sector, -1)
        rms[i], noise[i] = _one_star(resid, invvar, src_model, gain, x, y, f, P, support, zones, dx, dy)
    return rms, noise


def _one_star(resid, invvar, src_model, gain, x, y, f, P, support, zones, dx, dy):
    nan = (np.full(2, np.nan), np.full(2, np.nan))
    if not (np.isfinite(f) and f > 0):
        return nan
    _, _, ok, iv, res, var = star_window(resid, invvar, src_model, gain, x, y, dx, dy)
    if (ok & support).sum() < 0.8 * support.sum():
        return nan
    wP = np.where(ok, iv * P, 0.0)
    info = float((wP * P).sum())
    if not info > 0:
        return nan
    out = nan
    for k in range(2):
        eps2, sig2 = [], []
        for z in range(k * SECTORS, (k + 1) * SECTORS):
            Wm = np.where((zones == z) & ok, f * P, 0.0)
            if np.count_nonzero(Wm) < MIN_ZONE_PIX:
                continue
            kappa = float((wP * Wm).sum()) / (f * info)
            norm = float((iv * Wm * Wm).sum()) * (1.0 - kappa)
            u = iv * Wm / norm
            c = u - float((u * P).sum()) * wP / info
            eps2.append(float((u * res).sum()) ** 2)
            sig2.append(float((c * c * var).sum()))
        if len(eps2) >= MIN_ZONES:
            out[0][k], out[1][k] = math.sqrt(np.mean(eps2)), math.sqrt(np.mean(sig2))
    return out


def pooled_fraction(rms, noise, clip: float = 5.0, iters: int = 20) -> float:
    """The wing error of a band from its stars' :func:`fitted_wing_checks`: sqrt of the weighted
    mean of rms^2 - noise^2 (weights 1 / (noise^2 + frac^2)^2, the inverse variance of a star's
    estimate up to the number of its zones), stars more than ``clip`` such sigmas above it left
    out (a neighbour's misfit in a wing). 0 when the noise explains everything; NaN with fewer than
    MIN_STARS stars."""
    c2 = np.asarray(rms, float) ** 2
    s2 = np.asarray(noise, float) ** 2
    ok = np.isfinite(c2) & np.isfinite(s2) & (s2 > 0)
    c2, s2 = c2[ok], s2[ok]
    keep = np.ones(c2.size, bool)
    f2 = 0.0
    for _ in range(iters):
        if keep.sum() < MIN_STARS:
            return float("nan")
        wt = 1.0 / (s2 + f2) ** 2
        new_f2 = max(float((wt[keep] * (c2[keep] - s2[keep])).sum() / wt[keep].sum()), 0.0)
        new_keep = (c2 - s2 - new_f2) <= clip * np.sqrt(2.0 / SECTORS) * (s2 + new_f2)
        if np.array_equal(new_keep, keep) and abs(new_f2 - f2) <= 1e-6 * max(new_f2, 1e-12):
            f2 = new_f2
            break
        f2, keep = new_f2, new_keep
    return float(math.sqrt(f2))


def band_wing_fractions(table, bands, snr_cuts=CHECK_SNR_CUTS) -> dict:
    """band -> ((inner, outer) fraction, stars used, S/N cut) from the columns
    ``WINGCHK_{IN,OUT}(_ERR)_{b}_fit`` of the bright fitted stars (:func:`pooled_fraction`): the
    first cut of ``snr_cuts`` (S/N of FLUX over FLUXERR_STAT) that leaves
    :data:`~.psf_error.CHECK_MIN_STARS` stars, else the last; a fraction is NaN below
    :data:`~.psf_error.MIN_STARS` stars."""
    out = {}
    for b in bands:
        cols = [f"WINGCHK_{r}{e}_{b}_fit" for r in RINGS for e in ("", "_ERR")]
        if not all(c in table.columns for c in cols):
            continue
        vals = [np.asarray(table[c], float) for c in cols]
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(vals[0]) & np.isfinite(vals[1]) & (vals[1] > 0)
        use, cut = bright_checked_stars(table, b, ok, snr_cuts)
        fr = (pooled_fraction(vals[0][use], vals[1][use]), pooled_fraction(vals[2][use], vals[3][use]))
        out[b] = (fr, int(use.sum()), float(cut))
    return out


def apply_fitted_wing_errors(catalog, bands, f_conf: float, snr_cuts=CHECK_SNR_CUTS):
    """FLUXERR_WING (and FLUXERR) of every band from the stars' measured wing errors.

    Rows fitted with an ePSF in band b get FLUXERR_WING = wing_errors(WINGRESP_IN/OUT/HALO,
    (inner, outer, ``f_conf``)) -- a ring without a measurement at ``f_conf`` -- and FLUXERR =
    sqrt(FLUXERR^2 - old FLUXERR_WING^2 + FLUXERR_WING^2) when the band's fitted stars give at
    least one ring's fraction; otherwise the fit's values (``f_conf`` everywhere) stay. The
    store-only WING_COLUMNS are dropped. Returns (catalog, summary DataFrame: band, n_wing_stars,
    wing_min_snr, wing_err_inner, wing_err_outer, wing_source)."""
    import pandas as pd

    out = catalog.copy()
    est = band_wing_fractions(out, bands, snr_cuts)
    fallback = out.get("psf_fallback_bands", pd.Series([""] * len(out), index=out.index))
    fallback = fallback.fillna("").astype(str).str.split(",")
    rows = []
    for b in bands:
        (f_in, f_out), n, cut = est.get(b, ((float("nan"), float("nan")), 0, float("nan")))
        resp = [f"{c}_{b}_fit" for c in RESPONSE_COLUMNS]
        cols = [f"FLUXERR_WING_{b}_fit", f"FLUXERR_{b}_fit"]
        measured = np.isfinite(f_in) or np.isfinite(f_out)
        if measured and all(c in out.columns for c in resp + cols):
            r = np.stack([out[c].to_numpy(float) for c in resp])
            old, err = (out[c].to_numpy(float) for c in cols)
            with_epsf = ~fallback.apply(lambda lst, b=b: b in lst).to_numpy(bool)
            use = with_epsf & np.isfinite(r).all(axis=0) & np.isfinite(err)
            fr = [v if np.isfinite(v) else f_conf for v in (f_in, f_out)] + [f_conf]
            new = wing_errors(np.nan_to_num(r), fr)
            base2 = np.maximum(err ** 2 - np.nan_to_num(old) ** 2, 0.0)
            out[cols[0]] = np.where(use, new, old)
            out[cols[1]] = np.where(use, np.sqrt(base2 + new ** 2), err)
            rows.append((b, n, cut, _rounded(f_in), _rounded(f_out), "fitted stars"))
        else:
            rows.append((b, n, cut, None, None, "configured (too few fitted stars)"))
    out = out.drop(columns=[c for c in out.columns if any(c.startswith(p + "_") for p in WING_COLUMNS)])
    return out, pd.DataFrame(rows, columns=["band", "n_wing_stars", "wing_min_snr", "wing_err_inner",
                                            "wing_err_outer", "wing_source"])


def _rounded(v):
    return round(float(v), 6) if np.isfinite(v) else None
