"""Flux-error terms beyond the fit's linear covariance (engine.fit calls them on the final model).

* :func:`noise_weights`: the residual's inverse variance as the errors model it (sky + Poisson);
* :func:`residual_scales`: a galaxy's errors scaled by the misfit under its own profile;
* :func:`neighbour_wing_responses`, :func:`wing_errors`: the flux each source takes from an error
  of its neighbouring stars' PSF wings and of the subtracted halos.
"""
from __future__ import annotations

import numpy as np

from .problem import Problem
from .render import Rendered

#: a star's PSF wing, for the neighbours' wing error (:func:`neighbour_wing_responses`), is where
#: its model is below this fraction of its peak (beyond ~1.5 FWHM for a Moffat beta = 2-3); its
#: outer wing, known less well, below INNER_WING_LEVEL
WING_LEVEL = 0.05
INNER_WING_LEVEL = 0.005
#: a galaxy's flux errors are scaled by the residual under its profile beyond this many sigma
#: of a noise-only reduced chi^2 (:func:`residual_scales`)
RESID_SIGMA = 3.0

__all__ = ["noise_weights", "residual_scales", "neighbour_wing_responses", "wing_errors"]


def neighbour_wing_responses(prob: Problem, params, F, ginv, wing_light, ev_d=None,
                             gn=None) -> np.ndarray:
    """(3, nb, S) signed flux responses to a unit fractional error of the neighbouring stars' PSF
    wings, [0] their inner wing (WING_LEVEL..INNER_WING_LEVEL of the peak) and [1] their outer
    wing (below INNER_WING_LEVEL), and [2] of the subtracted halos; :func:`wing_errors` turns them
    into a flux error.

    A star's model beyond its core (where its PSF is below WING_LEVEL of the peak) is its PSF's
    wing, which an empirical PSF knows to a few per cent (the outer wing less well than the
    inner), and so is the light of bright stars' halos subtracted from the images
    (``wing_light``: per band, None or an image); a source sitting on that light fits part of the
    error. The response of every flux (and the sky) to one star's wing part is the Gauss-Newton
    solve of that perturbation (``ev_d``, ``gn``: the fit's renderings with derivatives and
    :meth:`~tract7dt_mpi.engine.problem.Problem.gn_inverse`; without them the linear one,
    G^-1 A^T W M_t, at fixed shapes): a galaxy's shape takes the light in as well, and its flux
    with it. For each source the responses to its neighbours (t != s) add coherently per part
    (one PSF per band), and so do the halos'. A star's error from its own wing is the PSF term.
    The parts are kept apart because the stars' wing errors are measured per part on the fitted
    stars afterwards (stages.wing_error) and the halos' is not."""
    S, nb = prob.S, prob.nb
    resp = np.zeros((3, nb, S))
    stars = [t for t in range(S) if prob.kinds[t] == "star"]
    halos = [h is not None and np.any(h) for h in wing_light]
    if not (stars or any(halos)):
        return resp
    rs = ev_d.rs if ev_d is not None and gn is not None else [prob.render(s, params[s], None)
                                                               for s in range(S)]
    by_src = {}                 # source -> [(row k, its column in the rendering: model, free order)]
    if gn is not None:
        for k, (s, j) in enumerate(gn[0]):
            by_src.setdefault(s, []).append((k, 1 + prob.free_names(s, ev_d.free).index(prob.names[s][j])))
    Fa = np.asarray(F, float)
    H, W = prob.shape
    for t in stars:
        rt = rs[t]
        if rt.empty:
            continue
        a = np.asarray(rt.A[:, 0], float)
        peak = a.max(axis=(1, 2), keepdims=True)
        flux = Fa[:, t][:, None, None]
        inner = (a < WING_LEVEL * peak) & (a >= INNER_WING_LEVEL * peak)
        outer = a < INNER_WING_LEVEL * peak
        for part, mask in ((0, inner), (1, outer)):
            resp[part] += _response(prob, rs, rt, np.where(mask, a, 0.0) * flux, t, ginv, gn, by_src, Fa)
    if any(halos):
        light = np.stack([np.asarray(h, float) if ok else np.zeros((H, W))
                          for h, ok in zip(wing_light, halos)])
        resp[2] += _response(prob, rs, Rendered(0, H, 0, W, light[:, None]), light, -1, ginv, gn,
                             by_src, Fa)
    return np.where(np.isfinite(resp), resp, 0.0)


