"""``{patch_results_dir}/{tag}/residual_part.npy``: one patch's block sums for the tile residual image.

One float32 array of shape (3, channels, h, w): the weighted data sums, model sums and weight sums
of a :class:`ResidualPart`.  Its grid origin, block size and
channel names follow from the patch plan and the band list, so the file holds nothing else and
reads in one call (a tile has thousands of patches).
"""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np

from .atomic import atomic_write_bytes

FILE_NAME = "residual_part.npy"


@dataclasses.dataclass
class ResidualPart:
    """Block sums of one patch on the coarse grid, origin (cy0, cx0) in coarse pixels
    (built by :func:`tract7dt_mpi.stages.residual_map.patch_residual_part`)."""

    factor: int
    cy0: int
    cx0: int
    channels: list
    data: np.ndarray        # (C, h, w) sum of weight * data
    model: np.ndarray       # (C, h, w) sum of weight * model
    weight: np.ndarray      # (C, h, w) sum of weights


def save_residual_part(patch_dir: str, part) -> str:
    buf = io.BytesIO()
    np.save(buf, np.stack([part.data, part.model, part.weight]).astype(np.float32))
    return atomic_write_bytes(os.path.join(patch_dir, FILE_NAME), buf.getvalue(), fsync=False)


def load_residual_part(path: str, factor: int, cy0: int, cx0: int, channels):
    """The :class:`ResidualPart` of one file, or None when the file does not hold
    ``len(channels)`` channels."""
    a = np.load(path, allow_pickle=False)
    if a.ndim != 4 or a.shape[:2] != (3, len(channels)):
        return None
    a = a.astype(float)
    return ResidualPart(int(factor), int(cy0), int(cx0), list(channels), a[0], a[1], a[2])
