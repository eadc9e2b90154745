"""Which diagnostic figures a run draws, from the data the stages return (pipeline layer).

Stages compute and return data; this module decides, per ``plotting`` and the per-figure
toggles, what to draw and calls :mod:`tract7dt_mpi.plots`. A failing figure only warns: the
diagnostics never stop the run. Callers check ``plotting.level`` (``full`` for every figure here).
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def _warn(name: str, exc: Exception, logger=None) -> None:
    (logger or log).warning("Plot %s skipped: %s: %s", name, exc.__class__.__name__, exc)


# ------------------------------------------------------------------------------------ rank-0 stages

def draw_load(cfg, res, logger=None) -> None:
    """The crop and overlay PNGs of stage S1 from its :class:`~tract7dt_mpi.stages.load.LoadResult`."""
    from .plots.load_plots import make_load_plots
    t0 = time.perf_counter()
    make_load_plots(cfg, res, res.white_before_crop, res.display_downsample, logger or log)
    res.timings["overlay"] = time.perf_counter() - t0


def draw_gaia(cfg, white, cat, info, logger=None) -> None:
    """``ZP/gaia_augmentation_overlay.png`` when the Gaia augmentation ran (``info['status']`` ok)."""
    if info.get("status") != "ok":
        return
    name = "gaia_augmentation_overlay.png"
    try:
        from .plots.gaia_plots import plot_gaia_augmentation
        plot_gaia_augmentation(white, cat, info, os.path.join(cfg.outputs.work_dir, "ZP", name),
                               int(cfg.plotting.dpi))
    except Exception as exc:  # diagnostics never stop the run
        _warn(name, exc, logger)


def draw_bright_mask(cfg, white, mask, satur_any, cat, info, logger=None) -> None:
    """``bright_mask/white_bright_mask_overlay.png``: the mask (with saturated pixels), the SEP
    detections (``info['detections']``) and the catalog rows."""
    name = "white_bright_mask_overlay.png"
    try:
        from .plots.bright_mask_plots import plot_bright_mask
        shown = mask | satur_any if satur_any is not None else mask
        plot_bright_mask(white, shown, info["detections"], cat, float(cfg.bright_mask.match_radius_pix),
                         os.path.join(cfg.outputs.work_dir, "bright_mask", name), int(cfg.plotting.dpi))
    except Exception as exc:  # diagnostics never stop the run
        _warn(name, exc, logger)


def draw_zp(catalog, summary, per_object, gaia_df, zp_dir: str, cfg_zp, dpi: int = 150) -> list[str]:
    """Both ZP plots of every calibrated band (``summary`` rows) into ``zp_dir``; returns the paths."""
    from .plots.zp_plots import plot_zp_band
    from .stages.zp import gaia_mag_range, unreliable_points
    paths = []
    if summary is None:
        return paths
    for summ in summary.to_dict("records"):
        b = summ["band"]
        try:
            paths += plot_zp_band(zp_dir, b, per_object[per_object["band"] == b],
                                  unreliable_points(catalog, gaia_df, b, float(cfg_zp.match_radius_arcsec)),
                                  summ, cfg_zp, gaia_mag_range(gaia_df, b), dpi)
        except Exception as exc:  # diagnostics never stop the run
            log.warning("[%s] ZP plot failed: %s: %s", b, exc.__class__.__name__, exc)
    return paths


# ------------------------------------------------------------------------------------ task figures

def draw_epsf_cell(result, cell_dir: str, dpi: int = 150) -> int:
    """Draw the cell's :class:`~tract7dt_mpi.stages.epsf.FigureSpec` list into ``cell_dir``; a
    failed drawing marks its ``status`` meta key ``"error"``. Returns the number drawn."""
    from .plots import epsf_plots
    if not result.figures:
        return 0
    os.makedirs(cell_dir, exist_ok=True)
    n = 0
    for spec in result.figures:
        ok = epsf_plots.safe_plot(getattr(epsf_plots, spec.func), *spec.args,
                                  path=os.path.join(cell_dir, spec.name), dpi=dpi, **spec.kwargs)
        n += bool(ok)
        if not ok and spec.status is not None:
            section, key = spec.status
            result.meta[section][key] = "error"
    result.figures = []
    return n


def montage_names(cat) -> list[str]:
    """Per catalog row: ``src_{ID}.png`` / ``src_halo_{ID}.png`` (file-name-safe ID), or
    ``src_{i:06d}.png`` when the row has no ID."""
    from .stages.catalog import find_column
    from .stages.fit import safe_name
    idc = find_column(cat.columns, "ID")
    halo = cat["_is_halo_source"].to_numpy(bool)
    names = []
    for i in range(len(cat)):
        v = str(cat[idc].iloc[i]).strip() if idc is not None else ""
        key = safe_name(v) if v and v.lower() != "nan" else f"{i:06d}"
        names.append(f"src_halo_{key}.png" if halo[i] else f"src_{key}.png")
    return names


def draw_patch(result, out_dir: str, cfg) -> None:
    """``patch_overview.png`` and the cut-out montages of one fitted patch (per ``patch_run``
    toggles) into ``{out_dir}/{tag}/``, from ``result.plot``; call before
    :func:`~tract7dt_mpi.stages.fit.write_patch_products`. A failure is logged and added to the
    patch log (``result.log_lines``)."""
    plot = result.plot
    if plot is None:
        return
    pr, dpi = cfg.patch_run, int(cfg.plotting.dpi)
    pdir = os.path.join(out_dir, result.tag)
    os.makedirs(pdir, exist_ok=True)
    try:
        from .plots import patch_plots
        if not pr.no_patch_overview:
            patch_plots.plot_patch_overview(os.path.join(pdir, "patch_overview.png"), plot,
                                            result.meta, pr, dpi)
        if not pr.no_cutouts:
            names = montage_names(plot["pin"].cat)
            n = patch_plots.plot_cutouts(os.path.join(pdir, "cutouts"), plot, pr, names, dpi)
            result.log_lines.append(f"cutout montages written: {n}")
    except Exception as exc:  # diagnostics never fail a patch
        msg = f"plot failed for {result.tag}: {exc.__class__.__name__}: {exc}"
        log.warning(msg)
        result.log_lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} | WARNING | {msg}")
