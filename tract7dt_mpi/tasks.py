"""The units of work the ranks run; :mod:`tract7dt_mpi.pipeline` decides their order and which rank
runs each.

Everything here is MPI-free: the rank-0 steps (load, augmentation, bright mask, patch plan, merge,
ZP, the ePSF and run summaries, reading back what an earlier command wrote) and the task functions
(one ePSF cell, one patch, one patch dump, one summary figure) that any rank runs from a small
task descriptor plus state every rank already holds (config, working catalog, ePSF stamps, patch
plan).  Task results depend on the task only, never on the rank that ran it.  Stages get their
options from :mod:`tract7dt_mpi.stage_options`.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pandas as pd

from .errors import InputError
from .parallel.runner import TaskResult
from .parallel.scheduler import Task

log = logging.getLogger("tract7dt_mpi.pipeline")

WORKING_CATALOG = "working_catalog.csv"


def epsf_task_id(band: str, tag: str) -> str:
    return f"epsf/{band}/{tag}"


def patch_task_id(tag: str) -> str:
    return f"patch/{tag}"


def warm_up() -> None:
    """Import the task-side modules (photutils, SEP, matplotlib, the engine) ahead of the first
    task; workers do this while rank 0 loads the inputs, so the import time is hidden."""
    import importlib
    for name in ("tract7dt_mpi.stages.epsf", "tract7dt_mpi.stages.fit", "tract7dt_mpi.stages.patch_inputs",
                 "tract7dt_mpi.io.prepared", "tract7dt_mpi.plots.epsf_plots", "tract7dt_mpi.plots.patch_plots",
                 "tract7dt_mpi.plots.summary_plots", "tract7dt_mpi.figures",
                 "matplotlib.pyplot"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the task will report the real error
            log.debug("warm-up import of %s failed: %s", name, exc)


def read_saturated_stars(cfg) -> pd.DataFrame:
    """The bright-mask stage's unmatched saturated detections (x, y working frame; empty table
    when the stage wrote none)."""
    from .stages.bright_mask import SATURATED_CSV
    path = os.path.join(cfg.outputs.work_dir, "bright_mask", SATURATED_CSV)
    return pd.read_csv(path) if os.path.exists(path) else pd.DataFrame({"x": [], "y": []})

# ----------------------------------------------------------------------------- rank-0 steps
def _band_loaded(i, n, band, sec, shape):
    log.info("Loaded band %s (%d/%d) in %.2fs, working frame %dx%d", band, i, n, sec, shape[1], shape[0])


def load_step(cfg, write_store: bool = True, plots: bool = True):
    """S1: stream bands into the prepared store (``mpi.prepared_store``); return LoadResult."""
    from .io.prepared import PreparedWriter
    from .stage_options import load_options
    from .stages.load import load_inputs
    os.makedirs(cfg.outputs.work_dir, exist_ok=True)
    if not write_store:
        res = load_inputs(load_options(cfg), writer=None, logger=log, plots=plots, on_band=_band_loaded)
    else:
        writer = PreparedWriter(cfg.mpi.prepared_store)
        try:
            res = load_inputs(load_options(cfg), writer=writer, logger=log, plots=plots, on_band=_band_loaded)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    if plots:
        from .figures import draw_load
        draw_load(cfg, res, log)
    return res


def augment_step(cfg, load_res, plots: bool = True):
    """S2 (zp.enabled): Gaia augmentation; returns the working catalog."""
    from .stage_options import gaia_options
    from .stages.gaia import run_augment_gaia
    cat, info = run_augment_gaia(gaia_options(cfg), load_res, logger=log)
    if plots:
        from .figures import draw_gaia
        draw_gaia(cfg, load_res.white, cat, info, log)
    load_res.catalog = cat
    return cat


def bright_mask_step(cfg, load_res, write_store: bool = True, plots: bool = True):
    """S3: bright-source mask into the prepared store + ``affected_by_bright_mask``."""
    from .io.prepared import PreparedWriter
    from .stage_options import bright_mask_options
    from .stages.bright_mask import run_bright_mask
    cat, mask, info = run_bright_mask(bright_mask_options(cfg), load_res.catalog, load_res.white, load_res.sigma_white,
                                      load_res.satur_any, load_res.wcs, logger=log)
    if plots:
        from .figures import draw_bright_mask
        draw_bright_mask(cfg, load_res.white, mask, load_res.satur_any, cat, info, log)
    if write_store:
        w = PreparedWriter.append(cfg.mpi.prepared_store)
        w.write_bright_mask(mask)
        w.close()
    load_res.catalog = cat
    return cat


def save_working_catalog(cfg, catalog: pd.DataFrame) -> str:
    """The base catalog of this run (flags, pixels, ``_row``) for ``run-patches``/``merge``."""
    from .io.atomic import atomic_write_csv
    return atomic_write_csv(os.path.join(cfg.outputs.work_dir, WORKING_CATALOG), catalog)


def listed_image_files(cfg) -> list[str]:
    """The image files the image list names (none when there is no list), for the plan hash."""
    from .io.fits import split_hdu_spec
    from .stages.image_list import read_image_entries
    lst = cfg.inputs.image_list_file
    if not (lst and os.path.isfile(lst)):
        return []
    return [split_hdu_spec(e.image)[0] for e in read_image_entries(lst, cfg.config_dir)]


def read_working_catalog(cfg) -> pd.DataFrame:
    from .io.tables import read_catalog_csv
    path = os.path.join(cfg.outputs.work_dir, WORKING_CATALOG)
    if not os.path.exists(path):
        raise InputError(f"{path} not found: run 'run', 'build-patches' or 'run-epsf' first")
    cat = read_catalog_csv(path)
    for c in ("excluded_crop", "excluded_saturation", "excluded_any", "affected_by_bright_mask",
              "_is_halo_source"):
        if c in cat.columns:
            cat[c] = cat[c].astype(str).str.strip().str.lower().isin(("true", "1"))
    for c in ("x_pix_white", "y_pix_white"):
        if c in cat.columns:
            cat[c] = pd.to_numeric(cat[c], errors="coerce")
    cat["_row"] = pd.to_numeric(cat["_row"]).astype(np.int64)
    return cat


def prepared_frame(cfg):
    """(shape, bands, working WCS, crop offset (x0, y0) of the working frame in the input images)
    from the prepared store's attributes (no image is read)."""
    from .io.prepared import PreparedImages
    path = cfg.mpi.prepared_store
    if not os.path.exists(path):
        raise InputError(f"{path} not found: run 'run', 'build-patches' or 'run-epsf' first")
    with PreparedImages(path) as p:
        return tuple(p.shape), list(p.bands), p.wcs, (p.crop_x0, p.crop_y0)


