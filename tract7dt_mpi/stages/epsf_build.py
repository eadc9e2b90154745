"""Pieces of the ePSF build shared by the native stack and photutils' oversampled builder.

photutils stamp extraction, neighbour masking and per-star background (oversampled path), the
stack's noise model and clipped mean, native sampling / crop / normalisation of the result, and
the star-minus-model residual QA.
"""
from __future__ import annotations

import inspect
import logging

import numpy as np

from . import epsf_qa as qa
from . import epsf_select as sel_mod

log = logging.getLogger(__name__)


class CellFailure(Exception):
    """A data problem that ends one cell with status ``fail`` (the message goes to meta.error)."""


def error_image(sigma, bad):
    """1/sqrt(invvar) with invvar = 1/max(sigma^2, 1e-12) on good pixels; others get the median."""
    good = ~bad & np.isfinite(sigma) & (sigma > 0)
    err = np.sqrt(np.maximum(np.where(good, sigma, 1.0) ** 2, 1e-12))
    if good.all():
        return err
    fill = float(np.median(err[good])) if good.any() else 1.0
    return np.where(good, err, fill)


def extract(work, sigma, bad, sel, s):
    """photutils ``extract_stars`` on the working image (stamps not fitting the cell are dropped)."""
    from astropy.nddata import NDData, StdDevUncertainty
    from astropy.table import Table
    from photutils.psf import extract_stars

    err = error_image(sigma, bad)
    nd = NDData(np.where(bad, 0.0, work), uncertainty=StdDevUncertainty(err), mask=bad)
    table = Table({"x": np.asarray(sel.x), "y": np.asarray(sel.y), "id": np.arange(len(sel))})
    stars = extract_stars(nd, table, size=int(s.cutout_size))
    if stars is None or len(stars) == 0:
        raise CellFailure("None returned: no star stamp could be extracted")
    return stars


def star_list(stars):
    """EPSFStars -> list of EPSFStar (handles photutils' linked-star containers)."""
    return list(stars.all_stars) if hasattr(stars, "all_stars") else list(stars)


def annulus_background(data, weights, s):
    """(value, status, mask) of the per-star annulus background of the ``epsf`` settings ``s``."""
    return qa.star_local_background(data, weights, s.star_local_bkg_annulus_rin_pix,
                                    s.star_local_bkg_annulus_rout_pix, s.star_local_bkg_sigma,
                                    int(s.star_local_bkg_minpix))


def annulus_backgrounds(datas, weights, s):
    """:func:`annulus_background` of a stack of stamps (n, S, S): (values, statuses, masks)."""
    return qa.star_local_backgrounds(datas, weights, s.star_local_bkg_annulus_rin_pix,
                                     s.star_local_bkg_annulus_rout_pix, s.star_local_bkg_sigma,
                                     int(s.star_local_bkg_minpix))


def prepare_stars(stars, sel, s, meta):
    """Mask neighbours and subtract the per-star annulus background in every stamp.

    Neighbour masking (an addition to the serial pipeline): pixels within the grown SEP segment of any other
    object get zero weight, so the builder's per-pixel median never sees a neighbour's light; the
    annulus background uses the same weights. Returns (new EPSFStars, diagnostic rows).
    """
    from photutils.psf import EPSFStar, EPSFStars

    vals, stats, rows, out, fracs = [], [], [], [], []
    for st in star_list(stars):
        data = np.asarray(st.data, dtype=float)
        k = int(st.id_label)
        ox, oy = (int(v) for v in st.origin)
        nmask = sel_mod.star_neighbour_mask(sel, k, ox, oy, data.shape, st.cutout_center)
        weights = np.where(nmask, 0.0, np.asarray(st.weights, dtype=float))
        fracs.append(float(nmask.mean()))
        v = 0.0
        if s.star_local_bkg_subtract:
            v, status, m = annulus_background(data, weights, s)
            vals.append(v)
            stats.append(status)
            rows.append({"id": st.id_label, "raw": data, "mask": m, "sub": data - v, "value": v,
                         "status": status})
        # passing the initial flux avoids photutils' slow cubic fill of masked pixels
        flux0 = qa.symmetric_flux(data - v, weights > 0, st.cutout_center)
        out.append(EPSFStar(data - v, weights=weights, cutout_center=st.cutout_center, flux=flux0,
                            origin=st.origin, id_label=st.id_label))
    if s.star_local_bkg_subtract:
        meta["local_star_background"] = qa.local_bkg_summary(vals, stats)
    meta["selection"]["neighbour_masked_frac_mean"] = float(np.mean(fracs)) if fracs else 0.0
    return EPSFStars(out), rows


