"""Fit one patch with the engine and build its fixed-schema result table.

``fit_patch_input`` turns a :class:`~.patch_inputs.PatchInput` into a :class:`PatchResult`: the
base rows (halo rows are fitted too, so their light is modelled, but reported only by their home
patch) with the fit columns of docs/outputs.md plus ``_row``; the patch ``meta.json`` record
and the patch log lines. ``result_columns`` fixes names and numpy dtypes (strings as
fixed-width bytes) so a results store can pre-allocate them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputError
from .data_checks import dead_near
from .fit_setup import apply_sky_choice, build_sources, choose_psf, engine_images
from .flux_convention import index_variance, profile_factors, to_total_fluxes, with_index_errors
from .psf_error import add_fitted_star_checks, psf_term_fractions, with_psf_term
from .wing_error import RESPONSE_COLUMNS, WING_COLUMNS

log = logging.getLogger(__name__)

#: fixed widths (bytes) of the string columns
STR_WIDTH = {"patch_tag": 32, "epsf_tag": 16, "psf_fallback_bands": 512,
             "psf_low_star_bands": 512, "psf_frozen_bands_for_optimizer": 512,
             "psf_fallback_reasons_json": 4096, "stype_fit": 8,
             "flag_bound_stalled_which_parameter": 160}
_MORPH = ("sersic_n", "re_pix", "ab", "phi_deg", "ELL", "Re", "THETA")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _index_var(src, j: int, pr, fwhm: float) -> float:
    """:func:`~.flux_convention.index_variance` of engine source ``src`` in its band ``j``, fitted
    with a PSF of ``fwhm`` px."""
    c = getattr(src, "lnn_cov", None)
    size = float(src.re) * np.sqrt(float(src.ab)) / fwhm if src.kind == "sersic" else np.nan
    return index_variance(src.kind, float(src.sersic_n), float(src.fluxes[j]),
                          None if c is None else c[j], str(pr.galaxy_flux), size)


def _flux_values(src, j: int, b: str, pr, fwhm: float, psf_frac: float) -> dict:
    """Band ``b`` (the engine source's band ``j``) flux columns of one row, in the fit's units:
    FLUXERR_STAT (statistical, with the Sersic index's term), FLUXERR_WING (the neighbouring
    stars' wings; 0 without) and FLUXERR (both, and the band's PSF term)."""
    v = _index_var(src, j, pr, fwhm)
    w, wr = src.wing_errs, src.wing_resp
    wing = float(w[j]) if w is not None and np.isfinite(w[j]) else 0.0
    err = float(np.hypot(with_index_errors(with_psf_term(src.flux_errs[j], src.fluxes[j], psf_frac), v), wing))
    resp = wr[j] if wr is not None else (np.nan,) * len(RESPONSE_COLUMNS)
    return {f"FLUX_{b}_fit": float(src.fluxes[j]), f"FLUXERR_{b}_fit": err,
            f"FLUXERR_STAT_{b}_fit": with_index_errors(src.flux_errs[j], v), f"FLUXERR_WING_{b}_fit": wing,
            **{f"{c}_{b}_fit": float(r) for c, r in zip(RESPONSE_COLUMNS, resp)}}


def safe_name(value) -> str:
    """File-name-safe text: characters outside ``[A-Za-z0-9_.-]`` become ``_``."""
    return _SAFE.sub("_", str(value))


def clip_text(value, width: int) -> str:
    """``value`` as str, cut to at most ``width`` UTF-8 bytes without splitting a character."""
    b = str(value).encode("utf-8")
    if len(b) <= width:
        return str(value)
    return b[:width].decode("utf-8", "ignore")


def result_columns(bands, multi_band: bool) -> list[tuple[str, np.dtype]]:
    """Names and numpy dtypes of the result table, in order (the fit columns of docs/outputs.md + ``_row``).

    Multi-band: bands in the given (image-list) order; single-band: suffixed columns per band in
    alphabetical order.
    """
    f8, i8, b1 = np.dtype("f8"), np.dtype("i8"), np.dtype("?")

    def s(name):
        return np.dtype(f"S{STR_WIDTH[name]}")

    cols = [("_row", i8), ("x_pix_white", f8), ("y_pix_white", f8), ("x_pix_patch", f8),
            ("y_pix_patch", f8), ("_is_halo_source", b1), ("patch_tag", s("patch_tag")),
            ("epsf_tag", s("epsf_tag")), ("psf_min_epsf_nstars_for_use", i8),
            ("psf_used_epsf_band_count", i8), ("psf_fallback_band_count", i8),
            ("psf_low_star_band_count", i8), ("psf_fallback_bands", s("psf_fallback_bands")),
            ("psf_low_star_bands", s("psf_low_star_bands")),
            ("psf_frozen_bands_for_optimizer", s("psf_frozen_bands_for_optimizer")),
            ("psf_fallback_reasons_json", s("psf_fallback_reasons_json")),
            ("stype_fit", s("stype_fit")), ("flag_core_masked", b1),
            ("fit_shape_fixed", b1), ("flux_total_factor", f8), ("flag_dead_data", b1),
            ("dchisq_PSF", f8), ("dchisq_EXP", f8), ("dchisq_DEV", f8), ("dchisq_SER", f8),
            ("flag_model_close", b1),
            ("fit_pos_held", b1), ("flag_shape_fallback", b1)]
    stall = s("flag_bound_stalled_which_parameter")
    if multi_band:
        cols += [("opt_niters", i8), ("opt_converged", b1), ("opt_hit_max_iters", b1),
                 ("opt_last_dlnp", f8)]
        cols += [(c, f8) for c in ("x_pix_patch_fit", "y_pix_patch_fit", "x_pix_white_fit",
                                   "y_pix_white_fit", "RA_fit", "DEC_fit")]
        cols += [(f"{m}_fit", f8) for m in _MORPH]
        for b in bands:
            cols += [(f"FLUX_{b}_fit", f8), (f"FLUXERR_{b}_fit", f8), (f"FLUXERR_STAT_{b}_fit", f8),
                     (f"FLUXERR_WING_{b}_fit", f8), (f"PSFCHK_{b}_fit", f8), (f"PSFCHK_ERR_{b}_fit", f8),
                     *_wing_cols(b)]
        cols += [("flag_bound_stalled", b1), ("flag_bound_stalled_which_parameter", stall)]
    else:
        for b in sorted(bands):
            cols += [(f"{c}_{b}_fit", f8) for c in ("x_pix_patch", "y_pix_patch", "x_pix_white",
                                                     "y_pix_white", "RA", "DEC")]
            cols += [(f"{m}_{b}_fit", f8) for m in _MORPH]
            cols += [(f"FLUX_{b}_fit", f8), (f"FLUXERR_{b}_fit", f8), (f"FLUXERR_STAT_{b}_fit", f8),
                     (f"FLUXERR_WING_{b}_fit", f8), (f"PSFCHK_{b}_fit", f8), (f"PSFCHK_ERR_{b}_fit", f8),
                     *_wing_cols(b),
                     (f"opt_niters_{b}", i8), (f"opt_converged_{b}", b1),
                     (f"opt_hit_max_iters_{b}", b1), (f"opt_last_dlnp_{b}", f8),
                     (f"flag_bound_stalled_{b}", b1),
                     (f"flag_bound_stalled_which_parameter_{b}", stall)]
    return cols


def _wing_cols(b: str) -> list:
    """Store-only columns of band ``b`` behind the measured wing error (stages.wing_error)."""
    return [(f"{c}_{b}_fit", np.dtype("f8")) for c in WING_COLUMNS]


def empty_table(bands, multi_band: bool) -> pd.DataFrame:
    """A zero-row result table with the schema's columns and dtypes (strings as object)."""
    return pd.DataFrame({n: pd.Series(dtype=object if d.kind == "S" else d)
                         for n, d in result_columns(bands, multi_band)})


@dataclass
class PatchResult:
    """One patch's output. ``plot`` holds arrays for the diagnostics (None once written)."""

    table: pd.DataFrame
    meta: dict
    log_lines: list = field(default_factory=list)
    plot: dict | None = None

    @property
    def tag(self) -> str:
        return self.meta.get("patch_tag", "")


class _PatchLog:
    """Collects "time | level | message" lines for ``{tag}.log``; forwards warnings to the run
    log (INFO lines at DEBUG, so thousands of patches do not flood it)."""

    def __init__(self, tag: str):
        self.tag = tag
        self.lines: list[str] = []

    def __call__(self, msg: str, level: int = logging.INFO) -> None:
        t = time.strftime("%Y-%m-%d %H:%M:%S")
        self.lines.append(f"{t} | {logging.getLevelName(level)} | {msg}")
        log.log(level if level >= logging.WARNING else logging.DEBUG, "[%s] %s", self.tag, msg)


def _fit_function(pr):
    engine = str(pr.engine).lower()
    if engine == "tractor":
        try:
            from ..engine import tractor_backend
        except ImportError as exc:
            raise InputError("patch_run.engine: 'tractor' needs the Tractor package and "
                             f"tract7dt_mpi.engine.tractor_backend ({exc})") from None
        ok, why = tractor_backend.tractor_available()
        if not ok:
            raise InputError(f"{tractor_backend.INSTALL_HINT} ({why})")
        return tractor_backend.fit_patch_tractor, "tractor"
    if engine != "native":
        raise InputError(f"patch_run.engine: expected 'native' or 'tractor', got {engine!r}")
    from ..engine import fit_patch
    return fit_patch, "native"


def _psf_summary(bands, audits, psfs) -> dict:
    from ..engine import GaussianMixturePSF

    fb = sorted(b for b in bands if not audits[b]["used_epsf"])
    low = sorted(b for b in bands if audits[b]["fallback_reason"].startswith("low-star"))
    # the original froze GaussianMixturePSF images; the native engine never fits any PSF, so the
    # column keeps its meaning: bands whose PSF is a (plain) Gaussian mixture
    frozen = sorted(b for b in bands if type(psfs[b]) is GaussianMixturePSF)
    return {"psf_used_epsf_band_count": len(bands) - len(fb), "psf_fallback_band_count": len(fb),
            "psf_low_star_band_count": len(low), "psf_fallback_bands": ",".join(fb),
            "psf_low_star_bands": ",".join(low),
            "psf_frozen_bands_for_optimizer": ",".join(frozen),
            "psf_fallback_reasons_json": json.dumps(
                {b: audits[b]["fallback_reason"] for b in fb}, sort_keys=True)}


def _source_values(s, x0: int, y0: int, sfx: str) -> dict:
    """Fit columns of one engine SourceResult; ``sfx`` is "" or "_{band}"."""
    star = s.kind == "star"
    ab = np.nan if star else float(s.ab)
    phi = np.nan if star else float(s.phi_deg) % 180.0
    re_ = np.nan if star else float(s.re)
    stalled = list(getattr(s, "stalled", []) or [])
    d = {f"x_pix_patch{sfx}_fit": float(s.x), f"y_pix_patch{sfx}_fit": float(s.y),
         f"x_pix_white{sfx}_fit": float(s.x) + x0, f"y_pix_white{sfx}_fit": float(s.y) + y0,
         f"RA{sfx}_fit": np.nan, f"DEC{sfx}_fit": np.nan,
         f"sersic_n{sfx}_fit": float(s.sersic_n) if s.kind == "sersic" else np.nan,
         f"re_pix{sfx}_fit": re_, f"ab{sfx}_fit": ab, f"phi_deg{sfx}_fit": phi,
         f"ELL{sfx}_fit": 1.0 - ab, f"Re{sfx}_fit": re_, f"THETA{sfx}_fit": phi - 90.0}
    stall_key = "flag_bound_stalled" + sfx
    d[stall_key] = bool(stalled)
    d["flag_bound_stalled_which_parameter" + sfx] = ",".join(stalled)
    return d


def core_masked(images, x: float, y: float, radius: float = 2.0) -> bool:
    """True when some band has no usable pixel (invvar > 0) within ``radius`` px of (x, y).

    Such a source's flux in that band rests on its wings alone (its core is under the saturation
    or bright-star mask, or off the image) and is not trustworthy.
    """
    for im in images:
        h, w = im.invvar.shape
        if not (np.isfinite(x) and np.isfinite(y)):
            return True
        x0, x1 = max(0, int(np.floor(x - radius))), min(w, int(np.ceil(x + radius)) + 1)
        y0, y1 = max(0, int(np.floor(y - radius))), min(h, int(np.ceil(y + radius)) + 1)
        if x1 <= x0 or y1 <= y0:
            return True
        yy, xx = np.mgrid[y0:y1, x0:x1]
        near = (xx - x) ** 2 + (yy - y) ** 2 <= radius * radius
        if not (im.invvar[y0:y1, x0:x1][near] > 0).any():
            return True
    return False


def _opt_values(r, sfx: str, src=None) -> dict:
    """opt_* columns: the engine's per-source convergence when it assessed it (the patch's state,
    refined by the source's own remaining gain, and false for a source on a bound or with a
    runaway model), else the patch-level optimizer state."""
    own = getattr(src, "converged", None)
    conv = bool(r.converged) if own is None else bool(own)
    return {f"opt_niters{sfx}": int(r.niters), f"opt_converged{sfx}": conv,
            f"opt_hit_max_iters{sfx}": bool(r.hit_max_iters) and not conv,
            f"opt_last_dlnp{sfx}": float(r.last_dlnp)}


def _stage_records(r) -> list:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in st.items()}
            for st in (getattr(r, "stages", None) or [])]