def saved_inputs(cfg):
    """(working catalog, frame shape, bands, active cells) of an earlier ``run``/``build-patches``
    (``run-patches`` starts from them)."""
    shape, bands, _wcs, _crop = prepared_frame(cfg)
    cat = read_working_catalog(cfg)
    return cat, shape, bands, active_cells(cfg, cat, shape)


def active_cells(cfg, catalog, shape):
    """Active ePSF cells or all cells when ``skip_empty_epsf_patches`` is off."""
    from .stages.epsf_cells import active_cells as _active
    from .stages.patches import active_positions
    n = int(cfg.epsf.epsf_ngrid)
    if not bool(cfg.epsf.skip_empty_epsf_patches):
        return [(r, c) for r in range(n) for c in range(n)]
    _, x, y = active_positions(catalog)
    cells = _active(np.column_stack([x, y]), shape, n)
    log.info("Active ePSF cells from input catalog: %d/%d", len(cells), n * n)
    if not cells:
        log.warning("no active ePSF cells: no ePSFs will be built")
    return cells


def _cell_boxes(cfg, load_res, cells) -> dict:
    from .stages.epsf_cells import cell_bounds
    n = int(cfg.epsf.epsf_ngrid)
    return {rc: cell_bounds(load_res.shape, n, *rc) for rc in cells}


