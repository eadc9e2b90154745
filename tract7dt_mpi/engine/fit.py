"""fit_patch: staged Levenberg-Marquardt over the nonlinear parameters with exact linear fluxes.

Each iteration builds the Gauss-Newton system of the free nonlinear parameters (fluxes and sky
eliminated) and takes a trust-region step (:mod:`.lm`).  A trial point is rendered without
derivatives and kept if ln p increases; the damping follows the gain ratio actual / predicted.

A stage has converged ("no further improvement possible") when, in this order,
1. the largest gain the quadratic model allows, g^T H^-1 g / 2 on the free parameters, is below the
   stage's tolerance (``dlnp_stop``; ``PREP_STOP`` for the preparatory stages 1 and 2);
2. an accepted step gained less than that (the Tractor's rule);
3. the step's predicted and actual gains are below the rounding noise of ln p (float32 renderings:
   ``Evaluation.noise_floor``), or no damped step improves ln p any more.
Per-source convergence (``SourceResult.converged``) compares each source's share of the remaining
gain with max(dlnp_stop, noise floor, SOURCE_DLNP).  Details: docs/dev/engine.md.
"""
from __future__ import annotations

import copy
import logging
import math

import numpy as np

from .flux_errors import neighbour_wing_responses, noise_weights, residual_scales, wing_errors
from .lm import free_set, gn_gain, lm_step, predicted_gain, source_gains, unconstrained, update_damping
from .problem import MAX_STEP, MIN_STEP, STALL_TOL, Problem
from .render import POS, SERSIC, SHAPE
from .shapes import params_to_catalog_shape
from .types import FitOptions, FitResult, SourceResult

log = logging.getLogger(__name__)
ALL = frozenset(POS + SHAPE + SERSIC)
SHAPE_LIKE = frozenset(SHAPE + SERSIC)
STAGES = {0: ALL, 1: SHAPE_LIKE, 2: frozenset(POS), 3: ALL}
MAX_TRIALS = 12
#: preparatory stages (1, 2) stop once the remaining predicted gain is statistically meaningless
#: (Delta chi2 < 2); only the final stage is driven down to ``dlnp_stop``
PREP_STOP = 1.0
#: a preparatory stage also stops once an accepted step gains less than this fraction of what the
#: stage has gained so far: it only prepares the start of the final stage, which converges to
#: ``dlnp_stop`` on its own (shapes fitted at the catalogue's slightly wrong positions crawl on
#: for many steps gaining a few ln p each)
PREP_REL_STOP = 0.01
#: a source whose own share of the gain still on offer is below this (in ln p, i.e. a chi^2 change
#: of 0.2) counts as converged even when its patch used up n_opt_iters: further steps cannot move
#: it by a measurable amount (legacypipe's optimisation loop stops at the same dchisq of 0.1)
SOURCE_DLNP = 0.1
#: position prior (px) of a galaxy whose shape is held for low S/N (``FitOptions.shape_min_snr``)
FAINT_POS_SIGMA = 0.5
#: runaway models (``SourceResult.runaway``): Re beyond this factor times its start (catalog) Re,
RUNAWAY_RE = 5.0
#: a flux below -RUNAWAY_SIGMA sigma, or above RUNAWAY_AP x the data's aperture flux +
#: RUNAWAY_SIGMA sigma of that aperture (radius max(RUNAWAY_AP_R, 3 start Re) px, at least half
#: of it unmasked)
RUNAWAY_SIGMA = 5.0
RUNAWAY_AP = 3.0
RUNAWAY_AP_R = 6.0
#: Sersic index a galaxy whose index ran to its upper bound is refitted with, its shape still
#: free: de Vaucouleurs' law. The catalogue start (n = 3 by default) with the catalogue's Re left
#: bright GalSim n = 4-5 galaxies 7-17 % faint; n = 4 with a free shape put them within -3 / +6 %
FALLBACK_INDEX = 4.0
#: shape-fallback refits at most (each holds the galaxies that ran away in the previous fit)
FALLBACK_ROUNDS = 3
#: sources tried one at a time (:func:`_block_step`) when no damped joint step improves ln p
BLOCK_SOURCES = 4
#: "no improving step" ends a stage as converged only when the gain the quadratic model still
#: predicts is below max(SOURCE_DLNP, this x the ln p noise floor); otherwise the optimizer stalled
STALL_FLOOR_FACTOR = 10.0


