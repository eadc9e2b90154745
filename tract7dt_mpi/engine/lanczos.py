"""Separable Lanczos-3 sub-pixel shifts of PSF stamps, with analytic derivatives in the shift.

The shift moves image content by +dx (a correlation with 7 taps at t_k = k - 3 + dx, normalised
to unit sum, as the Tractor does); pixels shifted past the stamp edge are lost.
"""
from __future__ import annotations

import numpy as np

_K = np.arange(7) - 3.0


def _lanczos(t: np.ndarray):
    """Lanczos-3 kernel L(t) = 3 sin(pi t) sin(pi t/3) / (pi t)^2 and its derivative dL/dt."""
    t = np.asarray(t, dtype=float)
    small = np.abs(t) < 1e-8
    ts = np.where(small, 1.0, t)
    pt = np.pi * ts
    s1, c1 = np.sin(pt), np.cos(pt)
    s3, c3 = np.sin(pt / 3.0), np.cos(pt / 3.0)
    val = 3.0 * s1 * s3 / pt ** 2
    # derivative: d/dt [3 s1 s3 / (pi t)^2]
    dval = 3.0 * (np.pi * c1 * s3 + (np.pi / 3.0) * s1 * c3) / pt ** 2 - 2.0 * val / ts
    outside = np.abs(t) >= 3.0
    val = np.where(small, 1.0, np.where(outside, 0.0, val))
    dval = np.where(small | outside, 0.0, dval)
    return val, dval


def taps(d: float):
    """Normalised 7 taps for shift d (|d| <= 0.5) and their derivatives with respect to d."""
    lv, ld = _lanczos(_K + d)
    s, ds = lv.sum(), ld.sum()
    w = lv / s
    dw = (ld * s - lv * ds) / s ** 2
    return w, dw


def _corr_axis(a: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """out[i] = sum_k w_k a[i + k - 3] along ``axis`` with zeros outside."""
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    pad = np.zeros(a.shape[:-1] + (n + 6,))
    pad[..., 3:3 + n] = a
    out = np.zeros(a.shape)
    for k in range(7):
        if w[k] != 0.0:
            out += w[k] * pad[..., k:k + n]
    return np.moveaxis(out, -1, axis)


def shift_stamp(stamp: np.ndarray, dx: float, dy: float, derivs: bool = False) -> np.ndarray:
    """Shift ``stamp`` (..., H, W) by (dx, dy) px; returns (1 or 3, ..., H, W): value, d/dx, d/dy."""
    wx, dwx = taps(dx)
    wy, dwy = taps(dy)
    ax_y, ax_x = stamp.ndim - 2, stamp.ndim - 1
    sy = _corr_axis(stamp, wy, ax_y)
    val = _corr_axis(sy, wx, ax_x)
    if not derivs:
        return val[None]
    ddx = _corr_axis(sy, dwx, ax_x)
    ddy = _corr_axis(_corr_axis(stamp, wx, ax_x), dwy, ax_y)
    return np.stack([val, ddx, ddy])