def locus_tasks(cfg, load_res, cells) -> list[Task]:
    """One task per band for its stellar size locus (``Worker.band_locus``), before the cells."""
    from .stages.epsf import epsf_settings
    from .stages.epsf_locus import locus_cell_boxes
    use = locus_cell_boxes(_cell_boxes(cfg, load_res, cells), epsf_settings(cfg.epsf))
    if not use:
        return []
    return [Task(id=f"locus:{b}", kind="locus", cost=float(len(load_res.bands) - i), index=i,
                 payload={"band": b, "boxes": use}) for i, b in enumerate(load_res.bands)]


def epsf_tasks(cfg, load_res, cells, loci=None) -> list[Task]:
    """One task per (band, active cell), band order then row-major cells. ``loci``: band ->
    stellar size locus from the :func:`locus_tasks` (None: measured here, band after band)."""
    from .io.tables import read_gaiaxp
    from .stages.epsf import gaia_seeds_for_band
    from .stages.epsf_cells import cell_tag
    gaia = None
    gpath = cfg.inputs.gaiaxp_synphot_csv
    if gpath and os.path.exists(gpath) and cfg.epsf.psfstar_mode != "sep":
        try:
            gaia = read_gaiaxp(gpath)
        except InputError as exc:
            log.warning("GaiaXP CSV unusable for ePSF seeds (%s); SEP-only", exc)
    from .io.prepared import PreparedImages
    from .stages.epsf import epsf_settings
    from .stages.epsf_cells import halo_box, too_small_cells
    from .stages.epsf_locus import band_loci
    boxes = _cell_boxes(cfg, load_res, cells)
    s = epsf_settings(cfg.epsf)
    too_small_cells(boxes, s, load_res.shape)
    if loci is None:
        with PreparedImages(cfg.mpi.prepared_store) as prep:
            loci = band_loci(prep, load_res.bands, boxes, s)
    tasks, i = [], 0
    for band in load_res.bands:
        seeds = gaia_seeds_for_band(gaia, band, load_res.wcs, cfg.epsf) if gaia is not None else None
        for r, c in cells:
            x0, x1, y0, y1 = boxes[(r, c)]
            tag = cell_tag(r, c)
            tasks.append(Task(epsf_task_id(band, tag), "epsf", cost=float((x1 - x0) * (y1 - y0)),
                              index=i, payload={"band": band, "tag": tag, "box": (x0, x1, y0, y1),
                                                "read_box": halo_box((x0, x1, y0, y1), load_res.shape, s),
                                                "gaia_xy": seeds, "size_locus": loci.get(band)}))
            i += 1
    return tasks