def _log_fit(plog, r, label: str) -> None:
    for st in _stage_records(r):
        plog(f"{label}stage {st.get('stage')}: niters={st.get('niters')} "
             f"converged={st.get('converged')} last_dlnp={st.get('last_dlnp')}")
    for k, dl in enumerate(getattr(r, "history", None) or []):
        plog(f"{label}opt iter {k:02d}  dlnp={dl:.6g}")
    plog(f"{label}optimizer: niters={r.niters} converged={r.converged} "
         f"hit_max_iters={r.hit_max_iters} last_dlnp={r.last_dlnp:.6g} chi2={r.chi2:.6g}")
    srcs = list(getattr(r, "sources", None) or [])
    held = sum(bool(getattr(x, "pos_held", False)) for x in srcs)
    if held:
        plog(f"{label}{held} faint source(s) held at their catalog position")
    for i, x in enumerate(srcs):
        if getattr(x, "runaway", None):
            plog(f"{label}source {i}: model ran away ({','.join(x.runaway)}): not converged")


def row_scales(pin, band: str, n: int) -> np.ndarray:
    """(n, 2) (shape, normalisation) position factors of the patch rows in ``band`` (ones when
    the band's PSF choice carries none)."""
    sc = np.asarray(pin.psfs[band].row_scales if band in pin.psfs else (), float).reshape(-1, 2)
    return sc if len(sc) == n else np.ones((n, 2))


