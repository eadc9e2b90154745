"""Per-patch fit set-up: one PSF per band with its audit, the
engine images (inverse variance from the sky sigma) and the engine sources (model from TYPE,
initial fluxes, shape, priors, position bounds).

Nothing here runs the optimiser; :mod:`stages.fit` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError

FWHM_TO_SIGMA = 1.0 / 2.3548200450309493
TYPE_TO_KIND = {"STAR": "star", "EXP": "exp", "DEV": "dev", "SERSIC": "sersic"}
GAL_MODELS = ("star", "exp", "dev", "sersic")
NCIRC = {1: ([1.0], [1.0]), 2: ([1.0, 2.5], [0.85, 0.15]), 3: ([1.0, 2.0, 4.0], [0.8, 0.15, 0.05])}


def _engine():
    import tract7dt_mpi.engine as eng  # imported lazily: the engine is optional at import time
    return eng


# --------------------------------------------------------------------------- PSF choice

def header_fwhm_pix(header_text: str) -> float:
    """FWHM in pixels from a FITS header text: PEEING (px), else SEEING (arcsec) / pixel scale."""
    if not header_text:
        return float("nan")
    try:
        from astropy.io import fits
        from astropy.wcs import WCS
        from astropy.wcs.utils import proj_plane_pixel_scales
        import warnings

        hdr = fits.Header.fromstring(header_text, sep="\n" if "\n" in header_text else "")
        for key in ("PEEING",):
            v = hdr.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
                return float(v)
        v = hdr.get("SEEING")
        if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scale = float(np.median(proj_plane_pixel_scales(WCS(hdr).celestial)) * 3600.0)
            if math.isfinite(scale) and scale > 0:
                return float(v) / scale
    except Exception:  # a broken header only costs the header estimate
        return float("nan")
    return float("nan")


def fallback_fwhm(info, default_fwhm: float) -> tuple[float, str]:
    """FWHM (px, >= 1) for the fallback PSF and where it came from: the band's stars, the header
    (seeing), or the configured default."""
    v = float(getattr(info, "star_fwhm_pix", float("nan")))
    src = "the band's stars"
    if not (math.isfinite(v) and v > 0):
        v, src = float(getattr(info, "fwhm_pix", float("nan"))), "prepared fwhm_pix"
    if not (math.isfinite(v) and v > 0):
        v = header_fwhm_pix(getattr(info, "header", ""))
        src = "header PEEING/SEEING"
    if not (math.isfinite(v) and v > 0):
        v, src = float(default_fwhm), "fallback_default_fwhm_pix"
    return max(v, 1.0), src


def gaussian_stamp(sigma: float, radius: float) -> np.ndarray:
    """Unit-sum circular Gaussian stamp of half-size ceil(radius) (pixel-centre sampled)."""
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    st = np.exp(-0.5 * (xx ** 2 + yy ** 2) / sigma ** 2)
    return st / st.sum()


def fallback_psf(fwhm: float, pr, moffat, star_beta: float = float("nan")):
    """The fallback PSF object of ``patch_run.psf_fallback_model`` and a short description; a
    Moffat takes the band's own ``star_beta`` when known, else ``moffat_psf.beta``."""
    eng = _engine()
    model = str(pr.psf_fallback_model)
    sigma = fwhm * FWHM_TO_SIGMA
    if model == "ncircular_gaussian":
        n = int(pr.ncircular_gaussian_n)
        if n not in NCIRC:
            raise InputError(f"patch_run.ncircular_gaussian_n: expected 1, 2 or 3, got {n}")
        mult, w = NCIRC[n]
        return eng.NCircularGaussianPSF([m * sigma for m in mult], list(w)), \
            f"NCircularGaussianPSF(n={n}, fwhm={fwhm:.3f})"
    if model == "moffat":
        beta, radius = float(moffat.beta), float(moffat.radius_pix)
        if math.isfinite(star_beta) and star_beta > 1:
            beta = round(float(star_beta), 3)
        if not beta > 1:
            raise InputError(f"moffat_psf.beta: expected > 1, got {beta}")
        if not radius >= 1:
            raise InputError(f"moffat_psf.radius_pix: expected >= 1, got {radius}")
        return eng.MoffatPSF(fwhm, beta, radius), \
            f"MoffatPSF(fwhm={fwhm:.3f}, beta={beta}, radius={radius})"
    n = max(1, int(pr.gaussian_mixture_n))
    stamp = gaussian_stamp(sigma, float(pr.fallback_stamp_radius_pix))
    return eng.GaussianMixturePSF.from_stamp(stamp, n), \
        f"GaussianMixturePSF(gaussian stamp, fwhm={fwhm:.3f}, n={n})"