class Worker:
    """Per-rank state for the task functions (opened lazily, reused across tasks)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._prep = None
        self.catalog = None
        self.plan = None            # list[PatchSpec]
        self.psfs = {}              # epsf_tag -> band -> PsfChoiceInput
        self._sat = None            # unmatched saturated stars (bright-mask stage)
        self._psfex = {}            # PSFEx file -> io.psfex.PsfexModel (psf_source: psfex)

    @property
    def prepared(self):
        if self._prep is None:
            from .io.prepared import PreparedImages
            self._prep = PreparedImages(self.cfg.mpi.prepared_store)
        return self._prep

    def close(self):
        if self._prep is not None:
            self._prep.close()
            self._prep = None

    # -------------------------------------------------------------- ePSF cell
    def epsf_cell(self, task: Task) -> TaskResult:
        from .io.epsf_cells import write_cell_products
        from .stages.epsf import EpsfCellInput, build_epsf_cell
        p = task.payload
        band, tag = p["band"], p["tag"]
        x0, x1, y0, y1 = p["box"]
        ax0, ax1, ay0, ay1 = p.get("read_box") or p["box"]
        cut = self.prepared.read(band, ay0, ay1, ax0, ax1, with_bright=False)
        info = self.prepared.band_info(band)
        inp = EpsfCellInput(band=band, tag=tag, x0=x0, x1=x1, y0=y0, y1=y1, ax0=ax0, ay0=ay0, img=cut.img,
                            sigma_sky=cut.sigma_sky, bad=cut.nonfinite, satur=cut.saturated,
                            saturate_scaled=info.saturate_scaled, fwhm_pix=info.fwhm_pix,
                            gaia_xy=p.get("gaia_xy"), gain_scaled=info.egain / info.scale,
                            size_locus=p.get("size_locus"))
        cell_dir = os.path.join(self.cfg.outputs.epsf_dir, band, tag)
        os.makedirs(cell_dir, exist_ok=True)
        res = build_epsf_cell(inp, self.cfg.epsf, figures=self.cfg.plotting.level == "full")
        if res.figures:                                                         # per-cell PNGs
            from .figures import draw_epsf_cell
            draw_epsf_cell(res, cell_dir, int(self.cfg.plotting.dpi))
        write_cell_products(cell_dir, res.meta, res.stamp, res.stars)
        return TaskResult(rows=None, data={"meta": res.meta, "stamp": res.stamp})

    # -------------------------------------------------------------- band stellar locus
    def band_locus(self, task: Task) -> TaskResult:
        """One band's stellar size locus for its ePSF cells (stages.epsf_locus.band_locus)."""
        from .stages.epsf import epsf_settings
        from .stages.epsf_locus import band_locus
        p = task.payload
        return TaskResult(rows=None, data={"locus": band_locus(self.prepared, p["band"], p["boxes"],
                                                               epsf_settings(self.cfg.epsf))})

    # -------------------------------------------------------------- band PSF field
    def psf_field(self, task: Task) -> TaskResult:
        """One band's PSF field with its bright-star wing and halos (band_psfs.band_field), and its
        log lines (which rank 0 writes into the run log, whichever rank ran the task)."""
        from .band_psfs import band_field
        from .logsetup import collected
        p = task.payload
        with collected(log) as lines:
            field = band_field(self.cfg, p["band"], p["metas"], self.prepared.shape, self.prepared,
                               p["candidates"], p["halo_xy"], p["disks"], p.get("offset"))
        return TaskResult(rows=None, data={"field": field, "log": lines})

    # -------------------------------------------------------------- patch fit
    @property
    def saturated_stars(self):
        """Unmatched saturated detections of the bright-mask stage (empty when not written)."""
        if self._sat is None:
            self._sat = read_saturated_stars(self.cfg)
        return self._sat

    def patch_psfs(self, spec) -> dict:
        """band -> PsfChoiceInput of one patch (patch_run.epsf_interpolation)."""
        from .stages.psf_field import patch_psf_choices
        pr = self.cfg.patch_run
        if pr.psf_source == "psfex":
            from .stages.psfex_field import psfex_patch_choices
            return psfex_patch_choices(self.prepared, spec, self._psfex)
        return patch_psf_choices(self.psfs, spec, self.prepared.shape, int(self.cfg.epsf.epsf_ngrid),
                                 int(pr.min_epsf_nstars_for_use), pr.epsf_interpolation)

    def patch_input(self, spec):
        """The PatchInput of one patch, read from the prepared store."""
        from .stage_options import psf_reach
        from .stages.patch_inputs import build_patch_input
        from .stages.psf_field import with_position_scales
        pin = build_patch_input(spec, self.prepared, self.catalog, self.patch_psfs(spec), psf_reach(self.cfg),
                                self.saturated_stars)
        return with_position_scales(pin, self.psfs, self.prepared.shape) \
            if self.cfg.patch_run.psf_source != "psfex" else pin

    def patch_fit(self, task: Task) -> TaskResult:
        from .stage_options import fit_options
        from .stages.fit import fit_patch_input, write_patch_products
        spec = self.plan[task.payload]
        t0 = time.perf_counter()
        pin = self.patch_input(spec)
        out_dir = self.cfg.outputs.patch_results_dir
        res = fit_patch_input(pin, fit_options(self.cfg))
        if res.plot is not None:       # None: nothing was fitted, no products (as fit_patch_input)
            if self.cfg.plotting.level != "none":
                from .summary_steps import write_residual_part
                write_residual_part(self.cfg, spec, res.plot, self.prepared.shape)   # before the CSV
            if self.cfg.plotting.level == "full":
                from .figures import draw_patch
                draw_patch(res, out_dir, self.cfg)
            write_patch_products(res, out_dir)
        write_runner_log(out_dir, spec.patch_tag, "ok", time.perf_counter() - t0)
        return TaskResult(rows=res.table, data=None)

    def summary_plot(self, task: Task) -> TaskResult:
        from .summary_steps import run_summary_task
        return run_summary_task(self.cfg, self.prepared, self.plan, task)

    def patch_dump(self, task: Task) -> TaskResult:
        from .io.patch_dumps import write_patch_dump
        from .stages.patch_inputs import patch_input_record
        pin = self.patch_input(self.plan[task.payload])
        write_patch_dump(self.cfg.outputs.patch_inputs_dir, pin.tag, *patch_input_record(pin))
        return TaskResult()


