"""Bounded Levenberg-Marquardt for the ePSF's small curve fits (a few parameters, tens of points).

The radial-profile fits of the ePSF build (the stack's pedestal, the wing tail) run every pass of
every cell: a general solver's per-iteration overhead (scipy's trust-region reflective, ~0.5 ms)
costs more than their arithmetic. These fits are smooth, well started and have an analytic
Jacobian, so plain Marquardt-scaled steps (damping by Nielsen's gain-ratio rule), projected onto
the box, reach the same minimum.
"""
from __future__ import annotations

import numpy as np

from ..engine.lm import free_set

__all__ = ["fit_bounded"]


def fit_bounded(resid, jac, q0, lo, hi, max_iter: int = 200, rtol: float = 1e-8) -> np.ndarray:
    """Parameters minimising ``sum(resid(q)**2)`` within [lo, hi] (per parameter; +-inf allowed).

    ``jac(q)`` is the (m, p) Jacobian of ``resid``. Stops when an accepted step lowers the cost by
    less than ``rtol`` of it or moves no parameter by more than ``rtol`` (relative), or when no
    damping gives a lower cost. Raises ValueError when the residuals at ``q0`` are not finite.
    """
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    q = np.clip(np.asarray(q0, float), lo, hi)
    r = resid(q)
    cost = float(r @ r)
    if not np.isfinite(cost):
        raise ValueError("residuals are not finite at the starting point")
    lam, nu = 1e-3, 2.0
    for _ in range(max_iter):
        J = jac(q)
        H = J.T @ J
        g = -(J.T @ r)                       # downhill direction of the cost
        act = free_set(q, lo, hi, g)
        if not act.any():
            break
        Ha, ga = H[np.ix_(act, act)], g[act]
        d = np.clip(np.diag(Ha), 0.0, None)
        D = np.diag(np.maximum(d, 1e-12 * d.max() if d.max() > 0 else 1.0))
        accepted = False
        while lam < 1e12:
            step = np.zeros_like(q)
            try:
                step[act] = np.linalg.solve(Ha + lam * D, ga)
            except np.linalg.LinAlgError:
                lam, nu = lam * nu, nu * 2.0
                continue
            qn = np.clip(q + step, lo, hi)
            s = qn - q
            rn = resid(qn)
            cn = float(rn @ rn)
            pred = 2.0 * float(g @ s) - float(s @ H @ s)   # the linear model's decrease of the cost
            if np.isfinite(cn) and cn < cost:
                rho = (cost - cn) / pred if pred > 0 else 1.0
                lam, nu = lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), 2.0   # Nielsen's rule
                accepted = True
                break
            lam, nu = lam * nu, nu * 2.0
        if not accepted:
            break
        done = cost - cn <= rtol * cost or np.all(np.abs(qn - q) <= rtol * (1.0 + np.abs(q)))
        q, r, cost = qn, rn, cn
        if done:
            break
    return q
