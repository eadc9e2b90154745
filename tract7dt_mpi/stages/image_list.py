"""The image list: one image per line, optionally with its weight map and PSFEx model.

Syntax (blank lines and ``#`` comments skipped; fields separated by white space)::

    image_spec  [weight=SPEC | rms=SPEC]  [psf=PATH]

``image_spec`` and ``SPEC`` are FITS paths with an optional HDU in brackets (``f.fits[1]``,
``f.fits[SCI]``, see :mod:`tract7dt_mpi.io.fits`); without one the first 2-D image HDU is used.
``weight=`` names an inverse-variance map (ADU^-2), ``rms=`` a noise map (ADU); ``psf=`` a PSFEx
``.psf`` file. Relative paths resolve against the config's folder (like the images). When the
list gives no map, the image header may name one: ``WGHTFILE`` (inverse variance) or ``RMSFILE``
(noise), and ``PSFFILE`` the PSFEx model; those paths resolve against the image's own folder.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..errors import InputError
from ..io import fits as fio
from ..io.tables import read_text_lines

__all__ = ["ImageEntry", "read_image_entries", "read_image_list", "attach_entry_files",
           "HEADER_KEYS"]

#: header keyword -> (what it names, weight kind)
HEADER_KEYS = {"WGHTFILE": ("weight", "weight"), "RMSFILE": ("weight", "rms"), "PSFFILE": ("psf", None)}
_FIELD_KEYS = ("weight", "rms", "psf")


@dataclass(frozen=True)
class ImageEntry:
    """One line of the image list; paths absolute, HDU suffixes kept."""

    image: str
    weight: str | None = None       # FITS spec of the weight / RMS map
    weight_kind: str | None = None  # "weight" (inverse variance) or "rms"
    psf: str | None = None          # PSFEx file
    line: int = 0


def _resolve(spec: str, base: str) -> str:
    spec = os.path.expanduser(spec)
    return os.path.abspath(spec if os.path.isabs(spec) else os.path.join(base, spec))


def read_image_entries(path: str, base_dir: str | None = None) -> list[ImageEntry]:
    """Parse the image list (see the module doc); InputError naming the list and line on an
    unknown ``key=`` field, a repeated field, or both ``weight=`` and ``rms=``."""
    lines = read_text_lines(path, "image list file")
    base = base_dir or os.path.dirname(os.path.abspath(path))
    out = []
    for n, line in enumerate(lines, start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        first, *rest = s.split()
        fields = {}
        for tok in rest:
            key, sep, val = tok.partition("=")
            key = key.lower()
            if not sep or key not in _FIELD_KEYS or not val:
                raise InputError(f"Image list {path} line {n}: bad field {tok!r} "
                                 f"(expected weight=FILE, rms=FILE or psf=FILE)")
            if key in fields:
                raise InputError(f"Image list {path} line {n}: {key}= given twice")
            fields[key] = _resolve(val, base)
        if "weight" in fields and "rms" in fields:
            raise InputError(f"Image list {path} line {n}: give weight= or rms=, not both")
        kind = "weight" if "weight" in fields else ("rms" if "rms" in fields else None)
        out.append(ImageEntry(image=_resolve(first, base), weight=fields.get(kind) if kind else None,
                              weight_kind=kind, psf=fields.get("psf"), line=n))
    if not out:
        raise InputError(f"No image paths found in image list {path}")
    return out


def read_image_list(path: str, base_dir: str | None = None) -> list[str]:
    """Image specs of the image list (first field of every entry)."""
    return [e.image for e in read_image_entries(path, base_dir)]


def _from_header(entry: ImageEntry, header) -> ImageEntry:
    """Fill the weight map / PSFEx file from the image header when the list names none."""
    folder = os.path.dirname(fio.split_hdu_spec(entry.image)[0])
    upd = {}
    for key, (what, kind) in HEADER_KEYS.items():
        val = str(header.get(key, "") or "").strip()
        if not val or getattr(entry, what) is not None or what in upd:
            continue
        upd[what] = _resolve(val, folder)
        if kind:
            upd["weight_kind"] = kind
    return dataclasses.replace(entry, **upd) if upd else entry


def attach_entry_files(info, entry: ImageEntry, header, shape, need_psf: bool = False):
    """BandInfo ``info`` with its weight map and PSFEx file (list fields, else header keys).

    Checks now, before any pixel work: the weight map exists and has the image's ``shape``; the
    PSFEx file is readable (and present when ``need_psf``). InputError naming the files otherwise.
    """
    e = _from_header(entry, header)
    if e.weight is not None:
        w_shape = fio.image_shape(fio.read_header(e.weight), e.weight)
        if tuple(w_shape) != tuple(shape):
            raise InputError(f"{e.weight_kind} map {e.weight} has shape {w_shape}, expected {tuple(shape)} "
                             f"like its image {entry.image}")
    if e.psf is not None:
        from ..io.psfex import read_psfex
        read_psfex(e.psf)
    elif need_psf:
        raise InputError(f"patch_run.psf_source is psfex but no PSFEx file is given for {entry.image} "
                         f"(image list field psf=FILE or header key PSFFILE)")
    return dataclasses.replace(info, weight=e.weight or "", weight_kind=e.weight_kind or "",
                               psf_file=e.psf or "")