def log_rank_usage(usage: list[dict], background: float, cores: int) -> None:
    """End-of-run lines: peak RSS and storage I/O of every rank, other programs' CPU load."""
    log.info("Peak RSS per rank [MiB]: %s", ", ".join(f"r{i}={u['rss_mb']:.0f}" for i, u in enumerate(usage)))
    log.info("I/O per rank [MiB read/written]: %s", ", ".join(
        f"r{i}={u['read_bytes'] / 2**20:.0f}/{u['write_bytes'] / 2**20:.0f}" for i, u in enumerate(usage)))
    if background == background:
        log.info("Other processes kept %.2f of %d core(s) busy during the run", background, cores)


def write_runner_log(out_dir, tag, status, sec, error=None, rank=None, host=None):
    """``{tag}/{tag}.runner.log``: where and how the patch ran (and its traceback on failure)."""
    from .io.atomic import atomic_write_text
    from .parallel.mpienv import hostname
    pdir = os.path.join(out_dir, tag)
    os.makedirs(pdir, exist_ok=True)
    lines = [f"patch: {tag}", f"status: {status}", f"sec: {sec:.3f}",
             f"host: {host or hostname()}", f"pid: {os.getpid()}"]
    if rank is not None:
        lines.append(f"rank: {rank}")
    if error:
        lines += ["--- TRACEBACK ---", error.rstrip()]
    atomic_write_text(os.path.join(pdir, f"{tag}.runner.log"), "\n".join(lines) + "\n", fsync=False)


def _light_sizes(cfg, catalog) -> dict:
    """_row -> half-light radius (px) on the white stack of the rows without a catalogue Re
    (typed STAR rows excepted): the size a galaxy's extent is taken from when the catalogue
    has none. Empty when every row has an Re or no white stack is stored."""
    from .io.prepared import PreparedImages
    from .stages.patches import light_radii, rows_without_size
    rows, x, y = rows_without_size(catalog)
    if not rows.size or not os.path.exists(cfg.mpi.prepared_store):
        return {}
    with PreparedImages(cfg.mpi.prepared_store) as p:
        if not p.has_white:
            return {}
        white, sigma = p.read_white()
    r50 = light_radii(np.asarray(white, float), x, y, np.asarray(sigma, float))
    return {int(r): float(v) for r, v in zip(rows, r50) if np.isfinite(v)}


