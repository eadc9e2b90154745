"""Gaia-augmentation overlay: what was matched, injected and rejected."""
from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .common import imshow_zscale, new_figure, savefig

__all__ = ["plot_gaia_augmentation"]


def plot_gaia_augmentation(white, catalog, info, path, dpi=150, max_side_px=2000) -> str:
    """Originals cyan circles, Gaia-matched originals lime squares, injected magenta circles,
    saturation-rejected Gaia red X, saturation-excluded inputs red X, crop-excluded inputs orange
    X, selection box yellow dashed. The white stack is shown at a stride keeping ~max_side_px."""
    h, w = white.shape
    ds = max(1, int(np.ceil(max(h, w) / max_side_px)))
    n0 = int(info.get("n_original", len(catalog)))
    orig = catalog.iloc[:n0]
    x = orig["x_pix_white"].to_numpy(float)
    y = orig["y_pix_white"].to_numpy(float)
    crop = orig["excluded_crop"].to_numpy(bool) if "excluded_crop" in orig else np.zeros(n0, bool)
    sat = orig["excluded_saturation"].to_numpy(bool) if "excluded_saturation" in orig else np.zeros(n0, bool)
    gid = orig["gaia_source_id"].astype(str).to_numpy() if "gaia_source_id" in orig else np.full(n0, "")
    matched = gid != ""
    plain = ~crop & ~sat
    inj = np.asarray(info.get("injected_xy", np.zeros((0, 2)))).reshape(-1, 2)
    rej = np.asarray(info.get("rejected_xy", np.zeros((0, 2)))).reshape(-1, 2)

    fig = new_figure((9, 9))
    ax = fig.add_subplot(111)
    imshow_zscale(ax, white[::ds, ::ds], extent=(-0.5, w - 0.5, -0.5, h - 0.5))
    layers = [
        (x[plain], y[plain], dict(marker="o", facecolors="none", edgecolors="cyan"), "input"),
        (x[matched], y[matched], dict(marker="s", facecolors="none", edgecolors="lime"), "input matched to Gaia"),
        (inj[:, 0], inj[:, 1], dict(marker="o", facecolors="none", edgecolors="magenta"), "injected Gaia"),
        (rej[:, 0], rej[:, 1], dict(marker="x", c="red"), "Gaia rejected (saturation)"),
        (x[sat & ~crop], y[sat & ~crop], dict(marker="x", c="red"), "input saturation-excluded"),
        (x[crop], y[crop], dict(marker="x", c="orange"), "input crop-excluded"),
    ]
    handles = []
    for px, py, style, label in layers:
        ax.scatter(px, py, s=16, lw=0.7, **style)
        col = style.get("edgecolors", style.get("c"))
        handles.append(Line2D([], [], ls="", marker=style["marker"], mfc="none", mec=col, color=col,
                              label=f"{label} (N={len(px)})"))
    bx0, bx1, by0, by1 = info.get("box", (0, w, 0, h))
    ax.add_patch(Rectangle((bx0 - 0.5, by0 - 0.5), bx1 - bx0, by1 - by0, fill=False, ls="--",
                           edgecolor="yellow", lw=1.2))
    handles.append(Line2D([], [], ls="--", color="yellow", label="Gaia selection box"))
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(-0.5, h - 0.5)
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.set_title(f"Gaia augmentation: matched rows {info.get('n_matched_rows', 0)}, "
                 f"injected {info.get('n_injected', 0)}")
    return savefig(fig, path, dpi)
