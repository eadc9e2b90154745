"""Point source or galaxy for catalogue rows without a usable TYPE (``patch_run.model_selection``).

A row with a blank or unknown TYPE is first fitted as ``patch_run.gal_model``. A star fitted as a
galaxy shrinks its Re to the lower bound (and is then flagged, unconverged); a compact galaxy
stays a little larger than the PSF. So every untyped source whose fitted galaxy is compact
(Re below ``COMPACT_FWHM`` of the PSF FWHM, or stalled at a bound) is fitted again as a point
source, with the rest of the patch as before, and the point source is kept unless the galaxy
improves chi^2 by more than ``penalty`` (its three extra shape parameters must pay for
themselves, as in legacypipe's choice between PSF and REX/EXP; all bands at once). The choice
and the chi^2 difference are reported per source.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["untyped_rows", "select_point_sources", "COMPACT_FWHM"]

#: a fitted galaxy with Re below this fraction of the PSF FWHM is a point-source candidate
COMPACT_FWHM = 0.5


def untyped_rows(cat, type_col, known) -> np.ndarray:
    """True where the row's TYPE (upper-cased, stripped) is not one of ``known``."""
    if type_col is None:
        return np.ones(len(cat), bool)
    out = []
    for v in cat[type_col].to_numpy(dtype=object):
        key = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip().upper()
        out.append(key not in known)
    return np.array(out, bool)


def _as_star(src):
    return dataclasses.replace(src, kind="star", re=np.nan, ab=np.nan, phi_deg=np.nan, sersic_n=np.nan,
                               re_sigma=None, ell_sigma=None, theta_sigma_deg=None, re_factor=None,
                               hold_shape=False)


def select_point_sources(fit_fn, images, sources, res, opts, candidates, fwhm_pix: float,
                         penalty: float):
    """Refit compact untyped galaxies as point sources; returns (sources, result, {index: dchisq})
    where dchisq = chi^2(point source) - chi^2(galaxy) of each source tried (the point source was
    kept when it is below ``penalty``)."""
    tried = {}
    limit = COMPACT_FWHM * (fwhm_pix if np.isfinite(fwhm_pix) and fwhm_pix > 0 else 4.0)
    for i in candidates:
        s = res.sources[i]
        if s.kind == "star":
            continue
        stalled = bool(getattr(s, "stalled", None))
        if not (s.re < limit or stalled):
            continue
        alt = list(sources)
        alt[i] = _as_star(sources[i])
        res2 = fit_fn(images, alt, opts)
        d = float(res2.chi2 - res.chi2)
        tried[i] = d
        if d < penalty:
            sources, res = alt, res2
    return sources, res, tried
