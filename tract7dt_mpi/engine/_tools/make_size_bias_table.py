"""Generate ``engine/_size_bias_table.py``: the total-flux bias of tapered profiles by size.

Run once (``python -m tract7dt_mpi.engine._tools.make_size_bias_table``, needs GalSim); the output
is committed.

Why. The engine's exp, dev and Sersic mixtures are tapered at 4-8 re (as the Tractor's); the light
of a real (untruncated) galaxy beyond the taper is added back by ``total_flux_factor``, which
assumes the fit leaves it out. It does not when the galaxy is barely resolved: convolved with the
PSF, the tail's light sits under the model, and the fit takes it in (re grows a little, the flux
with it), so the factor counts it twice. Fitted to noise-free GalSim renderings of untruncated
Sersic profiles, total fluxes come out 1.2 % (exp) and 1.8 % (dev) high at re = FWHM/4, 0.3 % at
re = FWHM; the bias is the same within 0.2 % for a Moffat beta = 3 and a Kolmogorov PSF.

A free Sersic index takes part of that tail too: fitted to untruncated profiles its n comes out
high (1.5 -> 1.77, 3.5 -> 3.98 at re = FWHM / 2; +0.05-0.2 at re = 1.25 FWHM) and its total
flux 1-3 % high, so the Sersic bias is tabulated against the fitted index as well.

Method. For each profile (exp, dev; Sersic at each index of N_TRUE) and size re / FWHM on a grid:
a circular GalSim Sersic (untruncated, flux 1) convolved with a Moffat beta = 3, FWHM = 4 px PSF,
drawn on the pixel grid; the engine fits it (flux, position, shape and index free; sky held at 0)
with the PSF's 55-px stamp; the fitted total (flux x total_flux_factor at the fitted index / the
PSF's light in the stamp) over 1 is the bias, tabulated against the *fitted* size re_fit
sqrt(ab_fit) / FWHM (the stamp's FWHM as the fit stage measures it) and index, which is what a
catalogue row has. The Sersic table is regular in
(fitted n, fitted size): each size's row is interpolated along its fitted indices (N_SER), at the
row's median fitted size.
"""
from __future__ import annotations

import os

import numpy as np

FWHM = 4.0
#: sizes re / FWHM rendered
Q = np.array([0.15, 0.25, 0.4, 0.6, 0.8, 1.0, 1.4, 2.0, 3.0, 4.5])
#: Sersic indices rendered, and the fitted indices of the Sersic table
N_TRUE = np.array([0.4, 0.55, 0.7, 0.85, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0])
N_SER = np.array([0.4, 0.55, 0.7, 0.85, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.3])


def _bias(kind: str, n: float, q: float, psf, stamp, inside) -> tuple[float, float, float]:
    """(fitted size re_fit sqrt(ab_fit) / the stamp's FWHM, fitted total / true total, fitted
    index); the FWHM as the fit stage measures it on its PSF stamp (engine.psf.stamp_fwhm: the
    pixel-convolved FWHM, 4.12 px for this PSF), so that the table is read on the same scale."""
    import galsim

    from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch
    from tract7dt_mpi.engine.profiles import total_flux_factor
    from tract7dt_mpi.engine.psf import stamp_fwhm

    re = q * FWHM
    size = int(min(max(121, 24 * re + 1), 401)) | 1
    img = galsim.Convolve(galsim.Sersic(n=n, half_light_radius=re, flux=1.0), psf).drawImage(
        nx=size, ny=size, scale=1.0, offset=(0.2, -0.3)).array
    c = (size - 1) / 2.0
    im = ImageData("r", img * 1e6, np.ones((size, size)), PixelizedPSF(stamp))
    src = Source(kind, c + 0.2, c - 0.3, [0.9e6], re=re * 1.1, ab=0.95, phi_deg=10.0,
                 sersic_n=n if kind == "sersic" else None)
    r = fit_patch([im], [src], FitOptions(fit_sky=False, n_opt_iters=80)).sources[0]
    n_fit = float(r.sersic_n) if kind == "sersic" else n
    if r.shape_fallback:        # the index ran to its bound: not a free fit (left out)
        n_fit = np.nan
    total = r.fluxes[0] * total_flux_factor(kind, n_fit) / inside / 1e6
    return float(r.re * np.sqrt(r.ab) / stamp_fwhm(stamp)), float(total), n_fit


def _psf():
    """(GalSim PSF, its unit-sum 55-px stamp, the PSF's light in that stamp)."""
    import galsim
    psf = galsim.Moffat(beta=3.0, fwhm=FWHM)
    stamp = psf.drawImage(nx=55, ny=55, scale=1.0).array
    inside = float(stamp.sum())
    return psf, stamp / inside, inside


def _sersic_rows() -> tuple[np.ndarray, np.ndarray]:
    """(Q_SER, BIAS_SER (len Q, len N_SER)): per rendered size, the bias interpolated along the
    fitted index (monotonic in the true one) onto N_SER, clamped at the ends."""
    from concurrent.futures import ProcessPoolExecutor
    jobs = [(q, n) for q in Q for n in N_TRUE]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
        got = list(ex.map(_sersic_job, jobs))
    qs, rows = [], []
    for i, q in enumerate(Q):
        g = got[i * len(N_TRUE):(i + 1) * len(N_TRUE)]
        size, bias, n_fit = (np.array(v) for v in zip(*g))
        ok = np.isfinite(n_fit)
        size, bias, n_fit = size[ok], bias[ok], n_fit[ok]
        order = np.argsort(n_fit)
        qs.append(float(np.median(size)))
        rows.append(np.interp(N_SER, n_fit[order], bias[order]))
        print(f"sersic q={q}: " + " ".join(f"{a:.2f}->{c:.2f}:{b:.4f}" for a, b, c in zip(N_TRUE[ok], bias, n_fit)),
              flush=True)
    return np.array(qs), np.array(rows)


def _sersic_job(job):
    q, n = job
    return _bias("sersic", float(n), float(q), *_psf())


def main():
    psf, stamp, inside = _psf()
    rows = {}
    for kind, n in (("exp", 1.0), ("dev", 4.0)):
        got = [_bias(kind, n, q, psf, stamp, inside)[:2] for q in Q]
        rows[kind] = got
        print(kind, " ".join(f"{a:.3f}:{b:.4f}" for a, b in got), flush=True)
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_size_bias_table.py")

    def arr(v):
        return "np.array([" + ", ".join(f"{x:.5f}" for x in v) + "])"

    lines = ['"""Generated by engine/_tools/make_size_bias_table.py; do not edit.', "",
             "Fitted total flux / true total of untruncated exp and dev profiles (BIAS_*) against",
             "the fitted size re_fit sqrt(ab_fit) / FWHM (Q_*); for Sersic profiles BIAS_SER[i, j] at",
             'fitted size Q_SER[i] and fitted index N_SER[j]."""', "import numpy as np", ""]
    for kind in ("exp", "dev"):
        q, b = zip(*rows[kind])
        lines += [f"Q_{kind.upper()} = {arr(q)}", f"BIAS_{kind.upper()} = {arr(b)}", ""]
    q_ser, b_ser = _sersic_rows()
    lines += [f"Q_SER = {arr(q_ser)}", f"N_SER = {arr(N_SER)}",
              "BIAS_SER = np.array([\n" + ",\n".join("    " + arr(r)[9:-1] for r in b_ser) + "])", ""]
    with open(out, "w") as fh:
        fh.write("\n".join(lines))
    print("wrote", out)


if __name__ == "__main__":
    main()