def fallback_flux_in_stamp(psf) -> float:
    """Fraction of an analytic fallback PSF's total flux inside its (unit-sum) stamp: a Moffat's
    light beyond its radius (1 - (1 + (R/alpha)^2)^(1 - beta) inside the circle of equal area),
    1 for the Gaussian models."""
    beta = getattr(psf, "beta", None)
    if getattr(psf, "kind", "") != "moffat" or not beta or not beta > 1:
        return 1.0
    alpha = psf.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    half = psf.stamp.shape[0] / 2.0
    r = 2.0 * half / math.sqrt(math.pi)
    return float(1.0 - (1.0 + (r / alpha) ** 2) ** (1.0 - beta))


def epsf_psf(stamp: np.ndarray, pr):
    """PSF object for a usable ePSF stamp per ``patch_run.psf_model``."""
    eng = _engine()
    st = np.nan_to_num(np.asarray(stamp, float), nan=0.0, posinf=0.0, neginf=0.0)
    tot = st.sum()
    if tot > 0:
        st = st / tot
    model = str(pr.psf_model)
    if model == "pixelized":
        return eng.PixelizedPSF(st), "PixelizedPSF(ePSF)"
    if model == "gaussian_mixture_from_stamp":
        n = max(1, int(pr.gaussian_mixture_n))
        return eng.GaussianMixturePSF.from_stamp(st, n), f"GaussianMixturePSF(ePSF, n={n})"
    n = int(pr.hybrid_psf_n)
    return eng.HybridPSF(st, n_gauss=n), f"HybridPSF(ePSF, n={n})"


def choose_psf(band: str, choice, info, pr, moffat):
    """(psf, audit, log line) for one band. ``choice`` is a PsfChoiceInput or None."""
    gate = int(pr.min_epsf_nstars_for_use)
    stamp = getattr(choice, "stamp", None)
    nstars = getattr(choice, "nstars_used", None)
    audit = {"epsf_path": getattr(choice, "path", "") or "", "epsf_exists": stamp is not None,
             "used_epsf": False, "fallback_reason": "", "epsf_nstars_used": nstars,
             "min_epsf_nstars_for_use": gate, "psf_model": str(pr.psf_model), "psf_desc": ""}
    if stamp is not None:
        arr = np.asarray(stamp, float)
        if not (arr.ndim == 2 and arr.shape[0] % 2 == 1 and arr.shape[1] % 2 == 1
                and np.nansum(arr) > 0):
            audit["fallback_reason"] = "invalid ePSF (not an odd 2-D stamp with positive sum)"
        elif gate > 0 and nstars is not None and nstars < gate:
            audit["fallback_reason"] = (f"low-star ePSF (nstars_used={nstars} < "
                                        f"min_epsf_nstars_for_use={gate})")
        else:
            psf, desc = epsf_psf(arr, pr)
            audit.update(used_epsf=True, psf_desc=desc,
                         psf_flux_in_stamp=float(getattr(choice, "flux_in_stamp", 1.0) or 1.0))
            if getattr(choice, "sources", ()):
                audit["epsf_interpolated_from"] = [list(t) for t in choice.sources]
            if getattr(choice, "note", ""):
                audit["epsf_note"] = choice.note
                return psf, audit, f"[PSF] {band}: using ePSF of the {choice.note}: {choice.sources}"
            return psf, audit, f"[PSF] {band}: using ePSF {audit['epsf_path']} as {desc}"
    else:
        audit["fallback_reason"] = "missing ePSF"
    fwhm, src = fallback_fwhm(info, float(pr.fallback_default_fwhm_pix))
    psf, desc = fallback_psf(fwhm, pr, moffat, float(getattr(info, "star_beta", float("nan"))))
    audit.update(psf_model=str(pr.psf_fallback_model), psf_desc=desc, fallback_fwhm_pix=fwhm,
                 fallback_fwhm_source=src, psf_flux_in_stamp=fallback_flux_in_stamp(psf))
    if audit["fallback_reason"].startswith("low-star"):
        line = (f"[PSF] {band}: ePSF exists at {audit['epsf_path']} but {audit['fallback_reason']};"
                f" using fallback path {desc}")
    else:
        line = f"[PSF] {band}: {audit['fallback_reason']}; using fallback {desc} (FWHM from {src})"
    return psf, audit, line