class _System:
    """Index arrays of the free parameters of one Gauss-Newton system."""

    def __init__(self, prob: Problem, ev, index, start=None):
        self.index = index
        self.theta = np.array([ev.params[s][j] for s, j in index])
        self.lo = np.array([prob.lo[s][j] for s, j in index])
        self.hi = np.array([prob.hi[s][j] for s, j in index])
        self.caps = np.array([MAX_STEP[prob.names[s][j]] for s, j in index])
        if start is not None:   # preparatory stage: stay within one maximal step of the stage start
            p0 = np.array([start[s][j] for s, j in index])
            self.lo = np.maximum(self.lo, np.minimum(p0 - self.caps, self.theta))
            self.hi = np.minimum(self.hi, np.maximum(p0 + self.caps, self.theta))
        self.mins = np.array([MIN_STEP[prob.names[s][j]] for s, j in index])
        self.owner = np.array([s for s, _ in index])

    def params(self, ev, step):
        newp = [p.copy() for p in ev.params]
        for (s, j), v in zip(self.index, np.clip(self.theta + step, self.lo, self.hi)):
            newp[s][j] = v
        return newp


def _sheets(prob: Problem, ev, sy) -> np.ndarray:
    """Parameters of galaxies stalled at the upper re bound: a profile that large is a sheet
    degenerate with the sky, so its position and shape are held (it keeps its stall flag)."""
    out = np.zeros(sy.theta.size, dtype=bool)
    for s in np.unique(sy.owner):
        if prob.kinds[s] != "star" and prob.hi[s][2] - ev.params[s][2] <= STALL_TOL["shape.logre"]:
            out[sy.owner == s] = True
    return out


def _start_snr(prob: Problem, params, F, sky) -> np.ndarray:
    """Each source's combined flux S/N over the bands at the start (sky-only errors)."""
    ev = prob.evaluate(params, frozenset(), True, F, sky, derivs=False)
    cov, _ = prob.flux_covariance(ev, None, [None] * prob.nb)
    var = np.diagonal(cov, axis1=1, axis2=2)[:, :prob.S]
    ok = np.isfinite(var) & (var > 0) & ~ev.pinned
    # the smaller of the initial (catalog / aperture) and the solved flux, negative counting as
    # zero: at the start a faint galaxy's linear flux may soak up a neighbour's misfit
    f = np.clip(np.minimum(np.asarray(F, float), ev.F), 0.0, None)
    snr2 = np.where(ok, f ** 2 / np.where(ok, var, 1.0), 0.0).sum(axis=0)
    return np.sqrt(snr2)


def _faint_sources(prob: Problem, params, F, sky, opts: FitOptions, sources):
    """(shape held, position held) per source.

    Shape held: galaxies below ``shape_min_snr`` (or with ``hold_shape``); they get a position
    prior (:func:`_faint_position_priors`).  Position held: every source (stars too) below
    ``pos_min_snr``: a prior cannot stop a faint source from walking onto a bright neighbour's
    PSF residual with a large negative flux (that gains far more chi^2 than a prior costs).
    """
    gal = np.array([k != "star" for k in prob.kinds], dtype=bool)
    shape_min, pos_min = float(opts.shape_min_snr), float(opts.pos_min_snr)
    snr = _start_snr(prob, params, F, sky) if (shape_min > 0 and gal.any()) or pos_min > 0 \
        else np.full(prob.S, np.inf)
    held = gal & (snr < shape_min) if shape_min > 0 else np.zeros(prob.S, dtype=bool)
    held |= np.array([bool(getattr(s, "hold_shape", False)) for s in sources], dtype=bool) & gal
    pos = snr < pos_min if pos_min > 0 else np.zeros(prob.S, dtype=bool)
    return held, pos