def _stamp_fwhms(psfs) -> dict:
    """band -> FWHM (px) of the pixelized PSF stamp a band is fitted with (bands with one)."""
    from .psf_error import stamp_fwhm
    return {b: float(stamp_fwhm(np.asarray(p.stamp, float))) for b, p in psfs.items()
            if getattr(p, "stamp", None) is not None}


def _choose_models(pin, images, sources, res, opts, fit_fn, pr, stamp_fwhm, is_halo):
    """stages.model_select on the patch's base sources: the untyped ones, or all (``all``);
    ``stamp_fwhm``: :func:`_stamp_fwhms` of the patch's bands."""
    from .catalog import ColumnMap
    from .fit_setup import TYPE_TO_KIND
    from .model_select import choose_models, untyped_rows
    cm = ColumnMap.from_frame(pin.cat, pin.bands)
    pick = np.ones(len(pin.cat), bool) if str(pr.model_selection) == "all" \
        else untyped_rows(pin.cat, cm.type, set(TYPE_TO_KIND))
    cand = np.flatnonzero(pick & ~is_halo)
    if cand.size == 0:
        return sources, res, {}
    fw = list(stamp_fwhm.values())
    fwhm = float(np.nanmedian(fw)) if fw else float(pr.fallback_default_fwhm_pix)
    return choose_models(fit_fn, images, sources, res, opts, cand, fwhm, float(pr.model_selection_dchisq))


