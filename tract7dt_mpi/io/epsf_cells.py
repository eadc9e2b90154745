"""An ePSF cell's products in its folder: ``epsf.npy``, ``stars.npz`` and ``meta.json``."""
from __future__ import annotations

import io
import os

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_json


def write_cell_products(cell_dir, meta: dict, stamp=None, stars: dict | None = None) -> list:
    """Write ``meta.json`` (always), ``epsf.npy`` (the stamp, float32) and ``stars.npz`` (the
    stamps of the PSF field) when given, atomically; return the paths."""
    os.makedirs(cell_dir, exist_ok=True)
    paths = []
    if stamp is not None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(stamp, dtype=np.float32))
        paths.append(atomic_write_bytes(os.path.join(cell_dir, "epsf.npy"), buf.getvalue()))
    if stars is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **stars)
        paths.append(atomic_write_bytes(os.path.join(cell_dir, "stars.npz"), buf.getvalue()))
    paths.append(atomic_write_json(os.path.join(cell_dir, "meta.json"), meta))
    return paths
