"""The prepared store's band files: one HDF5 file per band, written by the task that prepared the
band, so that no rank writes every band (and no parallel HDF5 is needed).

Layout of one band file (the group the store's ``/bands/{band}`` external link points to)::

    /band/img, /band/mask, /band/ivar   as /bands/{band}/... of the store (io.prepared)
          attrs: the band's BandInfo fields
    /pre_crop   float32, the scaled full input frame at the crop figure's stride (only when drawn)

The files live in ``{store stem}_bands/`` beside the store (``prepared_bands/`` for
``prepared.h5``); the store links to them by relative path, so the work folder can be moved.
"""
from __future__ import annotations

import os

import numpy as np

from .prepared import BAND_GROUP, MASK_NONFINITE, _chunks, _open_h5

__all__ = ["band_files_dir", "band_file_path", "write_band_file", "read_band_rows", "read_pre_crop",
           "white_strip_path", "write_white_strip", "read_white_strip"]

PRE_CROP = "pre_crop"


def band_files_dir(store_path: str) -> str:
    """The folder of the store's band files."""
    return os.path.splitext(os.path.abspath(store_path))[0] + "_bands"


def band_file_path(store_path: str, index: int) -> str:
    """The file of the ``index``-th band (image-list order) of the store at ``store_path``."""
    return os.path.join(band_files_dir(store_path), f"band{int(index):03d}.h5")


def write_band_file(path: str, img: np.ndarray, mask_bits: np.ndarray, attrs: dict,
                    ivar: np.ndarray | None = None, pre_crop: np.ndarray | None = None) -> None:
    """Write one band file (under a temporary name, then renamed: a reader never sees half of it;
    a failed write, e.g. a full disk, leaves nothing behind)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with _open_h5(tmp, "w") as f:
            g = f.create_group(BAND_GROUP)
            for name, arr, dtype in (("img", img, np.float32), ("mask", mask_bits, np.uint8),
                                     ("ivar", ivar, np.float32)):
                if arr is not None:
                    arr = np.asarray(arr)
                    if arr.shape != np.shape(img):
                        raise ValueError(f"{path}: {name} shape {arr.shape} != image shape {np.shape(img)}")
                    g.create_dataset(name, data=arr.astype(dtype, copy=False), chunks=_chunks(arr.shape))
            for k, v in attrs.items():
                if v is not None:
                    g.attrs[k] = v
            if pre_crop is not None:
                f.create_dataset(PRE_CROP, data=np.asarray(pre_crop, dtype=np.float32))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_band_rows(path: str, y0: int, y1: int):
    """(img, nonfinite, ivar or None, attrs) of rows ``[y0:y1]`` of a band file."""
    with _open_h5(path, "r") as f:
        g = f[BAND_GROUP]
        img = g["img"][y0:y1]
        nonfinite = (g["mask"][y0:y1] & MASK_NONFINITE) > 0
        ivar = g["ivar"][y0:y1] if "ivar" in g else None
        return img, nonfinite, ivar, dict(g.attrs)


def read_pre_crop(path: str) -> np.ndarray | None:
    """The band file's strided pre-crop frame, or None when it was not written."""
    with _open_h5(path, "r") as f:
        return f[PRE_CROP][...] if PRE_CROP in f else None


def white_strip_path(store_path: str, y0: int) -> str:
    """The file of the white-stack strip that starts at row ``y0`` (a multi-tile run's strip tasks
    leave their strips there for the worker that writes the store)."""
    return os.path.join(band_files_dir(store_path), f"white{int(y0):06d}.npz")


def write_white_strip(path: str, white: np.ndarray, sigma: np.ndarray) -> None:
    """One strip of the white stack and its sigma (temporary name, then renamed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    try:
        np.savez(tmp, white=np.asarray(white, np.float32), sigma=np.asarray(sigma, np.float32))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_white_strip(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(white, sigma) of a strip written by :func:`write_white_strip`."""
    with np.load(path) as z:
        return z["white"], z["sigma"]
