"""Benchmark the native engine on the standard patch of issue 8 (one core).

40 bands (and 20), 200x200 px ROI, 40 sources (10 STAR, 15 EXP, 10 DEV, 5 SERSIC), 55x55 pixelized
PSF per band (GalSim Moffat, FWHM 3.6-4.5 px in four band groups), GalSim-rendered truth plus
Gaussian noise, perturbed starting catalogue, default n_opt_iters=20 and the staged fit.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice python benchmarks/bench_engine.py [--bands 40 20]
        [--psf-per-band] [--psf-noise 1e-4]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def make_patch(nb: int, seed: int = 1, size: int = 200, psf_per_band: bool = False, psf_noise: float = 0.0):
    """(images, start sources, truth). ``psf_per_band``: every band its own Moffat FWHM (3.6-4.5 px
    linearly over the bands) instead of four band groups; ``psf_noise``: Gaussian noise of that
    fraction of the peak added to each band's PSF stamp given to the fit (an imperfect ePSF; the
    data are rendered with the noiseless PSF)."""
    import galsim

    from tract7dt_mpi.engine import ImageData, PixelizedPSF, Source

    rng = np.random.default_rng(seed)
    kinds = ["star"] * 10 + ["exp"] * 15 + ["dev"] * 10 + ["sersic"] * 5
    if psf_per_band:
        fwhms = list(np.linspace(3.6, 4.5, nb))
        group = list(range(nb))
    else:
        fwhms = [3.6, 3.9, 4.2, 4.5]
        group = [b * len(fwhms) // nb for b in range(nb)]
    stamps = [galsim.Moffat(beta=3.5, fwhm=f).drawImage(nx=55, ny=55, scale=1.0).array.astype(float)
              for f in fwhms]
    stamps = [s / s.sum() for s in stamps]
    prng = np.random.default_rng(seed + 1000)
    band_stamps = []
    for b in range(nb):
        st = stamps[group[b]]
        if psf_noise > 0:
            st = st + prng.normal(0.0, psf_noise * st.max(), st.shape)
            st = st / st.sum()
        band_stamps.append(st)
    truth, start = [], []
    for k in kinds:
        x, y = rng.uniform(10, size - 10, 2)
        mag = rng.uniform(18, 23)
        base = 10 ** (-0.4 * (mag - 25))
        sed = base * (1 + 0.5 * np.sin(np.linspace(0, 3, nb) + rng.uniform(0, 6)))
        re, ab, phi = rng.uniform(1, 8), rng.uniform(0.3, 1.0), rng.uniform(0, 180)
        n = rng.uniform(0.8, 5) if k == "sersic" else np.nan
        truth.append((k, x, y, sed, re, ab, phi, n))
        start.append(Source(k, x + rng.normal(0, 0.3), y + rng.normal(0, 0.3), sed * rng.uniform(0.7, 1.3, nb),
                            re=re * rng.uniform(0.8, 1.2), ab=min(1.0, ab * rng.uniform(0.9, 1.1)),
                            phi_deg=phi + rng.normal(0, 10), sersic_n=3.0 if k == "sersic" else np.nan))
    unit = np.zeros((len(fwhms), len(kinds), size, size))
    for g, f in enumerate(fwhms):
        psf = galsim.Moffat(beta=3.5, fwhm=f)
        for s, (k, x, y, sed, re, ab, phi, n) in enumerate(truth):
            if k == "star":
                obj = psf
            else:
                nn = {"exp": 1.0, "dev": 4.0}.get(k, n)
                hlr = re * np.sqrt(ab)
                obj = galsim.Convolve(galsim.Sersic(n=nn, half_light_radius=hlr, trunc=(4 if k == "exp" else 8) * hlr,
                                                    flux_untruncated=True).shear(q=ab, beta=(phi + 90) * galsim.degrees), psf)
            img = galsim.ImageD(size, size, scale=1.0)
            obj.drawImage(image=img, center=galsim.PositionD(x + 1, y + 1), method="auto")
            unit[g, s] = img.array
    sigma = 0.05   # per-pixel noise in flux units at ZP 25 (a 7DT-like deep frame)
    images = []
    for b in range(nb):
        clean = np.tensordot(np.array([t[3][b] for t in truth]), unit[group[b]], axes=1)
        data = clean + rng.normal(0, sigma, clean.shape)
        images.append(ImageData(f"m{400 + 25 * b}", data, np.full(data.shape, sigma ** -2),
                                PixelizedPSF(band_stamps[b])))
    return images, start, truth


def _rss_mb() -> float:
    """Current resident set size (MB; Linux), to separate the engine's memory from the set-up's."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def run(nb: int, seed: int, psf_per_band: bool = False, psf_noise: float = 0.0):
    from tract7dt_mpi.engine import FitOptions, fit_patch

    t0 = time.perf_counter()
    images, start, truth = make_patch(nb, seed, psf_per_band=psf_per_band, psf_noise=psf_noise)
    t_make = time.perf_counter() - t0
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit_patch(images, start, FitOptions())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    npix = res.npix_used
    iters = "+".join(str(s["niters"]) for s in res.stages)
    conv = "".join("y" if s["converged"] else "n" for s in res.stages)
    src_conv = np.mean([r.converged for r in res.sources])
    star = [i for i, t in enumerate(truth) if t[0] == "star"]
    ferr = np.median(np.abs([res.sources[i].fluxes / truth[i][3] - 1 for i in star]))
    gal = [i for i, t in enumerate(truth) if t[0] != "star"]
    gerr = np.median(np.abs([np.median(res.sources[i].fluxes / truth[i][3]) - 1 for i in gal]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"bands={nb:2d} wall={wall:7.2f} s/patch (cpu {cpu:.2f} s)  source-band fits/s={len(start) * nb / wall:8.1f}  "
          f"iters(stages)={iters} converged(stages)={conv} sources converged={src_conv:.2f}  "
          f"chi2/pix={res.chi2 / npix:.4f}  median|star flux err|={ferr:.4f}  median|galaxy flux err|={gerr:.4f}  "
          f"peak RSS={peak:.0f} MB (RSS before the fit {rss0:.0f} MB)  (render {t_make:.1f} s)", flush=True)
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bands", type=int, nargs="+", default=[40, 20])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--psf-per-band", action="store_true",
                    help="every band its own PSF FWHM (3.6-4.5 px) instead of four band groups")
    ap.add_argument("--psf-noise", type=float, default=0.0,
                    help="noise added to the fit's PSF stamps, as a fraction of their peak (imperfect ePSFs)")
    a = ap.parse_args()
    for nb in a.bands:
        run(nb, a.seed, a.psf_per_band, a.psf_noise)


if __name__ == "__main__":
    main()