def _dchisq_values(choice) -> dict:
    """``dchisq_{PSF,EXP,DEV,SER}`` of one source's model choice (NaN where not computed)."""
    from .model_select import MODELS
    got = choice.dchisq if choice is not None else {}
    return {f"dchisq_{col}": float(got.get(kind, np.nan)) for kind, col in MODELS.items()}


@dataclass(frozen=True)
class PatchFitOptions:
    """The config sections a patch fit reads: ``patch_run`` and ``moffat_psf`` (built by
    :func:`tract7dt_mpi.stage_options.fit_options`)."""

    patch_run: object
    moffat_psf: object


def fit_patch_input(pin, opts: PatchFitOptions) -> PatchResult:
    """Fit one patch -> PatchResult (written by :func:`write_patch_products`).

    A patch tag listed in ``patch_run.fault_inject`` raises RuntimeError (test hook for the
    scheduler).
    """
    pr = opts.patch_run
    if pin.tag in (pr.fault_inject or []):
        raise RuntimeError("fault injected for test")
    t0 = time.perf_counter()
    plog = _PatchLog(pin.tag)
    multi = bool(pr.enable_multi_band_simultaneous_fitting)
    meta = pin.meta()
    spec, bands, cat = pin.spec, list(pin.bands), pin.cat
    plog(f"patch {pin.tag}: roi={meta['roi_bbox']} n_sources={meta['n_sources']} "
         f"+ {meta['n_halo_sources']} halo, bands={len(bands)}")

    psfs, audits = {}, {}
    for b in bands:
        psf, audit, line = choose_psf(b, pin.psfs.get(b), pin.band_info[b], pr, opts.moffat_psf)
        psfs[b], audits[b] = psf, audit
        plog(line, logging.WARNING if audit["fallback_reason"].startswith("low-star")
             else logging.INFO)
    psum = _psf_summary(bands, audits, psfs)
    stamp_fw = _stamp_fwhms(psfs)
    gate = int(pr.min_epsf_nstars_for_use)
    fit_fn, engine_name = _fit_function(pr)
    meta.update({"psf_min_epsf_nstars_for_use": gate, **{k: psum[k] for k in (
        "psf_used_epsf_band_count", "psf_fallback_band_count", "psf_low_star_band_count")},
        "psf_fallback_bands": psum["psf_fallback_bands"].split(",") if psum[
            "psf_fallback_bands"] else [],
        "psf_low_star_bands": psum["psf_low_star_bands"].split(",") if psum[
            "psf_low_star_bands"] else [],
        "psf_audit": audits, "enable_multi_band_simultaneous_fitting": multi,
        "psf_frozen_bands_for_optimizer": psum["psf_frozen_bands_for_optimizer"].split(",")
        if psum["psf_frozen_bands_for_optimizer"] else [],
        "staged_fit_enabled": bool(pr.enable_staged_fit), "engine": engine_name,
        "flux_error_model": str(pr.flux_error_model)})
    psf_frac = psf_term_fractions(bands, pin, audits, meta["flux_error_model"])
    meta["psf_flux_err_frac"] = {b: (None if not np.isfinite(v) else round(v, 6)) for b, v in psf_frac.items()}

    images = engine_images(pin, psfs)
    fit_sky = apply_sky_choice(images, pr)
    meta["sky_mode"] = str(pr.sky)
    is_halo = cat["_is_halo_source"].to_numpy(bool)
    if (~is_halo).sum() == 0:
        plog("no base sources: nothing to fit", logging.WARNING)
        meta["fit_sec"] = time.perf_counter() - t0
        return PatchResult(empty_table(bands, multi), meta, plog.lines, None)
    sources, inits = build_sources(pin, images, pr)
    from ..engine import FitOptions
    opts = FitOptions(n_opt_iters=int(pr.n_opt_iters), dlnp_stop=float(pr.dlnp_stop),
                      staged=bool(pr.enable_staged_fit), multi_band=multi, fit_sky=fit_sky,
                      flag_maxiter_margin=int(pr.flag_maxiter_margin),
                      flux_error_model=meta["flux_error_model"],
                      marginal_flux_errors=bool(pr.flux_error_marginal),
                      shape_min_snr=float(pr.shape_fit_min_snr),
                      pos_min_snr=float(pr.pos_fit_min_snr),
                      residual_error_scale=bool(pr.flux_error_residual_scale),
                      psf_wing_error=float(pr.flux_error_psf_wing))
    n_cat_flux = int(sum(sum(i.flux_from_catalog) for i in inits))
    kinds = ", ".join(f"{k}={sum(i.kind == k for i in inits)}"
                      for k in ("star", "exp", "dev", "sersic"))
    plog(f"sources: {len(sources)} ({kinds}); catalog initial fluxes "
         f"{n_cat_flux}/{len(sources) * len(bands)}")
    res = fit_fn(images, sources, opts)
    chosen = {}
    if multi and str(pr.model_selection) != "off":
        sources, res, chosen = _choose_models(pin, images, sources, res, opts, fit_fn, pr, stamp_fw, is_halo)
        for i, c in chosen.items():
            inits[i] = dataclasses.replace(inits[i], kind=res.sources[i].kind)
            plog(f"model selection: source {cat['ID'].iloc[i] if 'ID' in cat else i} -> "
                 f"{res.sources[i].kind} (dchisq " + " ".join(
                     f"{k}={v:.1f}" for k, v in c.dchisq.items()) + (", close)" if c.close else ")"))

    x0, y0 = spec.x0_roi, spec.y0_roi
    # FWHM (px) of the PSF each band was fitted with: its stamp's, or the fallback's
    fwhm = {b: stamp_fw.get(b, float(audits[b].get("fallback_fwhm_pix", float("nan")))) for b in bands}
    rows = []
    per = {b: res.per_band[b] for b in bands} if not multi else None
    for i in range(len(cat)):
        d = {"stype_fit": inits[i].kind, "flag_model_close": bool(i in chosen and chosen[i].close)}
        d.update(_dchisq_values(chosen.get(i)))
        if multi:
            d["flag_core_masked"] = core_masked(images, res.sources[i].x, res.sources[i].y)
            d["flag_dead_data"] = dead_near(images, res.sources[i].x, res.sources[i].y)
            d["fit_shape_fixed"] = bool(getattr(res.sources[i], "shape_fixed", False))
            d["fit_pos_held"] = bool(getattr(res.sources[i], "pos_held", False))
            d["flag_shape_fallback"] = bool(getattr(res.sources[i], "shape_fallback", False))
            d.update(_source_values(res.sources[i], x0, y0, ""))
            for j, b in enumerate(bands):
                d.update(_flux_values(res.sources[i], j, b, pr, fwhm[b], psf_frac[b]))
            d.update(_opt_values(res, "", res.sources[i]))
        else:
            d["flag_core_masked"] = any(
                core_masked([im], per[b].sources[i].x, per[b].sources[i].y)
                for b, im in zip(bands, images))
            d["flag_dead_data"] = any(dead_near([im], per[b].sources[i].x, per[b].sources[i].y)
                                      for b, im in zip(bands, images))
            d["fit_shape_fixed"] = any(bool(getattr(per[b].sources[i], "shape_fixed", False)) for b in bands)
            d["fit_pos_held"] = any(bool(getattr(per[b].sources[i], "pos_held", False)) for b in bands)
            d["flag_shape_fallback"] = any(bool(getattr(per[b].sources[i], "shape_fallback", False))
                                           for b in bands)
            for b in bands:
                s = per[b].sources[i]
                d.update(_source_values(s, x0, y0, f"_{b}"))
                d.update(_flux_values(s, 0, b, pr, fwhm[b], psf_frac[b]))
                d.update(_opt_values(per[b], f"_{b}", s))
        rows.append(d)
    fit_all = pd.DataFrame(rows)
    add_fitted_star_checks(fit_all, images, res, per, bands, psf_frac,
                           np.array([k.kind == "star" for k in inits]) & ~is_halo, pin,
                           [row_scales(pin, b, len(cat))[:, 0] for b in bands],
                           {b for b in bands if audits[b]["used_epsf"] and pr.flux_error_psf_wing > 0},
                           stamp_fw)
    meta["psf_flux_in_stamp"] = {b: float(audits[b].get("psf_flux_in_stamp", 1.0)) for b in bands}
    gmode = str(pr.galaxy_flux)
    srcs = {b: (res.sources if multi else per[b].sources) for b in bands}
    # a Sersic fit's size bias is that of a free index: none with the whole shape held
    fac = {b: profile_factors([s.kind for s in srcs[b]], [s.sersic_n for s in srcs[b]], gmode,
                              [np.nan if s.kind == "sersic" and s.shape_fixed else
                               s.re * np.sqrt(s.ab) / fwhm[b] for s in srcs[b]],
                              [getattr(s, "index_held", False) for s in srcs[b]]) for b in bands}
    for b in bands:     # a point source's PSF at its own position (stages.psf_field.position_scale)
        sc = row_scales(pin, b, len(srcs[b]))
        fac[b] = fac[b] * np.where([s.kind == "star" for s in srcs[b]], sc.prod(axis=1), 1.0)
    to_total_fluxes(fit_all, bands, meta["psf_flux_in_stamp"], fac)
    empty = [b for b, im in zip(bands, images) if not (im.invvar > 0).any()]
    if empty:   # nothing constrains these bands: report NaN instead of the starting values
        plog(f"bands without any usable pixel in the ROI: {','.join(empty)} (fit values NaN)",
             logging.WARNING)
        meta["bands_without_data"] = empty
        for b in empty:
            cols = [f"FLUX_{b}_fit", f"FLUXERR_{b}_fit"]
            if not multi:
                cols += [c for c in fit_all.columns if c.endswith(f"_{b}_fit")]
            fit_all.loc[:, cols] = np.nan
    if multi:
        _log_fit(plog, res, "")
        meta.update(_opt_values(res, ""))
        meta["staged_fit_stages"] = _stage_records(res) if pr.enable_staged_fit else []
        meta["opt_niters_total"] = int(sum(st.get("niters", 0) for st in _stage_records(res))
                                       or res.niters)
        meta["sky_fit"] = {b: float(v) for b, v in zip(bands, res.sky)}
        meta["chi2"] = float(res.chi2)
    else:
        for b in bands:
            _log_fit(plog, per[b], f"[{b}] ")
        meta["staged_fit_stages_by_band"] = {b: _stage_records(per[b]) for b in bands} \
            if pr.enable_staged_fit else {}
        meta["sky_fit"] = {b: float(per[b].sky[0]) for b in bands}
        meta["chi2"] = float(sum(per[b].chi2 for b in bands))

    const = {"patch_tag": spec.patch_tag, "epsf_tag": spec.epsf_tag,
             "psf_min_epsf_nstars_for_use": gate, **psum}
    base = ~is_halo
    tab = pd.DataFrame({
        "_row": cat["_row"].to_numpy(np.int64)[base],
        "x_pix_white": pd.to_numeric(cat["x_pix_white"], errors="coerce").to_numpy(float)[base],
        "y_pix_white": pd.to_numeric(cat["y_pix_white"], errors="coerce").to_numpy(float)[base],
        "x_pix_patch": cat["x_pix_patch"].to_numpy(float)[base],
        "y_pix_patch": cat["y_pix_patch"].to_numpy(float)[base],
        "_is_halo_source": np.zeros(int(base.sum()), bool)})
    for k, v in const.items():
        tab[k] = v
    fb = fit_all.loc[base].reset_index(drop=True)
    for name, dt in result_columns(bands, multi):
        if name in tab.columns:
            continue
        tab[name] = fb[name].to_numpy()
    tab = tab[[n for n, _ in result_columns(bands, multi)]]
    for name, dt in result_columns(bands, multi):
        if dt.kind == "S":
            tab[name] = [clip_text(v, dt.itemsize) for v in tab[name]]
        else:
            tab[name] = tab[name].astype(dt)
    meta["fit_sec"] = round(time.perf_counter() - t0, 3)
    plog(f"done in {meta['fit_sec']:.2f}s")
    plot = {"pin": pin, "fit_all": fit_all, "invvar": {b: im.invvar for b, im in
                                                       zip(bands, images)}}
    if multi:
        plot["models"] = dict(zip(bands, res.model_images()))
    else:
        plot["models"] = {b: per[b].model_images()[0] for b in bands}
    return PatchResult(tab, meta, plog.lines, plot)


