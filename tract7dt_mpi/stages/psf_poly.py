"""A band's PSF as a smooth polynomial field over the frame, fitted to every ePSF star of the band.

A cell's ePSF is the mean PSF of the few stars in its cell. A real PSF changes smoothly over the
field, often not linearly (a focus dome: the FWHM grows from the centre outwards), and a PSF-fit
flux changes about one for one with the PSF width, so interpolating a handful of cell ePSFs leaves
per-cent errors that follow the position on the frame; and small cells hold one star or none.
Like PSFEx, this fits each ePSF pixel as a polynomial in (x, y) (degree ``degree``, lowered when
the stars are too few to constrain it: at least 3 stars per term) to the flux-normalised,
sub-pixel registered stamps of all the band's ePSF stars (the cells' stacks provide them, see
:func:`tract7dt_mpi.stages.epsf_stack.normalised_stamps`), weighted by their inverse variances, with
one 3-sigma clipping pass per pixel, within 1.5-2 FWHM of the centre (``VARYING_FWHM``); the
pixels further out, where one star is noise, are one weighted mean shape for the whole frame
whose amplitude follows the core's width. A cell of one or two stars cannot tell a compact
galaxy or a binary from a star, but the band's other stars can: stars whose concentration (flux within 1
FWHM over flux within 3 FWHM) is off the field's at their position, fitted without them, by more
than its noise and a tolerance are left out and the field is fitted again. Per-pixel clipping
alone kept such objects (on real KiDS/VIKING bands they made the field 2-9 % wider in FWHM than
the stars and the PSF fluxes of isolated stars several per cent high). The outer rings, where a
single star is noise, take the band's Moffat tail (fitted once, on the field at the stars'
centroid). :func:`evaluate_field` gives the unit-sum stamp and its enclosed fraction at any
position.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["PsfField", "FIELD_KEY", "fit_psf_field", "evaluate_field", "n_terms"]

#: key of a band's PsfField in the broadcast ePSF dict {band: {cell tag | FIELD_KEY: ...}}
FIELD_KEY = "field"
_MAD = 1.4826
#: a star is used only when this fraction of its core (1 FWHM) has data (and half of 3 FWHM;
#: its masked pixels there count as the field's in its concentration)
CORE_COVER = 0.9
#: rounds of refitting without the stars whose core does not follow the field
REJECT_ROUNDS = 4
#: a star is left out when its concentration (flux within 1 FWHM over flux within 3 FWHM)
#: differs from the field's at its position by more than CONC_SIGMA x its noise and CONC_TOL
#: (log ratio; a PSF 10 % wider is ~0.05 less concentrated)
CONC_SIGMA = 4.0
CONC_TOL = 0.04
#: the polynomial varies over the frame inside this radius (in FWHM); beyond the second radius
#: every pixel is one weighted mean shape over the stars, with an amplitude that follows the
#: core's width (a linear blend between): one star's wing pixel is noise, and a per-pixel
#: polynomial extrapolated it to the frame's corners, where few stars are (on a Moffat beta = 2
#: GalSim tile the field's light 3-7 FWHM out came out half the truth's in a corner and
#: 1.1-1.3x it in the middle: point-source fluxes -7 % and +1 %)
VARYING_FWHM = (1.5, 2.0)


def n_terms(degree: int) -> int:
    return (degree + 1) * (degree + 2) // 2


def _basis(u, v, degree: int) -> np.ndarray:
    """(..., K) monomials u^i v^j, i + j <= degree, by total degree (1, u, v, u^2, uv, v^2, ...)."""
    u, v = np.asarray(u, float), np.asarray(v, float)
    cols = [u ** (d - j) * v ** j for d in range(degree + 1) for j in range(d + 1)]
    return np.stack(cols, axis=-1)


@dataclass
class PsfField:
    """Polynomial PSF of one band: ``coeffs`` (K, S, S) over positions normalised as
    (x - x0) / scale, (y - y0) / scale; ``tail``/``blend``: the band's wing (S, S), its light
    beyond the grid ``tail_beyond``; ``xy``/``share``: the stars used and each one's own share of
    the field at its position (its leverage); ``final_size``: side of the stamps handed out;
    ``n_rejected``: stars left out (core not covered, or a core that does not follow the field);
    ``halos``: the bright stars whose halo beyond the stamp the patches lose."""

    coeffs: np.ndarray
    degree: int
    x0: float
    y0: float
    scale: float
    tail: np.ndarray
    blend: np.ndarray
    tail_beyond: float
    xy: np.ndarray
    share: np.ndarray
    final_size: int
    n_stars: int
    wings: dict
    n_rejected: int = 0
    #: bright stars whose halo beyond the stamp is subtracted from the patches: (x, y, total
    #: flux) each, working frame (stages.star_halos; the wing is ``wings['bright_wing']``)
    halos: tuple = ()
    #: the wing pixels' one shape (S, S; 0 inside VARYING_FWHM[0] FWHM), the pixels of the core
    #: (within VARYING_FWHM[0] FWHM) and of its inner part (1 FWHM), and (a, b): the shape's
    #: amplitude per unit core light is a + b ln(inner / core light) (see :func:`_wing_model`)
    wing_shape: np.ndarray | None = None
    core: np.ndarray | None = None
    inner: np.ndarray | None = None
    wing_ab: tuple = ()
    #: with a bright-star wing (stages.psf_wing.with_bright_wing): the anchor-zone pixels and
    #: their mean unit-total light at the wing's stars; ``tail``/``tail_beyond`` are then the
    #: wing per unit total flux, scaled by the anchor light at each position
    anchor: np.ndarray | None = None
    anchor_ref: float = float("nan")
    #: the pixels inside the stamp beyond the wing's join radius, where the field's constant
    #: offset from the wing is measured (:func:`_pedestal`)
    pedestal_zone: np.ndarray | None = None
    #: the band's registration offset from the other bands (stages.band_offsets.BandOffset):
    #: stamps are shifted by it, so a source's one position fits every band
    offset: object = None
    #: per-cell corrections of the core where the PSF changes faster than the polynomial
    #: (stages.psf_local.CellCores; None: none)
    cores: object = None

    def offset_at(self, x: float, y: float) -> tuple[float, float]:
        """(dx, dy) px by which the band's stamps at (x, y) are shifted (0 without an offset)."""
        if self.offset is None:
            return 0.0, 0.0
        dx, dy = self.offset.at(x, y)
        return float(dx), float(dy)

    def raw(self, x: float, y: float) -> np.ndarray:
        b = _basis((x - self.x0) / self.scale, (y - self.y0) / self.scale, self.degree)
        p = np.tensordot(b, self.coeffs, axes=(0, 0))
        if self.cores is not None:
            c = self.cores.at(x, y)
            if c is not None:
                p = p + c
        if self.wing_shape is not None:
            c = float(p[self.core].sum())
            q = np.log(max(float(p[self.inner].sum()), 1e-30) / max(c, 1e-30))
            p = p + (self.wing_ab[0] + self.wing_ab[1] * q) * c * self.wing_shape
        return p