# --------------------------------------------------------------------------- images

def invvar_of(cut) -> np.ndarray:
    """1/max(sigma_sky², 1e-12) on good pixels, 0 on bad_final / non-finite / sigma <= 0."""
    sig = np.asarray(cut.sigma_sky, float)
    img = np.asarray(cut.img, float)
    good = ~np.asarray(cut.bad_final, bool) & np.isfinite(img) & np.isfinite(sig) & (sig > 0)
    iv = np.zeros(sig.shape, float)
    iv[good] = 1.0 / np.maximum(sig[good] ** 2, 1e-12)
    return iv


def engine_images(pin, psfs: dict) -> list:
    """Engine ImageData per band (payload order); masked pixels have data 0 and invvar 0."""
    eng = _engine()
    out = []
    for b in pin.bands:
        cut, info = pin.images[b], pin.band_info[b]
        iv = invvar_of(cut)
        data = np.where(iv > 0, np.asarray(cut.img, float), 0.0)
        gain = float(info.egain) / float(info.scale) if info.scale > 0 and info.egain > 0 else None
        out.append(eng.ImageData(band=b, data=data, invvar=iv, psf=psfs[b], gain=gain, sky=0.0,
                                 wing_light=getattr(cut, "halo", None)))
    return out


# --------------------------------------------------------------------------- sources

def aperture_fluxes(data: np.ndarray, invvar: np.ndarray, x: np.ndarray, y: np.ndarray,
                    r_ap: float) -> np.ndarray:
    """Circular-aperture sums (radius r_ap) on masked pixels excluded; non-finite -> 0."""
    import sep

    if len(x) == 0:
        return np.zeros(0)
    d = np.ascontiguousarray(data, dtype=np.float64)
    mask = ~(np.isfinite(d) & (invvar > 0))
    d = np.where(mask, 0.0, d)
    ok = np.isfinite(x) & np.isfinite(y)
    out = np.zeros(len(x))
    if ok.any():
        flux, _, _ = sep.sum_circle(d, np.ascontiguousarray(x[ok], float),
                                    np.ascontiguousarray(y[ok], float), float(r_ap), mask=mask)
        out[ok] = flux
    out[~np.isfinite(out)] = 0.0
    return out


def _num(cat: pd.DataFrame, col: str | None) -> np.ndarray:
    if col is None:
        return np.full(len(cat), np.nan)
    return pd.to_numeric(cat[col], errors="coerce").to_numpy(float)


def _pos_err(v: float) -> bool:
    return bool(np.isfinite(v) and v > 0)


@dataclass
class SourceInit:
    """Initial values per source and where they came from (for the log and the tests)."""

    kind: str
    flux_from_catalog: list
    re_from_catalog: bool
    shape_from_catalog: bool


def source_kinds(cat: pd.DataFrame, type_col: str | None, gal_model: str) -> list[str]:
    """Engine model per row from TYPE (upper-cased, stripped); other values -> ``gal_model``."""
    gm = str(gal_model).strip().lower()
    if gm not in GAL_MODELS:
        raise InputError(f"patch_run.gal_model: expected one of {list(GAL_MODELS)}, got {gal_model!r}")
    if type_col is None:
        return [gm] * len(cat)
    out = []
    for v in cat[type_col].to_numpy(dtype=object):
        key = str(v).strip().upper() if v is not None and not (isinstance(v, float)
                                                                and np.isnan(v)) else ""
        out.append(TYPE_TO_KIND.get(key, gm))
    return out


