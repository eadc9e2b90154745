"""The ``plotting.level: summary`` figures under ``{work_dir}/summary/``.

``epsf_{band}.png``: the band's ePSF FWHM and ellipticity maps over the cell grid, the ePSF of
the cell with most stars, and a few of the stars the ePSFs were made of.  ``residuals.png``: the
tile's data, model and residual at reduced resolution (inverse-variance mean over the bands and,
with three or more bands, an asinh colour image of the reddest, a middle and the bluest band).

They must stay cheap (a few per band at 40 bands): panels of one kind are scaled to RGB here and
shown side by side as one image, so a figure has few axes, and figures are not cropped ("tight"
renders twice).
"""
from __future__ import annotations

import numpy as np

from .common import new_figure, savefig, zscale_limits

__all__ = ["plot_epsf_summary", "plot_tile_residuals", "asinh_rgb", "grey_rgb"]

_GAP = 4          # pixels between panels of a strip


def grey_rgb(img, lo, hi):
    """(H, W, 3) grey image of ``img`` linearly between ``lo`` and ``hi``; NaN = dark red."""
    a = np.asarray(img, float)
    v = np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    out = np.dstack([v, v, v])
    out[~np.isfinite(a)] = (0.35, 0.0, 0.0)
    return out


def asinh_rgb(channels, q: float = 10.0, scales=None, signed: bool = False):
    """(H, W, 3) colour image of three (H, W) planes: each divided by its scale (default: its
    99.5th percentile), then asinh-stretched; ``signed`` maps zero to grey (residuals)."""
    out = []
    for k, ch in enumerate(channels):
        a = np.nan_to_num(np.asarray(ch, float))
        s = scales[k] if scales is not None else (np.percentile(a, 99.5) if a.size else 1.0)
        s = s if s > 0 else 1.0
        v = np.arcsinh(q * a / s) / np.arcsinh(q)
        out.append(0.5 + 0.5 * v if signed else v)
    return np.clip(np.dstack(out), 0.0, 1.0)


def _strip(panels):
    """Panels (H_i, W_i, 3) side by side on a white background (bottom-aligned)."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + _GAP * (len(panels) - 1)
    out = np.ones((h, w, 3))
    x = 0
    for p in panels:
        out[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + _GAP
    return out


def _show(ax, rgb, title):
    ax.imshow(rgb, origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _grid(ax, fig, arr, title, fmt, cmap):
    im = ax.imshow(arr, origin="lower", cmap=cmap, interpolation="nearest")
    n = arr.shape[0]
    if n <= 8:
        for (r, c), v in np.ndenumerate(arr):
            if np.isfinite(v):
                ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=6, color="w")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.tick_params(labelsize=6, length=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def plot_epsf_summary(path: str, band: str, maps: dict, stamp, stamp_tag: str, stars, dpi: int = 150) -> str:
    """``maps`` from :func:`~tract7dt_mpi.stages.epsf_summary.band_cell_maps`; ``stamp``: one cell's
    ePSF (or None); ``stars``: list of (cutout array, weight), shown asinh-stretched to their peak."""
    fig = new_figure(figsize=(12.0, 7.0))
    gs = fig.add_gridspec(2, 3, height_ratios=[1.4, 1.0], left=0.04, right=0.97, top=0.9, bottom=0.03,
                          wspace=0.3, hspace=0.25)
    fw = maps["fwhm_pix"]
    med = np.nanmedian(fw) if np.isfinite(fw).any() else np.nan
    _grid(fig.add_subplot(gs[0, 0]), fig, fw, f"FWHM [px] per cell (median {med:.2f})", ".2f", "viridis")
    _grid(fig.add_subplot(gs[0, 1]), fig, maps["ellipticity"], "ellipticity 1 - b/a per cell", ".3f", "magma")
    ax = fig.add_subplot(gs[0, 2])
    if stamp is not None:
        s = np.asarray(stamp, float)
        peak = np.nanmax(s) if np.nanmax(s) > 0 else 1.0
        lg = np.log10(np.clip(s / peak, 1e-5, None))
        _show(ax, grey_rgb(lg, -5.0, 0.0), f"ePSF {stamp_tag}, log10 of peak [-5, 0]")
    else:
        ax.set_axis_off()
    ax = fig.add_subplot(gs[1, :])
    if stars:
        panels = []
        for cut, _w in stars:
            c = np.asarray(cut, float)
            peak = np.nanmax(c) if np.isfinite(c).any() and np.nanmax(c) > 0 else 1.0
            v = np.arcsinh(np.nan_to_num(c) / (0.01 * peak)) / np.arcsinh(100.0)
            panels.append(grey_rgb(v, 0.0, 1.0))
        ws = ", ".join(f"{w:.3f}" for _c, w in stars)
        _show(ax, _strip(panels), f"example ePSF stars (asinh to peak), weights in the stack: {ws}")
    else:
        ax.set_axis_off()
    fig.suptitle(f"ePSF summary {band}", fontsize=11)
    return savefig(fig, path, dpi, tight=False, compress_level=1)


def plot_tile_residuals(path: str, channels, data, model, factor: int, dpi: int = 150) -> str:
    """Data / model / residual of the ``white`` channel, and a colour row when three more are given."""
    colour = len(channels) >= 4
    h, w = data.shape[1:]
    fig = new_figure(figsize=(15.0, (5.2 if colour else 2.6) * max(0.35, h / max(w, 1)) * 2 + 0.6))
    axes = fig.subplots(2 if colour else 1, 1, squeeze=False)[:, 0]
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.01, hspace=0.12)
    d, m = data[0], model[0]
    lo, hi = zscale_limits(d)
    r = d - m
    rlo, rhi = zscale_limits(r)
    half = max(abs(rlo), abs(rhi))
    _show(axes[0], _strip([grey_rgb(d, lo, hi), grey_rgb(m, lo, hi), grey_rgb(r, -half, half)]),
          "data | model | residual (inverse-variance mean of the bands; zscale, residual symmetric)")
    if colour:
        scales = [np.percentile(np.nan_to_num(data[k]), 99.5) for k in (1, 2, 3)]
        rows = [asinh_rgb([arr[1], arr[2], arr[3]], scales=scales, signed=signed)
                for arr, signed in ((data, False), (model, False), (data - model, True))]
        _show(axes[1], _strip(rows), f"data | model | residual (grey = 0), asinh colour: R={channels[1]} "
              f"G={channels[2]} B={channels[3]}")
    fig.suptitle(f"tile residuals ({factor} x {factor} px blocks; dark red = no fitted pixel)", fontsize=11)
    return savefig(fig, path, dpi, tight=False, compress_level=1)
