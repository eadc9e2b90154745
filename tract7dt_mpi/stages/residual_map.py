"""Tile-level data / model / residual images at reduced resolution, built patch by patch.

Each patch reduces its own base box (the boxes tile the working frame without overlap) to block
sums on one tile-wide coarse grid of ``factor`` x ``factor`` pixel blocks: for each channel the
weighted sums of data and model and the sum of weights.  Adding the parts of every patch gives
the whole tile, and ``sum / weight`` its block means, without any rank ever holding a full-size
band.  Channels: ``white`` (inverse-variance mean over all bands, sky sigma weights) and, with
three or more bands, the reddest, a middle and the bluest band (equal weights) for a colour image.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..io.residual_parts import ResidualPart  # the record its file holds (re-exported)

MAX_SIDE = 1024          # longest side of the coarse tile image (px)


def coarse_factor(shape, max_side: int = MAX_SIDE) -> int:
    """Block size so that the coarse image of a ``shape`` frame is at most ``max_side`` pixels."""
    return max(1, math.ceil(max(int(shape[0]), int(shape[1])) / int(max_side)))


def colour_bands(bands) -> list[str]:
    """[red, green, blue] bands: by the wavelength number in the names (m400, m887 ...) when every
    band has one, else by list order (last = red); [] for fewer than three bands."""
    bands = list(bands)
    if len(bands) < 3:
        return []
    nums = [re.search(r"\d+", b) for b in bands]
    order = sorted(bands, key=lambda b: int(re.search(r"\d+", b).group())) if all(nums) else bands
    return [order[-1], order[len(order) // 2], order[0]]


def part_channels(bands) -> list[str]:
    """Channel names of the parts: ``white`` then the colour bands (if any)."""
    return ["white"] + colour_bands(bands)


def _block_sum(arr, y0, x0, f):
    """Sums of ``arr`` (origin y0, x0 in the frame) over the f x f blocks of the frame grid."""
    h, w = arr.shape
    cy0, cx0 = y0 // f, x0 // f
    hc, wc = (y0 + h - 1) // f - cy0 + 1, (x0 + w - 1) // f - cx0 + 1
    pad = np.zeros((hc * f, wc * f))
    oy, ox = y0 - cy0 * f, x0 - cx0 * f
    pad[oy:oy + h, ox:ox + w] = arr
    return pad.reshape(hc, f, wc, f).sum(axis=(1, 3)), cy0, cx0


def patch_residual_part(data: dict, model: dict, sigma: dict, good: dict, box, bands, factor) -> ResidualPart:
    """Reduce one patch. ``data``/``model``/``sigma``/``good``: band -> arrays of its ROI;
    ``box`` = (x0, x1, y0, y1) of the base box in the frame, (bx0, by0) its offset in the ROI
    given as ``box[4:6]``."""
    x0, x1, y0, y1, ox, oy = box
    sl = (slice(oy, oy + (y1 - y0)), slice(ox, ox + (x1 - x0)))
    chans = part_channels(bands)
    d_out, m_out, w_out = [], [], []
    for ch in chans:
        sd = sm = sw = None
        for b in (bands if ch == "white" else [ch]):
            g = np.asarray(good[b], bool)[sl]
            d = np.where(g, np.nan_to_num(np.asarray(data[b], float)[sl]), 0.0)
            m = np.where(g, np.nan_to_num(np.asarray(model[b], float)[sl]), 0.0)
            if ch == "white":
                s = np.asarray(sigma[b], float)[sl]
                w = np.where(g & np.isfinite(s) & (s > 0), 1.0 / np.maximum(s * s, 1e-24), 0.0)
            else:
                w = g.astype(float)
            sd, sm, sw = (w * d, w * m, w) if sd is None else (sd + w * d, sm + w * m, sw + w)
        d_out.append(_block_sum(sd, y0, x0, factor)[0])
        m_out.append(_block_sum(sm, y0, x0, factor)[0])
        bw, cy0, cx0 = _block_sum(sw, y0, x0, factor)
        w_out.append(bw)
    return ResidualPart(factor, cy0, cx0, chans, np.array(d_out), np.array(m_out), np.array(w_out))


def assemble(parts, shape, factor):
    """Sum the parts on the coarse grid of a ``shape`` frame -> (channels, data, model) block means
    (C, H/f, W/f), NaN where no pixel was fitted. ``parts`` may be any iterable (read lazily)."""
    hc, wc = math.ceil(shape[0] / factor), math.ceil(shape[1] / factor)
    acc, chans = None, None
    for p in parts:
        if p.factor != factor:
            continue
        if acc is None:
            chans = list(p.channels)
            acc = np.zeros((3, len(chans), hc, wc))
        if list(p.channels) != chans:
            continue
        h, w = p.data.shape[1:]
        sl = (slice(None), slice(p.cy0, p.cy0 + h), slice(p.cx0, p.cx0 + w))
        acc[0][sl] += p.data
        acc[1][sl] += p.model
        acc[2][sl] += p.weight
    if acc is None:
        return [], None, None
    with np.errstate(invalid="ignore", divide="ignore"):
        data = np.where(acc[2] > 0, acc[0] / acc[2], np.nan)
        model = np.where(acc[2] > 0, acc[1] / acc[2], np.nan)
    return chans, data, model


__all__ = ["MAX_SIDE", "coarse_factor", "colour_bands", "part_channels", "ResidualPart", "patch_residual_part",
           "assemble"]
