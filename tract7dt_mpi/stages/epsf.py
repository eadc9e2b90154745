"""One (band, cell) ePSF unit of work (the cell grid: :mod:`.epsf_cells`).

:func:`build_epsf_cell` is a pure function of the cell's arrays, the band's Gaia seeds and the
``epsf`` config section: no MPI, no global state, no randomness, so any rank can build any cell and
get the same stamp. Star selection lives in :mod:`.epsf_select`, the photutils build in
:mod:`.epsf_build`, stamp statistics in :mod:`.epsf_qa`. Asked for ``figures``, the result lists the
diagnostic PNGs as :class:`FigureSpec` data, which the pipeline draws (:mod:`tract7dt_mpi.figures`).
The caller writes the products with :func:`tract7dt_mpi.io.epsf_cells.write_cell_products`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from . import epsf_build
from . import epsf_qa as qa
from . import epsf_select as sel_mod
from .epsf_cells import min_cell_side
from .epsf_figures import FigureSpec, post_build_figures, request_figure  # noqa: F401 (FigureSpec re-exported)
from .epsf_report import no_star_reason
from .epsf_wings import with_wing_tail
from .psf_error import stamp_fwhm, star_flux_checks
from .epsf_build import finish_stamp, native_stamp, smoothing_kernel  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

MODES = ("sep", "gaia", "sep+gaia")


# ------------------------------------------------------------------------------------- data types

@dataclass
class EpsfCellInput:
    """Everything one cell needs; arrays are slices of the band over the cell [x0, x1) x [y0, y1)
    and a margin around it (their first column and row at frame pixel ``ax0``, ``ay0``; None: the
    cell's own x0, y0, no margin), so that a star centred near the cell's edge has its whole
    stamp (stages.epsf_cells.halo_box). Only stars centred inside the cell are its stars.

    img: scaled image; sigma_sky: sky-only sigma (inf/nan where invalid); bad: non-finite pixels only
    (the ePSF stage keeps saturated pixels' weights); satur: saturation mask (or None);
    saturate_scaled: SATURATE*scale (inf if unknown); fwhm_pix: seeing FWHM in px (nan if unknown);
    gaia_xy: (N, 2) magnitude-filtered Gaia seeds in working-frame pixels, or None;
    gain_scaled: electrons per scaled image unit (EGAIN / scale) for the Poisson term of the
    weighted residual stack (None: sky-only weights);
    size_locus: the band's stellar locus over the tile (:class:`.epsf_locus.SizeLocus`) or None.
    """

    band: str
    tag: str
    x0: int
    x1: int
    y0: int
    y1: int
    img: np.ndarray
    sigma_sky: np.ndarray
    bad: np.ndarray
    satur: np.ndarray | None
    saturate_scaled: float
    fwhm_pix: float
    gaia_xy: np.ndarray | None = None
    gain_scaled: float | None = None
    size_locus: object = None
    ax0: int | None = None
    ay0: int | None = None

    @property
    def origin(self) -> tuple[int, int]:
        """Frame pixel (x, y) of the arrays' first column and row."""
        return (int(self.x0) if self.ax0 is None else int(self.ax0),
                int(self.y0) if self.ay0 is None else int(self.ay0))


@dataclass
class EpsfCellResult:
    """``stamp``: float32 unit-sum ePSF (None on failure); ``meta``: the cell record written to meta.json;
    ``stars``: the used stars' flux-normalised grid-aligned stamps for the band's PSF field
    (``xy`` working frame (n, 2), ``vals`` and inverse variances ``w`` (n, S, S), float32)."""

    stamp: np.ndarray | None
    meta: dict
    stars: dict | None = None
    figures: list = field(default_factory=list)   #: FigureSpec, in drawing order


# ---------------------------------------------------------------------------------------- settings

def epsf_settings(s):
    """The ``epsf`` config section ``s`` (a frozen dataclass) as the ePSF functions use it.

    An invalid ``psfstar_mode`` falls back to ``sep+gaia`` with a warning.
    """
    if s.psfstar_mode not in MODES:
        log.warning("epsf.psfstar_mode=%r is not one of %s; using 'sep+gaia'", s.psfstar_mode, MODES)
        s = dataclasses.replace(s, psfstar_mode="sep+gaia")
    return s


def _cfg_record(s) -> dict:
    out = {}
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


# ------------------------------------------------------------------------------------- grid helpers

def forced_radius(fwhm_pix, cutout_size, settings, warn: bool = True) -> float:
    """Gaia forced-aperture radius in px: clamp(k*FWHM, rmin, rmax), <= cutout_size//2 - 2.

    An unknown FWHM gives 3.0 px (with a warning unless ``warn`` is false: cells stay quiet and the
    band-level caller warns once).
    """
    try:
        f = float(fwhm_pix)
    except (TypeError, ValueError):
        f = float("nan")
    if not (np.isfinite(f) and f > 0):
        if warn:
            log.warning("seeing FWHM unavailable; Gaia forced-aperture radius set to 3.0 px")
        return 3.0
    s = epsf_settings(settings)
    r = float(np.clip(s.gaia_forced_k_fwhm * f, s.gaia_forced_rmin_pix, s.gaia_forced_rmax_pix))
    return float(min(r, int(cutout_size) // 2 - 2))


def gaia_seeds_for_band(gaia_df, band, wcs, cfg_epsf) -> np.ndarray:
    """Gaia seeds of one band in working-frame pixels, (N, 2), table order kept.

    Rows with finite ra/dec/mag_{band} inside [gaia_mag_min, gaia_mag_max] (inclusive). No table,
    a mode without Gaia, or a missing column gives an empty array (with a warning for the column).
    """
    s = epsf_settings(cfg_epsf)
    empty = np.zeros((0, 2))
    if gaia_df is None or s.psfstar_mode == "sep" or len(gaia_df) == 0:
        return empty
    col = f"mag_{band}"
    missing = [c for c in ("ra", "dec", col) if c not in gaia_df.columns]
    if missing:
        log.warning("GaiaXP CSV has no column(s) %s; no Gaia ePSF seeds for band %s", missing, band)
        return empty
    ra = np.asarray(gaia_df["ra"], dtype=float)
    dec = np.asarray(gaia_df["dec"], dtype=float)
    mag = np.asarray(gaia_df[col], dtype=float)
    ok = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag) \
        & (mag >= s.gaia_mag_min) & (mag <= s.gaia_mag_max)
    if not ok.any():
        return empty
    x, y = wcs.all_world2pix(ra[ok], dec[ok], 0)
    return np.column_stack([np.asarray(x, float), np.asarray(y, float)])


# ------------------------------------------------------------------------------------------ meta

def _base_meta(inp: EpsfCellInput, s) -> dict:
    return {
        "band": inp.band, "patch": inp.tag,
        "x0": int(inp.x0), "x1": int(inp.x1), "y0": int(inp.y0), "y1": int(inp.y1),
        "epsf_ngrid": int(s.epsf_ngrid), "psfstar_mode": s.psfstar_mode,
        "gaia_snap_to_sep": bool(s.gaia_snap_to_sep),
        "gaia_mag_min": float(s.gaia_mag_min), "gaia_mag_max": float(s.gaia_mag_max),
        "nstars_seed": 0, "nstars_sel": 0, "nstars_extract": 0, "nstars_used": 0, "nstars_fitfail": 0,
        "epsf_shape": None,
        "patch_background": sel_mod.bkg_stats("disabled"),
        "local_star_background": qa.local_bkg_summary([], []),
        "local_bkg_diagnostics": {"local_bkg_diag_nstars": 0, "local_bkg_diag_status": "disabled"},
        "epsf_qa": {k: float("nan") for k in ("ee_r50_pix", "ee_r80_pix", "ee_r90_pix", "ee_edge",
                                              "epsf_edge_median", "epsf_edge_mean", "epsf_min", "epsf_max")},
        "residual_qa": qa.empty_residual_qa(),
        "selection": {},
        "cfg": _cfg_record(s),
        "status": "fail",
    }


# ------------------------------------------------------------------------------------- the build

def build_epsf_cell(inp: EpsfCellInput, cfg_epsf, figures: bool = False) -> EpsfCellResult:
    """Select stars, build, crop and normalise the ePSF of one (band, cell).

    Data problems never raise: they return ``stamp=None`` and ``meta['status'] == 'fail'`` with
    ``meta['error']``. With ``figures`` the result lists the diagnostic PNGs each config toggle asks
    for (also those made before a failure), for the caller to draw.
    """
    s = epsf_settings(cfg_epsf)
    shape = np.shape(inp.img)
    ox, oy = inp.origin
    if len(shape) != 2 or not (ox <= inp.x0 and inp.x1 <= ox + shape[1] and oy <= inp.y0
                               and inp.y1 <= oy + shape[0]):
        raise ValueError(f"EpsfCellInput.img of shape {shape} at ({ox}, {oy}) does not cover "
                         f"cell {inp.tag} [{inp.x0}:{inp.x1}, {inp.y0}:{inp.y1}]")
    for name in ("sigma_sky", "bad", "satur"):
        arr = getattr(inp, name)
        if arr is not None and np.shape(arr) != shape:
            raise ValueError(f"EpsfCellInput.{name} has shape {np.shape(arr)}, expected {shape} (img) for "
                             f"cell {inp.tag} [{inp.x0}:{inp.x1}, {inp.y0}:{inp.y1}]")
    meta = _base_meta(inp, s)
    figs = [] if figures else None
    try:
        stamp, stars = _build(inp, s, meta, figs)
        meta["status"] = "ok"
        return EpsfCellResult(stamp, meta, stars, figs or [])
    except epsf_build.CellFailure as exc:
        meta["status"], meta["error"] = "fail", str(exc)
        if meta["nstars_sel"] == 0:   # no star: say why at INFO (small cells: said at planning)
            level = logging.DEBUG if meta.get("cell_too_small") else logging.INFO
            log.log(level, "ePSF %s %s: %s", inp.band, inp.tag, no_star_reason(meta))
            return EpsfCellResult(None, meta, figures=figs or [])
    except Exception as exc:  # library errors on odd data must not kill the run
        log.debug("ePSF %s %s failed", inp.band, inp.tag, exc_info=True)
        meta["status"], meta["error"] = "fail", f"{type(exc).__name__}: {exc}"
    log.warning("ePSF %s %s failed: %s", inp.band, inp.tag, meta["error"])
    return EpsfCellResult(None, meta, figures=figs or [])


def _select(inp, s, img, sigma, bad, satur, work, meta):
    """Star selection on the cell (background, candidates, Gaia seeds, cuts); returns the Selection."""
    h, w = img.shape
    need, sat_thr, sat_r = sel_mod.selection_limits(s, inp.saturate_scaled)
    use_gaia = s.psfstar_mode in ("gaia", "sep+gaia")
    ox, oy = inp.origin
    own = (inp.x0 - ox, inp.x1 - ox, inp.y0 - oy, inp.y1 - oy)     # the cell, in array pixels
    seeds = sel_mod.seeds_in_window(inp.gaia_xy, ox, oy, (h, w), need, own) if use_gaia \
        else np.zeros((0, 2))
    meta["nstars_seed"] = int(len(seeds))
    cand = sel_mod.sep_detect(work, sigma, bad, s)
    nb = sel_mod.neighbour_geometry(inp.fwhm_pix)
    sel_mod.filter_candidates(cand, (h, w), need, sat_thr, satur, sat_r, s.q_range, nb, own)
    sel_mod.stellar_locus_cut(cand, work, bad, band_locus=inp.size_locus)
    sel = sel_mod.Selection(reasons=dict(cand.reasons))
    used: set = set()
    meta_extra = {}
    if use_gaia and len(seeds):
        r_forced = forced_radius(inp.fwhm_pix, s.cutout_size, s, warn=False)
        meta_extra["gaia_forced_r_pix"] = r_forced
        sel_mod.gaia_pass(sel, seeds, cand, used, img, work, sigma, bad, satur, s, sat_thr, sat_r, r_forced,
                          nb)
    if s.psfstar_mode in ("sep", "sep+gaia"):
        sel_mod.sep_pass(sel, cand, used, s)
    meta["nstars_sel"] = len(sel)
    meta["selection"] = {
        "n_sep_detections": int(cand.x.size), "n_sep_candidates": int(cand.ok.size),
        "n_origin_sep": sel.origin.count("sep"), "n_origin_gaia": sel.origin.count("gaia"),
        "n_origin_both": sel.origin.count("both"), "rejected": dict(sel.reasons),
        "edge_clearance_pix": need, "saturation_threshold": sat_thr, "star_sat_check_r": sat_r,
        "neighbour_mask_dilate_pix": nb[0], "blend_core_radius_pix": nb[1],
        "size_locus_r50_pix": cand.size_locus,
        "band_size_locus_r50_pix": getattr(inp.size_locus, "r50", None),
        "band_size_locus_tol": getattr(inp.size_locus, "tol", None),
        **meta_extra,
    }
    sel.seg, sel.nb = cand.seg, nb
    return sel


def _prepare(inp):
    """Float64 image/sigma, bad = given bad | non-finite, satur as bool (or None)."""
    img = np.array(inp.img, dtype=np.float64)
    sigma = np.array(inp.sigma_sky, dtype=np.float64)
    bad = np.asarray(inp.bad, dtype=bool) | ~np.isfinite(img)
    satur = np.asarray(inp.satur, dtype=bool) if inp.satur is not None else None
    return img, sigma, bad, satur


def select_psf_stars(inp: EpsfCellInput, cfg_epsf):
    """Background + star selection only, for QA and tests.

    Returns (Selection with cell-local x, y, origin and rejection counts, meta dict).
    """
    s = epsf_settings(cfg_epsf)
    meta = _base_meta(inp, s)
    img, sigma, bad, satur = _prepare(inp)
    bg = sel_mod.cell_background(img, sigma, bad, s)
    meta["patch_background"] = bg.stats
    return _select(inp, s, img, sigma, bad, satur, bg.work, meta), meta


def _build(inp, s, meta, figs):
    """The body of :func:`build_epsf_cell`; raises CellFailure for data problems."""
    img, sigma, bad, satur = _prepare(inp)
    if not (~bad).any():
        raise epsf_build.CellFailure("cell has no valid pixel")
    side = min_cell_side(s)
    if min(img.shape) < side:
        meta["cell_too_small"] = True
        raise epsf_build.CellFailure(f"cell {img.shape[1]}x{img.shape[0]} px is smaller than the star cut-out "
                            f"plus its pad ({side} px): it cannot hold a PSF star")

    bg = sel_mod.cell_background(img, sigma, bad, s)
    meta["patch_background"] = bg.stats
    work = bg.work
    if bg.back is not None:
        request_figure(figs, s.save_patch_background_diagnostics, "plot_background_diagnostics",
              "background_diagnostics.png", img, bg.back, work, colorbar=s.diagnostics_show_colorbar)

    sel = _select(inp, s, img, sigma, bad, satur, work, meta)
    title = f"{inp.band} {inp.tag}: {len(sel)} PSF stars ({s.psfstar_mode})"
    request_figure(figs, True, "plot_psfstars", "psfstars.png", img, sel.x, sel.y, sel.origin, title=title)
    if s.background_subtract_patch:
        request_figure(figs, True, "plot_psfstars", "psfstars_bgsub.png", work, sel.x, sel.y, sel.origin,
              title=title + " bg-sub")
    if len(sel) == 0:
        raise epsf_build.CellFailure("no PSF star selected")

    build = _build_stacked if int(s.oversamp) == 1 else _build_photutils
    stamp, good, stars, bkg_rows, ef, payload = build(inp, s, meta, work, sigma, bad, sel)
    meta["psf_flux_in_stamp"] = round(float(ef), 6)
    meta["epsf_shape"] = [int(stamp.shape[0]), int(stamp.shape[1])]
    meta["epsf_qa"] = qa.growth_metrics(stamp.astype(float))

    stacks = epsf_build.residual_qa(good, s, meta) if s.save_residual_diagnostics else None
    post_build_figures(inp, s, meta, figs, stamp, stacks, stars, good, bkg_rows, sel)
    return stamp, payload


def _stamps(work, sigma, bad, sel, s):
    """Square odd stamps of side cutout_size around every selected star that fits the cell:
    (rows [(k, x0, y0, data, 1/sigma with bad and neighbour pixels at 0, (cx, cy))], masked frac)."""
    size = int(s.cutout_size) | 1
    half = size // 2
    err = epsf_build.error_image(sigma, bad)
    h, w = work.shape
    out, fracs = [], []
    for k in range(len(sel)):
        x, y = float(sel.x[k]), float(sel.y[k])
        ix, iy = int(round(x)), int(round(y))
        x0, y0 = ix - half, iy - half
        if x0 < 0 or y0 < 0 or x0 + size > w or y0 + size > h:
            continue
        data = work[y0:y0 + size, x0:x0 + size]
        bad_k = bad[y0:y0 + size, x0:x0 + size] | ~np.isfinite(data)
        wt = np.where(bad_k, 0.0, 1.0 / err[y0:y0 + size, x0:x0 + size])
        cx, cy = x - x0, y - y0
        nmask = sel_mod.star_neighbour_mask(sel, k, x0, y0, (size, size), (cx, cy))
        fracs.append(float(nmask.mean()))
        out.append((k, x0, y0, np.where(bad_k, 0.0, data), np.where(nmask, 0.0, wt), (cx, cy)))
    return out, (float(np.mean(fracs)) if fracs else 0.0)


def _build_stacked(inp, s, meta, work, sigma, bad, sel):
    """The native builder (:mod:`.epsf_stack`); returns (stamp, used stars, all stars, local
    background rows, fraction of the PSF's total flux inside the saved stamp, the used stars'
    registered stamps for the band's PSF field: ``EpsfCellResult.stars``)."""
    from . import epsf_stack

    rows, frac = _stamps(work, sigma, bad, sel, s)
    meta["nstars_extract"] = len(rows)
    meta["selection"]["neighbour_masked_frac_mean"] = frac
    if not rows:
        raise epsf_build.CellFailure("no star stamp fits inside the cell")
    datas, wts = np.array([r[3] for r in rows]), np.array([r[4] for r in rows])
    bkg_rows, stats, b0 = [], [], np.zeros(len(rows))
    if s.star_local_bkg_subtract:
        b0, stats, _ = epsf_build.annulus_backgrounds(datas, wts, s)
    f0 = qa.symmetric_fluxes(datas - np.asarray(b0)[:, None, None], wts > 0, [r[5] for r in rows])
    try:
        res = epsf_stack.stack_epsf(datas, wts, [r[5] for r in rows],
                         [(r[1], r[2]) for r in rows], [r[0] for r in rows], inp.gain_scaled,
                         inp.fwhm_pix, f0, b0, fit_background=bool(s.star_local_bkg_subtract),
                         wing_tail=bool(s.wing_tail), combine=str(s.combine))
    except ValueError as exc:
        raise epsf_build.CellFailure(f"ePSF stack failed: {exc}") from None
    stars = res.stars
    if s.star_local_bkg_subtract:
        meta["local_star_background"] = qa.local_bkg_summary([st.background for st in stars], stats)
        for (k, x0, y0, data, wt, c), st, status in zip(rows, stars, stats):
            bkg_rows.append({"id": st.id_label, "raw": data, "mask": wt > 0, "sub": st.data,
                             "value": st.background, "status": status})
    good = [st for st in stars if st.used]
    meta["builder"] = {"combine": str(s.combine), "method": "native_stack", "passes": res.info["passes"],
                       "n_rejected": res.info["n_rejected"], "outlier_masked_frac": res.info["masked_frac"],
                       "fwhm_pix": res.info["fwhm_pix"]}
    meta["wings"] = res.info["wings"]
    _record_used(meta, good, inp)
    wts = epsf_build.star_weights(good, float(np.nanmax(res.psf)), inp.gain_scaled)
    meta["used_stars_weight"] = [round(float(v), 5) for v in wts]
    _psf_flux_check(res.info["fwhm_pix"], good, [st.model for st in good], wts, inp.gain_scaled, s, meta)
    used, vals, w = epsf_stack.normalised_stamps(stars, res.psf, inp.gain_scaled)
    ox, oy = inp.origin
    payload = {"xy": np.array([[st.center[0] + ox, st.center[1] + oy] for st in used], float),
               "vals": vals.astype(np.float32), "w": w.astype(np.float32)}
    crop = epsf_build.finish_stamp(res.psf, 1, s.final_psf_size)
    fs = int(s.final_psf_size)
    o0, o1 = max(0, (res.psf.shape[0] - fs) // 2), max(0, (res.psf.shape[1] - fs) // 2)
    ef = float(min(res.psf[o0:o0 + fs, o1:o1 + fs].sum(), 1.0))
    if not crop.sum() > 0:
        raise epsf_build.CellFailure("ePSF has no positive flux")
    return crop, good, stars, bkg_rows, ef, payload


def _record_used(meta, good, inp):
    meta["nstars_used"] = len(good)
    meta["nstars_fitfail"] = meta["nstars_extract"] - len(good)
    # working-frame centres of the stars the ePSF is made of (the ePSF is their mean PSF)
    ox, oy = inp.origin
    meta["used_stars_xy"] = [[round(float(st.center[0]) + ox, 3), round(float(st.center[1]) + oy, 3)]
                             for st in good]
    if len(good) <= 0:
        raise epsf_build.CellFailure("the ePSF build kept no star")


def _build_photutils(inp, s, meta, work, sigma, bad, sel):
    """photutils' EPSFBuilder (oversampled ePSFs); returns what :func:`_build_stacked` does
    (no PSF-field stamps: None)."""
    stars = epsf_build.extract(work, sigma, bad, sel, s)
    meta["nstars_extract"] = int(len(epsf_build.star_list(stars)))
    stars, bkg_rows = epsf_build.prepare_stars(stars, sel, s, meta)
    builder = epsf_build.make_builder(s)
    result = builder(stars)
    epsf, fitted = result[0], result[1]
    meta["builder"] = {
        "combine": "median", "method": "photutils",
        "smoothing_kernel": epsf_build.smoothing_kernel(s.oversamp),
        "iterations": int(getattr(result, "iterations", -1)),
        "converged": bool(getattr(result, "converged", False)),
    }
    good = epsf_build.good_fitted(fitted)
    _record_used(meta, good, inp)
    wts = np.full(len(good), 1.0 / len(good))
    meta["used_stars_weight"] = [round(float(v), 5) for v in wts]
    for st in good:
        st.model = np.asarray(st.register_epsf(epsf), dtype=float)
    _psf_flux_check(stamp_fwhm(native_stamp_of(epsf)), good, [st.model for st in good], wts,
                    inp.gain_scaled, s, meta)
    stamp = epsf_build.finish_stamp(epsf.data, s.oversamp, s.final_psf_size)
    if not stamp.sum() > 0:
        raise epsf_build.CellFailure("ePSF has no positive flux")
    tailed, meta["wings"] = with_wing_tail(stamp, stamp_fwhm(stamp.astype(float)))
    if s.wing_tail:
        stamp = tailed
    ef = 1.0 / (1.0 + float(meta["wings"]["tail_beyond_stamp"]))
    return stamp, good, stars, bkg_rows, ef, None


def _psf_flux_check(fwhm, good, models, shares, gain, s, meta):
    """meta['psf_flux_check']: each used star's flux error from the ePSF within 3 FWHM, and its noise.

    3 FWHM holds ~97 % of the flux a wrong PSF width moves (2 FWHM: ~89 %, so the aperture's own
    error would cancel a tenth of the effect).
    """
    radius = float(np.clip(3.0 * fwhm if np.isfinite(fwhm) else 12.0, 6.0, 25.0))
    rin, rout = s.star_local_bkg_annulus_rin_pix, s.star_local_bkg_annulus_rout_pix
    n_bkg = max(np.pi * (rout ** 2 - rin ** 2), float(s.star_local_bkg_minpix), 1.0)
    d, sig = star_flux_checks(good, models, shares, gain, radius, n_bkg)
    meta["psf_flux_check"] = {"radius_pix": round(radius, 2), "delta": [round(v, 6) for v in d],
                              "sigma": [round(v, 6) for v in sig]}


def native_stamp_of(epsf):
    return epsf_build.native_stamp(np.asarray(epsf.data, float), int(np.max(np.atleast_1d(epsf.oversampling))))


# ----------------------------------------------------------------------------------- products

def epsf_summary(metas) -> list:
    """``epsf_summary.json`` content: the cell metas in (band order, row-major cell) order as given,
    plus any ``{band, status: 'band_fail', error}`` records, unchanged."""
    return [dict(m) for m in metas]


def count_status(metas):
    """(total, ok, fail) counts for the summary log line."""
    total = len(metas)
    ok = sum(1 for m in metas if m.get("status") == "ok")
    return total, ok, total - ok


__all__ = ["EpsfCellInput", "EpsfCellResult", "active_cells", "build_epsf_cell", "cell_bounds", "cell_tag",
           "count_status", "epsf_settings", "epsf_summary", "finish_stamp", "forced_radius",
           "gaia_seeds_for_band", "native_stamp", "select_psf_stars", "smoothing_kernel"]