def smoothing_kernel(oversamp: int):
    """photutils' per-iteration ePSF smoothing: none at native sampling, 'quartic' when oversampled.

    The builder convolves the whole ePSF with this kernel every iteration, so it converges to the
    smoothed star stack. The 5x5 quartic kernel was designed for oversampled ePSFs; at
    oversampling 1 it broadens a 4 px FWHM Moffat by ~2.5% and lowers its peak by ~2%, while without
    it the native-pixel ePSF matches the truth to ~0.2% of the peak (tests/stages/test_epsf.py).
    Unsmoothed native-sampling builds need clean stamps (hence the neighbour masking).
    """
    return None if int(oversamp) <= 1 else "quartic"


SYSTEMATIC_FLOOR = 0.02
#: fraction of the stars that must cover an ePSF grid point for the weighted stack to update it
MIN_COVER = 0.25


def residual_weights(cube, stars, model, gain, floor=SYSTEMATIC_FLOOR):
    """Inverse variance of each star's flux-normalised residual on the ePSF grid.

    var = (sigma_sky^2 + F * model / gain) / F^2 + (floor * model)^2: the sky noise, the Poisson
    noise of the star as the current ePSF predicts it (not as its noisy data say, which would bias
    the core low), and a floor of ``floor`` of the PSF value. The floor stands for what no star
    measures better than that: the change of the PSF across a cell and the sub-pixel sampling of
    one star, so a handful of bright stars cannot outvote all the others. sigma_sky is the median
    of the stamp's 1/weights; ``gain`` is in electrons per scaled unit (None: no Poisson term).
    Pixels without data get zero weight.
    """
    m = np.maximum(np.nan_to_num(np.asarray(model, float)), 0.0)[None]
    f = np.array([float(st.flux) for st in stars]).reshape(-1, 1, 1)
    sky = sky_variances(np.array([np.asarray(st.weights, float) for st in stars]))[:, None, None]
    ok = np.isfinite(f) & (f > 0) & np.isfinite(sky)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = sky + (f * m / gain if gain else 0.0)
        w = np.where(ok, 1.0 / (var / (f * f) + (floor * m) ** 2), 0.0) * np.ones(cube.shape)
    w[~np.isfinite(cube)] = 0.0
    return w


def sky_variances(weights):
    """Median sky variance 1/w^2 over the usable (finite, > 0) pixels of each stamp of ``weights``
    (n, ...) of 1/sigma; NaN for a stamp without one."""
    w = np.asarray(weights, float).reshape(len(weights), -1)
    pos = np.isfinite(w) & (w > 0)
    return qa.nanmedian_axis0(np.where(pos, 1.0 / np.where(pos, w, 1.0) ** 2, np.nan).T)


def weighted_clipped_mean(cube, w, clip_sigma, maxiters=5):
    """Per-pixel weighted mean of ``cube`` (n, ny, nx) with iterative sigma clipping.

    A value is clipped when its deviation from the current centre (the median first, then the
    weighted mean), in units of its own sigma (1/sqrt(w)), exceeds ``clip_sigma`` times the
    pixel's robust spread of those deviations (at least 1): the weights' noise model may miss
    systematic star-to-star differences, which must not clip every star of a pixel. NaN where
    no value has weight.
    """
    valid = w > 0
    vals = np.where(valid, cube, 0.0)
    sqw = np.sqrt(w)
    keep = valid.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = qa.nanmedian_axis0(np.where(valid, cube, np.nan))
        for _ in range(maxiters if np.isfinite(clip_sigma) else 0):
            z = np.abs(vals - centre) * sqw
            spread = qa.nanmedian_axis0(np.where(keep, z, np.nan)) * 1.4826
            spread = np.where(np.isfinite(spread), np.maximum(spread, 1.0), 1.0)
            new = valid & (z <= clip_sigma * spread)
            if np.array_equal(new, keep):
                break
            keep = new
            wk = np.where(keep, w, 0.0)
            sw = wk.sum(axis=0)
            centre = np.where(sw > 0, (wk * vals).sum(axis=0) / np.where(sw > 0, sw, 1.0), np.nan)
        wk = np.where(keep, w, 0.0)
        sw = wk.sum(axis=0)
        return np.where(sw > 0, (wk * vals).sum(axis=0) / np.where(sw > 0, sw, 1.0), np.nan)