def write_patch_products(result: PatchResult, out_dir: str) -> str:
    """Write ``{out_dir}/{tag}/``: meta.json, ``{tag}.log``, then the ``{tag}_cat_fit.csv`` last
    (its presence marks the patch complete). The pipeline draws the patch's figures from
    ``result.plot`` before (:mod:`tract7dt_mpi.figures`). Clears ``result.plot``. Returns the folder.
    """
    from ..io.atomic import atomic_write_text

    tag = result.tag
    pdir = os.path.join(out_dir, tag)
    os.makedirs(pdir, exist_ok=True)
    atomic_write_text(os.path.join(pdir, "meta.json"),
                      json.dumps(result.meta, indent=2, default=_json_default, allow_nan=True))
    lines = list(result.log_lines)
    atomic_write_text(os.path.join(pdir, f"{tag}.log"), "\n".join(lines) + "\n")
    csv = patch_csv_frame(result)
    atomic_write_text(os.path.join(pdir, f"{tag}_cat_fit.csv"), csv.to_csv(index=False))
    result.plot = None
    return pdir


def patch_is_complete(out_dir: str, tag: str) -> bool:
    """True when ``{out_dir}/{tag}/{tag}_cat_fit.csv`` exists (written last, atomically), the
    test ``--resume`` uses — a folder alone does not count."""
    return os.path.isfile(os.path.join(out_dir, tag, f"{tag}_cat_fit.csv"))


def patch_csv_frame(result: PatchResult) -> pd.DataFrame:
    """Base rows of the patch: every catalog column, then the fit columns (``{tag}_cat_fit.csv``)."""
    tab = result.table
    if result.plot is None:
        return tab.copy()
    cat = result.plot["pin"].cat
    base = cat.loc[~cat["_is_halo_source"].to_numpy(bool)].reset_index(drop=True)
    extra = [c for c in tab.columns if c not in base.columns or c == "_row"]
    return base.merge(tab[extra], on="_row", how="left")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


__all__ = ["PatchResult", "PatchFitOptions", "fit_patch_input", "result_columns", "write_patch_products", "patch_csv_frame", "patch_is_complete",
           "safe_name", "clip_text", "empty_table"]