def _faint_position_priors(prob: Problem) -> None:
    """A Gaussian prior of FAINT_POS_SIGMA px around the catalog position for every galaxy in
    ``prob.faint`` without a POS_ERR prior of its own: below shape_min_snr a galaxy's position is
    as poorly measured as its shape, and a free one wanders several px onto noise or a neighbour's
    residual (3 px costs it 36 in chi^2)."""
    for s in np.flatnonzero(prob.faint):
        if prob.kinds[s] != "star" and not prob.prior_prec[s][0, 0] > 0:
            prob.prior_mu[s][:2] = prob.p0[s][:2]
            prob.prior_prec[s][0, 0] = prob.prior_prec[s][1, 1] = FAINT_POS_SIGMA ** -2


def _held_shapes(prob: Problem, sy) -> np.ndarray:
    """Shape and Sersic parameters of the galaxies in ``prob.faint``, the index of those in
    ``prob.index_held``, positions of the sources in ``prob.pos_held``."""
    return np.array([(bool(prob.faint[s]) and prob.names[s][j] in SHAPE_LIKE)
                     or (bool(prob.index_held[s]) and prob.names[s][j] in SERSIC)
                     or (bool(prob.pos_held[s]) and prob.names[s][j] in POS) for s, j in sy.index],
                    dtype=bool)


def _settle(step, H, g, sys_, S, dlnp_stop):
    """Zero the steps of sources whose share of the gain is below max(dlnp_stop, noise floor) / S, or whose
    every parameter moves less than MIN_STEP (their renderings and pair blocks stay cached)."""
    moving = np.zeros(S, dtype=bool)
    np.logical_or.at(moving, sys_.owner, np.abs(step) >= sys_.mins)
    gains = source_gains(H, g, step, sys_.owner, S)
    hold = ~moving | (np.abs(gains) < dlnp_stop / max(S, 1))
    out = step.copy()
    out[hold[sys_.owner]] = 0.0
    return out


def _try_step(prob, ev, sy, H, g, lam, nu, hold, floor, free, solve_linear, stop):
    """Damped trials until one improves ln p -> (improving parameters or None, pred, lam, nu)."""
    S = prob.S
    pred = 0.0
    for _ in range(MAX_TRIALS):
        step, _ = lm_step(H, g, lam, sy.theta, sy.lo, sy.hi, sy.caps, sy.owner, S, hold)
        step = _settle(step, H, g, sy, S, max(stop, floor))
        pred = predicted_gain(H, g, step)
        if not np.any(step):
            return None, pred, lam, nu
        if pred <= 0.0:   # bounds or held sources spoilt the step: damp harder
            lam, nu = update_damping(lam, nu, 0.0, False)
            continue
        newp = sy.params(ev, step)
        trial = prob.evaluate(newp, free, solve_linear, ev.F, ev.sky, derivs=False)
        actual = trial.lnp - ev.lnp
        ok = bool(np.isfinite(actual) and actual > 0.0)
        rho = actual / pred if ok else 0.0
        lam, nu = update_damping(lam, nu, rho, ok)
        if np.isfinite(actual) and not (0.75 < rho < 1.25):
            # the quadratic model is off along this step (e.g. large residuals of an imperfect
            # profile): also try the maximum of the parabola through ln p(0), its slope, ln p(step)
            slope = float(g @ step)
            curv = 2.0 * (slope - actual)
            alpha = slope / curv if curv > 0 else 2.0
            if 0.05 < alpha < 3.0 and abs(alpha - 1.0) > 0.15:
                p2 = sy.params(ev, np.clip(sy.theta + alpha * step, sy.lo, sy.hi) - sy.theta)
                t2 = prob.evaluate(p2, free, solve_linear, ev.F, ev.sky, derivs=False)
                if np.isfinite(t2.lnp) and t2.lnp > ev.lnp + max(actual, 0.0):
                    newp, ok = p2, True
        if ok:
            return newp, pred, lam, nu
        if pred < floor:
            break
    return None, pred, lam, nu


