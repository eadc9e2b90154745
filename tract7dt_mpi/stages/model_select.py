"""Choose PSF, EXP, DEV or SERSIC for catalogue rows (``patch_run.model_selection``).

After the patch's first fit, each candidate source (rows without a usable TYPE, or every base row
with ``all``) is fitted alone on its own footprint, with the fitted models of its neighbours (and
the fitted sky) subtracted, once per model. Each model's chi^2 improvement over "no source" on all
bands at once (``dchisq``) is penalised by its number of non-flux parameters (2 for a point source,
5 for EXP/DEV, 6 for SERSIC), and the simpler model is kept unless a richer one pays for itself,
in the spirit of legacypipe's choice between PSF/REX/EXP/DEV/SER:

* a galaxy replaces the point source only when it improves the penalised chi^2 by more than
  ``threshold`` and by more than ``GALAXY_FRAC`` of the point source's own dchisq (a bright star's
  small PSF mismatch must not turn it into a tiny galaxy);
* among galaxies the better of EXP and DEV is kept, and SERSIC only when it improves on that by a
  further ``threshold`` and either ``SERSIC_FRAC`` of that galaxy's dchisq or gives a total flux
  (all bands, each model's flux as a total, stages.flux_convention) that differs from it by more
  than ``SERSIC_FLUX_TOL``: the relative gain keeps a bright EXP or DEV galaxy from a Sersic
  index that only soaks up a small profile or PSF mismatch, but a bright galaxy of index 4.5 fitted
  as DEV, which gains only ~0.01 % in chi^2, is 3 % too faint.

The choice is "close" when one of the decisions that led to it lies within ``CLOSE_DCHISQ`` (4)
of its boundary in chi^2, so that a change of the data's chi^2 that small flips it (:func:`choose`). The
whole patch is then refitted once with the chosen models (only when a model changed; one unstaged
pass from the first fit's values), so only the candidates pay: four small single-source fits
each, plus at most one patch refit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..engine import FitOptions, ImageData, Source
from ..engine.problem import Problem

__all__ = ["untyped_rows", "choose_models", "choose", "Choice", "MODELS", "NPARAMS", "GALAXY_FRAC", "SERSIC_FRAC",
           "SERSIC_FLUX_TOL", "CLOSE_DCHISQ", "model_totals"]

#: the models tried, as engine kinds, with their catalogue column suffixes
MODELS = {"star": "PSF", "exp": "EXP", "dev": "DEV", "sersic": "SER"}
#: non-flux parameters of each model (the chi^2 penalty)
NPARAMS = {"star": 2, "exp": 5, "dev": 5, "sersic": 6}
#: a galaxy must also improve on a point source by this fraction of the point source's dchisq
GALAXY_FRAC = 0.01
#: SERSIC must also improve on the better of EXP/DEV by this fraction of that model's dchisq (on
#: GalSim tiles: Sersic n = 2-3 galaxies gain 0.2-1 %, EXP and DEV galaxies up to ~0.05 %)
SERSIC_FRAC = 0.001
#: ... or, when it beats it by the threshold alone, give a total flux this much different from it
#: (GalSim: a Sersic n = 4.5-4.8 galaxy at S/N 100-200 per band fitted as DEV is 3-5 % too faint,
#: n = 2.5 10 % too bright; an exponential galaxy at S/N 1000 beside a neighbour has EXP and
#: SERSIC local totals 1.7 % apart, so the tolerance is above that)
SERSIC_FLUX_TOL = 0.02
#: a decision of the choice whose chi^2 margin from its boundary is below this is "close"
#: (flag_model_close): a change of the data's chi^2 by 4, a 2-sigma shift of one parameter, flips it
CLOSE_DCHISQ = 4.0
#: footprint half-size bounds (px) of the single-source fits
MIN_HALF, MAX_HALF = 10, 64


def untyped_rows(cat, type_col, known) -> np.ndarray:
    """True where the row's TYPE (upper-cased, stripped) is not one of ``known``."""
    if type_col is None:
        return np.ones(len(cat), bool)
    out = []
    for v in cat[type_col].to_numpy(dtype=object):
        key = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip().upper()
        out.append(key not in known)
    return np.array(out, bool)


@dataclass
class Choice:
    """One source's model choice: the chosen kind, dchisq per kind, whether it was close."""

    kind: str
    dchisq: dict
    close: bool


