"""The ePSF at a patch: its own cell's ePSF, or one interpolated between neighbouring cells.

An ePSF estimates the PSF near the centre of its cell. The PSF of a real (and of the sample)
image changes smoothly across the field, by a few per cent in FWHM over a cell, and a PSF-fit
flux changes about one for one with the PSF width, so a source near a cell edge fitted with the
cell-centre PSF is biased by up to a per cent or two. ``patch_run.epsf_interpolation = bilinear``
(the default) gives each patch the bilinear interpolation, at the patch centre, of the ePSFs of
the (up to) four cells whose centres surround it, which follows a linear PSF gradient (extrapolated
linearly between the outermost cell centres and the field edge); ``cell`` keeps the serial
pipeline's choice.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .epsf import cell_bounds, cell_tag

MODES = ("bilinear", "cell")


def cell_centre(shape, n: int, r: int, c: int) -> tuple[float, float]:
    """(x, y) centre of cell (r, c), in the pixel convention of :func:`cell_bounds`."""
    x0, x1, y0, y1 = cell_bounds(shape, n, r, c)
    return (x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0


#: beyond the outermost cell centres the PSF is extrapolated linearly, by at most this fraction of
#: the cell spacing (a patch centre is at most half a cell beyond); weights then reach 1.5 / -0.5
MAX_EXTRAPOLATION = 0.5


def _axis_weights(centres: np.ndarray, v: float) -> list[tuple[int, float]]:
    """Linear (index, weight) pairs along one axis; linear extrapolation beyond the outer centres
    (up to MAX_EXTRAPOLATION of a spacing): the PSF keeps changing towards the field edge, where
    the outer cell's ePSF, made of stars nearer the field centre, is off by its whole gradient."""
    if len(centres) == 1:
        return [(0, 1.0)]
    i = int(np.clip(np.searchsorted(centres, v, side="right") - 1, 0, len(centres) - 2))
    t = float(np.clip((v - centres[i]) / (centres[i + 1] - centres[i]),
                      -MAX_EXTRAPOLATION, 1.0 + MAX_EXTRAPOLATION))
    return [(i, 1.0 - t), (i + 1, t)]


def bilinear_weights(shape, n: int, x: float, y: float) -> list[tuple[tuple[int, int], float]]:
    """((r, c), weight) of the cells whose centres surround (x, y) (the outer two per axis beyond
    the outermost centres); weights sum to 1 and can be negative when extrapolating."""
    xs = np.array([cell_centre(shape, n, 0, c)[0] for c in range(n)])
    ys = np.array([cell_centre(shape, n, r, 0)[1] for r in range(n)])
    out = []
    for r, wy in _axis_weights(ys, float(y)):
        for c, wx in _axis_weights(xs, float(x)):
            if wx * wy != 0:
                out.append(((r, c), wx * wy))
    return out


def _usable(choice, gate: int, shape) -> bool:
    st = getattr(choice, "stamp", None)
    if st is None or np.shape(st) != shape or not np.nansum(st) > 0:
        return False
    n = getattr(choice, "nstars_used", None)
    return not (gate > 0 and n is not None and n < gate)


def interpolated_choice(psfs_by_tag: dict, band: str, own_tag: str, shape, n: int, x: float,
                        y: float, gate: int):
    """The band's PsfChoiceInput for a patch centred at (x, y) in cell ``own_tag``.

    Neighbours without a usable ePSF (missing, failed, fewer than ``gate`` stars, other stamp
    shape) are left out and the remaining weights renormalised. When the own cell's ePSF is not
    usable its choice is returned unchanged, so the fitter's fallback and its audit reason apply.
    """
    own = psfs_by_tag.get(own_tag, {}).get(band)
    if own is None or not _usable(own, gate, np.shape(own.stamp)):
        return own
    acc, wsum, used, stars, ef = np.zeros(np.shape(own.stamp)), 0.0, [], [], 0.0
    for (r, c), w in bilinear_weights(shape, n, x, y):
        ch = psfs_by_tag.get(cell_tag(r, c), {}).get(band)
        if not _usable(ch, gate, np.shape(own.stamp)):
            continue
        st = np.nan_to_num(np.asarray(ch.stamp, float))
        acc += w * st / st.sum()
        ef += w * float(getattr(ch, "flux_in_stamp", 1.0))
        wsum += w
        used.append((cell_tag(r, c), round(w, 4)))
        stars += [(sx, sy, sh * w) for sx, sy, sh in getattr(ch, "stars", ())]
    if wsum <= 0 or not acc.sum() > 0:
        return own
    stamp = (acc / acc.sum()).astype(np.float32)
    return dataclasses.replace(own, stamp=stamp, sources=tuple(used), flux_in_stamp=ef / wsum,
                               stars=tuple((sx, sy, sh / wsum) for sx, sy, sh in stars))


def patch_psf_choices(psfs_by_tag: dict, spec, shape, n: int, gate: int, mode: str) -> dict:
    """band -> PsfChoiceInput for one patch (``mode``: ``bilinear`` or ``cell``)."""
    own = psfs_by_tag.get(spec.epsf_tag, {})
    if mode == "cell":
        return own
    x = (spec.x0_base + spec.x1_base - 1) / 2.0
    y = (spec.y0_base + spec.y1_base - 1) / 2.0
    return {b: interpolated_choice(psfs_by_tag, b, spec.epsf_tag, shape, n, x, y, gate)
            for b in own}