def _block_step(prob, ev, sy, H, g, act, hold, floor, free, solve_linear, stop, tol):
    """After a stalled joint step: damped steps of one source at a time (the others held), the
    source whose own Gauss-Newton gain is largest first, among those above ``tol``; the
    improving parameters of the first that improves ln p, or None. Coupled or strongly
    nonlinear parameters of several sources can defeat every damped joint step while each
    source alone still improves (``BLOCK_SOURCES`` tried at most)."""
    own = {int(s): gn_gain(H, g, act & (sy.owner == s)) for s in np.unique(sy.owner[act])}
    order = [s for s, v in sorted(own.items(), key=lambda kv: -kv[1]) if v >= tol][:BLOCK_SOURCES]
    for s in order:
        newp, _, _, _ = _try_step(prob, ev, sy, H, g, 1e-3, 2.0, hold | (sy.owner != s), floor, free,
                                  solve_linear, stop)
        if newp is not None:
            return newp
    return None


def _gn_solve(H, g, act):
    x = np.zeros_like(g)
    if act.any():
        x[act] = np.linalg.lstsq(H[np.ix_(act, act)], g[act], rcond=1e-12)[0]
    return x


def _remaining_shares(H, g, act, owner, S, tol) -> np.ndarray:
    """Each source's gain still on offer at the end of an unconverged stage (held and bound-blocked
    parameters excluded).

    A source whose own Gauss-Newton gain, with every other source held, reaches ``tol`` is
    unconverged by itself and gets that gain.  The others get their share of the undamped joint step
    with those sources held: a blended pair whose joint move pays is still caught, but a galaxy
    running away next to a bright star does not mark the star and its other neighbours.
    """
    own = np.zeros(S)
    for s in np.unique(owner[act]):
        own[s] = gn_gain(H, g, act & (owner == s))
    alone = own >= tol
    shares = source_gains(H, g, _gn_solve(H, g, act & ~alone[owner]), owner, S)
    return np.where(alone, own, shares)


def _run_stage(prob: Problem, params, F, sky, free, solve_linear, opts: FitOptions, stage: int,
               confine: bool = False, stop: float | None = None, rel_stop: float = 0.0):
    """One stage of the fit.

    ``confine`` keeps every parameter within one maximal step of its start; ``stop`` is the
    convergence tolerance on ln p (default ``opts.dlnp_stop``); ``rel_stop`` > 0 also ends the
    stage when a step gains less than that fraction of the stage's gain so far.
    """
    ev = prob.evaluate(params, free, solve_linear, F, sky)
    lnp_start = ev.lnp
    start = [p.copy() for p in ev.params] if confine else None
    stop = float(opts.dlnp_stop) if stop is None else float(stop)
    budget = int(opts.n_opt_iters)
    lam, nu = 1e-3, 2.0
    niters, converged, last, why = 0, False, math.nan, "max_iters"
    S = prob.S
    while True:
        index, H, g = prob.gauss_newton(ev)
        if not index:
            converged, last, why = True, 0.0, "no free parameters"
            break
        sy = _System(prob, ev, index, start)
        floor = ev.noise_floor()
        hold = unconstrained(H, g, sy.caps) | _sheets(prob, ev, sy) | _held_shapes(prob, sy)
        act = free_set(sy.theta, sy.lo, sy.hi, g) & ~hold
        gn_pred = gn_gain(H, g, act)
        # a gain the model promises that no damped step delivers is a stall only above this
        stall_gain = max(SOURCE_DLNP, STALL_FLOOR_FACTOR * floor)
        done = None
        if gn_pred < stop:
            done = "gauss-newton gain < dlnp_stop"
        elif niters >= budget:
            break
        else:
            niters += 1
            lnp0 = ev.lnp
            newp, pred, lam, nu = _try_step(prob, ev, sy, H, g, lam, nu, hold, floor, free, solve_linear, stop)
            one = newp is None and gn_pred >= stall_gain
            if one:
                newp = _block_step(prob, ev, sy, H, g, act, hold, floor, free, solve_linear, stop,
                                   max(stop, floor, SOURCE_DLNP))
                if newp is not None:
                    lam, nu = 1e-3, 2.0
            if newp is not None:
                F0, sky0 = ev.F, ev.sky
                ev = None   # release the old derivative renderings before rendering the new ones
                ev = prob.evaluate(newp, free, solve_linear, F0, sky0, derivs=True)
            last = 0.0 if newp is None else ev.lnp - lnp0
            log.debug("stage %d opt iter %02d%s dlnp=%.6g pred=%.3g gn_pred=%.3g floor=%.2g lnp=%.6f lambda=%.3g",
                      stage, niters, " (one source at a time)" if one else "", last, pred, gn_pred, floor,
                      lnp0 + last, lam)
            if newp is None:
                if gn_pred < stall_gain:
                    done = "no improving step (at the ln p noise floor)"
                else:   # the model promises a real gain that no damped step delivers: a stall
                    why = f"stalled: no improving step, predicted gain {gn_pred:.3g}"
                    break
            else:
                if last < stop:
                    done = "dlnp < dlnp_stop"
                elif rel_stop > 0 and last < rel_stop * (ev.lnp - lnp_start):
                    done = "dlnp < rel_stop x the stage's gain"
                elif pred < floor and last < floor:
                    done = "gain below the ln p noise floor"
        if done is None:
            continue
        converged, why = True, done
        if done.startswith("gauss"):
            last = max(gn_pred, 0.0) if niters else 0.0
        break
    log.debug("stage %d: %s after %d iterations", stage, why, niters)
    prob.source_share = np.zeros(S)
    prob.source_tol = max(stop, ev.noise_floor(), SOURCE_DLNP)
    if not converged and index:
        act = free_set(sy.theta, sy.lo, sy.hi, g) & ~hold
        prob.source_share = _remaining_shares(H, g, act, sy.owner, S, prob.source_tol)
    return ev, {"stage": stage, "niters": niters, "converged": converged, "last_dlnp": float(last),
                "dlnp_tol": stop, "stop_reason": why}


