"""Zero-point diagnostics: per-star ZP against Gaia magnitude.

Two files per band: ``zp_vs_mag__{b}.png`` with fixed axes (x in [plot_mag_lo, plot_mag_hi],
y = median +/- plot_zp_offset) so bands and tiles compare at a glance, and
``zp_vs_mag__{b}_fullrange.png`` whose axes adapt to every plotted point.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .common import savefig  # noqa: E402


def _draw(ax, band, per_band: pd.DataFrame, unreliable: pd.DataFrame, summ: dict, cfg_zp,
          mag_cover: tuple[float, float]) -> None:
    zp, method = summ["zp_median"], str(cfg_zp.zp_err_method)
    err = summ["zp_err_std"] if method == "bright_std" else summ["zp_err_mad"]
    if len(unreliable):
        ax.scatter(unreliable["gaiaxp_mag"], unreliable["zp"], marker="D", s=14, color="0.6",
                   label=f"unreliable (N={len(unreliable)})", zorder=1)
    clipped = per_band[per_band["is_clipped"].astype(bool)]
    kept = per_band[per_band["is_kept"].astype(bool)]
    if len(clipped):
        ax.scatter(clipped["gaiaxp_mag"], clipped["zp"], marker="x", s=20, color="red",
                   label=f"clipped (N={len(clipped)})", zorder=2)
    if method == "bright_std":
        snr = kept["flux"] / kept["fluxerr"]
        cut = summ.get("zp_err_snr_used", np.nan)
        hi = (snr > cut).to_numpy() if np.isfinite(cut) else np.zeros(len(kept), bool)
        groups = ((kept[hi], "black", f"kept, S/N>{cut:g}"), (kept[~hi], "0.55", "kept, low S/N"))
    else:
        groups = ((kept, "black", "kept"),)
    for g, col, lab in groups:
        if len(g):
            ax.errorbar(g["gaiaxp_mag"], g["zp"], yerr=g["zp_err"].fillna(0.0), fmt="o", ms=3,
                        color=col, ecolor=col, elinewidth=0.6, label=f"{lab} (N={len(g)})",
                        zorder=3)
    ax.axhline(zp, color="C0", lw=1.2, label=f"ZP={zp:.4f}")
    ax.axhspan(zp - err, zp + err, color="C0", alpha=0.15, label=f"±{err:.4f} ({method})")
    lo, hi = mag_cover
    if np.isfinite(lo):
        ax.axvspan(-100, lo, color="0.9", zorder=0)
    if np.isfinite(hi):
        ax.axvspan(hi, 100, color="0.9", zorder=0)
    ax.set_xlabel(f"GaiaXP mag_{band} [AB]")
    ax.set_ylabel("ZP = mag + 2.5 log10(FLUX_fit)")
    ax.set_title(f"{band}: ZP={zp:.4f} ± {err:.4f} | kept={summ['n_kept']} "
                 f"clipped={summ['n_clipped']}")
    ax.legend(fontsize=7, loc="best")


def plot_zp_band(out_dir: str, band: str, per_band: pd.DataFrame, unreliable: pd.DataFrame,
                 summ: dict, cfg_zp, mag_cover=(np.nan, np.nan), dpi: int = 150) -> list[str]:
    """Write the constrained and the full-range plot of one band; returns the two paths."""
    paths = []
    for full in (False, True):
        fig, ax = plt.subplots(figsize=(7, 5))
        _draw(ax, band, per_band, unreliable, summ, cfg_zp, mag_cover)
        if full:
            xs = np.r_[per_band["gaiaxp_mag"].to_numpy(float), unreliable["gaiaxp_mag"].to_numpy(float)]
            ys = np.r_[per_band["zp"].to_numpy(float), unreliable["zp"].to_numpy(float)]
            xs, ys = xs[np.isfinite(xs)], ys[np.isfinite(ys)]
            if len(xs):
                px = max(0.2, 0.05 * (xs.max() - xs.min()))
                ax.set_xlim(xs.min() - px, xs.max() + px)
            if len(ys):
                py = max(0.02, 0.05 * (ys.max() - ys.min()))
                ax.set_ylim(ys.min() - py, ys.max() + py)
        else:
            ax.set_xlim(float(cfg_zp.plot_mag_lo), float(cfg_zp.plot_mag_hi))
            off = float(cfg_zp.plot_zp_offset)
            ax.set_ylim(summ["zp_median"] - off, summ["zp_median"] + off)
        fig.tight_layout()
        path = os.path.join(out_dir, f"zp_vs_mag__{band}{'_fullrange' if full else ''}.png")
        savefig(fig, path, dpi, tight=False)
        plt.close(fig)
        paths.append(path)
    return paths
