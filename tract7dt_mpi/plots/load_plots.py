"""Load-stage PNGs: white stack before/after crop and the catalog overlay."""
from __future__ import annotations

import os
import warnings

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .common import imshow_zscale, new_figure, savefig

__all__ = ["plot_before_crop", "plot_after_crop", "plot_overlay", "plot_overlay_zoom", "make_load_plots",
           "type_category"]

_GAL = {"GAL", "EXP", "DEV", "SERSIC"}


def type_category(values) -> np.ndarray:
    """'STAR' / 'GAL' / 'UNKNOWN' per TYPE value (upper-cased and stripped)."""
    t = np.array([str(v).strip().upper() if v is not None else "" for v in values], dtype=object)
    out = np.full(len(t), "UNKNOWN", dtype=object)
    out[t == "STAR"] = "STAR"
    out[np.isin(t, list(_GAL))] = "GAL"
    return out


def plot_before_crop(white_small: np.ndarray, crop, ds: int, path: str, dpi: int) -> str:
    """Strided full-frame white with the kept box (lime)."""
    x0, x1, y0, y1 = crop
    fig = new_figure((8, 8))
    ax = fig.add_subplot(111)
    imshow_zscale(ax, white_small)
    ax.add_patch(Rectangle((x0 / ds - 0.5, y0 / ds - 0.5), (x1 - x0) / ds, (y1 - y0) / ds,
                           fill=False, edgecolor="lime", lw=1.5))
    ax.set_title(f"white stack before crop (stride {ds}); kept x[{x0}:{x1}) y[{y0}:{y1})")
    ax.set_xlabel(f"x / {ds} [px]")
    ax.set_ylabel(f"y / {ds} [px]")
    return savefig(fig, path, dpi)


def plot_after_crop(white: np.ndarray, ds: int, path: str, dpi: int) -> str:
    fig = new_figure((8, 8))
    ax = fig.add_subplot(111)
    h, w = white.shape
    imshow_zscale(ax, white[::ds, ::ds], extent=(-0.5, w - 0.5, -0.5, h - 0.5))
    ax.set_title(f"white stack after crop ({w}x{h}, stride {ds})")
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    return savefig(fig, path, dpi)


def _overlay_sets(catalog, cmap, shape):
    x = catalog["x_pix_white"].to_numpy(float)
    y = catalog["y_pix_white"].to_numpy(float)
    h, w = shape
    inframe = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
    crop = catalog["excluded_crop"].to_numpy(bool) if "excluded_crop" in catalog else np.zeros(len(x), bool)
    sat = catalog["excluded_saturation"].to_numpy(bool) if "excluded_saturation" in catalog \
        else np.zeros(len(x), bool)
    types = catalog[cmap.type].to_numpy() if cmap.type else np.full(len(x), "", dtype=object)
    cat = type_category(types)
    active = ~crop & ~sat & inframe
    return x, y, cat, active, sat & ~crop & inframe, int(crop.sum()), int((~inframe & ~crop).sum())


def _draw_markers(ax, x, y, cat, active, satx, n_crop, n_out, gal_model, ds=1, x0=0, y0=0):
    def pts(m):
        return (x[m] - x0) / ds, (y[m] - y0) / ds
    handles = []
    for name, col, mk in (("STAR", "cyan", "o"), ("GAL", "magenta", "o"), ("UNKNOWN", "yellow", "s")):
        m = active & (cat == name)
        px, py = pts(m)
        label = f"{name} (N={int(m.sum())})" + (f" -> fit as {gal_model}" if name == "UNKNOWN" else "")
        ax.scatter(px, py, s=18, facecolors="none", edgecolors=col, marker=mk, lw=0.7)
        handles.append(Line2D([], [], ls="", marker=mk, mfc="none", mec=col, label=label))
    px, py = pts(satx)
    ax.scatter(px, py, s=22, c="red", marker="x", lw=0.8)
    handles.append(Line2D([], [], ls="", marker="x", color="red", label=f"saturation-excluded (N={int(satx.sum())})"))
    handles.append(Line2D([], [], ls="", marker="o", color="gray", label=f"crop-excluded (N={n_crop})"))
    handles.append(Line2D([], [], ls="", marker="D", color="gray", label=f"NaN / out of frame (N={n_out})"))
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)