def _stalled(prob: Problem, s, p, free):
    out = []
    for j, name in enumerate(prob.names[s]):
        if name not in free:
            continue
        tol = STALL_TOL[name]
        v, lo, hi = p[j], prob.lo[s][j], prob.hi[s][j]
        if name == "sersicindex":   # fitted as ln n; the tolerance is in n
            v, lo, hi = math.exp(v), math.exp(lo), math.exp(hi)
        if np.isfinite(lo) and v - lo <= tol:
            out.append(f"{name}@lower")
        elif np.isfinite(hi) and hi - v <= tol:
            out.append(f"{name}@upper")
    return out


def _fit_multi(images, sources, opts: FitOptions) -> FitResult:
    prob = Problem(images, sources, fit_sky=opts.fit_sky)
    params = [p.copy() for p in prob.p0]
    F, sky = prob.F0.copy(), prob.sky0.copy()
    stages = []
    prob.faint, prob.pos_held = _faint_sources(prob, params, F, sky, opts, sources)
    _faint_position_priors(prob)
    plan = [1, 2, 3] if opts.staged else [0]
    ev = None
    for st in plan:
        solve_linear = not (st == 2 and opts.stage2_freeze_fluxes)
        ev = None     # the previous stage's renderings (other derivative columns) are not needed
        prep = st in (1, 2)
        ev, info = _run_stage(prob, params, F, sky, STAGES[st], solve_linear, opts, st, confine=prep,
                              stop=max(PREP_STOP, float(opts.dlnp_stop)) if prep else None,
                              rel_stop=PREP_REL_STOP if prep else 0.0)
        params, F, sky = ev.params, ev.F, ev.sky
        stages.append(info)
    last_free = STAGES[plan[-1]]
    fallback = np.zeros(prob.S, dtype=bool)
    for _ in range(FALLBACK_ROUNDS if opts.shape_fallback else 0):
        # a refit with one runaway held can let a neighbour run away in its turn: check again
        new, index_only = _shape_fallbacks(prob, ev, sources, last_free)
        if not new.any():
            break
        fallback |= new
        prob.faint |= new & ~index_only
        prob.index_held |= index_only
        params = [_fallback_params(prob, s, p, index_only[s]) if new[s] else p for s, p in enumerate(params)]
        _faint_position_priors(prob)
        ev, info = _run_stage(prob, params, F, sky, last_free, True, opts, plan[-1])
        params, F, sky = ev.params, ev.F, ev.sky
        info["shape_fallback"] = int(new.sum())
        stages.append(info)
    resid = ev.resid
    model = prob.data - resid
    model_src = model - ev.sky[:, None, None]
    cov_sky, cov_tot = prob.flux_covariance(ev, model_src, [im.gain for im in images])
    cov = cov_tot if opts.flux_error_model == "total" else cov_sky
    w_noise = noise_weights(prob, model_src, images, opts.flux_error_model == "total")
    var = np.diagonal(cov, axis1=1, axis2=2)[:, :prob.S]
    cov_n, var_n = np.full((prob.nb, prob.S), np.nan), np.full(prob.S, np.nan)
    ev_d, gn = None, None
    if opts.marginal_flux_errors:
        # ev's renderings are not needed below (fluxes, sky, chi2 and flags are kept on ev)
        ev_d = prob.with_exact_derivatives(ev, release=True)
        gn = prob.gn_inverse(ev_d)
        dv, cov_n, var_n = prob.marginal_flux_variance(ev_d, gn)
        var = var + dv
    wing = neighbour_wing_responses(prob, params, ev.F, cov_sky, [im.wing_light for im in images],
                                    ev_d, gn) if opts.psf_wing_error > 0 else None
    ev_d = None
    errs = np.sqrt(np.where(var > 0, var, np.nan))
    rscale = residual_scales(prob, resid, params, w_noise) if opts.residual_error_scale \
        else np.ones((prob.nb, prob.S))
    errs = errs * rscale
    # the index terms take the same inflation as the variances (covariance x chi^2)
    cov_n, var_n = cov_n * rscale ** 2, var_n[None, :] * rscale ** 2
    errs[ev.pinned] = np.nan
    bands = [im.band for im in images]
    # out of iterations but the last accepted step gained < SOURCE_DLNP: the fit is on a plateau
    # (legacypipe's stopping rule); the undamped shares can overstate what a step could still gain
    last_gain = float(stages[-1]["last_dlnp"])
    plateau = bool(stages[-1]["stop_reason"] == "max_iters" and np.isfinite(last_gain)
                   and 0.0 <= last_gain < SOURCE_DLNP)
    out = []
    for s, src in enumerate(sources):
        p = params[s]
        r = SourceResult(kind=src.kind, x=float(p[0]), y=float(p[1]), fluxes=ev.F[:, s].copy(),
                         flux_errs=errs[:, s].copy(), stalled=_stalled(prob, s, p, last_free),
                         no_data_bands=[bands[b] for b in np.flatnonzero(ev.pinned[:, s])],
                         shape_fixed=bool(prob.faint[s]), pos_held=bool(prob.pos_held[s]),
                         shape_fallback=bool(fallback[s]), index_held=bool(prob.index_held[s]))
        if src.kind != "star":
            r.re, r.ab, r.phi_deg = params_to_catalog_shape(p[2], p[3], p[4])
        if wing is not None:
            r.wing_resp = np.where(ev.pinned[:, s][:, None], np.nan, wing[:, :, s].T)
            r.wing_errs = wing_errors(r.wing_resp.T, [opts.psf_wing_error] * 3)
        if src.kind == "sersic":
            r.sersic_n = float(math.exp(p[5]))
            if np.isfinite(var_n[:, s]).all():
                r.lnn_cov = np.column_stack([cov_n[:, s], var_n[:, s]])
        share = float(prob.source_share[s])
        r.remaining_dlnp = share
        r.runaway = _runaway(prob, ev, s, src, r, errs, bands)
        r.converged = bool(stages[-1]["converged"] or abs(share) < prob.source_tol or plateau) \
            and not r.stalled and not r.runaway
        out.append(r)
    last = stages[-1]
    n_lim = max(1, int(opts.n_opt_iters) - int(opts.flag_maxiter_margin))
    return FitResult(sources=out, niters=last["niters"], converged=last["converged"],
                     hit_max_iters=(not last["converged"]) and last["niters"] >= n_lim,
                     last_dlnp=last["last_dlnp"], stages=stages, sky=ev.sky.copy(), chi2=ev.chi2,
                     lnp=ev.lnp, bands=bands, npix_used=int(np.count_nonzero(prob.w > 0)),
                     _models=[m for m in model])