def theta_to_phi(theta: np.ndarray) -> np.ndarray:
    """Catalog THETA (deg) -> engine phi (deg): THETA-90 if THETA >= 0 else THETA+90."""
    t = np.asarray(theta, float)
    return np.where(t >= 0, t - 90.0, t + 90.0)


#: position box (px) of a halo source centred outside the ROI (catalog position) and of an
#: unmatched saturated star (SEP centroid of a saturated blob on the white image: less certain;
#: a tighter box keeps the fit from settling on the sample tiles)
OUTSIDE_SHIFT = 0.5
SATURATED_SHIFT = 2.0


#: px within which a band's halo star (stages.star_halos) is the patch's saturated star
HALO_MATCH_PIX = 3.0


def halo_start_fluxes(pin, xw, yw, fluxes) -> np.ndarray:
    """Start fluxes (n, nb) of the unmatched saturated stars at working-frame (``xw``, ``yw``):
    each band's halo flux of the star (measured on its far rings, PsfChoiceInput.halos) where the
    band lists one within HALO_MATCH_PIX, else ``fluxes``. The aperture flux of a masked core is
    ~0, and from there the fit of a star seen only outside its core settled on 0.2-2 times its
    flux on GalSim tiles (the patch sky taking up the rest); the halo flux is right to ~5 %."""
    out = np.array(fluxes, dtype=float, copy=True)
    for j, b in enumerate(pin.bands):
        h = np.asarray(getattr(pin.psfs.get(b), "halos", ()) or (), float).reshape(-1, 3)
        if not len(h):
            continue
        for i, (sx, sy) in enumerate(zip(xw, yw)):
            d = np.hypot(h[:, 0] - sx, h[:, 1] - sy)
            k = int(np.argmin(d))
            if d[k] <= HALO_MATCH_PIX and np.isfinite(h[k, 2]) and h[k, 2] > 0:
                out[i, j] = h[k, 2]
    return out


