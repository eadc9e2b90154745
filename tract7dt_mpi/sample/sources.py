"""The source population of the synthetic tile: positions, types, shapes, spectra.

Everything is drawn from ``numpy.random.default_rng([seed, stream])`` so a seed fixes the sky.

Conventions (identical to the pipeline's, see docs/inputs.md and docs/dev/engine.md):

* ``x, y``: 0-based pixel coordinates of the full image, x = column, integer = pixel centre.
* ``re``: half-light radius along the MAJOR axis in pixels (the Tractor's ``re``: the minor axis is
  ``ab * re``); rendered as ``galsim.Sersic(half_light_radius=re*sqrt(ab)).shear(q=ab, ...)``
  because GalSim's shear preserves area.
* ``ab``: axis ratio b/a; the catalogue's ``ELL = 1 - ab``.
* ``theta``: major-axis position angle in degrees, counter-clockwise from the image +x axis, in
  (-90, 90] -- the catalogue's ``THETA``; the pipeline turns it into the Tractor's
  ``phi = THETA -/+ 90`` and its major axis then points at THETA from +x again.
* ``sersic_n``: 1 for EXP, 4 for DEV, 0.7..5 (steps of 0.05) for SERSIC. Profiles are untruncated
  (the true flux is the integral to infinity) unless the ``galaxy_truncation`` option cuts those
  with n > 1.2 at 8 re (major axis; GalSim's ``half_light_radius`` then refers to the truncated
  profile, so ``re`` is the true half-light radius of what is drawn and the true flux is all drawn).

Spectra: stars are black bodies (4300-10000 K); galaxies are a power law in f_nu with a smooth
4000 A-like break between 420 and 560 nm. ``mag_ref`` is the AB magnitude at 625 nm; a band's
magnitude follows from :func:`band_mags`. ``g_mag`` is a broad-band (Gaia-G-like) magnitude from
the same spectrum, used for the GaiaXP-like table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from .options import SampleOptions

REF_WAVE_NM = 625.0
EDGE_MARGIN = 40          # px: normal sources stay this far from the image edge
GAIA_G_MAX = 18.5         # stars brighter than this (in g_mag) go into the GaiaXP-like table


def _sed_fnu(row_kind, temp, alpha, brk_depth, brk_wave, lam):
    """Relative f_nu of one source at wavelengths ``lam`` (nm)."""
    lam = np.asarray(lam, dtype=float)
    if row_kind == "STAR":
        x = 1.4387769e7 / (lam * temp)             # h nu / k T with lam in nm
        return lam ** -3.0 / np.expm1(x)
    brk = 1.0 - brk_depth / (1.0 + np.exp((lam - brk_wave) / 12.0))
    return (lam / REF_WAVE_NM) ** alpha * brk


def sed_mag_offsets(pop: pd.DataFrame, lam_nm) -> np.ndarray:
    """m(lam) - mag_ref for every source (rows) at each wavelength (columns)."""
    lam = np.atleast_1d(np.asarray(lam_nm, dtype=float))
    out = np.empty((len(pop), lam.size))
    for i, r in enumerate(pop.itertuples(index=False)):
        f = _sed_fnu(r.kind, r.temp, r.alpha, r.brk_depth, r.brk_wave, np.append(lam, REF_WAVE_NM))
        out[i] = -2.5 * np.log10(f[:-1] / f[-1])
    return out


def band_mags(pop: pd.DataFrame, band_waves_nm) -> np.ndarray:
    """True AB magnitudes, shape (n_sources, n_bands)."""
    return pop["mag_ref"].to_numpy()[:, None] + sed_mag_offsets(pop, band_waves_nm)


def _g_mags(pop: pd.DataFrame) -> np.ndarray:
    """Broad-band magnitude: f_nu averaged with a wide Gaussian weight (640 nm, sigma 150 nm)."""
    lam = np.linspace(330.0, 1050.0, 145)
    w = np.exp(-0.5 * ((lam - 640.0) / 150.0) ** 2)
    off = sed_mag_offsets(pop, lam)
    mean_f = (10 ** (-0.4 * off) * w).sum(axis=1) / w.sum()
    return pop["mag_ref"].to_numpy() - 2.5 * np.log10(mean_f)


class _Placer:
    """Rejection sampler of positions with a minimum separation to everything placed so far."""

    def __init__(self, rng, width, height):
        self.rng, self.w, self.h = rng, width, height
        self.xy = np.empty((0, 2))

    def _free(self, x, y, min_sep):
        if not len(self.xy):
            return True
        d2 = (self.xy[:, 0] - x) ** 2 + (self.xy[:, 1] - y) ** 2
        return bool(d2.min() >= min_sep * min_sep)

    def add(self, x, y):
        self.xy = np.vstack([self.xy, [x, y]])
        return float(x), float(y)

    def interior(self, margin, min_sep):
        m = min(margin, 0.45 * min(self.w, self.h))
        for _ in range(200):
            x, y = self.rng.uniform(m, self.w - 1 - m), self.rng.uniform(m, self.h - 1 - m)
            if self._free(x, y, min_sep):
                break
        return self.add(x, y)          # crowded tile: accept the last try (a blend)

    def near_edge(self, min_sep):
        for _ in range(200):
            d = self.rng.uniform(4.0, 30.0)
            t = self.rng.uniform(EDGE_MARGIN, max(EDGE_MARGIN + 1, min(self.w, self.h) - EDGE_MARGIN))
            side = self.rng.integers(4)
            x, y = [(d, t), (self.w - 1 - d, t), (t, d), (t, self.h - 1 - d)][side]
            x, y = min(x, self.w - 1 - d), min(y, self.h - 1 - d)
            if self._free(x, y, min_sep):
                break
        return self.add(x, y)

    def next_to(self, x0, y0, rmin, rmax):
        r, a = self.rng.uniform(rmin, rmax), self.rng.uniform(0, 2 * np.pi)
        x = float(np.clip(x0 + r * np.cos(a), EDGE_MARGIN, self.w - 1 - EDGE_MARGIN))
        y = float(np.clip(y0 + r * np.sin(a), EDGE_MARGIN, self.h - 1 - EDGE_MARGIN))
        return self.add(x, y)


def default_n_sources(width: int, height: int, full_size: bool) -> int:
    """~270 catalogued sources per 1024x1024 px; fewer per area (and brighter) for full-size tiles."""
    if full_size:
        return 3000
    return max(12, int(round(270 * width * height / 1024.0 ** 2)))


def _galaxy_row(rng, kind: str, mag: float, x: float, y: float, edge: bool) -> dict:
    """Shape and spectrum of one galaxy (radius shrinking with magnitude, 0.3..1 axis ratio)."""
    re = float(np.clip(np.exp(rng.uniform(0.0, np.log(8.0))) * 10 ** (-0.12 * (mag - 18.5)), 1.0, 8.0))
    n_s = {"EXP": 1.0, "DEV": 4.0}.get(kind, float(np.round(rng.uniform(0.7, 5.0) / 0.05) * 0.05))
    alpha = rng.uniform(-0.5, 2.5)
    return dict(kind=kind, x=x, y=y, mag_ref=mag, temp=0.0, alpha=alpha,
                brk_depth=float(np.clip(0.25 * alpha + rng.uniform(-0.1, 0.2), 0.0, 0.7)),
                brk_wave=rng.uniform(420.0, 560.0), re=re, ab=rng.uniform(0.3, 1.0),
                theta=float(90.0 - rng.uniform(0.0, 180.0)), sersic_n=n_s, in_catalog=True,
                near_edge=bool(edge), blend_host=-1)


#: blends: host stars (mag_ref range), galaxy distance from the host [px], galaxy magnitudes
#: above the brightest galaxy magnitude
BLEND_HOST_MAG = (12.4, 16.0)
BLEND_DIST_PX = (8.0, 16.0)
BLEND_MAG_SPAN = 2.5


def _add_blends(rows: list, place: "_Placer", seed: int, n_blends: int, mag_min: float) -> None:
    """Put ``n_blends`` bright galaxies 8-16 px from distinct bright, unsaturated catalogued stars
    (an own random stream, so the rest of the sky does not change)."""
    rng = np.random.default_rng([int(seed), 1, 7])
    hosts = [i for i, r in enumerate(rows) if r["kind"] == "STAR" and r["in_catalog"] and not r["near_edge"]
             and BLEND_HOST_MAG[0] <= r["mag_ref"] <= BLEND_HOST_MAG[1]]
    if n_blends > len(hosts):
        raise InputError(f"make-sample --blends: {n_blends} blends asked, but only {len(hosts)} "
                         f"bright unsaturated stars can host one (raise --stars)")
    for h in rng.choice(hosts, size=n_blends, replace=False):
        r, a = rng.uniform(*BLEND_DIST_PX), rng.uniform(0, 2 * np.pi)
        x = float(np.clip(rows[h]["x"] + r * np.cos(a), EDGE_MARGIN, place.w - 1 - EDGE_MARGIN))
        y = float(np.clip(rows[h]["y"] + r * np.sin(a), EDGE_MARGIN, place.h - 1 - EDGE_MARGIN))
        place.add(x, y)
        kind = str(rng.choice(["EXP", "DEV", "SERSIC"], p=[0.4, 0.25, 0.35]))
        row = _galaxy_row(rng, kind, rng.uniform(mag_min, mag_min + BLEND_MAG_SPAN), x, y, False)
        row["blend_host"] = int(h)
        rows.append(row)


def draw_population(seed: int, width: int, height: int, n_sources: int | None = None,
                    bright_only: bool = False, options: SampleOptions | None = None) -> pd.DataFrame:
    """Draw the truth table of every rendered object (catalogued or not).

    Columns: id, kind, x, y, mag_ref, g_mag, temp, alpha, brk_depth, brk_wave, re, ab, theta,
    sersic_n, in_catalog, near_edge, blend_host (row of the star a blend galaxy was put next to,
    else -1). ``bright_only`` (full-size tiles) drops the faintest ~1.5 mag. ``options``: star and
    saturated-star counts, galaxy magnitudes, blends (:class:`~.options.SampleOptions`).
    """
    o = options or SampleOptions()
    rng = np.random.default_rng([int(seed), 1])
    n = int(n_sources) if n_sources is not None else default_n_sources(width, height, bright_only)
    area = width * height / 1024.0 ** 2
    n_star = int(round(0.55 * n)) if o.n_stars is None else int(o.n_stars)
    if n_star > n:
        raise InputError(f"make-sample --stars: {n_star} stars exceed the {n} catalogued sources "
                         "(raise --sources)")
    n_gal = n - n_star
    n_uncat = int(np.clip(round(4 * np.sqrt(area)), 1, 12))
    n_sat = max(1, int(round(0.03 * n_star))) if o.n_saturated is None else min(int(o.n_saturated), n_star)
    n_good = int(round(0.55 * n_star))
    if o.n_saturated is not None:
        n_good = min(n_good, n_star - n_sat)
    n_faint = max(0, n_star - n_sat - n_good)
    faint_star, faint_gal = (19.5, 20.5) if bright_only else (21.5, 21.5)
    if o.galaxy_mag_max is not None:
        faint_gal = float(o.galaxy_mag_max)
    bright_gal = float(o.galaxy_mag_min)
    n_edge = min(n_faint + n_gal, max(2, int(round(0.015 * n))))

    rows = []
    place = _Placer(rng, width, height)

    def star(mag, in_cat, edge=False, margin=EDGE_MARGIN, sep=10.0):
        x, y = place.near_edge(sep) if edge else place.interior(margin, sep)
        temp = float(np.exp(rng.uniform(np.log(4300), np.log(10000))))   # F/G/K dominate at these mags
        rows.append(dict(kind="STAR", x=x, y=y, mag_ref=mag, temp=temp,
                         alpha=0.0, brk_depth=0.0, brk_wave=0.0, re=0.0, ab=1.0, theta=0.0,
                         sersic_n=np.nan, in_catalog=in_cat, near_edge=edge, blend_host=-1))

    for _ in range(n_uncat):
        star(rng.uniform(9.0, 10.5), False, margin=80, sep=40.0)
    for _ in range(n_sat):
        star(rng.uniform(9.8, 11.0), True, margin=80, sep=40.0)
    for _ in range(n_good):
        star(rng.uniform(12.4, 17.0), True, sep=14.0)

    gal_kinds = rng.choice(["EXP", "DEV", "SERSIC"], size=n_gal, p=[0.4, 0.25, 0.35])
    edge_flags = np.zeros(n_gal + n_faint, bool)
    edge_flags[rng.choice(n_gal + n_faint, size=n_edge, replace=False)] = True
    gal_xy = []
    for i, kind in enumerate(gal_kinds):
        mag = bright_gal + (faint_gal - bright_gal) * np.sqrt(rng.uniform())
        if edge_flags[i]:
            x, y = place.near_edge(8.0)
        elif gal_xy and rng.uniform() < 0.05:                 # a deliberate close pair
            x, y = place.next_to(*gal_xy[rng.integers(len(gal_xy))], 4.0, 8.0)
        else:
            x, y = place.interior(EDGE_MARGIN, 8.0)
        gal_xy.append((x, y))
        rows.append(_galaxy_row(rng, kind, mag, x, y, edge_flags[i]))
    for j in range(n_faint):
        star(rng.uniform(17.0, faint_star), True, edge=bool(edge_flags[n_gal + j]), sep=8.0)
    if o.n_blends:
        _add_blends(rows, place, seed, int(o.n_blends), bright_gal)

    pop = pd.DataFrame(rows)
    pop["g_mag"] = _g_mags(pop)
    # IDs: catalogued objects get a random order of zero-padded numbers, the others X0001, ...
    cat = np.flatnonzero(pop["in_catalog"].to_numpy())
    width_id = max(5, len(str(len(cat))))
    ids = np.empty(len(pop), dtype=object)
    ids[cat] = [str(k + 1).zfill(width_id) for k in rng.permutation(len(cat))]
    unc = np.flatnonzero(~pop["in_catalog"].to_numpy())
    ids[unc] = [f"X{k + 1:04d}" for k in range(len(unc))]
    pop.insert(0, "id", ids)
    return pop


def gaia_source_ids(rng, n: int) -> list[str]:
    """``n`` distinct 19-digit Gaia-DR3-like source identifiers (as text)."""
    out: set[int] = set()
    vals = []
    while len(vals) < n:
        v = int(rng.integers(10 ** 18, 7 * 10 ** 18))
        if v not in out:
            out.add(v)
            vals.append(v)
    return [str(v) for v in vals]