def assign_plan(cfg, geom, catalog, n_bands, shape=None):
    """Base/halo rows of every patch; the halo reaches one PSF radius beyond the ROI. With the
    frame ``shape``, ROIs too small for one of their galaxies' extents are grown and assigned
    again (``patches.big_source_re_factor``)."""
    from .stage_options import psf_reach
    from .stages.patches import assign_sources, grow_for_big_sources, source_extents
    kw = dict(n_bands=n_bands, outer=psf_reach(cfg))
    plan = assign_sources(geom, catalog, bool(cfg.patch_inputs.skip_empty_patch), **kw)
    factor = float(cfg.patches.big_source_re_factor)
    light = _light_sizes(cfg, catalog) if cfg.patches.big_source_from_light else None
    ext = source_extents(catalog, factor, light) if shape is not None and factor > 0 else {}
    if ext:
        plan, n = grow_for_big_sources(plan, ext, shape, int(cfg.patches.max_roi_pix))
        if n:
            plan = assign_sources(plan, catalog, bool(cfg.patch_inputs.skip_empty_patch), **kw)
            big = max(plan, key=lambda p: p.roi_shape[0] * p.roi_shape[1])
            log.info("patches: %d ROI(s) grown to hold a galaxy's extent (%.1f x catalogue Re + halo); "
                     "largest %d x %d px (%s)", n, float(cfg.patches.big_source_re_factor),
                     big.roi_shape[1], big.roi_shape[0], big.patch_tag)
    return plan


def patch_plan(cfg, catalog, shape, cells, n_bands):
    """Patch geometry and source assignment; writes patches.csv/json."""
    from .stage_options import plan_options
    from .stages.patches import build_patch_plan, write_patch_plan
    geom = build_patch_plan(shape, cells, plan_options(cfg))
    plan = assign_plan(cfg, geom, catalog, n_bands, shape)
    write_patch_plan(plan, cfg.outputs.patches_dir)
    halo = geom[0].halo_pix if geom else 0
    log.info("Patch plan: image %dx%d, epsf_ngrid=%d, ngrid=%d, halo=%d px: %d patches "
             "(%d before skip_empty_patch); %d base sources", shape[1], shape[0],
             int(cfg.epsf.epsf_ngrid), int(cfg.epsf.ngrid), halo, len(plan), len(geom),
             int(sum(p.n_sources for p in plan)))
    return plan


def recover_patch_rows(cfg, spec):
    """Rows of a finished patch from its ``{tag}_cat_fit.csv`` (store rebuilt after a kill)."""
    from .io.tables import read_catalog_csv
    from .stages.fit import patch_is_complete
    if not patch_is_complete(cfg.outputs.patch_results_dir, spec.patch_tag):
        return None
    path = os.path.join(cfg.outputs.patch_results_dir, spec.patch_tag, f"{spec.patch_tag}_cat_fit.csv")
    df = read_catalog_csv(path)
    for c in df.columns:
        if df[c].dtype == object and c not in ("ID", "gaia_source_id"):
            low = df[c].astype(str).str.lower()
            if low.isin(("true", "false")).all():
                df[c] = low == "true"
    df["_row"] = pd.to_numeric(df["_row"]).astype(np.int64)
    return df


