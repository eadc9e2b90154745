"""Galaxy profiles as mixtures of concentric Gaussians (amplitudes sum to 1; variances in re^2).

exp and dev are the Tractor's published tables (a var-0 component is a delta
core).  The Sersic family is our own fit (see ``_tools/make_sersic_table.py``), linear in n between
nodes, clamped to [0.29, 6.3].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _sersic_table as _ST
from . import _size_bias_table as _SB

SERSIC_N_BOUNDS = (0.29, 6.3)
_ST_AMPS = _ST.AMPS / _ST.AMPS.sum(axis=1, keepdims=True)   # undo table rounding

_EXP_AMP = np.array([1.99485977e-04, 2.61612679e-03, 1.89726655e-02, 1.00186544e-01,
                     3.68534484e-01, 5.09490694e-01])
_EXP_VAR = np.array([1.20078965e-03, 8.84526493e-03, 3.91463084e-02, 1.39976817e-01,
                     4.60962500e-01, 1.50159566e+00])
_DEV_RAW = np.array([4.26347652e-02, 2.40127183e-01, 6.85907632e-01, 1.51937350, 2.83627243,
                     4.46467501, 5.72440830, 5.60989349])
_DEV_CORE = 0.010233
_DEV_AMP = np.r_[_DEV_CORE, _DEV_RAW / _DEV_RAW.sum() * (1.0 - _DEV_CORE)]
_DEV_VAR = np.array([0.0, 2.23759216e-04, 1.00220099e-03, 4.18731126e-03, 1.69432589e-02,
                     6.84850479e-02, 2.87207080e-01, 1.33320254, 8.40215071])

#: footprint radius factor (box half-size >= nre * re)
NRE = {"exp": 4.0, "dev": 8.0, "sersic": 8.0}


@dataclass(frozen=True)
class Mixture:
    """amp (K,), var (K,) in units of re^2, and d amp / d n (K,) (zeros for exp/dev)."""

    amp: np.ndarray
    var: np.ndarray
    damp_dn: np.ndarray


_EXP = Mixture(_EXP_AMP / _EXP_AMP.sum(), _EXP_VAR, np.zeros(6))
_DEV = Mixture(_DEV_AMP, _DEV_VAR, np.zeros(9))


def sersic_mixture(n: float) -> Mixture:
    """Sersic mixture at index n (clamped to the allowed range), with its analytic n-derivative."""
    nodes = _ST.NODES
    n = float(np.clip(n, nodes[0], nodes[-1]))
    i = int(np.clip(np.searchsorted(nodes, n, side="right") - 1, 0, nodes.size - 2))
    t = (n - nodes[i]) / (nodes[i + 1] - nodes[i])
    a0, a1 = _ST_AMPS[i], _ST_AMPS[i + 1]
    amp = (1.0 - t) * a0 + t * a1
    slope = (a1 - a0) / (nodes[i + 1] - nodes[i])
    keep = (a0 > 0) | (a1 > 0)
    return Mixture(amp[keep], _ST.VARS[keep], slope[keep])


def mixture_for(kind: str, n: float = np.nan) -> Mixture:
    if kind == "exp":
        return _EXP
    if kind == "dev":
        return _DEV
    if kind == "sersic":
        return sersic_mixture(n)
    raise ValueError(f"no galaxy profile for kind {kind!r}")


def enclosed_fraction(mix: Mixture, r) -> np.ndarray:
    """Fraction of a circular unit-re mixture's flux inside radius r (re units)."""
    r = np.asarray(r, dtype=float)[..., None]
    v = np.where(mix.var > 0, mix.var, 1e-300)
    return np.sum(mix.amp * -np.expm1(-0.5 * r * r / v), axis=-1)


def half_light_radius(mix: Mixture) -> float:
    """Radius (re units) enclosing half of the mixture's flux (bisection)."""
    lo, hi = 1e-4, 50.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if enclosed_fraction(mix, mid) < 0.5:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def total_flux_factor(kind: str, n: float = np.nan) -> float:
    """Total flux of the untruncated profile over the flux of the engine's mixture, at equal
    surface brightness inside the half-light radius (1 for point sources).

    The exp, dev and Sersic mixtures approximate profiles tapered to zero at 4 or 8 re (as the
    Tractor's); their flux parameter is the tapered profile's total. A galaxy's light beyond the
    taper is real, so the total flux of the fitted profile is the mixture flux times this factor
    (exp 1.015, dev 1.062, n = 6 1.115): the mixture's enclosed fraction within 1 re over the
    untruncated Sersic profile's, 1/2. The ratio is the same within 0.5 % from 1 to 3 re.
    """
    if kind not in ("exp", "dev", "sersic"):
        return 1.0
    nn = {"exp": 1.0, "dev": 4.0}.get(kind, float(np.clip(n, *SERSIC_N_BOUNDS)))
    return float(enclosed_fraction(mixture_for(kind, nn), 1.0)) / 0.5


def size_bias(kind: str, size: float, n: float = np.nan, index_free: bool = True) -> float:
    """Fitted total flux (mixture flux x :func:`total_flux_factor`) over the true total of an
    untruncated galaxy whose fitted size re sqrt(ab) is ``size`` x the PSF FWHM (and, for a
    Sersic fit, whose fitted index is ``n``) (``_tools/make_size_bias_table``: noise-free GalSim
    fits). A barely resolved galaxy's light beyond the taper sits under the PSF-convolved model and
    the fit takes it in, so the factor counts it twice: 1.012 (exp) and 1.018 (dev) at re =
    FWHM/4, 1.003 at re = FWHM. A free Sersic index takes the tail in as well (it comes out high):
    1.01-1.03 at re = FWHM / 2-1 for n = 1-4, up to 1.05-1.08 at re = FWHM / 4 or n < 0.5. 1 for
    point sources or a non-finite size (or index). A Sersic fit whose index was held
    (``index_free`` False, at n = 4) cannot take the tail in through n: dev's bias."""
    if kind == "sersic" and not index_free:
        kind = "dev"
    if kind == "sersic":
        if not (np.isfinite(size) and size > 0 and np.isfinite(n)):
            return 1.0
        lq = np.log(_SB.Q_SER)
        rows = [np.interp(float(n), _SB.N_SER, b) for b in _SB.BIAS_SER]
        return float(np.interp(np.log(size), lq, rows))
    table = {"exp": (_SB.Q_EXP, _SB.BIAS_EXP), "dev": (_SB.Q_DEV, _SB.BIAS_DEV)}.get(kind)
    if table is None or not (np.isfinite(size) and size > 0):
        return 1.0
    q, b = table
    return float(np.interp(np.log(size), np.log(q), b))
