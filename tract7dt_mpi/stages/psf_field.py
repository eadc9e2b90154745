"""The ePSF at a patch: its own cell's ePSF, or one interpolated between neighbouring cells.

An ePSF estimates the PSF near the centre of its cell. The PSF of a real (and of the sample)
image changes smoothly across the field, by a few per cent in FWHM over a cell, and a PSF-fit
flux changes about one for one with the PSF width, so a source near a cell edge fitted with the
cell-centre PSF is biased by up to a per cent or two. ``patch_run.epsf_interpolation = field``
(the default) evaluates the band's polynomial PSF field (:mod:`.psf_poly`, fitted to all the band's
ePSF stars) at the patch centre; ``bilinear`` gives each patch the bilinear interpolation, at the patch centre, of the ePSFs of
the (up to) four cells whose centres surround it, which follows a linear PSF gradient (extrapolated
linearly between the outermost cell centres and the field edge); ``cell`` keeps the serial
pipeline's choice. A patch whose own cell has no usable ePSF (too few stars: real fields have
cells without a single clean star) takes the nearest cells of its band that have one.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .epsf_cells import cell_bounds, cell_tag
from .patch_inputs import PsfChoiceInput
from .psf_poly import FIELD_KEY, evaluate_field

MODES = ("field", "bilinear", "cell")


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


def _combine(own, parts, note):
    """``own`` with the weighted mean of the (tag, weight, choice) ``parts`` (weights sum > 0)."""
    acc, wsum, used, stars, ef = np.zeros(np.shape(parts[0][2].stamp)), 0.0, [], [], 0.0
    for tag, w, ch in parts:
        st = np.nan_to_num(np.asarray(ch.stamp, float))
        acc += w * st / st.sum()
        ef += w * float(getattr(ch, "flux_in_stamp", 1.0))
        wsum += w
        used.append((tag, round(w, 4)))
        stars += [(sx, sy, sh * w) for sx, sy, sh in getattr(ch, "stars", ())]
    if wsum <= 0 or not acc.sum() > 0:
        return own
    base = own if own is not None else parts[0][2]
    extra = {"nstars_used": int(sum(getattr(ch, "nstars_used", 0) or 0 for _, _, ch in parts))} \
        if note else {}
    return dataclasses.replace(base, stamp=(acc / acc.sum()).astype(np.float32), sources=tuple(used),
                               flux_in_stamp=ef / wsum, note=note,
                               stars=tuple((sx, sy, sh / wsum) for sx, sy, sh in stars), **extra)


#: cells averaged when a patch's own cell has no usable ePSF
N_NEAREST = 4


def nearest_choice(psfs_by_tag: dict, band: str, own, shape, n: int, x: float, y: float, gate: int):
    """For a patch whose own cell has no usable ePSF: the inverse-distance weighted mean of the
    (up to ``N_NEAREST``) nearest cells of the band that have one (their stamp shape), so the
    patch is fitted with the PSF its band's stars measured nearby instead of an analytic
    fallback. None when no cell of the band has a usable ePSF."""
    cands = []
    for r in range(n):
        for c in range(n):
            ch = psfs_by_tag.get(cell_tag(r, c), {}).get(band)
            if ch is not None and _usable(ch, gate, np.shape(ch.stamp)):
                cx, cy = cell_centre(shape, n, r, c)
                cands.append((float(np.hypot(cx - x, cy - y)), cell_tag(r, c), ch))
    if not cands:
        return None
    cands.sort(key=lambda t: (t[0], t[1]))
    shape0 = np.shape(cands[0][2].stamp)
    cands = [t for t in cands if np.shape(t[2].stamp) == shape0][:N_NEAREST]
    floor = 0.25 * min(shape[0], shape[1]) / max(n, 1)
    parts = [(tag, 1.0 / max(d, floor), ch) for d, tag, ch in cands]
    return _combine(own, parts, "nearest cells with an ePSF (own cell has none usable)")


def interpolated_choice(psfs_by_tag: dict, band: str, own_tag: str, shape, n: int, x: float,
                        y: float, gate: int):
    """The band's PsfChoiceInput for a patch centred at (x, y) in cell ``own_tag``.

    Neighbours without a usable ePSF (missing, failed, fewer than ``gate`` stars, other stamp
    shape) are left out and the remaining weights renormalised. When the own cell's ePSF is not
    usable, the nearest usable cells of the band stand in (:func:`nearest_choice`); only a band
    without any usable ePSF keeps its own choice, so the fitter's fallback and its reason apply.
    """
    own = psfs_by_tag.get(own_tag, {}).get(band)
    if own is None or not _usable(own, gate, np.shape(own.stamp)):
        near = nearest_choice(psfs_by_tag, band, own, shape, n, x, y, gate)
        return near if near is not None else own
    parts = []
    for (r, c), w in bilinear_weights(shape, n, x, y):
        ch = psfs_by_tag.get(cell_tag(r, c), {}).get(band)
        if _usable(ch, gate, np.shape(own.stamp)):
            parts.append((cell_tag(r, c), w, ch))
    return _combine(own, parts, "") if parts else own


def field_choice(field, own, x: float, y: float, gate: int):
    """The band's PSF field evaluated at (x, y) as a PsfChoiceInput (None when it gives no stamp,
    or holds fewer than ``gate`` stars)."""
    if gate > 0 and field.n_stars < gate:
        return None
    stamp, ef = evaluate_field(field, x, y)
    if stamp is None:
        return None
    stars = tuple((float(a), float(b), float(s)) for (a, b), s in zip(field.xy, field.share))
    base = own if own is not None else PsfChoiceInput(stamp=None)
    bw = field.wings.get("bright_wing") if field.halos else None
    return dataclasses.replace(base, stamp=stamp, nstars_used=int(field.n_stars), flux_in_stamp=ef,
                               sources=(("field", field.degree),), stars=stars,
                               note=f"band PSF field (degree {field.degree}, {field.n_stars} stars)",
                               halos=tuple(field.halos) if bw else (),
                               halo_wing=(float(bw["amp"]), float(bw["slope"])) if bw else ())


def patch_psf_choices(psfs_by_tag: dict, spec, shape, n: int, gate: int, mode: str) -> dict:
    """band -> PsfChoiceInput for one patch (``mode``: ``field``, ``bilinear`` or ``cell``)."""
    own = psfs_by_tag.get(spec.epsf_tag, {})
    if mode == "cell":
        return own
    x = (spec.x0_base + spec.x1_base - 1) / 2.0
    y = (spec.y0_base + spec.y1_base - 1) / 2.0
    fields = psfs_by_tag.get(FIELD_KEY, {}) if mode == "field" else {}
    bands = sorted({b for tag, cells in psfs_by_tag.items() if tag != FIELD_KEY for b in cells} | set(fields))
    out = {}
    for b in bands:
        got = field_choice(fields[b], own.get(b), x, y, gate) if b in fields else None
        out[b] = got if got is not None else interpolated_choice(psfs_by_tag, b, spec.epsf_tag, shape, n,
                                                                 x, y, gate)
    return {b: v for b, v in out.items() if v is not None}


def position_scale(stamp_c, ef_c: float, stamp_s, ef_s: float) -> tuple[float, float]:
    """(shape, normalisation) factors that turn the total flux of a point source fitted with
    ``stamp_c`` (unit sum, ``ef_c`` of the PSF's flux inside it) into its total flux when its PSF
    is ``stamp_s`` (``ef_s``): a linear fit of stamp_c to a star of unit flux shaped stamp_s gives
    k = <stamp_c, stamp_s> / <stamp_c, stamp_c> (sky-limited), so 1 / k and ef_c / ef_s."""
    c = np.asarray(stamp_c, float)
    k = float((c * np.asarray(stamp_s, float)).sum() / (c * c).sum())
    if not (k > 0 and ef_s > 0):
        return 1.0, 1.0
    return 1.0 / k, ef_c / ef_s


def with_position_scales(pin, psfs_by_tag: dict, shape):
    """``pin`` (stages.patch_inputs.PatchInput) whose band PSF choices made from the band's PSF
    field carry ``row_scales``: :func:`position_scale` (shape, normalisation) of each catalogue row, the field evaluated
    at the row's position against the stamp at the patch centre. The PSF changes by a few tenths
    of a per cent in FWHM across a patch, and a point source's fitted flux with it: on GalSim
    tiles that was 0.25-0.5 % rms, 1-2 sigma for stars at S/N > 200."""
    fields = psfs_by_tag.get(FIELD_KEY, {})
    h, w = shape
    x = np.clip(pin.cat["x_pix_white"].to_numpy(float), 0.0, w - 1.0)
    y = np.clip(pin.cat["y_pix_white"].to_numpy(float), 0.0, h - 1.0)
    s = pin.spec
    xc, yc = (s.x0_base + s.x1_base - 1) / 2.0, (s.y0_base + s.y1_base - 1) / 2.0
    out = dict(pin.psfs)
    for b, ch in pin.psfs.items():
        field = fields.get(b)
        if field is None or ch.stamp is None or not ch.sources or ch.sources[0][0] != "field":
            continue
        # shapes compared without the registration offset: the fitted position takes up its
        # change across the patch, which is no flux
        centre, ef_c = evaluate_field(field, xc, yc, shift=(0.0, 0.0))
        if centre is None:
            continue
        scales = []
        for xi, yi in zip(x, y):
            st, ef = evaluate_field(field, float(xi), float(yi), shift=(0.0, 0.0)) \
                if np.isfinite(xi) and np.isfinite(yi) else (None, 1.0)
            scales.append((1.0, 1.0) if st is None else position_scale(centre, ef_c, st, ef))
        out[b] = dataclasses.replace(ch, row_scales=tuple((float(a), float(n)) for a, n in scales))
    return dataclasses.replace(pin, psfs=out)