def build_sources(pin, images: list, pr) -> tuple[list, list]:
    """Engine Sources for every row of ``pin.cat`` (base then halo) and their SourceInit records."""
    from .catalog import ColumnMap

    eng = _engine()
    cat = pin.cat
    cm = ColumnMap.from_frame(cat, pin.bands)
    n, nb = len(cat), len(pin.bands)
    x = _num(cat, "x_pix_patch")
    y = _num(cat, "y_pix_patch")
    kinds = source_kinds(cat, cm.type, pr.gal_model)
    eps = float(pr.eps_flux)
    fluxes = np.zeros((n, nb))
    flux_sig = np.full((n, nb), np.nan)
    from_cat = np.zeros((n, nb), bool)
    for j, (b, im) in enumerate(zip(pin.bands, images)):
        ap = aperture_fluxes(im.data, im.invvar, x, y, float(pr.r_ap))
        fc = _num(cat, cm.flux.get(b))
        use = np.isfinite(fc) & (fc > 0)
        fluxes[:, j] = np.maximum(np.where(use, fc, ap), eps)
        from_cat[:, j] = use
        fe = _num(cat, cm.flux_err.get(b))
        pri = use & np.isfinite(fe) & (fe > 0)
        flux_sig[pri, j] = fe[pri]
    ell = _num(cat, cm.ell)
    theta = _num(cat, cm.theta)
    re = _num(cat, cm.re)
    ab = np.ones(n) * 0.8 if cm.ell is None else np.clip(1.0 - np.nan_to_num(ell, nan=0.0), 0.1, 1.0)
    phi = np.zeros(n) if cm.theta is None else theta_to_phi(np.nan_to_num(theta, nan=0.0))
    re0 = np.clip(np.where(np.isfinite(re), re, float(pr.re_fallback_pix)), 0.3, 100.0)
    sers = _num(cat, cm.sersic_n)
    n0 = np.where(np.isfinite(sers) & (sers > 0), sers, float(pr.sersic_n_init))
    pos_err, re_err = _num(cat, cm.pos_err), _num(cat, cm.re_err)
    ell_err, th_err = _num(cat, cm.ell_err), _num(cat, cm.theta_err)
    shift = pr.pos_max_shift_pix
    shift = float(shift) if shift is not None else None
    re_factor = float(pr.re_max_factor or 0.0)
    re_factor = re_factor if re_factor > 1 else None
    hgt, wid = images[0].data.shape if images else (0, 0)
    # halo sources centred outside the ROI: only their wings are seen, so hold position and shape
    outside = (x < -0.5) | (x > wid - 0.5) | (y < -0.5) | (y > hgt - 0.5)
    # unmatched saturated stars (``_row`` < 0): masked core, SEP position; hold them as well
    satstar = (pd.to_numeric(cat["_row"], errors="coerce").to_numpy(float) < 0 if "_row" in cat.columns
               else np.zeros(n, bool))
    held = outside | satstar
    if satstar.any():
        fluxes[satstar] = halo_start_fluxes(pin, x[satstar] + pin.spec.x0_roi, y[satstar] + pin.spec.y0_roi,
                                            fluxes[satstar])
    # their position box, never wider than patch_run.pos_max_shift_pix
    held_box = np.minimum(np.where(satstar, SATURATED_SHIFT, OUTSIDE_SHIFT),
                          np.inf if shift is None else shift)
    sources, inits = [], []
    for i in range(n):
        k = kinds[i]
        gal = k != "star"
        re_cat = bool(cm.re is not None and np.isfinite(re[i]))
        shape_cat = bool(cm.ell is not None and cm.theta is not None and np.isfinite(ell[i])
                         and np.isfinite(theta[i]))
        fs = flux_sig[i] if np.isfinite(flux_sig[i]).any() else None
        kw = dict(kind=k, x=float(x[i]), y=float(y[i]), fluxes=fluxes[i].copy(),
                  pos_sigma=float(pos_err[i]) if _pos_err(pos_err[i]) else None,
                  flux_sigma=None if fs is None else fs.copy(),
                  max_shift=float(held_box[i]) if held[i] else shift, hold_shape=bool(held[i]))
        if gal:
            kw.update(re=float(re0[i]), ab=float(ab[i]), phi_deg=float(phi[i]),
                      re_sigma=float(re_err[i]) if re_cat and _pos_err(re_err[i]) else None,
                      re_factor=re_factor if re_cat else None)
            if shape_cat and _pos_err(ell_err[i]) and _pos_err(th_err[i]):
                kw.update(ell_sigma=float(ell_err[i]), theta_sigma_deg=float(th_err[i]))
            if k == "sersic":
                kw["sersic_n"] = float(n0[i])
        try:
            sources.append(eng.Source(**kw))
        except ValueError as e:  # the engine's check of a catalog-derived value
            rid = cat[cm.id].iloc[i] if getattr(cm, "id", None) else i
            raise InputError(f"input catalog source {rid!r}: {e}") from e
        inits.append(SourceInit(kind=k, flux_from_catalog=list(from_cat[i]),
                                re_from_catalog=re_cat and gal, shape_from_catalog=shape_cat and gal))
    return sources, inits


# --------------------------------------------------------------------------- sky

SKY_CHOICES = ("fit", "zero", "prior")


def apply_sky_choice(images: list, pr) -> bool:
    """Set up ``patch_run.sky`` on the engine images; returns the engine's ``fit_sky``.

    fit: free constant per band; zero: held at 0 (the images' start value); prior: free with a
    Gaussian prior centred on 0 of ``sky_prior_sigma`` x the band's sky noise per pixel (median
    1/sqrt(invvar) of the unmasked pixels).
    """
    mode = str(pr.sky).lower()
    if mode not in SKY_CHOICES:
        raise InputError(f"patch_run.sky: expected one of {list(SKY_CHOICES)}, got {mode!r}")
    for im in images:
        im.sky = 0.0
        im.sky_sigma = None
        if mode == "prior":
            iv = im.invvar[im.invvar > 0]
            if iv.size:
                im.sky_sigma = float(pr.sky_prior_sigma) * float(np.median(1.0 / np.sqrt(iv)))
    return mode != "zero"
