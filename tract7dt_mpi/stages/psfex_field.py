"""The PSF of a patch from the images' PSFEx models (``patch_run.psf_source: psfex``).

Each band's PSFEx model is evaluated at the patch centre, converted from the working frame
(0-based, after the crop) to the image's own 1-based pixels that PSFEx uses, and handed to the
fitter like an ePSF stamp (a :class:`PsfChoiceInput`).
"""
from __future__ import annotations

from ..io.psfex import read_psfex
from .patch_inputs import PsfChoiceInput

__all__ = ["psfex_choice", "psfex_patch_choices"]


def psfex_choice(model, x_work: float, y_work: float, crop_x0: int, crop_y0: int) -> PsfChoiceInput:
    """PsfChoiceInput of ``model`` at working-frame pixel (x_work, y_work)."""
    x1 = x_work + crop_x0 + 1.0
    y1 = y_work + crop_y0 + 1.0
    return PsfChoiceInput(stamp=model.stamp(x1, y1), nstars_used=model.accepted,
                          path=f"{model.path}@({x1:.1f},{y1:.1f})")


def psfex_patch_choices(prepared, spec, cache: dict) -> dict:
    """band -> PsfChoiceInput at the centre of the patch ``spec`` for every band of ``prepared``
    (io.prepared.PreparedImages) that has a PSFEx file; ``cache`` keeps the read models."""
    x = (spec.x0_base + spec.x1_base - 1) / 2.0
    y = (spec.y0_base + spec.y1_base - 1) / 2.0
    out = {}
    for b in prepared.bands:
        path = prepared.band_info(b).psf_file
        if not path:
            continue
        if path not in cache:
            cache[path] = read_psfex(path)
        out[b] = psfex_choice(cache[path], x, y, prepared.crop_x0, prepared.crop_y0)
    return out
