"""Benchmark the ePSF build per cell: the program's native stack against photutils' EPSFBuilder.

GalSim renders ``--cells`` cells (512 x 512 px by default) with a grid of Moffat stars (beta 3.5,
FWHM 3.6-4.4 px from cell to cell, a slight ellipticity), sky level, sky gradient and Gaussian
noise, plus a few faint exponential galaxies. In every cell the stars are selected once (the stage's
own selection); then, on the same selected stars,

(a) the native build (``stages.epsf_stack`` via the stage, as ``epsf.oversamp: 1`` runs it), and
(b) photutils' ``EPSFBuilder`` with the serial tract7dt's settings (oversampling 1, maxiters 30,
    recentering box 9 with 30 recentring iterations, 5-sigma clipping, photutils' default smoothing
    kernel; ``--no-smoothing`` drops it, as this program's photutils path did), on the same stamps
    (neighbour-masked, per-star annulus background removed),

are timed (CPU seconds from ``time.process_time`` and wall seconds). Separately, (c) the whole
stage as a pipeline task runs it (``stages.epsf.build_epsf_cell`` without figures, the default
``plots.level``: background, SEP, selection, stamps, native build, QA) is timed on the same cell; the
closing lines give the old photutils-based cell (selection + EPSFBuilder) over that. Each ePSF is checked
against the true PSF of that cell: a point-source fit with the ePSF (the engine's pixelized PSF,
flux and position free) to the true PSF rendered noiselessly at a sub-pixel offset near the cell
centre gives the flux ratio (fitted / true, both within the 55 x 55 stamp) and the largest
|residual| inside r <= FWHM relative to the true peak.

    OMP_NUM_THREADS=1 nice python benchmarks/bench_epsf.py [--cells 4] [--size 512] [--no-smoothing]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

BETA = 3.5
SKY, SKY_SIGMA = 100.0, 2.0
STAMP = 55


def true_psf(fwhm, g1):
    import galsim

    return galsim.Moffat(beta=BETA, fwhm=fwhm).shear(g1=g1, g2=0.0)


def render_cell(n, fwhm, g1, seed):
    """(image, star list) of one cell: a jittered grid of stars and a few faint galaxies."""
    import galsim

    rng = np.random.default_rng(seed)
    img = galsim.ImageD(n, n, scale=1.0)
    psf = true_psf(fwhm, g1)
    step = 80
    stars = []
    for y in np.arange(60, n - 50, step):
        for x in np.arange(60, n - 50, step):
            stars.append((x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5), float(rng.uniform(2e4, 2e5))))
    for x, y, f in stars:
        ix, iy = int(round(x)), int(round(y))
        b = galsim.BoundsI(ix - 40 + 1, ix + 40 + 1, iy - 40 + 1, iy + 40 + 1) & img.bounds
        psf.withFlux(f).drawImage(image=img[b], add_to_image=True, method="auto",
                                  center=galsim.PositionD(x + 1.0, y + 1.0))
    for _ in range(6):   # faint galaxies between the stars
        x, y = rng.uniform(40, n - 40, 2)
        gal = galsim.Convolve(galsim.Exponential(half_light_radius=rng.uniform(1.5, 4.0), flux=rng.uniform(1e3, 5e3)), psf)
        ix, iy = int(round(x)), int(round(y))
        b = galsim.BoundsI(ix - 30 + 1, ix + 30 + 1, iy - 30 + 1, iy + 30 + 1) & img.bounds
        gal.drawImage(image=img[b], add_to_image=True, method="auto", center=galsim.PositionD(x + 1.0, y + 1.0))
    yy, xx = np.mgrid[0:n, 0:n]
    arr = img.array + SKY + 0.02 * (xx + 0.5 * yy)
    return arr + rng.normal(0.0, SKY_SIGMA, arr.shape), stars


def cell_input(arr, fwhm, tag):
    from tract7dt_mpi.stages.epsf import EpsfCellInput

    h, w = arr.shape
    return EpsfCellInput(band="m400", tag=tag, x0=0, x1=w, y0=0, y1=h, img=arr,
                         sigma_sky=np.full(arr.shape, SKY_SIGMA), bad=np.zeros(arr.shape, bool),
                         satur=np.zeros(arr.shape, bool), saturate_scaled=np.inf, fwhm_pix=fwhm)


def _clock():
    return time.process_time(), time.perf_counter()


def _since(t):
    c, w = _clock()
    return c - t[0], w - t[1]


def select(inp, s):
    """The stage's own background + star selection (shared by both builders)."""
    from tract7dt_mpi.stages import epsf as ep
    from tract7dt_mpi.stages import epsf_select as sel_mod

    meta = ep._base_meta(inp, s)
    img, sigma, bad, satur = ep._prepare(inp)
    bg = sel_mod.cell_background(img, sigma, bad, s)
    meta["patch_background"] = bg.stats
    sel = ep._select(inp, s, img, sigma, bad, satur, bg.work, meta)
    return meta, bg.work, sigma, bad, sel


