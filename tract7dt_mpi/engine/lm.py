"""One Levenberg-Marquardt trust-region step on the reduced Gauss-Newton system.

The caller gives the Gauss-Newton system of ln p in the free nonlinear parameters (``H`` = J^T W J
with fluxes and sky eliminated, plus prior precisions; ``g`` = gradient of ln p).  A step solves
(H + lam D) d = g on the free set, with D = diag(H) (Marquardt scaling: the damping is invariant to
the units of each parameter).  Then, in this order:

* **active set**: a parameter sitting on a bound whose gradient points outwards is held (its row and
  column are dropped before the solve);
* **sanity caps**: if any parameter of a source would move by more than its cap, that source's whole
  step is scaled down (the direction within the source is kept);
* **projection**: the new point is clipped to the bounds and the step recomputed from it;
* the **predicted gain** of ln p for the final step, g.d - d.H.d / 2, is returned for the gain ratio.
"""
from __future__ import annotations

import numpy as np

from .linalg import solve_ridged


def free_set(theta, lo, hi, g) -> np.ndarray:
    """Parameters that may move: not on a bound with the gradient pointing outwards."""
    eps = 1e-12 * np.maximum(1.0, np.abs(theta))
    at_lo = (theta - lo <= eps) & (g < 0)
    at_hi = (hi - theta <= eps) & (g > 0)
    return ~(at_lo | at_hi)


def _solve(M, b, ridge):
    """(M + diag(ridge))^-1 b; zeros when that is not finite (no step rather than a wild one)."""
    x = solve_ridged(M, b, ridge)
    return x if np.all(np.isfinite(x)) else np.zeros_like(b)


def predicted_gain(H, g, step) -> float:
    """Gain of ln p the quadratic model predicts for ``step``."""
    return float(g @ step - 0.5 * step @ H @ step)


def unconstrained(H, g, caps) -> np.ndarray:
    """Parameters the data cannot localise within one maximal step and that gain little from it.

    1/sqrt(H_jj) > cap_j (H_jj is the information with every other parameter held: the conditional,
    i.e. smallest, error) and |g_j| cap_j < 1 (a full capped step changes ln p by less than 1 to
    first order).  Typically the shape of a faint, unresolved galaxy drifting towards an
    ellipticity of 1 with gains of 1e-2 per iteration; such parameters are held where they are.
    """
    return (np.diag(H) * caps ** 2 < 1.0) & (np.abs(g) * caps < 1.0)


def gn_gain(H, g, act) -> float:
    """Largest gain the quadratic model allows on the free set: g^T H^-1 g / 2 (no caps)."""
    if not act.any():
        return 0.0
    Ha, ga = H[np.ix_(act, act)], g[act]
    dmax = np.clip(np.diag(Ha), 0.0, None).max(initial=0.0)
    ridge = 1e-10 * (dmax if dmax > 0 else 1.0)
    x = _solve(Ha, ga, ridge)
    return float(0.5 * ga @ x)


def lm_step(H, g, lam, theta, lo, hi, caps, owner, n_owner, hold=None):
    """Damped, capped and projected step -> (step, predicted gain); ``hold`` = parameters kept fixed."""
    step = np.zeros_like(theta)
    act = free_set(theta, lo, hi, g)
    if hold is not None:
        act &= ~hold
    if not act.any():
        return step, 0.0
    Ha, ga = H[np.ix_(act, act)], g[act]
    d = np.clip(np.diag(Ha), 0.0, None)
    dmax = d.max(initial=0.0)
    # relative ridge keeps exactly singular directions (no information at all) solvable
    D = np.maximum(d, 1e-12 * dmax if dmax > 0 else 1.0)
    step[act] = _solve(Ha, ga, (lam + 1e-10) * D)
    ratio = np.abs(step) / caps
    worst = np.zeros(n_owner)
    np.maximum.at(worst, owner, ratio)
    step *= 1.0 / np.maximum(worst, 1.0)[owner]
    step = np.clip(theta + step, lo, hi) - theta
    return step, predicted_gain(H, g, step)


def source_gains(H, g, step, owner, n_owner) -> np.ndarray:
    """Each source's share of the predicted gain: sum over its rows of d_j (g_j - (H d)_j / 2).

    The shares add up to :func:`predicted_gain` exactly (cross-source terms are split evenly), so a
    blended pair whose joint move pays is not mistaken for two moves that do not.
    """
    out = np.zeros(n_owner)
    np.add.at(out, owner, step * (g - 0.5 * (H @ step)))
    return out


def update_damping(lam: float, nu: float, rho: float, accepted: bool):
    """Nielsen's rule: shrink smoothly with the gain ratio after success, grow geometrically after failure."""
    if accepted:
        return max(lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), 1e-12), 2.0
    return min(lam * nu, 1e16), nu * 2.0