def plot_overlay(white, wcs, catalog, cmap, path, dpi, ds=4, gal_model="exp") -> str:
    """Active sources on the working white stack, RA/Dec axes (WCSAxes) at stride ``ds``."""
    x, y, cat, active, satx, n_crop, n_out = _overlay_sets(catalog, cmap, white.shape)
    fig = new_figure((9, 9))
    try:
        with warnings.catch_warnings():  # "cdelt will be ignored since cd is present"
            warnings.simplefilter("ignore", RuntimeWarning)
            sub = wcs[::ds, ::ds]
        ax = fig.add_subplot(111, projection=sub)
        ax.coords[0].set_axislabel("RA")
        ax.coords[1].set_axislabel("Dec")
        for c, pos in ((ax.coords[0], "b"), (ax.coords[1], "l")):
            c.set_ticks_position(pos)
            c.set_ticklabel_position(pos)
        fwd = (lambda v: v * ds, lambda v: v / ds)  # displayed (strided) pixel -> working-frame pixel
        ax.secondary_xaxis("top", functions=fwd).set_xlabel("x [px]")
        ax.secondary_yaxis("right", functions=fwd).set_ylabel("y [px]")
    except Exception:
        ax = fig.add_subplot(111)
        ax.set_xlabel(f"x / {ds} [px]")
        ax.set_ylabel(f"y / {ds} [px]")
    imshow_zscale(ax, white[::ds, ::ds])
    _draw_markers(ax, x, y, cat, active, satx, n_crop, n_out, gal_model, ds=ds)
    h, w = white.shape
    ax.set_title(f"white overlay ({w}x{h} px working frame, stride {ds})", pad=22)
    return savefig(fig, path, dpi)


def plot_overlay_zoom(white, catalog, cmap, zoom_box, path, dpi, gal_model="exp") -> str | None:
    """Zoom on ``zoom_box = [x0, x1, y0, y1]`` (working frame); outside the frame is blank."""
    zx0, zx1, zy0, zy1 = (int(v) for v in zoom_box)
    if zx1 <= zx0 or zy1 <= zy0:
        raise ValueError(f"overlay.zoom_box {list(zoom_box)} needs x1>x0 and y1>y0")
    h, w = white.shape
    cut = np.full((zy1 - zy0, zx1 - zx0), np.nan, dtype=np.float32)
    sx0, sx1, sy0, sy1 = max(zx0, 0), min(zx1, w), max(zy0, 0), min(zy1, h)
    if sx1 > sx0 and sy1 > sy0:
        cut[sy0 - zy0:sy1 - zy0, sx0 - zx0:sx1 - zx0] = white[sy0:sy1, sx0:sx1]
    x, y, cat, active, satx, n_crop, n_out = _overlay_sets(catalog, cmap, white.shape)
    inz = (x >= zx0) & (x < zx1) & (y >= zy0) & (y < zy1)
    fig = new_figure((8, 8))
    ax = fig.add_subplot(111)
    imshow_zscale(ax, cut, extent=(zx0 - 0.5, zx1 - 0.5, zy0 - 0.5, zy1 - 0.5))
    _draw_markers(ax, x, y, cat, active & inz, satx & inz, n_crop, n_out, gal_model)
    ax.set_xlim(zx0 - 0.5, zx1 - 0.5)
    ax.set_ylim(zy0 - 0.5, zy1 - 0.5)
    ax.set_title(f"white overlay zoom x[{zx0}:{zx1}) y[{zy0}:{zy1})")
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    return savefig(fig, path, dpi)


def make_load_plots(cfg, res, white_full, ds, logger) -> None:
    """Write the crop and overlay PNGs behind their toggles; a failing plot only warns."""
    dpi = int(cfg.plotting.dpi)
    out = cfg.outputs
    crop = cfg.crop
    jobs = []
    if white_full is not None:
        jobs.append((out.cropped_images_dir, "white_before_crop.png",
                     lambda p: plot_before_crop(white_full, res.crop, ds, p, dpi)))
    if crop.enabled and crop.plot_post_crop:
        pds = max(1, int(crop.post_crop_display_downsample))
        jobs.append((out.cropped_images_dir, "white_after_crop.png",
                     lambda p: plot_after_crop(res.white, pds, p, dpi)))
    ov = cfg.overlay
    gal_model = str(cfg.patch_run.gal_model)
    if ov.enabled:
        ods = max(1, int(ov.downsample_full))
        jobs.append((out.overlay_dir, "white_overlay.png", lambda p: plot_overlay(
            res.white, res.wcs, res.catalog, res.column_map, p, dpi, ods, gal_model)))
        if ov.zoom_enabled:
            box = list(ov.zoom_box)
            jobs.append((out.overlay_dir, "white_overlay_zoom.png", lambda p: plot_overlay_zoom(
                res.white, res.catalog, res.column_map, box, p, dpi, gal_model)))
    for folder, name, fn in jobs:
        try:
            fn(os.path.join(folder, name))
        except Exception as exc:  # plots never stop the pipeline
            logger.warning("Plot %s skipped: %s: %s", name, exc.__class__.__name__, exc)
