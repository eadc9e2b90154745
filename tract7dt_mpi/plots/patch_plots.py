"""Per-patch diagnostics: ``patch_overview.png`` (inverse-variance white
of data, model+sky and residual) and per-source cut-out montages (bands x Data/Model/Residual).

Inputs come from ``PatchResult.plot`` (the PatchInput, the per-row fit values incl. halo rows,
the fit inverse variances and the model images). Files are written atomically.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .common import savefig  # noqa: E402

def _limits(arr, mask, p_lo, p_hi):
    v = arr[~mask & np.isfinite(arr)] if mask is not None else arr[np.isfinite(arr)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [p_lo, p_hi])
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def _white(plot, key: str):
    """Inverse-variance white (pre-mask sigma_sky weights) of data or model+sky."""
    pin = plot["pin"]
    num = den = None
    for b in pin.bands:
        sig = np.asarray(pin.images[b].sigma_sky, float)
        w = np.where(np.isfinite(sig) & (sig > 0), 1.0 / np.maximum(sig ** 2, 1e-12), 0.0)
        img = np.asarray(pin.images[b].img, float) if key == "data" else plot["models"][b]
        img = np.where(np.isfinite(img), img, 0.0)
        num = w * img if num is None else num + w * img
        den = w if den is None else den + w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _fit_xy(fit_all, pin, band=None):
    if "x_pix_patch_fit" in fit_all.columns:
        return fit_all["x_pix_patch_fit"].to_numpy(float), fit_all["y_pix_patch_fit"].to_numpy(float)
    b = band or sorted(pin.bands)[0]
    return (fit_all[f"x_pix_patch_{b}_fit"].to_numpy(float),
            fit_all[f"y_pix_patch_{b}_fit"].to_numpy(float))


def _markers(ax, pin, fit_all, sel_base=True, sel_halo=True):
    cat = pin.cat
    halo = cat["_is_halo_source"].to_numpy(bool)
    x0, y0 = cat["x_pix_patch"].to_numpy(float), cat["y_pix_patch"].to_numpy(float)
    bands = pin.bands if "x_pix_patch_fit" not in fit_all.columns else [None]
    for k, b in enumerate(bands):
        xf, yf = _fit_xy(fit_all, pin, b)
        alpha = 1.0 if b is None else 0.5
        for m, is_h in ((~halo, False), (halo, True)):
            if not m.any() or (is_h and not sel_halo) or (not is_h and not sel_base):
                continue
            for xa, ya, xb, yb in zip(x0[m], y0[m], xf[m], yf[m]):
                ax.plot([xa, xb], [ya, yb], color="lime" if is_h else "cyan", lw=0.6, alpha=alpha)
            if k == 0:
                ax.scatter(x0[m], y0[m], marker="D" if is_h else "x", s=18, lw=0.8,
                           facecolors="none" if is_h else None,
                           edgecolors="yellow" if is_h else None,
                           color=None if is_h else "orange")
            ax.scatter(xf[m], yf[m], marker="D" if is_h else "x", s=18, lw=0.8, alpha=alpha,
                       facecolors="none" if is_h else None,
                       edgecolors="lime" if is_h else None,
                       color=None if is_h else "deepskyblue")


def plot_patch_overview(path: str, plot: dict, meta: dict, pr, dpi: int = 150) -> None:
    """Data / Model+Sky / Residual white panels with source markers and the all-masked overlay."""
    pin, fit_all = plot["pin"], plot["fit_all"]
    data, model = _white(plot, "data"), _white(plot, "model")
    resid = data - model
    all_masked = np.ones(data.shape, bool)
    for b in pin.bands:
        all_masked &= plot["invvar"][b] <= 0
    lo, hi = _limits(data, all_masked, pr.cutout_data_p_lo, pr.cutout_data_p_hi)
    mlo, mhi = _limits(model, all_masked, pr.cutout_model_p_lo, pr.cutout_model_p_hi)
    r = _limits(np.abs(resid), all_masked, 0, pr.cutout_resid_p_abs)[1]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for ax, img, (a, b), title in ((axes[0], data, (lo, hi), "Data"),
                                   (axes[1], model, (mlo, mhi), "Model+Sky"),
                                   (axes[2], resid, (-r, r), "Residual")):
        ax.imshow(img, origin="lower", cmap="gray" if title != "Residual" else "RdBu_r",
                  vmin=a, vmax=b, interpolation="nearest")
        if all_masked.any():
            ax.imshow(np.ma.masked_where(~all_masked, all_masked), origin="lower", cmap="autumn",
                      alpha=0.4, interpolation="nearest")
        _markers(ax, pin, fit_all)
        ax.set_xlim(-0.5, data.shape[1] - 0.5)
        ax.set_ylim(-0.5, data.shape[0] - 0.5)
        ax.set_title(title)
    fig.suptitle(f"patch={meta.get('patch_tag')} | n_sources={meta.get('n_sources')} + "
                 f"{meta.get('n_halo_sources')} halo")
    fig.tight_layout()
    savefig(fig, path, dpi, tight=False)
    plt.close(fig)


def plot_cutouts(out_dir: str, plot: dict, pr, names, dpi: int = 150) -> int:
    """One montage per source (index >= cutout_start, at most cutout_max_sources), saved as
    ``names[i]`` (one file name per catalog row). Returns the count."""
    pin, fit_all = plot["pin"], plot["fit_all"]
    cat = pin.cat
    n = len(cat)
    start = int(pr.cutout_start)
    stop = n if pr.cutout_max_sources is None else min(n, start + int(pr.cutout_max_sources))
    half = max(2, int(pr.cutout_size) // 2)
    count = 0
    x0c, y0c = cat["x_pix_patch"].to_numpy(float), cat["y_pix_patch"].to_numpy(float)
    for i in range(start, stop):
        bands = list(pin.bands)
        fig, axes = plt.subplots(3, len(bands), figsize=(2.2 * len(bands), 6.6), squeeze=False)
        for j, b in enumerate(bands):
            xf, yf = _fit_xy(fit_all, pin, None if "x_pix_patch_fit" in fit_all.columns else b)
            cx = xf[i] if np.isfinite(xf[i]) else x0c[i]
            cy = yf[i] if np.isfinite(yf[i]) else y0c[i]
            img = np.asarray(pin.images[b].img, float)
            h, w = img.shape
            xa, xb = max(0, int(round(cx)) - half), min(w, int(round(cx)) + half + 1)
            ya, yb = max(0, int(round(cy)) - half), min(h, int(round(cy)) + half + 1)
            if xb <= xa or yb <= ya:
                continue
            mask = plot["invvar"][b][ya:yb, xa:xb] <= 0
            d = img[ya:yb, xa:xb]
            m = plot["models"][b][ya:yb, xa:xb]
            res = d - m
            lims = (_limits(d, mask, pr.cutout_data_p_lo, pr.cutout_data_p_hi),
                    _limits(m, mask, pr.cutout_model_p_lo, pr.cutout_model_p_hi))
            r = _limits(np.abs(res), mask, 0, pr.cutout_resid_p_abs)[1]
            for k, (arr, (lo, hi), cmap) in enumerate(((d, lims[0], "gray"), (m, lims[1], "gray"),
                                                        (res, (-r, r), "RdBu_r"))):
                ax = axes[k, j]
                ext = (xa - 0.5, xb - 0.5, ya - 0.5, yb - 0.5)
                ax.imshow(arr, origin="lower", cmap=cmap, vmin=lo, vmax=hi, extent=ext,
                          interpolation="nearest")
                if mask.any():
                    ax.imshow(np.ma.masked_where(~mask, mask), origin="lower", cmap="autumn",
                              alpha=0.4, extent=ext, interpolation="nearest")
                is_h = bool(cat["_is_halo_source"].iloc[i])
                ax.axvline(cx, color="cyan" if is_h else "magenta", lw=0.6)
                ax.axhline(cy, color="cyan" if is_h else "magenta", lw=0.6)
                ax.axvline(x0c[i], color="yellow" if is_h else "lime", lw=0.6, ls="--")
                ax.axhline(y0c[i], color="yellow" if is_h else "lime", lw=0.6, ls="--")
                others = np.arange(n) != i
                ax.scatter(xf[others], yf[others], marker="x", s=12, color="deepskyblue", lw=0.6)
                ax.scatter(x0c[others], y0c[others], marker="x", s=12, color="orange", lw=0.6)
                ax.set_xlim(xa - 0.5, xb - 0.5)
                ax.set_ylim(ya - 0.5, yb - 0.5)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(b, fontsize=8)
            axes[0, 0].set_ylabel("Data")
            axes[1, 0].set_ylabel("Model+Sky")
            axes[2, 0].set_ylabel("Residual")
        fig.tight_layout()
        savefig(fig, os.path.join(out_dir, names[i]), dpi, tight=False)
        plt.close(fig)
        count += 1
    return count