def build_native(inp, s, meta, work, sigma, bad, sel):
    from tract7dt_mpi.stages import epsf as ep

    stamp, good, *_ = ep._build_stacked(inp, s, meta, work, sigma, bad, sel)
    return np.asarray(stamp, float), len(good)


def build_photutils(inp, s, meta, work, sigma, bad, sel, smoothing="quartic"):
    """Serial tract7dt's EPSFBuilder call on the same stamps (``smoothing``: photutils' default
    'quartic' as in the serial pipeline, or None as this program's photutils path used it)."""
    from astropy.stats import SigmaClip
    from photutils.psf import EPSFBuilder

    from tract7dt_mpi.stages import epsf_build

    stars = epsf_build.extract(work, sigma, bad, sel, s)
    meta["nstars_extract"] = len(epsf_build.star_list(stars))
    stars, _ = epsf_build.prepare_stars(stars, sel, s, meta)
    builder = EPSFBuilder(oversampling=1, maxiters=30, recentering_boxsize=9, recentering_maxiters=30,
                          sigma_clip=SigmaClip(sigma=5.0), progress_bar=False, smoothing_kernel=smoothing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = builder(stars)
    stamp = epsf_build.finish_stamp(res[0].data, 1, s.final_psf_size)
    return np.asarray(stamp, float), len(epsf_build.good_fitted(res[1]))


def accuracy(stamp, fwhm, g1, offset=(0.3, -0.2)):
    """(fitted / true flux in the stamp, max |residual| within r <= FWHM / true peak)."""
    import galsim

    from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch

    c = STAMP // 2
    truth = true_psf(fwhm, g1).drawImage(nx=STAMP, ny=STAMP, scale=1.0, method="auto",
                                         center=galsim.PositionD(c + 1 + offset[0], c + 1 + offset[1])).array
    im = ImageData("m400", truth, np.ones_like(truth), PixelizedPSF(stamp / stamp.sum()))
    res = fit_patch([im], [Source("star", c + offset[0], c + offset[1], np.array([1.0]))],
                    FitOptions(fit_sky=False, staged=False))
    src = res.sources[0]
    f = float(src.fluxes[0])
    from tract7dt_mpi.engine.render import render_star
    from tract7dt_mpi.engine.psf import PsfBank

    r = render_star(src.x, src.y, PsfBank([im.psf]), truth.shape, set())
    model = np.zeros_like(truth)
    model[r.y0:r.y1, r.x0:r.x1] = f * r.A[0, 0]
    yy, xx = np.mgrid[0:STAMP, 0:STAMP]
    core = np.hypot(xx - c - offset[0], yy - c - offset[1]) <= fwhm
    return f / truth.sum(), float(np.abs(truth - model)[core].max() / truth.max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-smoothing", action="store_true",
                    help="photutils without its per-iteration smoothing kernel (this program's former setting)")
    a = ap.parse_args()
    from tract7dt_mpi.config.schema import Epsf
    from tract7dt_mpi.stages.epsf import build_epsf_cell, epsf_settings

    s = epsf_settings(Epsf())
    tot = {"sel": np.zeros(2), "nat": np.zeros(2), "pu": np.zeros(2), "stage": np.zeros(2)}
    print(f"{'cell':5s} {'fwhm':>5s} {'n_sel':>5s} | {'select cpu/wall s':>17s} | {'native cpu/wall s':>17s} "
          f"{'used':>4s} {'flux':>7s} {'core':>7s} | {'photutils cpu/wall s':>20s} {'used':>4s} {'flux':>7s} {'core':>7s} "
          f"| {'stage cpu/wall s':>17s} {'used':>4s} {'flux':>7s} {'core':>7s}")
    for k in range(a.cells):
        fwhm = 3.6 + 0.8 * k / max(a.cells - 1, 1)
        g1 = 0.02 * (k % 3 - 1)
        arr, _ = render_cell(a.size, fwhm, g1, a.seed + k)
        inp = cell_input(arr, fwhm, f"c{k}")
        t = _clock()
        meta, work, sigma, bad, sel = select(inp, s)
        dt_sel = np.array(_since(t))
        t = _clock()
        st_n, used_n = build_native(inp, s, dict(meta, selection=dict(meta["selection"])), work, sigma, bad, sel)
        dt_n = np.array(_since(t))
        t = _clock()
        st_p, used_p = build_photutils(inp, s, dict(meta, selection=dict(meta["selection"])), work, sigma, bad, sel,
                                       smoothing=None if a.no_smoothing else "quartic")
        dt_p = np.array(_since(t))
        t = _clock()
        res = build_epsf_cell(inp, s)
        dt_s = np.array(_since(t))
        if res.stamp is None:
            raise SystemExit(f"cell {k}: the stage failed: {res.meta.get('error')}")
        fn, cn = accuracy(st_n, fwhm, g1)
        fp, cp = accuracy(st_p, fwhm, g1)
        fs, cs = accuracy(np.asarray(res.stamp, float), fwhm, g1)
        tot["sel"] += dt_sel
        tot["nat"] += dt_n
        tot["pu"] += dt_p
        tot["stage"] += dt_s
        print(f"{k:5d} {fwhm:5.2f} {len(sel):5d} | {dt_sel[0]:8.2f}/{dt_sel[1]:8.2f} | {dt_n[0]:8.2f}/{dt_n[1]:8.2f} "
              f"{used_n:4d} {fn:7.4f} {cn:7.4f} | {dt_p[0]:10.2f}/{dt_p[1]:9.2f} {used_p:4d} {fp:7.4f} {cp:7.4f} "
              f"| {dt_s[0]:8.2f}/{dt_s[1]:8.2f} {res.meta['nstars_used']:4d} {fs:7.4f} {cs:7.4f}", flush=True)
    n = a.cells
    sel, nat, pu, stage = tot["sel"] / n, tot["nat"] / n, tot["pu"] / n, tot["stage"] / n
    old = sel + pu
    print(f"per cell, CPU s (wall s): selection {sel[0]:.3f} ({sel[1]:.3f}); native build {nat[0]:.3f} ({nat[1]:.3f}); "
          f"photutils EPSFBuilder {pu[0]:.3f} ({pu[1]:.3f}); whole stage {stage[0]:.3f} ({stage[1]:.3f})")
    print(f"build only: photutils / native = {pu[0] / nat[0]:.1f}x CPU ({pu[1] / nat[1]:.1f}x wall); "
          f"cell incl. selection: {(sel[0] + pu[0]) / (sel[0] + nat[0]):.1f}x CPU "
          f"({(sel[1] + pu[1]) / (sel[1] + nat[1]):.1f}x wall)")
    print(f"whole cell: old photutils-based cell (selection + EPSFBuilder) {old[0]:.3f} CPU s / whole stage "
          f"{stage[0]:.3f} CPU s = {old[0] / stage[0]:.1f}x CPU ({old[1] / stage[1]:.1f}x wall)")
    print("flux = fitted / true flux in the 55x55 stamp; core = max |true - model| within r <= FWHM / true peak")


if __name__ == "__main__":
    main()
