"""``{tractor_out_dir}/{tag}/residual_part.npz``: one patch's block sums for the tile residual image.

npz members: ``meta`` (int64 [factor, cy0, cx0]), ``channels`` (unicode array), ``data``,
``model``, ``weight`` (float32, shape (channels, h, w)); see :mod:`tract7dt_mpi.stages.residual_map`.
"""
from __future__ import annotations

import io
import os

import numpy as np

from .atomic import atomic_write_bytes

FILE_NAME = "residual_part.npz"


def save_residual_part(patch_dir: str, part) -> str:
    buf = io.BytesIO()
    np.savez(buf, meta=np.array([part.factor, part.cy0, part.cx0], np.int64),
             channels=np.array(part.channels, dtype=str), data=part.data.astype(np.float32),
             model=part.model.astype(np.float32), weight=part.weight.astype(np.float32))
    return atomic_write_bytes(os.path.join(patch_dir, FILE_NAME), buf.getvalue(), fsync=False)


def load_residual_part(path: str):
    """The :class:`~tract7dt_mpi.stages.residual_map.ResidualPart` of one file."""
    from ..stages.residual_map import ResidualPart
    with np.load(path, allow_pickle=False) as z:
        f, cy0, cx0 = (int(v) for v in z["meta"])
        return ResidualPart(f, cy0, cx0, [str(c) for c in z["channels"]], z["data"].astype(float),
                            z["model"].astype(float), z["weight"].astype(float))