def write_run_summary(cfg, plan, report, skipped_ids):
    """``{patch_results_dir}/run_summary.csv``: patch, status, returncode, sec, runner_log."""
    from .io.atomic import atomic_write_csv
    out = cfg.outputs.patch_results_dir
    rows = []
    for spec in plan:
        tid = patch_task_id(spec.patch_tag)
        info = report.infos.get(tid) if report is not None else None
        if info is None:
            status, rc, sec = ("skipped" if tid in skipped_ids else "not_run"), "", ""
        else:
            status, rc, sec = ("ok", 0, round(info.wall, 3)) if info.ok else ("fail", 1, round(info.wall, 3))
        rows.append({"patch": spec.patch_tag, "status": status, "returncode": rc, "sec": sec,
                     "runner_log": os.path.join(out, spec.patch_tag, f"{spec.patch_tag}.runner.log")})
    os.makedirs(out, exist_ok=True)
    atomic_write_csv(os.path.join(out, "run_summary.csv"),
                     pd.DataFrame(rows, columns=["patch", "status", "returncode", "sec", "runner_log"]))
    n_ok = sum(r["status"] == "ok" for r in rows)
    n_fail = sum(r["status"] == "fail" for r in rows)
    log.info("DONE. total=%d ok=%d fail=%d skipped=%d", len(rows), n_ok, n_fail,
             sum(r["status"] == "skipped" for r in rows))
    for r in [r for r in rows if r["status"] == "fail"][:10]:
        log.info("  failed: %s (%s)", r["patch"], r["runner_log"])


def results_table(cfg, plan):
    """Fit rows for merge: from the results store, else from the per-patch CSVs."""
    from .io.store import catalog_frame, read_store
    try:
        return catalog_frame(read_store(cfg.outputs.results_h5))
    except Exception as exc:  # noqa: BLE001 - any problem: fall back to the CSVs
        log.warning("results store %s unusable (%s); merging the per-patch CSVs",
                    cfg.outputs.results_h5, exc)
    parts = [df for spec in plan if (df := recover_patch_rows(cfg, spec)) is not None]
    if not parts:
        raise InputError(f"No patch result CSVs found under {cfg.outputs.patch_results_dir}")
    return pd.concat(parts, ignore_index=True)


def merge_step(cfg, base_catalog, results, wcs, crop_offset=(0, 0)):
    """S10: final catalog (CSV + FITS); ``crop_offset`` = (x0, y0) of the working frame."""
    import re

    from .stages.merge import merge_catalog
    # RA/DEC of the fits are computed by merge from the fitted pixels; the store holds NaN there
    sky = [c for c in results.columns if re.fullmatch(r"(RA|DEC)(_.+)?_fit", c)
           and results[c].isna().all()]
    out = merge_catalog(base_catalog, results.drop(columns=sky), wcs, crop_offset=crop_offset)
    out = _fitted_psf_errors(cfg, out)
    write_catalog_files(cfg, out)
    return out


def merge_saved(cfg):
    """``merge`` alone: the plan again from the working catalog and the prepared store's frame, then
    :func:`merge_step` (the input images are not read)."""
    from .stage_options import plan_options
    from .stages.patches import build_patch_plan
    cat = read_working_catalog(cfg)
    shape, bands, wcs, crop = prepared_frame(cfg)
    cells = active_cells(cfg, cat, shape)
    plan = assign_plan(cfg, build_patch_plan(shape, cells, plan_options(cfg)), cat, len(bands), shape)
    return merge_step(cfg, cat, results_table(cfg, plan), wcs, crop)


def write_catalog_files(cfg, catalog, zp_summary=None):
    """``output_catalog.csv``/``.fits`` with the run's provenance, also set on ``results.h5``."""
    from .flags import fit_bands
    from .io.catalog import write_final_catalog
    from .io.store import read_root_attrs, write_root_attrs
    from .provenance import catalog_provenance
    h5 = cfg.outputs.results_h5
    store = read_root_attrs(h5) if os.path.exists(h5) else {}
    bands = store.get("bands") if isinstance(store.get("bands"), list) else fit_bands(catalog)
    prov = catalog_provenance(cfg, bands, store.get("n_ranks"), zp_summary)
    write_final_catalog(catalog, cfg.outputs.final_catalog, prov)
    if store:
        write_root_attrs(h5, prov)