def _solve(X, vals, w, ridge):
    """Per-pixel weighted least squares: X (n, K), vals/w (n, P) -> coefficients (K, P)."""
    A = np.einsum("np,nk,nl->pkl", w, X, X)
    b = np.einsum("np,nk,np->pk", w, X, vals)
    empty = ~(A[:, 0, 0] > 0)                 # no star covers the pixel: coefficients 0
    A[empty] = np.eye(X.shape[1])
    b[empty] = 0.0
    A += ridge[None, :, :] * A[:, :1, :1]
    return np.linalg.solve(A, b[..., None])[..., 0].T, A


def _degree(degree: int, n: int, per_term: int = 3) -> int:
    """``degree`` lowered while ``n`` stars give fewer than ``per_term`` per polynomial term."""
    while degree > 0 and n < per_term * n_terms(degree):
        degree -= 1
    return degree


def _clipped_fit(X, V, W, keep):
    """Per-pixel fit over the kept stars, one 3-sigma clipping pass: (coefficients (K, P),
    normal matrices, the clipped weights of every star)."""
    K = X.shape[1]
    ridge = np.diag(np.r_[0.0, np.full(K - 1, 1e-6)])
    Wk = np.where(keep[:, None], W, 0.0)
    coef, _ = _solve(X, V, Wk, ridge)
    z = (V - X @ coef) * np.sqrt(W)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = _MAD * np.nanmedian(np.where(Wk > 0, np.abs(z), np.nan), axis=0)
    spread = np.where(np.isfinite(spread), np.maximum(spread, 1.0), 1.0)
    Wc = np.where(np.abs(z) <= 3.0 * spread, W, 0.0)
    coef, A = _solve(X, V, np.where(keep[:, None], Wc, 0.0), ridge)
    return coef, A, Wc


