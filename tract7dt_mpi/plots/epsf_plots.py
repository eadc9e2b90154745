"""Diagnostic PNGs of one ePSF cell (the ePSF rows of docs/outputs.md).

Every function writes one PNG with the Agg backend and closes its figure. Callers wrap them with
:func:`safe_plot`, so a plotting problem only logs a warning and never fails a cell.
"""
from __future__ import annotations

import logging
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402

from .common import savefig  # noqa: E402

log = logging.getLogger(__name__)

ORIGIN_COLOURS = {"sep": "orange", "gaia": "cyan", "both": "magenta"}


def safe_plot(func, *args, **kwargs) -> bool:
    """Call a plot function; on any exception log a warning and return False."""
    try:
        func(*args, **kwargs)
        return True
    except Exception as exc:  # plots must never fail the stage
        path = kwargs.get("path") or next((a for a in args if isinstance(a, str)), "?")
        log.warning("ePSF plot %s failed: %s", os.path.basename(str(path)), exc)
        plt.close("all")
        return False


def _limits(img, lo=1.0, hi=99.5):
    v = np.asarray(img, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(v, [lo, hi])
    return float(a), float(b if b > a else a + 1.0)


def _save(fig, path, dpi):
    savefig(fig, path, dpi, tight=False)
    plt.close(fig)


def plot_psfstars(img, xs, ys, origins, path, title, dpi=150):
    """Cell image with the selected stars (orange circle sep, cyan + gaia, magenta x both)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    vmin, vmax = _limits(img)
    ax.imshow(img, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    for x, y, o in zip(xs, ys, origins):
        if o == "sep":
            ax.add_patch(Circle((x, y), 8, fill=False, ec="orange", lw=1))
        elif o == "gaia":
            ax.plot(x, y, "+", color="cyan", ms=10, mew=1.2)
        else:
            ax.plot(x, y, "x", color="magenta", ms=9, mew=1.2)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_background_diagnostics(raw, back, sub, path, colorbar=True, dpi=150):
    """Three panels: raw cell, SEP background map, raw - background."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    fig.subplots_adjust(left=0.04, right=0.97, bottom=0.07, top=0.92, wspace=0.3)
    for ax, im, name in zip(axes, (raw, back, sub), ("raw", "background", "raw - background")):
        vmin, vmax = _limits(im, 1.0, 99.0)
        h = ax.imshow(im, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        if colorbar:
            fig.colorbar(h, ax=ax, fraction=0.046, pad=0.03)
    _save(fig, path, dpi)


def plot_epsf(stamp, path, title, dpi=150):
    """The final stamp on a log stretch."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    pos = stamp[stamp > 0]
    floor = float(pos.max()) * 1e-5 if pos.size else 1e-8
    h = ax.imshow(np.log10(np.clip(stamp, floor, None)), origin="lower", cmap="magma",
                  interpolation="nearest")
    fig.colorbar(h, ax=ax, fraction=0.046, pad=0.04, label="log10(ePSF)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_growth_curve(radii, ee, qa, path, dpi=150):
    """Encircled-energy curve with the r50 / r80 radii marked."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(radii, ee, "-o", ms=2.5)
    for key, col in (("ee_r50_pix", "C1"), ("ee_r80_pix", "C2")):
        if np.isfinite(qa.get(key, np.nan)):
            ax.axvline(qa[key], color=col, ls="--", label=f"{key[3:6]} = {qa[key]:.0f} px")
    ax.set_xlabel("radius [px]")
    ax.set_ylabel("encircled energy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_residual_diagnostics(stacks, qa, path, dpi=150):
    """Median star / model / residual stacks and the normalised-residual histogram."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    fig.subplots_adjust(left=0.03, right=0.98, bottom=0.1, top=0.9, wspace=0.25)
    vmin, vmax = _limits(stacks["data"])
    for ax, key in zip(axes[:2], ("data", "model")):
        ax.imshow(stacks[key], origin="lower", cmap="magma", vmin=vmin, vmax=vmax)
        ax.set_title(f"median {key}", fontsize=9)
    lim = float(np.nanmax(np.abs(stacks["resid"]))) or 1.0
    h = axes[2].imshow(stacks["resid"], origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.colorbar(h, ax=axes[2], fraction=0.046, pad=0.04)
    axes[2].set_title(f"median residual (rms={qa['resid_rms']:.3g} of peak)", fontsize=9)
    norm = stacks["norm"]
    norm = norm[np.isfinite(norm)]
    if norm.size:
        axes[3].hist(np.clip(norm, -8, 8), bins=60, range=(-8, 8), histtype="step")
    axes[3].set_title(f"(d-m)*sqrt(w): mean={qa['resid_norm_bias']:.2f} sd={qa['resid_norm_rms']:.2f}",
                      fontsize=9)
    _save(fig, path, dpi)


def plot_star_local_background(rows, path, colorbar=True, dpi=150):
    """One row per star: raw stamp, annulus sample, background-subtracted stamp.

    ``rows`` is a list of dicts with keys id, raw, mask, sub, value, status.
    """
    n = len(rows)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.0 * n + 0.3), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.88 if colorbar else 0.98, bottom=0.02, top=1 - 0.3 / (2.0 * n + 0.3),
                        wspace=0.05, hspace=0.25)
    for k, (row, ax3) in enumerate(zip(rows, axes)):
        vmin, vmax = _limits(row["raw"], 1.0, 99.8)
        ann = np.where(row["mask"], row["raw"], np.nan)
        alo, ahi = _limits(ann, 2.0, 98.0)   # the annulus sample gets its own stretch
        for ax, im, lim in zip(ax3, (row["raw"], ann, row["sub"]), ((vmin, vmax), (alo, ahi), (vmin, vmax))):
            h = ax.imshow(im, origin="lower", cmap="viridis", vmin=lim[0], vmax=lim[1], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if colorbar:   # one bar per row, for the raw / bg-sub panels (they share the raw stretch)
            pos = ax3[2].get_position()
            cax = fig.add_axes([pos.x1 + 0.01, pos.y0, 0.02, pos.height])
            fig.colorbar(h, cax=cax)
        ax3[0].set_ylabel(f"id {row['id']}", fontsize=8)
        ax3[1].set_xlabel(f"bkg={row['value']:.3g} ({row['status']})", fontsize=8)
        if k == 0:
            for ax, name in zip(ax3, ("raw", "annulus sample", "bg-sub")):
                ax.set_title(name, fontsize=8)
    _save(fig, path, dpi)


def plot_star_montage(stamps, origins, path, title, dpi=150):
    """Grid of star stamps, framed by origin colour (gaia cyan, sep orange, both magenta)."""
    n = max(1, len(stamps))
    ncol = min(10, int(math.ceil(math.sqrt(n))))
    nrow = int(math.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.3 * ncol, 1.3 * nrow + 0.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(stamps):
            ax.axis("off")
            continue
        s = np.asarray(stamps[k], float)
        peak = np.nanmax(s) if np.isfinite(s).any() else 1.0
        ax.imshow(np.arcsinh(s / (0.01 * peak if peak > 0 else 1.0)), origin="lower", cmap="gray")
        for sp in ax.spines.values():
            sp.set_edgecolor(ORIGIN_COLOURS.get(origins[k], "white"))
            sp.set_linewidth(2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi)
