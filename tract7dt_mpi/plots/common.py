"""Shared plotting helpers: zscale display limits, figure creation and atomic PNG saving."""
from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["zscale_limits", "imshow_zscale", "new_figure", "savefig", "finite_sample"]


def finite_sample(img: np.ndarray, n: int = 200_000) -> np.ndarray:
    """Up to ``n`` finite values of ``img`` taken on a regular stride (cheap on big frames)."""
    flat = np.asarray(img).ravel()
    step = max(1, flat.size // n)
    vals = flat[::step]
    return vals[np.isfinite(vals)]


def zscale_limits(img: np.ndarray, contrast: float = 0.25) -> tuple[float, float]:
    """IRAF-style zscale (vmin, vmax) of the finite pixels; (0, 1) when there are none."""
    vals = finite_sample(img)
    if vals.size == 0:
        return 0.0, 1.0
    from astropy.visualization import ZScaleInterval
    try:
        lo, hi = ZScaleInterval(contrast=contrast).get_limits(vals)
    except Exception:
        lo, hi = np.percentile(vals, [1, 99])
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        lo, hi = float(np.min(vals)), float(np.max(vals))
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def imshow_zscale(ax, img: np.ndarray, cmap: str = "gray", **kw):
    """Show ``img`` (origin lower) with zscale limits; NaNs render as the axes background."""
    lo, hi = zscale_limits(img)
    return ax.imshow(img, origin="lower", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest", **kw)


def new_figure(figsize=(8, 8)) -> Figure:
    """A pyplot-free Agg figure."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def savefig(fig: Figure, path: str, dpi: int = 150, tight: bool = True, compress_level: int = 6) -> str:
    """Render ``fig`` to PNG and write it atomically (temporary name + rename) to ``path``
    (``tight``: crop to the drawn content, which renders the figure twice; ``compress_level``:
    zlib level 0-9, 1 is several times faster on noisy images for a slightly larger file)."""
    from ..io.atomic import atomic_write_bytes
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=int(dpi), bbox_inches="tight" if tight else None,
                pil_kwargs={"compress_level": int(compress_level)})
    atomic_write_bytes(path, buf.getvalue())
    fig.clear()
    return path