def _shape_fallbacks(prob: Problem, ev, sources, free) -> np.ndarray:
    """(S,) galaxies with a free shape whose Re ran beyond RUNAWAY_RE x its start or whose Re
    (upper), ellipticity or Sersic n ended at a bound, to be refitted with the start (catalog)
    shape held; (S,) those among them where only the index ran to its upper bound, to be refitted
    with the index alone held (:func:`_fallback_params`)."""
    out, index_only = np.zeros(prob.S, dtype=bool), np.zeros(prob.S, dtype=bool)
    for s, src in enumerate(sources):
        if prob.kinds[s] == "star" or prob.faint[s]:
            continue
        p = ev.params[s]
        re = math.exp(p[2])
        # a galaxy shrinking to the lower Re bound is a point source, not a runaway
        bounds = [b for b in _stalled(prob, s, p, free)
                  if b.split("@")[0] in SHAPE_LIKE and b != "shape.logre@lower"]
        out[s] = bool(bounds) or _re_ran_away(re, src)
        index_only[s] = out[s] and bounds == ["sersicindex@upper"] and not prob.index_held[s] \
            and not _re_ran_away(re, src)
    return out, index_only


def _fallback_params(prob: Problem, s: int, p, index_only: bool):
    """Start of a fallback refit: the catalogue shape, or (``index_only``: only the Sersic index
    ran to its upper bound, beyond which a mixture cannot follow the wings it is fitting) the
    fitted shape with the index held at FALLBACK_INDEX."""
    if not index_only:
        return prob.p0[s].copy()
    q = p.copy()
    q[5] = math.log(float(np.clip(FALLBACK_INDEX, *np.exp([prob.lo[s][5], prob.hi[s][5]]))))
    return q


