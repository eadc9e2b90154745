"""The ``plotting.level: summary`` figures under ``{work_dir}/summary/``.

``epsf_{band}.png``: the band's ePSF FWHM and ellipticity maps over the cell grid (values written
in the cells), the ePSF of the cell with most stars, and a few of the stars the ePSFs were made of.
``residuals.png``: the tile's data, model and residual at reduced resolution (inverse-variance
mean over the bands and, with three or more bands, an asinh colour image of the reddest, a middle
and the bluest band).

They must stay cheap (a few per band at 40 bands, a few % of a small run): panels are scaled to
RGB with numpy and pasted into one PIL image with text labels, written at the panels' own pixel
scale with fast PNG compression - no matplotlib figure (axes and tick layout cost ~0.3 s a figure).
``plotting.dpi`` sets only the text size (14 px at 150 dpi).
"""
from __future__ import annotations

import io

import numpy as np

from .common import zscale_limits

__all__ = ["plot_epsf_summary", "plot_tile_residuals", "asinh_rgb", "grey_rgb", "colour_map_rgb"]

_GAP = 6                       # pixels between panels
_NAN_RGB = (0.35, 0.0, 0.0)    # dark red: no value


def grey_rgb(img, lo, hi):
    """(H, W, 3) grey image of ``img`` linearly between ``lo`` and ``hi``; NaN = dark red."""
    a = np.asarray(img, float)
    v = np.clip((np.nan_to_num(a, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    out = np.dstack([v, v, v])
    out[~np.isfinite(a)] = _NAN_RGB
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
    rgb = np.clip(np.dstack(out), 0.0, 1.0)
    rgb[~np.all([np.isfinite(np.asarray(c, float)) for c in channels], axis=0)] = _NAN_RGB
    return rgb


def colour_map_rgb(arr, cmap: str = "viridis"):
    """(H, W, 3) of ``arr`` through a matplotlib colour map over its finite range; NaN = dark red."""
    from matplotlib import colormaps
    a = np.asarray(arr, float)
    fin = np.isfinite(a)
    lo, hi = (float(a[fin].min()), float(a[fin].max())) if fin.any() else (0.0, 1.0)
    v = (np.nan_to_num(a, nan=lo) - lo) / (hi - lo if hi > lo else 1.0)
    out = colormaps[cmap](np.clip(v, 0, 1))[..., :3]
    out[~fin] = _NAN_RGB
    return out


# ----------------------------------------------------------------------------- PIL canvas
def _font(dpi):
    from PIL import ImageFont
    return ImageFont.load_default(size=max(10, round(14 * float(dpi) / 150.0)))


def _image(rgb, scale: int = 1):
    """PIL image of an (H, W, 3) array in [0, 1] shown origin-lower, each pixel ``scale`` x ``scale``."""
    from PIL import Image
    a = np.flipud(np.asarray(rgb, float))
    if scale > 1:
        a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def _titled(img, title, font):
    """``img`` with ``title`` above it on white."""
    from PIL import Image, ImageDraw
    th = int(font.size * 1.5)
    w = max(img.width, int(ImageDraw.Draw(img).textlength(title, font=font)) + 4)
    out = Image.new("RGB", (w, img.height + th), "white")
    ImageDraw.Draw(out).text((2, 2), title, fill="black", font=font)
    out.paste(img, (0, th))
    return out


def _grid(rows, title, font):
    """Rows of PIL images side by side, rows stacked, a title on top, on white."""
    from PIL import Image
    rows = [r for r in rows if r]
    widths = [sum(p.width for p in r) + _GAP * (len(r) - 1) for r in rows]
    heights = [max(p.height for p in r) for r in rows]
    out = Image.new("RGB", (max(widths) + 2 * _GAP, sum(heights) + _GAP * (len(rows) + 1)), "white")
    y = _GAP
    for r, h in zip(rows, heights):
        x = _GAP
        for p in r:
            out.paste(p, (x, y))
            x += p.width + _GAP
        y += h + _GAP
    return _titled(out, title, font)


def _save(img, path) -> str:
    import os

    from ..io.atomic import atomic_write_bytes
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return atomic_write_bytes(path, buf.getvalue(), fsync=False)


# ----------------------------------------------------------------------------- figures
def _cell_map(arr, title, fmt, cmap, font):
    from PIL import ImageDraw
    n = arr.shape[0]
    px = max(24, 280 // max(n, 1))
    img = _image(colour_map_rgb(arr, cmap), px)
    if n <= 10:
        d = ImageDraw.Draw(img)
        for (r, c), v in np.ndenumerate(arr):
            if np.isfinite(v):
                d.text(((c + 0.5) * px, (n - r - 0.5) * px), format(v, fmt), fill="white", font=font,
                       anchor="mm", stroke_width=1, stroke_fill="black")
    fin = arr[np.isfinite(arr)]
    rng = f" [{fin.min():{fmt}}, {fin.max():{fmt}}]" if fin.size else " (none)"
    return _titled(img, title + rng, font)


def plot_epsf_summary(path: str, band: str, maps: dict, stamp, stamp_tag: str, stars, dpi: int = 150) -> str:
    """``maps`` from :func:`~tract7dt_mpi.stages.epsf_summary.band_cell_maps` (rows = y, up);
    ``stamp``: one cell's ePSF (or None); ``stars``: list of (cutout array, weight), each shown
    asinh-stretched to its own peak."""
    font = _font(dpi)
    top = [_cell_map(maps["fwhm_pix"], "FWHM [px]", ".2f", "viridis", font),
           _cell_map(maps["ellipticity"], "ellipticity 1-b/a", ".3f", "magma", font)]
    if stamp is not None:
        s = np.asarray(stamp, float)
        peak = np.nanmax(s) if np.nanmax(s) > 0 else 1.0
        lg = np.log10(np.clip(np.nan_to_num(s) / peak, 1e-5, None))
        top.append(_titled(_image(grey_rgb(lg, -5.0, 0.0), max(1, 280 // max(s.shape))),
                           f"ePSF {stamp_tag} (log10, peak = 0)", font))
    bottom = []
    for k, (cut, w) in enumerate(stars):
        c = np.nan_to_num(np.asarray(cut, float))
        peak = c.max() if c.size and c.max() > 0 else 1.0
        v = np.arcsinh(c / (0.01 * peak)) / np.arcsinh(100.0)
        label = f"star {k + 1}" + (f", weight {w:.3f}" if np.isfinite(w) else "")
        bottom.append(_titled(_image(grey_rgb(v, 0.0, 1.0), max(1, 150 // max(c.shape))), label, font))
    title = (f"ePSF summary {band}: per cell (row = y, up), and example ePSF stars (asinh to peak); "
             "dark red = no ePSF")
    return _save(_grid([top, bottom], title, font), path)


def plot_tile_residuals(path: str, channels, data, model, factor: int, dpi: int = 150) -> str:
    """Data / model / residual of the ``white`` channel, and a colour row when three more are given."""
    font = _font(dpi)
    d, m = data[0], model[0]
    lo, hi = zscale_limits(d)
    r = d - m
    rlo, rhi = zscale_limits(r)
    half = max(abs(rlo), abs(rhi))
    rows = [[_titled(_image(grey_rgb(d, lo, hi)), "data (inverse-variance mean of the bands, zscale)", font),
             _titled(_image(grey_rgb(m, lo, hi)), "model (same scale)", font),
             _titled(_image(grey_rgb(r, -half, half)), "residual = data - model (symmetric)", font)]]
    if len(channels) >= 4:
        scales = [np.percentile(np.nan_to_num(data[k]), 99.5) for k in (1, 2, 3)]
        names = f"R={channels[1]} G={channels[2]} B={channels[3]}"
        rows.append([_titled(_image(asinh_rgb([a[1], a[2], a[3]], scales=scales, signed=s)), t, font)
                     for a, s, t in ((data, False, f"data, asinh colour {names}"), (model, False, "model"),
                                     (data - model, True, "residual (grey = 0)"))])
    title = f"tile residuals: {factor} x {factor} px block means; dark red = no fitted pixel"
    return _save(_grid(rows, title, font), path)