def _fitted_psf_errors(cfg, catalog):
    """The wing and PSF terms of FLUXERR from the fitted stars (stages.wing_error,
    stages.psf_error); ``psf_flux_errors.csv``."""
    from .io.atomic import atomic_write_text
    from .stages.psf_error import apply_fitted_psf_errors
    from .stages.wing_error import apply_fitted_wing_errors
    wing_bands = [c[len("WINGCHK_IN_"):-len("_fit")] for c in catalog.columns
                  if c.startswith("WINGCHK_IN_") and not c.startswith("WINGCHK_IN_ERR_")]
    bands = [c[len("PSFCHK_"):-len("_fit")] for c in catalog.columns
             if c.startswith("PSFCHK_") and not c.startswith("PSFCHK_ERR_")]
    wing = None
    f_halo = float(cfg.patch_run.flux_error_psf_wing)
    if wing_bands:
        catalog, wing = apply_fitted_wing_errors(catalog, wing_bands, f_halo)
        for r in wing.itertuples():
            if f_halo > 0:
                log.info("PSF wing error %s: inner %s, outer %s rms over the wings of %d fitted stars "
                         "above S/N %g (halos at the configured %.2f%%)", r.band,
                         _percent(r.wing_err_inner, f_halo), _percent(r.wing_err_outer, f_halo),
                         r.n_wing_stars, r.wing_min_snr, 100 * f_halo)
    summary = None
    if bands and str(cfg.patch_run.flux_error_model) == "total":
        catalog, summary = apply_fitted_psf_errors(catalog, bands)
        for r in summary.itertuples():
            if r.psf_flux_err_frac is not None:
                log.info("PSF flux error %s: %.2f%% from %d fitted stars above S/N %g (local-background-subtracted residual within 2 FWHM)",
                         r.band, 100 * r.psf_flux_err_frac, r.n_stars, r.min_snr)
            else:
                log.info("PSF flux error %s: kept the ePSF stars' estimate (%d fitted stars usable)",
                         r.band, r.n_stars)
    catalog = catalog.drop(columns=[c for c in catalog.columns if c.startswith("PSFCHK_")])
    if summary is not None and wing is not None:
        summary = summary.merge(wing, on="band", how="outer")
    summary = wing if summary is None else summary
    if summary is not None:
        atomic_write_text(os.path.join(cfg.outputs.work_dir, "psf_flux_errors.csv"), summary.to_csv(index=False))
    return catalog


def _percent(frac, configured) -> str:
    """A measured fraction as a percentage, or the configured one when none was measured."""
    return f"{100 * frac:.2f}%" if frac is not None and np.isfinite(frac) else f"{100 * configured:.2f}% (configured)"


def zp_step(cfg, catalog=None):
    """S11: zero points; rewrites the final catalog when a band was calibrated."""
    from .io.tables import read_catalog_csv, read_gaiaxp
    from .stages.zp import compute_zero_points, write_zp_products
    if catalog is None:
        path = cfg.outputs.final_catalog
        if not os.path.exists(path):
            raise InputError(f"Merged catalog not found: {path}. Run 'merge' first.")
        catalog = read_catalog_csv(path)
    gpath = cfg.inputs.gaiaxp_synphot_csv
    if not gpath:
        log.warning("no GaiaXP table given: zero points skipped")
        return catalog
    if not os.path.exists(gpath):
        log.warning("GaiaXP CSV not found: %s; zero points skipped", gpath)
        return catalog
    gaia = read_gaiaxp(gpath)
    out, summary, per_obj = compute_zero_points(catalog, gaia, cfg.zp, float(cfg.image_scaling.zp_ref))
    if summary is None or len(summary) == 0:
        log.warning("ZP: no band calibrated; catalog unchanged")
        return catalog
    zp_dir = os.path.join(cfg.outputs.work_dir, "ZP")
    write_zp_products(summary, per_obj, zp_dir)
    if cfg.plotting.level == "full":
        from .figures import draw_zp
        draw_zp(out, summary, per_obj, gaia, zp_dir, cfg.zp, int(cfg.plotting.dpi))
    write_catalog_files(cfg, out, summary)
    return out
