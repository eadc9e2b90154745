"""A band's outer PSF wing, measured on its brightest stars (saturated ones included).

The band's PSF field is a stack of moderately bright stars; beyond a few FWHM it is noise, so
its outer rings and the light beyond its stamp come from a Moffat tail fitted inside. Real
wings are not Moffat: a Kolmogorov (or Kolmogorov x Airy) PSF falls as r^-11/3 to r^-3 far out,
and from the rings inside a 55-px stamp its tail looks steeper than it is: on GalSim tiles the
field missed ~0.6 % of the light in its outer rings and ~0.5 % beyond the stamp, and every PSF
flux came out ~1 % low. A saturated star loses only its core; its wing is measured to tens of
FWHM. So, per band:

1. for each bright star (brightest first; typed STAR, matched to Gaia or saturated): sigma-clipped
   ring means of the image and their errors out to ``r_max``, on valid pixels only, in rings
   where at least ``MIN_COVER`` of the pixels are valid;
2. the model ``m_s(r) = F_s P(r) + c_s``: ``P`` is the field's own radial profile (unit total
   flux) in the anchor zone ``[r_a0, r_w)`` (where the field is measured: from 1.5 FWHM, outside the
   star's saturated core, to the field's wing radius) and ``A r^-slope`` beyond; ``F_s`` (the
   star's flux) and ``c_s`` (its local background) per star, ``A`` and ``slope`` shared: the
   slope on a grid, the rest by linear least squares. One slope: a flatter far slope, left free,
   took the light of galaxies around the stars for wing (4 % beyond the stamp of a Moffat
   beta = 2 PSF that has 1 %); with one slope the light beyond a 55-px stamp came out 1.00 %
   (true 1.2 %) there and 0.4 % (true 0.6 %) for Kolmogorov x Airy;
3. stars whose own wing amplitude is off the common one by more than ``OUTLIER_SIGMA`` of its
   error and ``OUTLIER_FRAC`` (a galaxy typed STAR, a blend, a ghost) are dropped and the fit is
   repeated.

:func:`with_bright_wing` replaces the field's tail beyond its wing radius by that power law,
scaled at every position by the field's light in the anchor zone, and sets the light beyond the
stamp from it. Pure numpy on arrays: the caller reads the cut-outs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .epsf_stack import grid_radius

__all__ = ["Wing", "ring_profile", "fit_wing", "measure_wing", "light_beyond_square",
           "with_bright_wing", "anchor_mask", "ring_edges"]

#: a ring is used when at least this fraction of its pixels is valid
MIN_COVER = 0.6
#: slopes tried for the wing (a slope <= 2 has infinite flux)
SLOPES = np.round(np.arange(2.3, 7.0001, 0.025), 3)
#: a star's own wing amplitude must agree with the common one within this many sigma ...
OUTLIER_SIGMA = 4.0
#: ... or within this fraction
OUTLIER_FRAC = 0.3
#: fits after the first that leave out the outliers of the one before
REJECT_ROUNDS = 3
#: fewest stars with an anchor and outer rings for a wing
MIN_STARS = 3
_MAD = 1.4826


@dataclass(frozen=True)
class Wing:
    """Unit-total PSF ``amp`` r^-``slope`` (r in px) beyond ``r_join``, measured out to ``r_max``
    on ``n_stars`` stars (``n_rejected`` dropped as outliers); ``chi2``: reduced chi^2 of the
    joint fit."""

    amp: float
    slope: float
    r_join: float
    r_max: float
    n_stars: int
    n_rejected: int
    chi2: float

    def profile(self, r):
        return self.amp * np.asarray(r, float) ** (-self.slope)


def ring_edges(r_in: float, r_max: float) -> np.ndarray:
    """1-px rings from ``r_in`` to 30 px, then rings 8 % wider each, to ``r_max``."""
    inner = np.arange(np.floor(r_in), 30.0, 1.0)
    outer = 30.0 * 1.08 ** np.arange(0, 200)
    e = np.concatenate([inner, outer[outer <= r_max]])
    return e[e >= r_in - 1e-9] if e.size else np.array([r_in, r_max])


def _bin_median(k, v, nb):
    """Per-bin median of ``v`` grouped by the bin index ``k`` (NaN for empty bins)."""
    if v.size == 0:
        return np.full(nb, np.nan)
    lo_v, span = float(v.min()), float(np.ptp(v)) or 1.0
    order = np.argsort(k + 0.999 * (v - lo_v) / span)       # by bin, then by value
    ks, vs = k[order], v[order]
    cnt = np.bincount(ks, minlength=nb)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    lo = np.minimum(start + np.maximum(cnt - 1, 0) // 2, vs.size - 1)
    hi = np.minimum(start + cnt // 2, vs.size - 1)
    med = 0.5 * (vs[lo] + vs[hi])
    return np.where(cnt > 0, med, np.nan)


def ring_profile(img, good, x: float, y: float, edges, clip: float = 3.0, iters: int = 3):
    """(means, errors) of ``img`` around (x, y) in the rings ``edges`` (pixel-centre radius),
    over the ``good`` pixels, each ring clipped at ``clip`` robust sigma about its median
    (``iters`` passes); NaN where fewer than ``MIN_COVER`` of a ring's pixels are good (or
    fewer than 8)."""
    img = np.asarray(img, float)
    yy, xx = np.indices(img.shape)
    r = np.hypot(xx - x, yy - y).ravel()
    k = np.searchsorted(edges, r, side="right") - 1
    nb = len(edges) - 1
    inside = (k >= 0) & (k < nb)
    tot = np.bincount(k[inside], minlength=nb)
    ok = inside & np.asarray(good, bool).ravel() & np.isfinite(img.ravel())
    kk, vv = k[ok], img.ravel()[ok]
    keep = np.ones(kk.size, bool)
    for _ in range(iters if np.isfinite(clip) else 0):
        med = _bin_median(kk[keep], vv[keep], nb)
        dev = np.abs(vv - med[kk])
        mad = _bin_median(kk[keep], dev[keep], nb)
        new = dev < clip * _MAD * np.where(mad > 0, mad, np.inf)[kk]
        if (new == keep).all():
            break
        keep = new
    kc, vc = kk[keep], vv[keep]
    n = np.bincount(kc, minlength=nb).astype(float)
    s1 = np.bincount(kc, vc, minlength=nb)
    s2 = np.bincount(kc, vc * vc, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = (s2 - n * mean ** 2) / np.maximum(n - 1.0, 1.0)
        err = np.sqrt(np.maximum(var, 0.0) / n)
    bad = (n < 8) | (np.bincount(kk, minlength=nb) < MIN_COVER * tot)
    return np.where(bad, np.nan, mean), np.where(bad, np.nan, err)


def _fit_shape(M, E, P, anchor, outer, q):
    """Weighted linear least squares, per star, of m_sk = F_s Q_k + c_s with Q = P (anchor) and
    G_s q / F_s (outer), in (F_s, G_s, c_s); A = the mean of G_s / F_s weighted by its inverse
    variance. Returns (A, F, c, G, G errors, chi2, n)."""
    ns = M.shape[0]
    ok = np.isfinite(M) & (E > 0) & np.isfinite(E)
    a, o = ok & anchor, ok & outer
    use = (a.sum(axis=1) >= 2) & (o.sum(axis=1) >= 2)
    w = np.where(a | o, 1.0 / np.where(ok, E, 1.0), 0.0)                   # (ns, K)
    X = np.zeros(M.shape + (3,))
    X[..., 0] = np.where(anchor, P, 0.0)
    X[..., 1] = np.where(outer, q, 0.0)[None, :]
    X[..., 2] = 1.0
    Xw = X * w[..., None]
    y = np.where(ok, M, 0.0) * w
    N = np.einsum("ski,skj->sij", Xw, Xw)
    N[~use] = np.eye(3)
    b = np.einsum("ski,sk->si", Xw, y)
    sol = np.linalg.solve(N, b[..., None])[..., 0]
    cov = np.linalg.inv(N)
    F, G, c = sol[:, 0], sol[:, 1], sol[:, 2]
    Ge = np.sqrt(np.maximum(cov[:, 1, 1], 0.0))
    res = np.einsum("ski,si->sk", Xw, sol) - y
    chi = float((res[use] ** 2).sum())
    n = int(((a | o).sum(axis=1)[use] - 3).sum())
    F, G, c, Ge = (np.where(use, v, np.nan) for v in (F, G, c, Ge))
    good = use & (F > 0) & (Ge > 0)
    if not good.any():
        return np.nan, F, c, G, Ge, np.inf, n
    a_s = G[good] / F[good]
    wt = (F[good] / Ge[good]) ** 2
    return float((a_s * wt).sum() / wt.sum()), F, c, G, Ge, chi, n


def fit_wing(M, E, rc, P, anchor, outer, r_join: float, r_max: float) -> Wing | None:
    """The common wing of star ring profiles ``M`` (n, K) with errors ``E`` at ring radii ``rc``,
    anchored to the field's unit-total profile ``P`` ((K,) or one row per star) on the rings
    ``anchor``; ``outer``: the rings that follow A r^-slope. None with fewer than ``MIN_STARS``
    usable stars."""
    M, E = np.asarray(M, float), np.asarray(E, float)
    P = np.broadcast_to(np.asarray(P, float), M.shape)
    keep = np.ones(M.shape[0], bool)
    n_rej = 0
    for rnd in range(REJECT_ROUNDS + 1):
        best = None
        coarse = SLOPES[::4]
        for grid in (coarse, None):
            if grid is None:        # refine around the coarse minimum
                grid = SLOPES[np.abs(SLOPES - best[1]) <= 2.0 * (coarse[1] - coarse[0])]
            for sl in grid:
                got = _fit_shape(M[keep], E[keep], P[keep], anchor, outer, rc ** (-float(sl)))
                if np.isfinite(got[0]) and got[0] > 0 and (best is None or got[5] < best[0][5]):
                    best = (got, float(sl))
            if best is None:
                return None
        (A, F, c, G, Ge, chi, n), sl = best
        ok = np.isfinite(F) & (F > 0) & np.isfinite(G)
        if ok.sum() < MIN_STARS:
            return None
        a_s = np.where(ok, G / np.where(ok, F, 1.0), np.nan)
        e_s = np.where(ok, Ge / np.where(ok, F, 1.0), np.nan)
        bad = ok & (np.abs(a_s - A) > OUTLIER_SIGMA * e_s) & (np.abs(a_s - A) > OUTLIER_FRAC * A)
        if rnd == REJECT_ROUNDS or not bad.any() or ok.sum() - bad.sum() < MIN_STARS:
            break
        idx = np.where(keep)[0]
        keep[idx[bad | ~ok]] = False
        n_rej += int(bad.sum())
    return Wing(amp=float(A), slope=sl, r_join=float(r_join), r_max=float(r_max),
                n_stars=int(ok.sum()), n_rejected=n_rej, chi2=float(chi / max(n, 1)))


def light_beyond_square(wing: Wing, half: int) -> float:
    """Flux of ``wing``'s profile on the pixels outside the square |dx|, |dy| <= ``half`` (pixel
    centres): summed out to 8 ``half``, analytic (circle) beyond."""
    r2 = 8 * int(half)
    g = np.arange(-r2, r2 + 1)
    gx, gy = np.meshgrid(g, g)
    rr = np.hypot(gx, gy)
    sel = ((np.abs(gx) > half) | (np.abs(gy) > half)) & (rr <= r2)
    near = float(wing.profile(rr[sel]).sum())
    return near + 2.0 * np.pi * wing.amp * r2 ** (2.0 - wing.slope) / (wing.slope - 2.0)


def anchor_mask(size: int, fwhm: float, r_join: float, blend_pix: float = 3.0) -> np.ndarray:
    """Pixels of a (size x size) grid in the wing fit's anchor zone (from 1.5 FWHM, as
    :func:`measure_wing`, to the start of the wing's blend at ``r_join`` - ``blend_pix``)."""
    r = grid_radius(size)
    r_in = max(1.5 * float(fwhm), 2.0)
    return (r >= r_in) & (r < max(float(r_join) - blend_pix, r_in + 1.5))