def choose(dchisq: dict, threshold: float, close_dchisq: float = CLOSE_DCHISQ,
           totals: dict | None = None) -> Choice:
    """Penalised choice among the kinds of ``dchisq`` (chi^2 improvement over no source);
    ``totals``: kind -> the model's total flux summed over bands (:func:`model_totals`; None or
    a missing kind: SERSIC needs its relative gain).

    Each decision of the rule compares a penalised chi^2 difference with a required gain (0 for
    EXP against DEV); its margin is how far the difference lies from that boundary, i.e. by how
    much the chi^2 of one model would have to change to flip it.  The choice is ``close`` when
    a decision on the path to the chosen model has a margin below ``close_dchisq``: a star whose
    best galaxy falls short of the required gain by less, a galaxy that passes it by less, EXP
    and DEV within ``close_dchisq`` of each other (when one of them is kept), a SERSIC (or the
    EXP/DEV kept instead) that near its boundary.  A source where a galaxy model merely
    reproduces the point source (a galaxy shrunk to the PSF: equal chi^2, so the point source
    wins by its penalty plus the required gain) is not close, nor is a point source whose galaxy
    fit gains what noise gives three extra parameters (chi^2_3 exceeds 8 in 5 % of cases).
    """
    pen = {k: v - NPARAMS[k] for k, v in dchisq.items() if np.isfinite(v)}
    if not pen:
        return Choice("star", dchisq, False)
    best = "star" if "star" in pen else max(pen, key=pen.get)
    margins = []
    gals = [k for k in ("exp", "dev") if k in pen]
    g = None
    if gals:
        g = max(gals, key=pen.get)
        if "star" in pen:
            need = threshold + GALAXY_FRAC * max(dchisq.get("star", 0.0), 0.0)
            gain = pen[g] - pen["star"] - need
            margins.append(abs(gain))
            if gain > 0:
                best = g
        else:
            best = g
    if best != "star" and "sersic" in pen:
        gain = pen["sersic"] - pen[best] - threshold
        ser = gain - SERSIC_FRAC * max(dchisq[best], 0.0)
        if ser <= 0 < gain and _fluxes_differ(totals or {}, best):
            ser = gain
        margins.append(abs(ser))
        if ser > 0:
            best = "sersic"
    if best in ("exp", "dev") and len(gals) == 2:
        margins.append(abs(pen["exp"] - pen["dev"]))
    return Choice(best, dchisq, bool(margins) and min(margins) < close_dchisq)


def _fluxes_differ(totals: dict, kind: str) -> bool:
    """SERSIC's total flux differs from ``kind``'s by more than SERSIC_FLUX_TOL."""
    a, b = totals.get("sersic", np.nan), totals.get(kind, np.nan)
    return bool(np.isfinite(a) and np.isfinite(b) and b > 0 and abs(a / b - 1.0) > SERSIC_FLUX_TOL)


def model_totals(fits: dict, fwhm: float) -> dict:
    """kind -> total flux summed over bands of each local fit (``fits``: kind -> (result, x0,
    y0) of :func:`local_dchisq`): the mixture flux times the profile's total-flux factor over its
    size bias at the fitted size (stages.flux_convention), so that models are compared by the
    flux they would report."""
    from .flux_convention import profile_factors
    out = {}
    for kind, (sr, _, _) in fits.items():
        size = sr.re * np.sqrt(sr.ab) / fwhm if kind != "star" else np.nan
        fac = profile_factors([kind], [sr.sersic_n if kind == "sersic" else np.nan], "total", [size])[0]
        out[kind] = float(np.sum(np.asarray(sr.fluxes, float)) * fac)
    return out


def _box(images, x, y, half):
    H, W = images[0].data.shape
    ix, iy = int(round(x)), int(round(y))
    return max(iy - half, 0), min(iy + half + 1, H), max(ix - half, 0), min(ix + half + 1, W)


def _own_model(images, box, sr) -> np.ndarray:
    """(nb, h, w) model of fitted source ``sr`` on ``box`` (its fitted fluxes times unit renderings)."""
    y0, y1, x0, x1 = box
    crop = [ImageData(im.band, im.data[y0:y1, x0:x1], im.invvar[y0:y1, x0:x1], im.psf) for im in images]
    src = Source(sr.kind, sr.x - x0, sr.y - y0, np.asarray(sr.fluxes, float), re=sr.re, ab=sr.ab,
                 phi_deg=sr.phi_deg, sersic_n=sr.sersic_n)
    prob = Problem(crop, [src], fit_sky=False)
    r = prob.render(0, prob.p0[0], None)
    out = np.zeros((len(images), y1 - y0, x1 - x0))
    if not r.empty:
        out[:, r.y0:r.y1, r.x0:r.x1] = r.A[:, 0] * np.asarray(sr.fluxes, float)[:, None, None]
    return out