def _left_out_model(X, coef, A, V, Wk, keep):
    """The field at each star's position fitted without that star (from its leverage per pixel,
    h = w x^T A^-1 x: (model - h v) / (1 - h)); where stars are few, a galaxy among them pulls the
    polynomial to its own shape and would look like the field."""
    model = X @ coef
    Ainv = np.linalg.inv(A)                                   # (P, K, K)
    h = np.einsum("nk,pkl,nl->np", X, Ainv, X) * np.where(keep[:, None], Wk, 0.0)
    h = np.clip(h, 0.0, 0.95)
    return (model - h * V) / (1.0 - h)


def _concentration_offsets(model, V, W, inner, outer):
    """Each star's concentration (flux inside ``inner`` over flux inside ``outer``) over the
    field's at its position, as a log ratio, and its 1-sigma noise. Unlike a chi^2 it does not
    grow with the star's S/N (a chi^2 cut leaves out the bright stars, whose PSF the polynomial
    follows least well, and keeps faint galaxies)."""
    def conc(a, var):
        fi, fo = a[:, inner].sum(axis=1), a[:, outer].sum(axis=1)
        vi, vo = var[:, inner].sum(axis=1), var[:, outer].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            # fi is part of fo: var(c)/c^2 = var_i/fi^2 + var_o/fo^2 - 2 var_i/(fi fo)
            rel = np.sqrt(np.maximum(vi / fi ** 2 + vo / fo ** 2 - 2.0 * vi / (fi * fo), 0.0))
            return fi / fo, rel
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(W > 0, 1.0 / W, 0.0)
    cs, es = conc(np.where(W > 0, V, model), var)
    cm, _ = conc(model, np.zeros_like(var))
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.log(cs / cm)
    ok = np.isfinite(off) & np.isfinite(es)
    return np.where(ok, off, np.inf), np.where(ok, es, np.inf)


