"""Fitted fluxes as total fluxes: the PSF's light beyond its stamp and the galaxy profiles' taper.

A fit with a unit-sum PSF stamp measures the flux inside the stamp; the PSF's wings carry the rest
(1 % beyond 27 px for a Moffat beta = 2 of 4 px FWHM), so every flux and error of a band is divided
by the fraction of the PSF's total flux inside the stamp that the band's PSF (ePSF or fallback)
reports. Galaxy mixtures are tapered at 4 or 8 re; under ``galaxy_flux = total`` a galaxy's flux is
multiplied by its profile's :func:`~tract7dt_mpi.engine.profiles.total_flux_factor`, and an exp or
dev galaxy's divided by the bias that factor has at its size relative to the PSF
(:func:`~tract7dt_mpi.engine.profiles.size_bias`: +1.2-1.8 % at re = FWHM/4; a Sersic galaxy's
by its fitted size and index, +1-3 % at re = FWHM / 2-1, as its free index takes the tail in). A Sersic
galaxy's factor grows with its index (1.05 at n = 3, 1.11 at n = 6), so the index's error
enters its total flux error (:func:`index_variance`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..engine.profiles import size_bias, total_flux_factor

__all__ = ["profile_factors", "to_total_fluxes", "index_variance", "with_index_errors"]


def profile_factors(kinds, sersic_n, galaxy_flux: str, sizes=None, index_held=None) -> np.ndarray:
    """Per-source factor from the fitted profile to its total flux (1 for stars or ``truncated``):
    :func:`~tract7dt_mpi.engine.profiles.total_flux_factor`, divided by the
    :func:`~tract7dt_mpi.engine.profiles.size_bias` of the source's ``sizes`` (fitted re sqrt(ab)
    over the band's PSF FWHM; None: no size correction) and fitted index (``index_held``: per
    source, its Sersic index was held by a shape fallback)."""
    n = np.asarray(sersic_n, float)
    if galaxy_flux != "total":
        return np.ones(len(kinds))
    q = np.full(len(kinds), np.nan) if sizes is None else np.asarray(sizes, float)
    held = np.zeros(len(kinds), bool) if index_held is None else np.asarray(index_held, bool)
    return np.array([total_flux_factor(str(k), float(v)) / size_bias(str(k), float(s), float(v), not h)
                     for k, v, s, h in zip(kinds, n, q, held)])


def to_total_fluxes(table: pd.DataFrame, bands, flux_in_stamp: dict, factors: dict) -> pd.DataFrame:
    """Scale ``FLUX_{b}_fit`` and its errors (``FLUXERR``, ``FLUXERR_STAT``, ``FLUXERR_WING`` and the
    wing responses ``WINGRESP_*``) in place.

    ``flux_in_stamp``: band -> fraction of the PSF's total flux inside its stamp (missing or
    non-positive: 1); ``factors``: band -> per-row profile factor (per band, since a per-band fit's
    Sersic n differs between bands). Adds ``flux_total_factor`` (the first band's factor).
    """
    for b in bands:
        ef = float(flux_in_stamp.get(b, 1.0) or 1.0)
        ef = ef if np.isfinite(ef) and ef > 0 else 1.0
        scale = np.asarray(factors[b], float) / ef
        for col in (f"FLUX_{b}_fit", f"FLUXERR_{b}_fit", f"FLUXERR_STAT_{b}_fit", f"FLUXERR_WING_{b}_fit",
                    f"WINGRESP_IN_{b}_fit", f"WINGRESP_OUT_{b}_fit", f"WINGRESP_HALO_{b}_fit"):
            if col in table.columns:
                table[col] = table[col].to_numpy(float) * scale
    table["flux_total_factor"] = np.asarray(factors[bands[0]], float)
    return table


def index_variance(kind: str, n: float, flux: float, lnn_cov, galaxy_flux: str,
                   size: float = np.nan) -> float:
    """Variance (in the fit's flux units, before the total-flux factor) that a Sersic total flux
    gains from its index: the factor c(n) (over its size bias at ``size``, re sqrt(ab) / FWHM)
    moves with n, so d(c F) / c = dF + F (d ln c / d ln n) d ln n, with the fit's cov(F, ln n)
    and var(ln n) (``lnn_cov``: that pair; None: 0)."""
    if galaxy_flux != "total" or kind != "sersic" or lnn_cov is None:
        return 0.0
    cov, var = (float(v) for v in lnn_cov)
    if not (np.isfinite(cov) and np.isfinite(var) and np.isfinite(flux) and n > 0):
        return 0.0
    h = 0.02

    def ln_factor(m):
        return np.log(total_flux_factor("sersic", m) / size_bias("sersic", size, m))
    d = (ln_factor(n * np.exp(h)) - ln_factor(n * np.exp(-h))) / (2.0 * h)
    return 2.0 * flux * d * cov + (flux * d) ** 2 * var


def with_index_errors(err: float, var_extra: float) -> float:
    """``err`` with ``var_extra`` (:func:`index_variance`, which may be negative: a flux that
    trades against its index) added, never below zero."""
    return float(np.sqrt(max(float(err) ** 2 + float(var_extra), 0.0)))
