"""The patch fitting problem: parameters, priors, bounds and one evaluation (render + linear solve).

Fluxes and per-band sky enter the model linearly and are solved exactly for the current nonlinear
parameters (variable projection); :meth:`Problem.gauss_newton` returns the Gauss-Newton system of the
nonlinear parameters with the linear ones eliminated (Schur complement), priors included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .linalg import inv_batched, model_block, overlapping_pairs, own_products, pair_block, solve_batched
from .profiles import SERSIC_N_BOUNDS
from .psf import PsfBank
from .render import param_names, render_source
from .shapes import EE_BOUNDS, LOGRE_BOUNDS, catalog_shape_to_params, ellipticity_wall, shape_prior_precision

#: steps smaller than this are not taken (keeps the source's cached rendering and pair blocks);
#: far below what float32 renderings resolve.  sersicindex is ln(n) inside the engine.
MIN_STEP = {"pos.x": 1e-6, "pos.y": 1e-6, "shape.logre": 1e-7, "shape.ee1": 1e-7, "shape.ee2": 1e-7,
            "sersicindex": 1e-7}
#: sanity caps per step (the whole step of a source is scaled down so that none is exceeded)
MAX_STEP = {"pos.x": 2.0, "pos.y": 2.0, "shape.logre": 1.0, "shape.ee1": 1.0, "shape.ee2": 1.0,
            "sersicindex": 0.3}
#: stall tolerance = 0.1 x the Tractor's finite-difference step of each parameter (n in n units)
STALL_TOL = {"pos.x": 0.01, "pos.y": 0.01, "shape.logre": 1e-3, "shape.ee1": 1e-3, "shape.ee2": 1e-3,
             "sersicindex": 1e-3}
#: relative rounding of a float32 rendering (sets the precision with which ln p can be evaluated)
F32_EPS = float(np.finfo(np.float32).eps)
#: pairs of sources whose unit models overlap less than this (normalised inner product, any band)
#: get no derivative cross terms in the Gauss-Newton matrix (their fluxes stay exactly coupled)
COUPLING_EPS = 1e-3
LOGN_BOUNDS = (math.log(SERSIC_N_BOUNDS[0]), math.log(SERSIC_N_BOUNDS[1]))


@dataclass
class Evaluation:
    params: list
    free: frozenset
    rs: list
    blocks: dict
    F: np.ndarray          # (nb, S) fluxes
    sky: np.ndarray        # (nb,)
    G: np.ndarray | None   # (nb, L, L) linear normal matrix used (None when linear params frozen)
    pinned: np.ndarray     # (nb, S) bool: no data -> flux pinned
    resid: np.ndarray | None   # (nb, H, W) data - model, float32 (chi2 is summed in float64 before
    #                            rounding); None for model-only evaluations (``derivs=False``)
    chi2: float
    lnp: float
    derivs: bool = True    # renderings carry the derivative columns of ``free``

    def noise_floor(self) -> float:
        """Rounding noise of ln p from float32 renderings of every source (~eps32 x total S/N)."""
        tot = 0.0
        for (s, t), B in self.blocks.items():
            if s == t:
                tot += float(np.sum(self.F[:, s] ** 2 * B[:, 0, 0]))
        return 2.0 * F32_EPS * math.sqrt(max(tot, 0.0))


class Problem:
    def __init__(self, images, sources, fit_sky=True):
        if not images:
            raise ValueError("fit_patch: no images given")
        shape = images[0].data.shape
        for im in images:
            if im.data.shape != shape:
                raise ValueError(f"band {im.band}: image shape {im.data.shape} differs from band "
                                 f"{images[0].band} {shape}; all bands of a patch must share the ROI")
        self.images, self.sources = images, sources
        self.nb, self.S, self.shape = len(images), len(sources), shape
        self.data = np.stack([im.data for im in images])
        self.w = np.stack([im.invvar for im in images])
        self.wd = (self.w * self.data).astype(np.float32)   # float32 like the renderings it meets
        self.psfs = PsfBank([im.psf for im in images])
        self.fit_sky = fit_sky
        self.kinds = [s.kind for s in sources]
        self.names = [param_names(k) for k in self.kinds]
        self.F0 = np.zeros((self.nb, self.S))
        self.faint = np.zeros(self.S, dtype=bool)   # galaxies whose shape is held (engine.fit)
        self.pos_held = np.zeros(self.S, dtype=bool)   # sources whose position is held (engine.fit)
        self.index_held = np.zeros(self.S, dtype=bool)   # Sersic galaxies whose index is held
        self.flux_mu = np.zeros((self.nb, self.S))
        self.flux_prec = np.zeros((self.nb, self.S))
        self.p0, self.lo, self.hi = [], [], []
        self.prior_mu, self.prior_prec = [], []
        for s, src in enumerate(sources):
            if src.fluxes.size != self.nb:
                raise ValueError(f"source {s}: {src.fluxes.size} fluxes for {self.nb} bands")
            self.F0[:, s] = src.fluxes
            if src.flux_sigma is not None:
                sig = np.atleast_1d(np.asarray(src.flux_sigma, dtype=float))
                if sig.size != self.nb:
                    raise ValueError(f"source {s}: flux_sigma has {sig.size} values for {self.nb} bands")
                ok = np.isfinite(sig) & (sig > 0)
                self.flux_prec[ok, s] = 1.0 / sig[ok] ** 2
                self.flux_mu[:, s] = src.fluxes
            self._init_params(src)
        self.sky0 = np.array([im.sky for im in images], dtype=float)
        # Gaussian prior (mean 0) on each band's fitted sky; 0 = flat
        self.sky_prec = np.array([0.0 if getattr(im, "sky_sigma", None) is None else im.sky_sigma ** -2
                                  for im in images], dtype=float) if fit_sky else np.zeros(self.nb)
        self.w32 = self.w.astype(np.float32)
        self._cache = {}
        self._model_buf = None
        self._block_cache = {}
        self._model_block_cache = {}
        self._uid = 0

    def _init_params(self, src):
        k = len(param_names(src.kind))
        p = np.empty(k)
        lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
        mu, prec = np.zeros(k), np.zeros((k, k))
        p[0], p[1] = src.x, src.y
        if src.max_shift is not None and np.isfinite(src.max_shift) and src.max_shift >= 0:
            lo[:2] = [src.x - src.max_shift, src.y - src.max_shift]
            hi[:2] = [src.x + src.max_shift, src.y + src.max_shift]
        if src.pos_sigma is not None and np.isfinite(src.pos_sigma) and src.pos_sigma > 0:
            mu[:2] = [src.x, src.y]
            prec[0, 0] = prec[1, 1] = 1.0 / src.pos_sigma ** 2
        if src.kind != "star":
            p[2:5] = catalog_shape_to_params(src.re, src.ab, src.phi_deg)
            p[2] = float(np.clip(p[2], *LOGRE_BOUNDS))
            lo[2:5] = [LOGRE_BOUNDS[0], EE_BOUNDS[0], EE_BOUNDS[0]]
            hi[2:5] = [LOGRE_BOUNDS[1], EE_BOUNDS[1], EE_BOUNDS[1]]
            f = getattr(src, "re_factor", None)
            if f is not None and np.isfinite(f) and f > 1:
                lo[2] = max(lo[2], min(p[2], math.log(src.re) - math.log(f)))
                hi[2] = min(hi[2], max(p[2], math.log(src.re) + math.log(f)))
            sp = shape_prior_precision(src.re, src.ab, src.phi_deg, src.re_sigma, src.ell_sigma,
                                       src.theta_sigma_deg)
            if sp is not None:
                mu[2:5], prec[2:5, 2:5] = sp
        if src.kind == "sersic":   # fitted as ln(n): the profile changes ~ proportionally in n
            p[5] = math.log(float(np.clip(src.sersic_n, *SERSIC_N_BOUNDS)))
            lo[5], hi[5] = LOGN_BOUNDS
        self.p0.append(p)
        self.lo.append(lo)
        self.hi.append(hi)
        self.prior_mu.append(mu)
        self.prior_prec.append(prec)

    # ------------------------------------------------------------------ evaluation
    def free_names(self, s, free):
        return [n for n in self.names[s] if n in free]

    def render(self, s, p, free):
        """Render source s; ``free=None`` = model column only.

        At most one rendering with derivatives and one model-only rendering are cached per source;
        a model-only request is served by the rendering with derivatives at the same parameters.
        """
        fn = None if free is None else tuple(self.free_names(s, free))
        pk = p.tobytes()
        entries = self._cache.setdefault(s, [])
        for k, f, r in entries:
            if k == pk and (fn is None or f == fn):
                return r
        params = dict(zip(self.names[s], p))
        if "sersicindex" in params:
            params["sersicindex"] = math.exp(params["sersicindex"])
        model = None
        if fn:   # reuse the model column of a model-only rendering at these parameters (a trial)
            model = next((e[2] for e in entries if e[0] == pk and e[1] is None), None)
        r = render_source(self.kinds[s], params, self.psfs, self.shape, set(fn or ()), model=model)
        if fn and "sersicindex" in fn:   # d/d ln n = n d/dn
            r.A[:, 1 + fn.index("sersicindex")] *= params["sersicindex"]
        self._uid += 1
        r.uid = r.muid = self._uid
        if (model is not None and self.kinds[s] != "star" and model.A.shape[1] == 1
                and (r.y0, r.y1, r.x0, r.x1) == (model.y0, model.y1, model.x0, model.x1)):
            # render_source copied the model column: its model blocks and w * model stay valid
            r.muid = model.muid
            if "a0w" in model.cache:
                r.cache["a0w"] = model.cache["a0w"]
        entries[:] = [e for e in entries if (e[1] is None) != (fn is None)] + [(pk, fn, r)]
        return r

    def products(self, r):
        """(sum w d A, sum w A) per band and column of a rendering (cached on it)."""
        c = r.cache.get("wd_w")
        if c is None:
            c = r.cache["wd_w"] = own_products(r, self.wd, self.w32)
        return c

    def weighted_model(self, r):
        """w * model column on the rendering's box, float32 (cached on the rendering)."""
        c = r.cache.get("a0w")
        if c is None:
            c = r.cache["a0w"] = r.A[:, 0] * self.w32[:, r.y0:r.y1, r.x0:r.x1]
        return c

    def block(self, rs, s, t, ncols):
        """Pair block of renderings rs[s], rs[t] (cached by rendering id, so nothing is kept alive)."""
        us, ut = rs[s].uid, rs[t].uid
        lst = self._block_cache.setdefault((s, t), [])
        for a, b, B in lst:
            if a == us and b == ut and B.shape[1] >= ncols[0] and B.shape[2] >= ncols[1]:
                return B if (B.shape[1], B.shape[2]) == ncols else B[:, :ncols[0], :ncols[1]]
        if ncols == (1, 1):   # model blocks are keyed by the model columns' identities
            ms, mt = rs[s].muid, rs[t].muid
            mlst = self._model_block_cache.setdefault((s, t), [])
            for a, b, B in mlst:
                if a == ms and b == mt:
                    return B
            B = model_block(rs[s], rs[t], self.weighted_model(rs[s]))
            mlst.append((ms, mt, B))
            del mlst[:-3]
            return B
        B = pair_block(rs, s, t, self.w32, ncols=ncols)
        lst.append((us, ut, B))
        del lst[:-3]
        return B

    def blocks_for(self, rs, derivs):
        """Pair blocks of every overlapping pair; with ``derivs`` the derivative columns of pairs
        of distinct sources only when their models overlap by more than COUPLING_EPS."""
        pairs = overlapping_pairs(rs)
        m = {st: self.block(rs, st[0], st[1], (1, 1)) for st in pairs}
        if not derivs:
            return m
        out = {}
        for s, t in pairs:
            full = (rs[s].A.shape[1], rs[t].A.shape[1])
            if full != (1, 1) and s != t:
                den = np.sqrt(m[(s, s)][:, 0, 0] * m[(t, t)][:, 0, 0])
                c = np.max(np.abs(m[(s, t)][:, 0, 0]) / np.where(den > 0, den, np.inf))
                if not c > COUPLING_EPS:
                    out[(s, t)] = m[(s, t)]
                    continue
            out[(s, t)] = m[(s, t)] if full == (1, 1) else self.block(rs, s, t, full)
        return out

    def prior_lnp(self, params):
        """ln p of the priors: the Gaussian ones and the galaxies' ellipticity wall."""
        tot = 0.0
        for s, (p, mu, prec) in enumerate(zip(params, self.prior_mu, self.prior_prec)):
            if prec.any():
                d = p - mu
                tot -= 0.5 * d @ prec @ d
            if self.kinds[s] != "star":
                tot += ellipticity_wall(p[3], p[4])[0]
        return tot

    def evaluate(self, params, free, solve_linear=True, F=None, sky=None, derivs=True) -> Evaluation:
        """Render, solve the linear parameters (if ``solve_linear``), and compute chi2 and ln p.

        ``derivs=False`` renders model columns only (trial points of the optimizer).
        """
        free = frozenset(free)
        rs = [self.render(s, params[s], free if derivs else None) for s in range(self.S)]
        blocks = self.blocks_for(rs, derivs)
        F = self.F0.copy() if F is None else F.copy()
        sky = self.sky0.copy() if sky is None else sky.copy()
        G = None
        pinned = np.zeros((self.nb, self.S), dtype=bool)
        if solve_linear:
            F, sky, G, pinned = self._solve_linear(rs, blocks, F, sky)
        if self._model_buf is None:   # one float64 work image per problem (no page faults per call)
            self._model_buf = np.empty(self.data.shape)
        model = self._model_buf
        model[...] = sky[:, None, None]
        for s, r in enumerate(rs):
            if not r.empty:
                model[:, r.y0:r.y1, r.x0:r.x1] += F[:, s, None, None] * r.A[:, 0]
        resid = np.subtract(self.data, model, out=model)
        resid32 = resid.astype(np.float32) if derivs else None   # trial points need ln p only
        chi2 = float(np.dot(self.w.ravel(), np.square(resid, out=resid).ravel()))
        resid = resid32
        lnp = -0.5 * chi2 + self.prior_lnp(params)
        fp = self.flux_prec
        if fp.any():
            lnp -= 0.5 * float(np.sum(fp * (F - self.flux_mu) ** 2))
        if self.sky_prec.any():
            lnp -= 0.5 * float(np.sum(self.sky_prec * sky ** 2))
        return Evaluation(params, free, rs, blocks, F, sky, G, pinned, resid, chi2, lnp, derivs)

    def linear_matrix(self, rs, blocks, weight=None):
        """Normal matrix (nb, L, L) of the flux (+ sky) columns, data part only."""
        S, nb = self.S, self.nb
        L = S + (1 if self.fit_sky else 0)
        G = np.zeros((nb, L, L))
        for (s, t), B in blocks.items():
            G[:, s, t] = B[:, 0, 0]
            G[:, t, s] = B[:, 0, 0]
        if self.fit_sky:
            w = self.w if weight is None else weight
            for s, r in enumerate(rs):
                col = (self.products(r)[1] if weight is None else own_products(r, w)[0])[:, 0]
                G[:, s, S] = G[:, S, s] = col
            G[:, S, S] = w.sum(axis=(1, 2))
        return G

    def _solve_linear(self, rs, blocks, F, sky):
        S = self.S
        G = self.linear_matrix(rs, blocks)
        rhs = np.zeros(G.shape[:2])
        for s, r in enumerate(rs):
            wd_s, w_s = self.products(r)
            rhs[:, s] = wd_s[:, 0]
            if not self.fit_sky:
                rhs[:, s] -= sky * w_s[:, 0]
        if self.fit_sky:
            rhs[:, S] = self.wd.sum(axis=(1, 2), dtype=np.float64)
        diag = np.diagonal(G, axis1=1, axis2=2)[:, :S]
        dmax = diag.max(axis=1, initial=0.0)[:, None]
        pinned = ~(diag > 1e-12 * dmax) | ~(diag > 0)
        G[:, :S, :S] += np.einsum("bs,st->bst", self.flux_prec, np.eye(S))
        rhs[:, :S] += self.flux_prec * self.flux_mu
        for b, s in zip(*np.nonzero(pinned)):
            G[b, s, :] = 0.0
            G[b, :, s] = 0.0
            G[b, s, s] = 1.0
            rhs[b, s] = F[b, s]
        if self.fit_sky:   # a band without any unmasked pixel keeps its sky
            empty = ~(G[:, S, S] > 0)
            G[~empty, S, S] += self.sky_prec[~empty]
            for b in np.flatnonzero(empty):
                G[b, S, :] = G[b, :, S] = 0.0
                G[b, S, S], rhs[b, S] = 1.0, sky[b]
        x = solve_batched(G, rhs)
        F = x[:, :S]
        if self.fit_sky:
            sky = x[:, S]
        return F, sky, G, pinned

    # ------------------------------------------------------------------ Gauss-Newton system
    def gauss_newton(self, ev: Evaluation, coupling: bool = False):
        """(index, H, g): reduced Hessian/gradient of lnp in the free nonlinear parameters.

        ``index`` lists (source, param position) per row. With ``coupling`` also X (nb, L, n),
        G^-1 times the linear-nonlinear block: the linear parameters' covariance marginalised
        over the nonlinear ones is G^-1 + X H^-1 X^T.
        """
        free = ev.free
        index, gi = [], []
        for s in range(self.S):
            pos = [j for j, n in enumerate(self.names[s]) if n in free]
            gi.append(list(range(len(index), len(index) + len(pos))))
            index.extend((s, j) for j in pos)
        n = len(index)
        H = np.zeros((n, n))
        g = np.zeros(n)
        if n == 0:
            return (index, H, g, None) if coupling else (index, H, g)
        F = ev.F
        wr = self.w32 * ev.resid
        for s, r in enumerate(ev.rs):
            if gi[s]:
                g[gi[s]] = np.einsum("b,bj->j", F[:, s], own_products(r, wr)[0][:, 1:])
        L = ev.G.shape[-1] if ev.G is not None else 0
        HtL = np.zeros((self.nb, n, L)) if L else None
        for (s, t), B in ev.blocks.items():
            if B.shape[1] == 1 and B.shape[2] == 1 and s != t:
                continue   # weakly coupled pair: no derivative cross terms
            if gi[s] and gi[t]:
                blk = np.einsum("b,b,bjl->jl", F[:, s], F[:, t], B[:, 1:, 1:])
                H[np.ix_(gi[s], gi[t])] += blk
                if s != t:
                    H[np.ix_(gi[t], gi[s])] += blk.T
            if L:
                if gi[s]:
                    HtL[:, gi[s], t] = F[:, s, None] * B[:, 1:, 0]
                if gi[t] and s != t:
                    HtL[:, gi[t], s] = F[:, t, None] * B[:, 0, 1:]
        if L:
            if self.fit_sky:
                for s, r in enumerate(ev.rs):
                    if gi[s]:
                        HtL[:, gi[s], self.S] = F[:, s, None] * self.products(r)[1][:, 1:]
            for b, s in zip(*np.nonzero(ev.pinned)):
                HtL[b, :, s] = 0.0
            X = np.matmul(inv_batched(ev.G), HtL.transpose(0, 2, 1))        # (nb, L, n)
            H -= np.matmul(HtL, X).sum(axis=0)
        else:
            X = None
        for s in range(self.S):
            if gi[s]:
                pos = [j for (ss, j) in index if ss == s]
                prec = self.prior_prec[s][np.ix_(pos, pos)]
                if prec.any():
                    H[np.ix_(gi[s], gi[s])] += prec
                    g[gi[s]] -= prec @ (ev.params[s][pos] - self.prior_mu[s][pos])
                if self.kinds[s] != "star" and 3 in pos and 4 in pos:
                    _, gw, hw = ellipticity_wall(ev.params[s][3], ev.params[s][4])
                    if hw.any():
                        k = [gi[s][pos.index(3)], gi[s][pos.index(4)]]
                        H[np.ix_(k, k)] += hw
                        g[k] += gw
        H = 0.5 * (H + H.T)
        return (index, H, g, X) if coupling else (index, H, g)

    def with_exact_derivatives(self, ev: Evaluation, release: bool = False) -> Evaluation:
        """``ev`` itself, or (when some derivative columns came from the PSF bank's approximate
        basis) the same point re-rendered with every band's own PSF. The model columns, and so the
        fluxes, are the same; the derivatives then carry no basis error into the flux errors.
        ``release`` drops ev's renderings first (one derivative set in memory)."""
        if not (ev.derivs and self.psfs.approx_used):
            return ev
        if release:
            ev.rs, ev.blocks = [], {}
        self.psfs.approx_jacobian = False
        self._cache.clear()
        self._block_cache.clear()
        self._model_block_cache.clear()
        return self.evaluate(ev.params, ev.free, ev.G is not None, ev.F, ev.sky, derivs=True)

    def gn_inverse(self, ev: Evaluation):
        """(index, H^-1, X) of :meth:`gauss_newton` over the nonlinear parameters the data
        constrain (``index`` lists their (source, param position)), or None without any."""
        if ev.G is None or not ev.derivs:
            return None
        index, H, _, X = self.gauss_newton(ev, coupling=True)
        if X is None or not index:
            return None
        dg = np.diagonal(H)
        use = np.isfinite(dg) & (dg > 0)             # a parameter the data do not constrain: none
        if not use.any():
            return None
        Hinv = inv_batched(H[np.ix_(use, use)][None])[0]
        return [index[k] for k in np.flatnonzero(use)], Hinv, X[:, :, use]

    def marginal_flux_variance(self, ev: Evaluation, gn=None):
        """((nb, S) variance the fluxes gain from the uncertainty of the free nonlinear parameters
        (position, shape, Sersic index) they are fitted with: X H^-1 X^T of :meth:`gauss_newton`
        (``gn``: :meth:`gn_inverse` of ``ev``, computed when None); (nb, S) covariance of each
        flux with its source's ln(Sersic index); (S,) variance of that ln n), NaN where the index
        is not free. A flux error at fixed shape is too small for a galaxy, whose flux trades
        against its radius and index; the index terms let a flux that is converted with a factor
        depending on n (a total flux) carry that factor's error. Zero variance without free
        nonlinear parameters."""
        out = np.zeros((self.nb, self.S))
        cov_n, var_n = np.full((self.nb, self.S), np.nan), np.full(self.S, np.nan)
        gn = self.gn_inverse(ev) if gn is None else gn
        if gn is None:
            return out, cov_n, var_n
        rows, Hinv, X = gn
        Xs = X[:, :self.S, :]
        dv = np.einsum("bsn,nm,bsm->bs", Xs, Hinv, Xs)
        for k, (s, j) in enumerate(rows):
            if self.names[s][j] == "sersicindex":   # dF = -X dtheta at the optimum
                cov_n[:, s] = -Xs[:, s, :] @ Hinv[:, k]
                var_n[s] = Hinv[k, k]
        return np.where(np.isfinite(dv) & (dv > 0), dv, 0.0), cov_n, var_n

    def flux_covariance(self, ev: Evaluation, model_src, gains):
        """Per-band covariance (nb, L, L) of the linear parameters: 'sky' (H^-1) and sandwich variant."""
        G = self.linear_matrix(ev.rs, ev.blocks)
        S = self.S
        G[:, :S, :S] += np.einsum("bs,st->bst", self.flux_prec, np.eye(S))
        if self.fit_sky:
            G[:, S, S] += self.sky_prec
        Ginv = inv_batched(G)
        tot = Ginv.copy()
        if any(g is not None for g in gains):
            g = np.array([np.nan if x is None else x for x in gains])
            ok = np.isfinite(g)
            extra = np.where(ok[:, None, None], self.w ** 2 * np.maximum(model_src, 0.0) / np.where(ok, g, 1.0)[:, None, None], 0.0)
            pairs = list(ev.blocks)
            kb = {(s, t): pair_block(ev.rs, s, t, extra, ncols=(1, 1)) for s, t in pairs}
            K = self.linear_matrix(ev.rs, kb, weight=extra)
            tot = np.where(ok[:, None, None], Ginv + Ginv @ K @ Ginv, Ginv)
        return Ginv, tot
