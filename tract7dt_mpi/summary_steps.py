"""The ``plotting.level: summary`` products: per-patch residual parts and the summary plot tasks.

A patch task (any rank) reduces its data and model to block sums (:mod:`.stages.residual_map`)
and writes them next to its other products; after the merge one task per band draws the band's
ePSF summary and one task assembles and draws the tile residual image, all through the ordinary
task queue, so no rank draws for long and rank 0 draws nothing unless it runs tasks.  Plot
problems only warn: a summary figure never fails a run.  MPI-free, like :mod:`.tasks`.
"""

from __future__ import annotations

import glob
import logging
import os

from .parallel.runner import TaskResult
from .parallel.scheduler import Task

log = logging.getLogger("tract7dt_mpi.pipeline")

SUMMARY_DIR = "summary"
N_EXAMPLE_STARS = 6


def summary_dir(cfg) -> str:
    return os.path.join(cfg.outputs.work_dir, SUMMARY_DIR)


def write_residual_part(cfg, spec, plot: dict, shape) -> None:
    """``residual_part.npz`` of one fitted patch (``plot`` = ``PatchResult.plot``)."""
    from .io.residual_parts import save_residual_part
    from .stages.residual_map import coarse_factor, patch_residual_part
    pin = plot["pin"]
    bands = list(pin.bands)
    box = (spec.x0_base, spec.x1_base, spec.y0_base, spec.y1_base,
           spec.x0_base - spec.x0_roi, spec.y0_base - spec.y0_roi)
    part = patch_residual_part({b: pin.images[b].img for b in bands}, plot["models"],
                               {b: pin.images[b].sigma_sky for b in bands},
                               {b: plot["invvar"][b] > 0 for b in bands}, box, bands, coarse_factor(shape))
    pdir = os.path.join(cfg.outputs.patch_results_dir, spec.patch_tag)
    os.makedirs(pdir, exist_ok=True)
    save_residual_part(pdir, part)


def summary_tasks(cfg, bands) -> list[Task]:
    """The residual image first (the longest), then one ePSF summary per band."""
    tasks = [Task("summary/residuals", "summary", cost=float(len(bands)), index=0, payload=None)]
    tasks += [Task(f"summary/epsf/{b}", "summary", cost=1.0, index=i + 1, payload=b)
              for i, b in enumerate(bands)]
    return tasks


def run_summary_task(cfg, prepared, plan, task: Task) -> TaskResult:
    """Draw one summary figure (``plan``: the patch plan, whose parts make the residual image);
    any failure is logged as a warning."""
    try:
        if task.payload is None:
            _residuals(cfg, prepared.shape, plan or [], list(prepared.bands))
        else:
            _epsf_band(cfg, prepared, task.payload)
    except Exception as exc:  # noqa: BLE001 - diagnostics never fail a run
        log.warning("summary plot %s failed: %s: %s", task.id, type(exc).__name__, exc)
    return TaskResult()


def _band_cells(cfg, band) -> dict:
    """tag -> (meta, stamp or None) of every cell of ``band`` in the ePSF folder."""
    from .band_psfs import epsf_from_disk
    out = {}
    for meta_path in sorted(glob.glob(os.path.join(cfg.outputs.epsf_dir, band, "*", "meta.json"))):
        tag = os.path.basename(os.path.dirname(meta_path))
        got = epsf_from_disk(cfg, band, tag)
        if got is not None:
            out[tag] = got
    return out


def _epsf_band(cfg, prepared, band) -> None:
    from .plots.summary_plots import plot_epsf_summary
    from .stages.epsf_summary import band_cell_maps, example_stars
    cells = _band_cells(cfg, band)
    if not cells:
        return
    maps = band_cell_maps(cells, int(cfg.epsf.epsf_ngrid))
    ok = {t: v for t, v in cells.items() if v[1] is not None}
    best = max(ok, key=lambda t: ok[t][0].get("nstars_used") or 0) if ok else None
    half = int(cfg.epsf.cutout_size) // 2
    h, w = prepared.shape
    stars = []
    for x, y, wt in example_stars([m for m, _ in cells.values()], N_EXAMPLE_STARS):
        xi, yi = int(round(x)), int(round(y))
        y0, y1, x0, x1 = max(0, yi - half), min(h, yi + half + 1), max(0, xi - half), min(w, xi + half + 1)
        if y1 > y0 and x1 > x0:
            stars.append((prepared.read(band, y0, y1, x0, x1, with_bright=False).img, wt))
    plot_epsf_summary(os.path.join(summary_dir(cfg), f"epsf_{band}.png"), band, maps,
                      ok[best][1] if best else None, best or "", stars, int(cfg.plotting.dpi))


def _residuals(cfg, shape, plan, bands) -> None:
    from .io.residual_parts import FILE_NAME, load_residual_part
    from .plots.summary_plots import plot_tile_residuals
    from .stages.residual_map import assemble, coarse_factor, part_channels
    factor, chans = coarse_factor(shape), part_channels(bands)

    def parts():
        for s in plan:
            path = os.path.join(cfg.outputs.patch_results_dir, s.patch_tag, FILE_NAME)
            if os.path.exists(path):
                yield load_residual_part(path, factor, s.y0_base // factor, s.x0_base // factor, chans)
    chans, data, model = assemble((p for p in parts() if p is not None), shape, factor)
    if data is None:
        log.warning("summary: no patch residual parts under %s; residuals.png not drawn",
                    cfg.outputs.patch_results_dir)
        return
    plot_tile_residuals(os.path.join(summary_dir(cfg), "residuals.png"), chans, data, model, factor,
                        int(cfg.plotting.dpi))
