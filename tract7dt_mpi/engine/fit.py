"""fit_patch: staged Levenberg-Marquardt over the nonlinear parameters with exact linear fluxes.

Each iteration builds the Gauss-Newton system of the free nonlinear parameters (fluxes and sky
eliminated), takes a damped step with per-parameter step limits and projected box bounds, and keeps
it only if ln p increases (otherwise the damping grows and the step is retried).  An iteration that
cannot improve returns dlnp = 0, which counts as converged (as in the Tractor loop).
"""
from __future__ import annotations

import copy
import logging
import math

import numpy as np

from .problem import MAX_STEP, MIN_STEP, STALL_TOL, Problem
from .render import POS, SERSIC, SHAPE
from .shapes import params_to_catalog_shape
from .types import FitOptions, FitResult, SourceResult

log = logging.getLogger(__name__)
ALL = frozenset(POS + SHAPE + SERSIC)
STAGES = {0: ALL, 1: frozenset(SHAPE + SERSIC), 2: frozenset(POS), 3: ALL}


def _lm_step(H, g, lam, theta, lo, hi, ms):
    eps = 1e-12 * np.maximum(1.0, np.abs(theta))
    act = ~(((theta - lo) <= eps) & (g < 0) | ((hi - theta) <= eps) & (g > 0))
    step = np.zeros_like(theta)
    if not act.any():
        return step
    Ha, ga = H[np.ix_(act, act)], g[act]
    d = np.clip(np.diag(Ha), 0.0, None)
    floor = 1e-12 * max(d.max(initial=0.0), 1e-300)
    M = Ha + np.diag(lam * np.maximum(d, floor) + floor)
    try:
        x = np.linalg.solve(M, ga)
    except np.linalg.LinAlgError:
        x = np.linalg.lstsq(M, ga, rcond=1e-12)[0]
    if not np.all(np.isfinite(x)):
        return np.zeros_like(theta)
    step[act] = np.clip(x, -ms[act], ms[act])
    return step


def _run_stage(prob: Problem, params, F, sky, free, solve_linear, opts: FitOptions, stage: int):
    ev = prob.evaluate(params, free, solve_linear, F, sky)
    lam, niters, converged, last = 1e-3, 0, False, math.nan
    for _ in range(int(opts.n_opt_iters)):
        index, H, g = prob.gauss_newton(ev)
        niters += 1
        if not index:
            converged, last = True, 0.0
            break
        theta = np.array([ev.params[s][j] for s, j in index])
        lo = np.array([prob.lo[s][j] for s, j in index])
        hi = np.array([prob.hi[s][j] for s, j in index])
        ms = np.array([MAX_STEP[prob.names[s][j]] for s, j in index])
        mn = np.array([MIN_STEP[prob.names[s][j]] for s, j in index])
        owner = np.array([s for s, _ in index])
        dlnp = 0.0
        for _attempt in range(8):
            step = _lm_step(H, g, lam, theta, lo, hi, ms)
            # a source whose every step is negligible keeps its parameters (and cached rendering)
            small = np.abs(step) < mn
            still = np.array([small[owner == s].all() for s in range(prob.S)])
            step[still[owner]] = 0.0
            new = np.clip(theta + step, lo, hi)
            if not np.any(new != theta):
                break
            newp = [p.copy() for p in ev.params]
            for (s, j), v in zip(index, new):
                newp[s][j] = v
            ev2 = prob.evaluate(newp, free, solve_linear, ev.F, ev.sky)
            if np.isfinite(ev2.lnp) and ev2.lnp > ev.lnp:
                dlnp, ev = ev2.lnp - ev.lnp, ev2
                lam = max(lam * 0.3, 1e-7)
                break
            lam = min(lam * 10.0, 1e10)
        last = dlnp
        log.debug("stage %d opt iter %02d dlnp=%.6g lnp=%.6f lambda=%.3g", stage, niters, dlnp, ev.lnp, lam)
        if dlnp < opts.dlnp_stop:
            converged = True
            break
    return ev, {"stage": stage, "niters": niters, "converged": converged, "last_dlnp": float(last)}


