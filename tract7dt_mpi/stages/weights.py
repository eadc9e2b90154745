"""Per-pixel weight maps: an image's inverse-variance (or RMS) map in the working frame.

A band with a map gets ``ivar = w / scale²`` (``w`` in ADU^-2, or ``1 / rms²``) in scaled image
units; the fit and the ePSF then use ``sigma_sky = 1 / sqrt(ivar)`` per pixel instead of the scalar
``SKYSIG``. Pixels with zero, negative or non-finite weight carry no information: they are masked
like non-finite pixels.
"""
from __future__ import annotations

import logging

import numpy as np

from ..io import fits as fio

__all__ = ["band_ivar", "ivar_from_map", "sigma_from_ivar"]

log = logging.getLogger("tract7dt_mpi.stages.weights")


def ivar_from_map(values: np.ndarray, kind: str, scale: float) -> np.ndarray:
    """Scaled inverse variance (float32) from a weight (``kind="weight"``) or RMS map in ADU;
    0 where the map is not a positive finite number."""
    v = np.asarray(values, dtype=np.float64)
    good = np.isfinite(v) & (v > 0)
    out = np.zeros(v.shape, dtype=np.float64)
    out[good] = v[good] if kind == "weight" else 1.0 / v[good] ** 2
    out /= float(scale) ** 2
    return out.astype(np.float32)


def sigma_from_ivar(ivar: np.ndarray) -> np.ndarray:
    """1 / sqrt(ivar) (float32), inf where ivar <= 0."""
    iv = np.asarray(ivar, dtype=np.float32)
    out = np.full(iv.shape, np.inf, dtype=np.float32)
    good = iv > 0
    out[good] = 1.0 / np.sqrt(iv[good])
    return out


def band_ivar(info, box, logger=None) -> np.ndarray | None:
    """Scaled inverse variance of ``info``'s weight map over ``box = (y0, y1, x0, x1)``, or None
    when the band has none. Logs the map's median sigma next to SKYSIG so that a map in the wrong
    units (a variance map given as a weight, counts instead of ADU) is easy to spot."""
    logger = logger or log
    spec = getattr(info, "weight", "")
    if not spec:
        return None
    raw, _ = fio.read_image(spec, box=box)
    ivar = ivar_from_map(raw, info.weight_kind or "weight", info.scale)
    good = ivar > 0
    med = float(np.median(1.0 / np.sqrt(ivar[good]))) / info.scale if good.any() else float("nan")
    logger.info("Band %s: %s map %s; median sigma %.4g ADU (SKYSIG %.4g), %d zero-weight pixel(s) masked",
                info.band, info.weight_kind, spec, med, info.skysig, int((~good).sum()))
    return ivar