def _response(prob: Problem, rs, rt, wing, t: int, ginv, gn, by_src, Fa) -> np.ndarray:
    """(nb, S) flux responses to the extra light ``wing`` on ``rt``'s box (of source ``t``; -1:
    none); zero for ``t`` itself."""
    S, nb = prob.S, prob.nb
    if not wing.any():
        return np.zeros((nb, S))
    L = ginv.shape[-1]
    v = np.zeros((nb, L))
    u = np.zeros(len(gn[0])) if gn is not None else None
    wt = prob.w[:, rt.y0:rt.y1, rt.x0:rt.x1] * wing
    for s in range(S):
        r = rs[s]
        y0, y1, x0, x1 = max(r.y0, rt.y0), min(r.y1, rt.y1), max(r.x0, rt.x0), min(r.x1, rt.x1)
        if s == t or r.empty or y1 <= y0 or x1 <= x0:
            continue
        ov = wt[:, y0 - rt.y0:y1 - rt.y0, x0 - rt.x0:x1 - rt.x0]
        box = np.asarray(r.A[:, :, y0 - r.y0:y1 - r.y0, x0 - r.x0:x1 - r.x0], float)
        v[:, s] = np.einsum("byx,byx->b", box[:, 0], ov)
        if u is not None:
            for k, c in by_src.get(s, ()):
                u[k] = float(Fa[:, s] @ np.einsum("byx,byx->b", box[:, c], ov))
    if prob.fit_sky and L > S:
        v[:, S] = wt.sum(axis=(1, 2))
    d = np.einsum("blm,bm->bl", ginv, v)
    if u is not None:           # reduced system: dtheta = H^-1 (u - sum_b X_b^T v_b), dF = G^-1 v - X dtheta
        _, Hinv, X = gn
        dth = Hinv @ (u - np.einsum("bln,bl->n", X, v))
        d = d - np.einsum("bln,n->bl", X, dth)
    d = d[:, :S]
    if t >= 0:
        d[:, t] = 0.0
    return d


def wing_errors(resp, fractions) -> np.ndarray:
    """Flux errors from the responses of :func:`neighbour_wing_responses` (first axis: inner wing,
    outer wing, halos; any trailing shape) at fractional errors ``fractions`` (one per part):
    |sum of fraction x response|. The parts add coherently: one band's PSF makes all of them, and a
    source beside a star lies mostly in one of its rings, where the responses share their sign."""
    r = np.asarray(resp, float)
    f = np.asarray(fractions, float).reshape((-1,) + (1,) * (r.ndim - 1))
    return np.abs((f * r).sum(axis=0))


def noise_weights(prob: Problem, model_src, images, with_poisson: bool) -> np.ndarray:
    """(nb, H, W) inverse variance of the residual as the flux errors model it: the fit's (sky)
    weights, with the sources' own Poisson variance model / gain added in bands with a gain when
    ``with_poisson``. The residual chi^2 of a bright galaxy measured against the sky alone counts
    its Poisson noise, which the errors already hold, as misfit."""
    if not with_poisson:
        return prob.w
    out = prob.w.copy()
    for b, im in enumerate(images):
        g = im.gain
        if g is not None and np.isfinite(g) and g > 0:
            extra = np.maximum(model_src[b], 0.0) / g
            out[b] = prob.w[b] / (1.0 + prob.w[b] * extra)
    return out


def residual_scales(prob: Problem, resid, params, w_noise) -> np.ndarray:
    """(nb, S) factors >= 1 on the galaxies' flux errors: sqrt of the reduced chi^2 (against
    ``w_noise``) of the residual under each galaxy's own profile (weights: its unit model over its
    peak), where that exceeds 1 by more than ``RESID_SIGMA`` times its noise-only spread
    sqrt(2 / n_eff). A profile that does not describe the galaxy (a Sersic index or a bulge the
    model lacks, a neighbour's misfit on it) leaves a residual the statistical errors do not
    include."""
    out = np.ones((prob.nb, prob.S))
    if resid is None:
        return out
    for s in range(prob.S):
        if prob.kinds[s] == "star":
            continue
        r = prob.render(s, params[s], None)
        if r.empty:
            continue
        sl = (slice(None), slice(r.y0, r.y1), slice(r.x0, r.x1))
        w = w_noise[sl]
        prof = np.clip(np.asarray(r.A[:, 0], float), 0.0, None) * (w > 0)
        peak = prof.max(axis=(1, 2))
        ok = peak > 0
        p = prof / np.where(ok, peak, 1.0)[:, None, None]
        sp, sp2 = p.sum(axis=(1, 2)), (p * p).sum(axis=(1, 2))
        chi = (p * w * np.asarray(resid[sl], float) ** 2).sum(axis=(1, 2)) / np.where(ok, sp, 1.0)
        n_eff = np.where(sp2 > 0, sp * sp / np.where(sp2 > 0, sp2, 1.0), 0.0)
        thr = 1.0 + RESID_SIGMA * np.sqrt(2.0 / np.maximum(n_eff, 1.0))
        out[:, s] = np.where(ok & (n_eff >= 4) & (chi > thr), np.sqrt(chi), 1.0)
    return out