def _re_ran_away(re: float, src) -> bool:
    """A galaxy's Re beyond RUNAWAY_RE x its start (catalog) Re."""
    return bool(np.isfinite(re) and re > RUNAWAY_RE * float(src.re))


def _aperture(prob: Problem, sky, x, y, r):
    """(flux, sigma, unmasked fraction) per band of data - sky within ``r`` px of (x, y)."""
    H, W = prob.shape
    x0, x1 = max(0, int(math.floor(x - r))), min(W, int(math.ceil(x + r)) + 1)
    y0, y1 = max(0, int(math.floor(y - r))), min(H, int(math.ceil(y + r)) + 1)
    nb = prob.nb
    if x1 <= x0 or y1 <= y0:
        return np.zeros(nb), np.full(nb, np.inf), np.zeros(nb)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    n_in = max(int(inside.sum()), 1)
    w = prob.w[:, y0:y1, x0:x1]
    good = inside[None] & (w > 0)
    d = prob.data[:, y0:y1, x0:x1] - np.asarray(sky)[:, None, None]
    flux = np.where(good, d, 0.0).sum(axis=(1, 2))
    var = np.where(good, 1.0 / np.where(good, w, 1.0), 0.0).sum(axis=(1, 2))
    return flux, np.sqrt(var), good.sum(axis=(1, 2)) / n_in


def _runaway(prob: Problem, ev, s, src, r, errs, bands) -> list:
    """Reasons why source ``s``'s final model ran away from the data (see SourceResult.runaway)."""
    out = []
    if src.kind != "star" and _re_ran_away(r.re, src):
        out.append(f"re>{RUNAWAY_RE:g}xstart")
    r_ap = max(RUNAWAY_AP_R, 3.0 * float(src.re)) if src.kind != "star" else RUNAWAY_AP_R
    ap, ap_sig, frac = _aperture(prob, ev.sky, r.x, r.y, r_ap)
    for b in range(prob.nb):
        if ev.pinned[b, s]:
            continue
        f, e = float(ev.F[b, s]), float(errs[b, s])
        if np.isfinite(e) and f < -RUNAWAY_SIGMA * e:
            out.append(f"flux<-{RUNAWAY_SIGMA:g}sigma:{bands[b]}")
        elif frac[b] >= 0.5 and f > RUNAWAY_AP * max(float(ap[b]), 0.0) + RUNAWAY_SIGMA * float(ap_sig[b]):
            out.append(f"flux>{RUNAWAY_AP:g}xaperture:{bands[b]}")
    return out


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