def make_builder(s):
    """photutils' EPSFBuilder with the serial pipeline's settings (oversampled ePSFs only; native-sampling
    ePSFs are built by :mod:`.epsf_stack`); keywords the installed photutils lacks are dropped."""
    from astropy.stats import SigmaClip
    from photutils.psf import EPSFBuilder

    clip = 5.0 if s.do_clip else np.inf
    want = {
        "oversampling": int(s.oversamp), "maxiters": int(s.maxiters),
        "recentering_boxsize": int(s.recenter_boxsize), "recentering_maxiters": 30,
        "sigma_clip": SigmaClip(sigma=clip), "progress_bar": False,
        "smoothing_kernel": smoothing_kernel(s.oversamp),
    }
    params = inspect.signature(EPSFBuilder.__init__).parameters
    kwargs = {k: v for k, v in want.items() if k in params}
    dropped = sorted(set(want) - set(kwargs))
    if dropped:
        log.debug("EPSFBuilder of this photutils has no %s", dropped)
    return EPSFBuilder(**kwargs)


def star_weights(stars, peak, gain):
    """Relative weight of each star at the ePSF peak (what the weighted stack gives it there)."""
    w = residual_weights(np.zeros((len(stars), 1, 1)), stars, np.full((1, 1), peak), gain)
    w = w.reshape(len(stars))
    return w / w.sum() if w.sum() > 0 else np.full(len(stars), 1.0 / max(len(stars), 1))


def native_stamp(data, oversamp: int) -> np.ndarray:
    """Sample an (oversampled) ePSF array at native-pixel offsets from its centre (identity for 1)."""
    o = int(oversamp)
    if o <= 1:
        return data
    cy, cx = (data.shape[0] - 1) // 2, (data.shape[1] - 1) // 2
    return data[cy % o::o, cx % o::o]


def finish_stamp(data, oversamp, final_size) -> np.ndarray:
    """NaN->0, native sampling, centre-crop to ``final_size`` (offset (H-s)//2), unit sum."""
    a = np.asarray(data, dtype=float)
    a = np.where(np.isfinite(a), a, 0.0)
    a = native_stamp(a, oversamp)
    h, w = a.shape
    fs = int(final_size)
    if fs < h:
        o = (h - fs) // 2
        a = a[o:o + fs, :]
    if fs < w:
        o = (w - fs) // 2
        a = a[:, o:o + fs]
    tot = a.sum()
    if tot > 0:
        a = a / tot
    return a.astype(np.float32)


def good_fitted(fitted):
    lst = star_list(fitted)
    return [st for st in lst if not getattr(st, "_excluded_from_fit", False)]


def residual_qa(good, s, meta):
    """Residual QA of up to residual_diag_max_stars fitted stars (each with its ``model``)."""
    datas, models, weights, fluxes = [], [], [], []
    for st in good[: int(s.residual_diag_max_stars)]:
        f = float(st.flux)
        if not (np.isfinite(f) and f > 0):
            continue
        model = np.asarray(st.model, dtype=float)
        datas.append(np.asarray(st.data, float) / f)
        models.append(model / f)
        weights.append(np.asarray(st.weights, float))
        fluxes.append(f)
    rq, stacks = qa.residual_stats(datas, models, weights, fluxes)
    meta["residual_qa"] = rq
    return stacks
