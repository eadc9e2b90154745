"""Bright-mask overlay: the mask and the detections/catalog rows that explain it."""
from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .common import imshow_zscale, new_figure, savefig

__all__ = ["plot_bright_mask"]


def plot_bright_mask(white, mask, det, catalog, match_radius, path, dpi=150, max_side_px=2000) -> str:
    """Red translucent mask; lime circles = matched detections; red X = unmatched detections;
    deepskyblue diamonds = catalog rows with a detection within ``match_radius``; orange
    triangles = other catalog rows lying inside the mask. Legend with counts."""
    h, w = white.shape
    ds = max(1, int(np.ceil(max(h, w) / max_side_px)))
    ext = (-0.5, w - 0.5, -0.5, h - 0.5)
    fig = new_figure((9, 9))
    ax = fig.add_subplot(111)
    imshow_zscale(ax, white[::ds, ::ds], extent=ext)
    m = np.asarray(mask[::ds, ::ds], dtype=float)
    ax.imshow(np.where(m > 0, 1.0, np.nan), origin="lower", extent=ext, cmap=ListedColormap(["red"]),
              alpha=0.35, vmin=0, vmax=1, interpolation="nearest")
    x = catalog["x_pix_white"].to_numpy(float)
    y = catalog["y_pix_white"].to_numpy(float)
    near = np.zeros(len(x), bool)
    ok = np.isfinite(x) & np.isfinite(y)
    if len(det) and ok.any():
        from scipy.spatial import cKDTree
        d, _ = cKDTree(det[["x", "y"]].to_numpy()).query(np.column_stack([x[ok], y[ok]]), k=1)
        near[ok] = d <= match_radius
    aff = catalog["affected_by_bright_mask"].to_numpy(bool) if "affected_by_bright_mask" in catalog \
        else np.zeros(len(x), bool)
    inside = aff & ~near
    mt = det["matched"].to_numpy(bool) if len(det) else np.zeros(0, bool)
    dx, dy = (det["x"].to_numpy(), det["y"].to_numpy()) if len(det) else (np.zeros(0), np.zeros(0))
    ax.scatter(dx[mt], dy[mt], s=30, facecolors="none", edgecolors="lime", lw=0.8)
    ax.scatter(dx[~mt], dy[~mt], s=30, c="red", marker="x", lw=0.9)
    ax.scatter(x[near], y[near], s=14, facecolors="none", edgecolors="deepskyblue", marker="D", lw=0.7)
    ax.scatter(x[inside], y[inside], s=18, c="orange", marker="^", lw=0.7)
    handles = [
        Patch(facecolor="red", alpha=0.35, label=f"mask ({100 * float(np.mean(mask)):.2f}% of pixels)"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="lime", label=f"SEP matched (N={int(mt.sum())})"),
        Line2D([], [], ls="", marker="x", color="red", label=f"SEP unmatched (N={int((~mt).sum())})"),
        Line2D([], [], ls="", marker="D", mfc="none", mec="deepskyblue",
               label=f"catalog with detection (N={int(near.sum())})"),
        Line2D([], [], ls="", marker="^", color="orange", label=f"catalog inside mask (N={int(inside.sum())})"),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.set_title("white bright-source mask (ellipses OR any-band saturation)")
    return savefig(fig, path, dpi)
