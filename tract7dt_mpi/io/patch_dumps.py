"""Patch-input dumps (``build-patch-inputs``): one patch as ``{tag}.npz`` + ``{tag}.json``.

The ``.npz`` holds named arrays (no pickles), the ``.json`` everything else (a document of
plain JSON values, NaN allowed). Both are written to temporary names and renamed. What goes
into the two is decided by :mod:`tract7dt_mpi.stages.patch_inputs` (``patch_input_record`` and
``patch_input_from_record``); this module only writes and reads the pair of files.
"""
from __future__ import annotations

import io as _io
import json
import os

import numpy as np

from ..errors import InputError
from .atomic import atomic_write_bytes, atomic_write_text


def write_patch_dump(out_dir: str, tag: str, arrays: dict, doc: dict) -> tuple[str, str]:
    """Write ``{out_dir}/{tag}.npz`` (``arrays``: name -> ndarray) and ``{tag}.json`` (``doc``).

    Returns the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    npz = os.path.join(out_dir, f"{tag}.npz")
    atomic_write_bytes(npz, buf.getvalue())
    js = os.path.join(out_dir, f"{tag}.json")
    atomic_write_text(js, json.dumps(doc, indent=1, allow_nan=True))
    return npz, js


def read_patch_dump(path: str) -> tuple[dict, dict]:
    """(doc, arrays) of a dump written by :func:`write_patch_dump` (``path``: its .json or .npz).

    An unreadable or missing file is an InputError naming both files."""
    base = os.path.splitext(path)[0]
    try:
        with open(base + ".json", encoding="utf-8") as fh:
            doc = json.load(fh)
        with np.load(base + ".npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read patch input dump {base}.json/.npz: {exc}") from None
    return doc, arrays