def _start(src, sr, kind, x, y, fwhm):
    """``src`` (the patch's Source) as ``kind``, started at the fitted position and fluxes."""
    gal = sr.kind != "star" and np.isfinite(sr.re)
    re = sr.re if gal else max(0.5 * fwhm, 1.0)
    return dataclasses.replace(
        src, kind=kind, x=x, y=y, fluxes=np.asarray(sr.fluxes, float).copy(),
        re=np.nan if kind == "star" else max(re, 0.5), ab=np.nan if kind == "star" else (sr.ab if gal else 0.8),
        phi_deg=np.nan if kind == "star" else (sr.phi_deg if gal else 0.0),
        sersic_n=(sr.sersic_n if np.isfinite(sr.sersic_n) else 2.0) if kind == "sersic" else np.nan,
        re_sigma=None, ell_sigma=None, theta_sigma_deg=None, re_factor=None, hold_shape=False)


def local_dchisq(fit_fn, images, models, src, sr, opts: FitOptions, fwhm: float):
    """dchisq per kind of one source fitted alone on its footprint, and the local fit results."""
    size = max(sr.re, 0.0) if np.isfinite(sr.re) else 0.0
    half = int(np.clip(np.ceil(3.0 * fwhm + 4.0 * size), MIN_HALF, MAX_HALF))
    box = _box(images, sr.x, sr.y, half)
    y0, y1, x0, x1 = box
    own = _own_model(images, box, sr)
    local = []
    for b, im in enumerate(images):
        rest = models[b][y0:y1, x0:x1] - own[b]          # neighbours + sky
        local.append(ImageData(im.band, im.data[y0:y1, x0:x1] - rest, im.invvar[y0:y1, x0:x1], im.psf,
                               gain=im.gain))
    chi2_none = float(sum(np.sum(im.invvar * im.data ** 2) for im in local))
    lopts = dataclasses.replace(opts, staged=False, fit_sky=False, marginal_flux_errors=False,
                                multi_band=True)
    dchisq, fits = {}, {}
    for kind in MODELS:
        s = _start(src, sr, kind, sr.x - x0, sr.y - y0, fwhm)
        if s.max_shift is None:
            s = dataclasses.replace(s, max_shift=float(max(2.0, fwhm)))
        try:
            r = fit_fn(local, [s], lopts)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            dchisq[kind] = np.nan
            continue
        dchisq[kind] = chi2_none - float(r.chi2)
        fits[kind] = (r.sources[0], x0, y0)
    return dchisq, fits


def choose_models(fit_fn, images, sources, res, opts: FitOptions, candidates, fwhm_pix: float,
                  threshold: float):
    """Choose each candidate's model and refit the patch with the choices.

    Returns (sources, result, {index: Choice}). ``res`` is the patch's first fit; the patch is
    refitted (``fit_fn``) only when some candidate changed model.
    """
    fwhm = fwhm_pix if np.isfinite(fwhm_pix) and fwhm_pix > 0 else 4.0
    models = res.model_images()
    chosen, new = {}, list(sources)
    for i in candidates:
        sr = res.sources[i]
        dchisq, fits = local_dchisq(fit_fn, images, models, sources[i], sr, opts, fwhm)
        c = choose(dchisq, threshold, totals=model_totals(fits, fwhm))
        chosen[i] = c
        if c.kind != sources[i].kind and c.kind in fits:
            lr, x0, y0 = fits[c.kind]
            new[i] = _start(sources[i], lr, c.kind, lr.x + x0, lr.y + y0, fwhm)
            if c.kind != "star":
                new[i] = dataclasses.replace(new[i], re=lr.re, ab=lr.ab, phi_deg=lr.phi_deg)
    if any(new[i].kind != sources[i].kind for i in chosen):
        # every source starts at (or, if re-typed, near) its optimum: one unstaged pass suffices
        res = fit_fn(images, new, dataclasses.replace(opts, staged=False))
    else:
        new = list(sources)
    return new, res, chosen
