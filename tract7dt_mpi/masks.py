"""Final bad-pixel mask composition: what the fitter must ignore.

Saturated and bright-mask pixels keep a finite sky sigma in the prepared store (the white stack,
the bright-mask detection and the ePSF star selection want them); only the fit masks them, via
``bad_final = nonfinite | saturated | bright``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["compose_final_mask"]


def compose_final_mask(nonfinite: np.ndarray, satur: np.ndarray | None,
                       bright: np.ndarray | None = None) -> np.ndarray:
    """Boolean OR of the three masks (``None`` parts are skipped); shapes must match."""
    bad = np.asarray(nonfinite, dtype=bool).copy()
    for part in (satur, bright):
        if part is None:
            continue
        part = np.asarray(part, dtype=bool)
        if part.shape != bad.shape:
            raise ValueError(f"mask shape {part.shape} != {bad.shape}")
        bad |= part
    return bad