def with_bright_wing(field, wing: Wing, field_stamps, fwhm: float, blend_pix: float = 3.0):
    """A copy of ``field`` (stages.psf_poly.PsfField) whose light beyond the wing's join radius
    (linear blend over ``blend_pix`` before it) and beyond the grid is ``wing``'s, to infinity
    (fluxes are total fluxes).

    The wing's amplitude is per unit of total flux of the stars it was fitted on, which
    :func:`measure_wing` anchored on ``field_stamps`` (the field's unit-total stamps at those
    stars) inside the join radius. So at any position the wing is scaled by the field's light
    in that anchor zone over its mean at those stars (``anchor_ref``): a broader PSF gets a
    stronger wing, and the field's own outer rings, where the stacked stars' fitted backgrounds
    took up part of the wing (10-25 % of it 5-7 FWHM out for a Moffat beta = 2), are not used.
    ``tail`` is the wing on the grid and ``tail_beyond`` its light beyond the grid, both per
    unit total flux; ``blend`` the wing's weight."""
    size = field.tail.shape[0]
    r = grid_radius(size)
    tail = wing.profile(np.maximum(r, 1.0))
    blend = np.clip((r - (wing.r_join - blend_pix)) / blend_pix, 0.0, 1.0)
    beyond = light_beyond_square(wing, (size - 1) // 2)
    stamps = [np.asarray(st, float) for st in field_stamps]
    mask = anchor_mask(stamps[0].shape[0], fwhm, wing.r_join, blend_pix) if stamps else None
    anchor_ref = float(np.mean([st[mask].sum() for st in stamps])) if stamps else float("nan")
    if not anchor_ref > 0:
        return field
    wings = dict(field.wings, bright_wing={"amp": wing.amp, "slope": wing.slope, "r_join": wing.r_join,
                                           "r_max": wing.r_max, "n_stars": wing.n_stars,
                                           "n_rejected": wing.n_rejected, "chi2": round(wing.chi2, 3),
                                           "anchor_ref": round(anchor_ref, 7)},
                 tail_beyond_stamp=round(beyond, 7))
    zone = (r >= wing.r_join) & (r <= (int(field.final_size) - 1) / 2.0)
    return replace(field, tail=tail, blend=blend, tail_beyond=float(beyond), wings=wings,
                   anchor=anchor_mask(size, fwhm, wing.r_join, blend_pix), anchor_ref=anchor_ref,
                   pedestal_zone=zone if zone.sum() >= 20 else None)


def measure_wing(cutouts, field_stamps, fwhm: float, r_join: float, r_max: float) -> Wing | None:
    """The band's wing from bright-star ``cutouts``: (image, good-pixel mask, x, y, r_core) each,
    (x, y) the star's position in its cut-out, r_core the radius inside which its pixels are
    saturated or masked (0 if none). ``field_stamps``: the field's unit-total PSF at each star
    (odd squares);
    rings from max(1.5 FWHM, r_core + 2) to ``r_join`` (at least 3 px further) anchor each
    star's flux, rings from ``r_join`` to ``r_max`` measure the wing."""
    r_in = max(1.5 * float(fwhm), 2.0)
    r_join = max(float(r_join), r_in + 3.0)
    edges = ring_edges(r_in, r_max)
    if edges.size < 4:
        return None
    rc = 0.5 * (edges[1:] + edges[:-1])
    M = np.full((len(cutouts), rc.size), np.nan)
    E, P = np.full_like(M, np.nan), np.full_like(M, np.nan)
    for i, (img, good, x, y, r_core) in enumerate(cutouts):
        stamp = np.asarray(field_stamps[i], float)
        c = (stamp.shape[0] - 1) / 2.0
        p, _ = ring_profile(stamp, np.ones(stamp.shape, bool), c, c, edges, clip=np.inf)
        P[i] = np.where(rc <= c, p, np.nan)
        m, e = ring_profile(img, good, x, y, edges)
        inner = rc < max(r_in, float(r_core) + 2.0)
        M[i] = np.where(inner, np.nan, m)
        E[i] = np.where(inner, np.nan, e)
    anchor = (rc < r_join) & np.all(np.isfinite(P) & (P > 0), axis=0)
    outer = rc >= r_join
    if anchor.sum() < 2 or outer.sum() < 3:
        return None
    return fit_wing(M, E, rc, np.where(anchor, P, 0.0), anchor, outer, r_join, r_max)