def _wing_model(X, coef, V, Wk, keep, rad, fwhm):
    """Split the fit into a core that varies over the frame and wing pixels of one shape whose
    amplitude follows the core's width: (core coefficients (K, P), wing shape (P,), (a, b), core
    mask (P,), inner mask (P,)), or None (too few stars with a measurable wing).

    Inside VARYING_FWHM[0] FWHM the per-pixel polynomial ``coef``; beyond VARYING_FWHM[1] one
    weighted mean shape over the stars, blended linearly between. On every star the shape's
    amplitude beyond VARYING_FWHM[1] per unit of its light inside VARYING_FWHM[0] is one number
    from all its wing pixels; it is fitted as a + b q, q = ln(light within 1 FWHM / light within
    VARYING_FWHM[0]) of the field's core at the star: a wider PSF has a stronger wing (for a
    Moffat beta = 2, 8 % wider has ~15 % more light 3-7 FWHM out), and two numbers fitted on all
    the stars are far better determined than a polynomial in position of the wing. On GalSim
    tiles with an 8 % FWHM change over the frame this took the field's PSF-fit flux errors from
    -7 % .. +1 % (corner .. centre; Moffat beta = 2) to -1.0 % .. 0 %."""
    flat, _ = _solve(X[:, :1], V, Wk, np.zeros((1, 1)))
    flat = flat[0]
    lo, hi = VARYING_FWHM[0] * fwhm, VARYING_FWHM[1] * fwhm
    t = np.clip((hi - rad) / (hi - lo), 0.0, 1.0)
    core, inner = rad <= lo, rad <= max(fwhm, 1.0)
    outer = np.where(rad >= hi, flat, 0.0)                 # the pure wing, at full weight
    model = X @ coef
    c_star = np.where(Wk > 0, V, model)[:, core].sum(axis=1)
    c_mod = model[:, core].sum(axis=1)
    num = (Wk * V * outer[None]).sum(axis=1)
    den = (Wk * outer[None] ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = num / den / c_star                           # wing amplitude per unit core light
        var = 1.0 / den / c_star ** 2
        q = np.log(model[:, inner].sum(axis=1) / c_mod)    # the core's concentration there
    ok = keep & np.isfinite(rho) & np.isfinite(var) & (var > 0) & (c_star > 0) & np.isfinite(q)
    if ok.sum() < 6:
        return None
    B = np.column_stack([np.ones(ok.sum()), q[ok]])
    iv = 1.0 / var[ok]
    w = iv.copy()
    for _ in range(3):                                     # a star with a neighbour's light: clipped
        try:
            ab = np.linalg.solve((B * w[:, None]).T @ B, (B * w[:, None]).T @ rho[ok])
        except np.linalg.LinAlgError:
            return None
        z = (rho[ok] - B @ ab) * np.sqrt(iv)
        spread = max(_MAD * float(np.median(np.abs(z))), 1.0)
        w = np.where(np.abs(z) <= 3.0 * spread, iv, 0.0)
    return coef * t[None, :], (1.0 - t) * flat, (float(ab[0]), float(ab[1])), core, inner


def half_sample_mode(x) -> float:
    """Robust mode of ``x`` (Bickel's half-sample mode): the densest half, recursively."""
    x = np.sort(np.asarray(x, float))
    while x.size > 3:
        h = (x.size + 1) // 2
        widths = x[h - 1:] - x[:x.size - h + 1]
        i = int(np.argmin(widths))
        x = x[i:i + h]
    return float(np.mean(x)) if x.size else 0.0


def _outliers(off, err, keep):
    """Kept stars whose concentration offset lies beyond ``CONC_SIGMA`` x its own noise and
    ``CONC_TOL`` from the stars' mode: below it (less concentrated: a compact galaxy, a galaxy
    under the star, a binary) by CONC_TOL, above it (a cosmic-ray hit, a hot pixel) by twice that.
    The mode, not the median: the stars are the tight, most concentrated group; galaxies that
    pass a cell's selection spread only to one side, and in a band where they are a third of the
    candidates they move the median."""
    ref = keep & np.isfinite(off)
    mode = half_sample_mode(off[ref]) if ref.any() else 0.0
    lim = CONC_SIGMA * err
    low = off < mode - np.maximum(lim, CONC_TOL)
    high = off > mode + np.maximum(lim, 2.0 * CONC_TOL)
    return keep & (low | high | ~np.isfinite(off))


def fit_psf_field(xy, vals, w, degree: int, frame_shape, final_size: int, fwhm: float,
                  wing_tail: bool = True) -> PsfField | None:
    """Fit the field to ``vals`` (n, S, S) flux-normalised grid-aligned star stamps with inverse
    variances ``w`` at working-frame positions ``xy`` (n, 2). None without stars, or when the
    field has no positive flux at the stars' centroid (the band then uses its cells' ePSFs)."""
    from .epsf_stack import finish_psf, grid_radius

    xy = np.asarray(xy, float).reshape(-1, 2)
    vals = np.asarray(vals, float)
    w = np.asarray(w, float)
    n = xy.shape[0]
    if n == 0:
        return None
    size = vals.shape[1]
    h, wd = float(frame_shape[0]), float(frame_shape[1])
    x0, y0, scale = wd / 2.0, h / 2.0, max(h, wd) / 2.0
    V, W = vals.reshape(n, -1), np.where(np.isfinite(vals), w, 0.0).reshape(n, -1)
    V = np.where(W > 0, V, 0.0)
    f = float(fwhm) if np.isfinite(fwhm) and fwhm > 0 else 3.0
    rad = grid_radius(size).ravel()
    inner, outer = rad <= max(1.0 * f, 1.5), rad <= max(3.0 * f, 4.0)
    keep = ((W[:, inner] > 0).mean(axis=1) >= CORE_COVER) & ((W[:, outer] > 0).mean(axis=1) >= 0.5)
    if not keep.any():
        return None
    n_cover = int(keep.sum())
    for rnd in range(REJECT_ROUNDS + 1):
        d = _degree(int(max(degree, 0)), int(keep.sum()))
        X = _basis((xy[:, 0] - x0) / scale, (xy[:, 1] - y0) / scale, d)
        coef, A, Wk = _clipped_fit(X, V, W, keep)
        if rnd == REJECT_ROUNDS:
            break
        bad = _outliers(*_concentration_offsets(_left_out_model(X, coef, A, V, Wk, keep),
                                                V, W, inner, outer), keep)
        if not bad.any() or keep.sum() - bad.sum() < max(3, int(np.ceil(n_cover / 2))):
            break
        keep &= ~bad
    n_rejected = n - int(keep.sum())
    K = X.shape[1]
    wing = _wing_model(X, coef, V, np.where(keep[:, None], Wk, 0.0), keep, rad, f) if K > 1 else None
    if wing is not None:
        coef = wing[0]
    xy, n = xy[keep], int(keep.sum())
    X, W = X[keep], Wk[keep]
    coeffs = coef.reshape(K, size, size)
    c = (size * size) // 2
    Ainv = np.linalg.inv(A[c])
    share = np.einsum("nk,kl,nl->n", X, Ainv, X) * W[:, c]
    # the band's tail, from the field at the stars' centroid
    field = PsfField(coeffs, d, x0, y0, scale, np.zeros((size, size)), np.zeros((size, size)), 0.0,
                     xy, np.clip(share, 0.0, 1.0), int(final_size), n, {}, n_rejected)
    if wing is not None:
        field.wing_shape, field.wing_ab = wing[1].reshape(size, size), wing[2]
        field.core, field.inner = wing[3].reshape(size, size), wing[4].reshape(size, size)
    cx, cy = np.average(xy, axis=0, weights=np.maximum(W[:, c], 1e-300))
    core = field.raw(cx, cy)
    try:
        tailed, wings = finish_psf(core, fwhm, wing_tail=wing_tail)
    except ValueError:           # the stars do not make a PSF (no positive flux at their centroid)
        return None
    beyond = float(wings.get("tail_beyond_stamp") or 0.0)
    tailed = tailed * (1.0 + beyond)            # unit sum on the grid again
    rw = wings.get("wing_radius_pix")
    yy, xx = np.indices((size, size))
    r = np.hypot(xx - (size - 1) / 2.0, yy - (size - 1) / 2.0)
    blend = np.clip((r - (rw - 3.0)) / 3.0, 0.0, 1.0) if (wing_tail and wings.get("applied")) \
        else np.zeros((size, size))
    field.tail, field.blend, field.tail_beyond, field.wings = tailed, blend, beyond, wings
    return field


def _pedestal(field: PsfField, p) -> float:
    """The constant that the stacked stars' fitted backgrounds took off the unit-sum field ``p``:
    the level that makes its pixels beyond the wing's join radius (inside the stamp) match the
    bright-star wing, scaled as :func:`evaluate_field` scales it (by the anchor light, which
    the constant also changes). A per-star constant background is degenerate with the flat
    part of a broad wing: on a Moffat beta = 2 the field's outer rings came out 10-25 % low."""
    z = field.pedestal_zone
    if z is None or not z.any():
        return 0.0
    n_a, a_p, ref = float(field.anchor.sum()), float(p[field.anchor].sum()), float(field.anchor_ref)
    w, pz = float(field.tail[z].mean()), float(p[z].mean())
    denom = 1.0 - n_a * w / ref
    return (a_p * w / ref - pz) / denom if denom > 0.2 else 0.0


def evaluate_field(field: PsfField, x: float, y: float, shift=None):
    """(unit-sum float32 stamp of side ``final_size``, fraction of the PSF's total flux inside it)
    of the field at working-frame (x, y): the polynomial core, the band's tail beyond the wing
    radius scaled to the core at the blend ring (a bright-star wing: to the core's light in the
    wing fit's anchor zone), shifted by ``shift`` (dx, dy) px (None: the band's registration
    offset at (x, y), :meth:`PsfField.offset_at`)."""
    p = field.raw(x, y)
    tot = p.sum()
    if not tot > 0:
        return None, 1.0
    p = p / tot
    s = 1.0
    ring = (field.blend > 0) & (field.blend < 1)
    if field.anchor is not None:             # the bright-star wing, per unit of anchor light
        p = p + _pedestal(field, p)
        s = float(p[field.anchor].sum() / field.anchor_ref)
    elif ring.any() and field.tail[ring].sum() > 0:
        s = float(p[ring].sum() / field.tail[ring].sum())
    out = (1.0 - field.blend) * p + field.blend * s * field.tail
    total = out.sum() + s * field.tail_beyond
    if not total > 0:
        return None, 1.0
    out = out / total
    size, fs = out.shape[0], int(field.final_size)
    o = max(0, (size - fs) // 2)
    crop = out[o:o + fs, o:o + fs]
    ef = float(min(crop.sum(), 1.0))
    if not ef > 0:
        return None, 1.0
    dx, dy = field.offset_at(x, y) if shift is None else shift
    if dx or dy:
        from ..engine.fshift import fourier_shift
        shifted = fourier_shift(crop, dx, dy)[0]
        return (shifted / shifted.sum()).astype(np.float32), ef
    return (crop / ef).astype(np.float32), ef