def _stalled(prob: Problem, s, p, free):
    out = []
    for j, name in enumerate(prob.names[s]):
        if name not in free:
            continue
        tol = STALL_TOL[name]
        if np.isfinite(prob.lo[s][j]) and p[j] - prob.lo[s][j] <= tol:
            out.append(f"{name}@lower")
        elif np.isfinite(prob.hi[s][j]) and prob.hi[s][j] - p[j] <= tol:
            out.append(f"{name}@upper")
    return out


def _fit_multi(images, sources, opts: FitOptions) -> FitResult:
    prob = Problem(images, sources, fit_sky=opts.fit_sky)
    params = [p.copy() for p in prob.p0]
    F, sky = prob.F0.copy(), prob.sky0.copy()
    stages = []
    plan = [1, 2, 3] if opts.staged else [0]
    ev = None
    for st in plan:
        solve_linear = not (st == 2 and opts.stage2_freeze_fluxes)
        ev, info = _run_stage(prob, params, F, sky, STAGES[st], solve_linear, opts, st)
        params, F, sky = ev.params, ev.F, ev.sky
        stages.append(info)
    last_free = STAGES[plan[-1]]
    model = prob.data - ev.resid
    model_src = model - ev.sky[:, None, None]
    cov_sky, cov_tot = prob.flux_covariance(ev, model_src, [im.gain for im in images])
    cov = cov_tot if opts.flux_error_model == "total" else cov_sky
    var = np.diagonal(cov, axis1=1, axis2=2)[:, :prob.S]
    errs = np.sqrt(np.where(var > 0, var, np.nan))
    errs[ev.pinned] = np.nan
    bands = [im.band for im in images]
    out = []
    for s, src in enumerate(sources):
        p = params[s]
        r = SourceResult(kind=src.kind, x=float(p[0]), y=float(p[1]), fluxes=ev.F[:, s].copy(),
                         flux_errs=errs[:, s].copy(), stalled=_stalled(prob, s, p, last_free),
                         no_data_bands=[bands[b] for b in np.flatnonzero(ev.pinned[:, s])])
        if src.kind != "star":
            r.re, r.ab, r.phi_deg = params_to_catalog_shape(p[2], p[3], p[4])
        if src.kind == "sersic":
            r.sersic_n = float(p[5])
        out.append(r)
    last = stages[-1]
    n_lim = max(1, int(opts.n_opt_iters) - int(opts.flag_maxiter_margin))
    return FitResult(sources=out, niters=last["niters"], converged=last["converged"],
                     hit_max_iters=(not last["converged"]) and last["niters"] >= n_lim,
                     last_dlnp=last["last_dlnp"], stages=stages, sky=ev.sky.copy(), chi2=ev.chi2,
                     lnp=ev.lnp, bands=bands, npix_used=int(np.count_nonzero(prob.w > 0)),
                     _models=[m for m in model])


def _band_source(src, b):
    s = copy.copy(src)
    s.fluxes = np.asarray(src.fluxes, dtype=float)[b:b + 1].copy()
    if src.flux_sigma is not None:
        s.flux_sigma = np.atleast_1d(np.asarray(src.flux_sigma, dtype=float))[b:b + 1].copy()
    return s


def fit_patch(images, sources, options: FitOptions | None = None) -> FitResult:
    """Fit every source of a patch to every band (see docs/dev/engine-api.md)."""
    opts = options or FitOptions()
    images = list(images)
    if opts.multi_band:
        return _fit_multi(images, list(sources), opts)
    per_band = {}
    for b, im in enumerate(images):
        per_band[im.band] = _fit_multi([im], [_band_source(s, b) for s in sources], opts)
    res = list(per_band.values())
    return FitResult(sources=[], niters=max(r.niters for r in res), converged=all(r.converged for r in res),
                     hit_max_iters=any(r.hit_max_iters for r in res),
                     last_dlnp=max(r.last_dlnp for r in res), stages=[],
                     sky=np.array([r.sky[0] for r in res]), chi2=sum(r.chi2 for r in res),
                     lnp=sum(r.lnp for r in res), bands=[im.band for im in images], per_band=per_band,
                     npix_used=sum(r.npix_used for r in res))
