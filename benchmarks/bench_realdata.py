"""Real survey images: the KiDS/VIKING WAVES field (9 bands, RICE-compressed, 2600 x 2600 px).

usage: python benchmarks/bench_realdata.py [--data DIR] [--out DIR] [--ranks 2] [--reuse]

Runs ``tract7dt-mpi run`` (under ``mpirun -n R --oversubscribe`` when R > 1) on the field with the
default configuration and no zero points (there is no GaiaXP table for it), then prints, per band:

- the ePSF cells that built and the range of their FWHM (px);
- for isolated stars (catalogue TYPE=STAR, fitted as a point source, S/N > 50 in the band, no other
  catalogue source within the largest background annulus): the median and robust scatter of the
  PSF flux over large-aperture fluxes (radius 6 and 10 FWHM of the band, the FWHM a Moffat fit to
  the cells' ePSFs; background from an annulus 2-8 px beyond the aperture, sigma-clipped median),
  which should agree to <~ 1 % in the median. The PSF flux is a total flux (the light beyond the
  ePSF stamp included); a PSF with broad wings has per cents of its light beyond 6 FWHM and in
  the annulus, which the aperture misses, so the ratio falls from 6 to 10 FWHM. Next to it, the
  convention-free check: ``model f``, the fraction of the PSF's total flux that the same aperture
  and annulus measure on the run's own PSF field at each star (rebuilt from the saved ePSF cells,
  with the bright-star wing beyond the stamp), and the median of PSF flux x f / aperture flux,
  which is ~1 when the PSF model is right, whatever the light beyond the aperture (``+-``: the
  median's statistical error, 1.2533 x robust sigma / sqrt(n); an S/N 50 star's 6-FWHM aperture
  flux is uncertain by several per cent);
- the stars' own growth curve, which needs no PSF model: for the isolated stars at S/N > 100, the
  median of aperture flux / PSF flux at radii 6, 10 and 15 FWHM and at GROWTH_MAX_R px, the
  background from a far annulus (GROWTH_BKG, sigma-clipped median). Light that keeps arriving beyond
  6 FWHM is the PSF's wing, which a 6-FWHM aperture (and its nearer annulus) misses and a total
  PSF flux counts; the ratio at GROWTH_MAX_R says how much light the PSF flux puts further out
  still (extrapolated from the bright stars' wing, stages.psf_wing); next to it, the PSF field's
  own curve with the same background (``model``), which the stars' curve should follow;
- the stellar-locus scatter (g-r against r-i, and r-Z against Z-Ks) from the fitted fluxes and from
  the aperture fluxes: the orthogonal robust scatter about a quadratic locus; the fitted fluxes
  should give a locus at least as tight.

The data folder is read by path and never copied. Exit status 0 when the run finished, whatever the
figures (they are printed, not asserted).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "kids-viking"))
MAD = 1.4826
#: the growth curve's largest radius (px), far background annulus (px) and isolation radius (px)
GROWTH_MAX_R = 40.0
GROWTH_BKG = (60.0, 80.0)
GROWTH_ISOLATION = 35.0


def write_config(data: str, out: str) -> str:
    """Config and image list (absolute paths) for the field in ``out``."""
    import yaml

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(data, "image_list.txt")) as fh:
        names = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    lst = os.path.join(out, "image_list.txt")
    with open(lst, "w") as fh:
        fh.write("\n".join(os.path.join(data, n) for n in names) + "\n")
    cfg = {"inputs": {"input_catalog": os.path.join(data, "input_catalog.csv"), "image_list_file": lst,
                      "gaiaxp_synphot_csv": None},
           "outputs": {"work_dir": os.path.join(out, "work")}}
    path = os.path.join(out, "config.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def run(config: str, ranks: int) -> float:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "tract7dt_mpi.cli", "run", config]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks), "--oversubscribe"] + cmd
    t = time.time()
    r = subprocess.run(cmd, env=env)
    if r.returncode not in (0, 4):
        raise SystemExit(f"run failed with exit code {r.returncode}")
    return time.time() - t


def moffat_fwhm(stamp, half: int = 10) -> float:
    """FWHM (px) of a circular Moffat, integrated over the pixels, fitted to the stamp's centre.
    A count of the pixels above half maximum is quantised (2.5, 3.0, 3.4 px ...) and makes a
    6-FWHM aperture 20 % too small for a sharp PSF."""
    from scipy.optimize import least_squares

    a = np.asarray(stamp, float)
    c = a.shape[0] // 2
    img = a[c - half:c + half + 1, c - half:c + half + 1]
    n, ss = img.shape[0], 5
    g = (np.arange(n * ss) + 0.5) / ss - 0.5
    X, Y = np.meshgrid(g, g)

    def model(p):
        f, x0, y0, al, be = p
        i = (be - 1) / (np.pi * al ** 2) * (1 + ((X - x0) ** 2 + (Y - y0) ** 2) / al ** 2) ** (-be)
        return f * i.reshape(n, ss, n, ss).mean(axis=(1, 3))

    p0 = [img.sum(), half, half, 2.0, 2.5]
    try:
        q = least_squares(lambda p: (model(p) - img).ravel(), p0,
                          bounds=([0, half - 2, half - 2, 0.3, 1.05], [np.inf, half + 2, half + 2, 30, 30])).x
    except ValueError:
        return float("nan")
    return float(2 * q[3] * np.sqrt(2 ** (1 / q[4]) - 1))


def epsf_fwhm(work: str) -> dict:
    """band -> (cells ok, cells, min, median, max FWHM) from the saved ePSFs (Moffat fits)."""
    out = {}
    for bdir in sorted(glob.glob(os.path.join(work, "EPSFs", "*"))):
        if not os.path.isdir(bdir):
            continue
        metas = sorted(glob.glob(os.path.join(bdir, "*", "meta.json")))
        f = []
        for m in metas:
            st = os.path.join(os.path.dirname(m), "epsf.npy")
            if os.path.exists(st):
                f.append(moffat_fwhm(np.load(st)))
        f = np.array(f)
        f = f[np.isfinite(f)]
        out[os.path.basename(bdir)] = (f.size, len(metas), *(np.percentile(f, [0, 50, 100]) if f.size else [np.nan] * 3))
    return out


def aperture_fluxes(img, wcs, ra, dec, radius, annulus=(2.0, 8.0)):
    """Large-aperture fluxes with a sigma-clipped annulus median background."""
    from astropy.stats import sigma_clipped_stats
    from photutils.aperture import CircularAnnulus, CircularAperture, aperture_photometry

    x, y = wcs.all_world2pix(ra, dec, 0)
    pos = np.column_stack([x, y])
    ap = CircularAperture(pos, r=radius)
    ann = CircularAnnulus(pos, r_in=radius + annulus[0], r_out=radius + annulus[1])
    raw = aperture_photometry(img, ap, method="exact")["aperture_sum"].data
    bkg = np.full(len(pos), np.nan)
    for k, m in enumerate(ann.to_mask(method="center")):
        v = m.get_values(img)
        v = v[np.isfinite(v)]
        if v.size > 20:
            bkg[k] = sigma_clipped_stats(v, sigma=3.0)[1]
    return raw - bkg * ap.area


def growth_curve(img, x, y, radii, bkg=GROWTH_BKG):
    """(n_radii, n_stars) background-subtracted aperture sums; background from the far annulus."""
    from astropy.stats import sigma_clipped_stats
    from photutils.aperture import CircularAnnulus, CircularAperture, aperture_photometry

    pos = np.column_stack([x, y])
    level = np.array([sigma_clipped_stats(m.get_values(img), sigma=3.0)[1]
                      for m in CircularAnnulus(pos, bkg[0], bkg[1]).to_mask(method="center")])
    return np.array([aperture_photometry(img, CircularAperture(pos, r), method="exact")["aperture_sum"].data
                     - level * np.pi * r * r for r in radii])


def psf_fields(work: str, bands):
    """band -> the run's PSF field (stages.psf_poly.PsfField, bright-star wing included), rebuilt
    from its saved ePSF cells as the run built it; {} when the run used no field."""
    from tract7dt_mpi import band_psfs
    from tract7dt_mpi.config.loader import config_from_dict, read_yaml
    from tract7dt_mpi.io.prepared import PreparedImages
    from tract7dt_mpi.stages.psf_poly import FIELD_KEY

    cfgs = sorted(glob.glob(os.path.join(work, "config_used_*.yaml")))
    if not cfgs:
        return {}
    d = read_yaml(cfgs[-1])         # a byte copy of the run's YAML: its relative paths are the tile's
    d.setdefault("outputs", {})["work_dir"] = os.path.abspath(work)
    cfg = config_from_dict(d, base_dir=os.path.dirname(os.path.abspath(work)))
    cells = sorted({tuple(int(t[1:]) for t in os.path.basename(d).split("_"))
                    for d in glob.glob(os.path.join(work, "EPSFs", "*", "r*_c*"))})
    with PreparedImages(os.path.join(work, "prepared.h5")) as p:
        stamps = band_psfs.stamps_from_disk(cfg, bands, cells, p)
    return {b: stamps[b][FIELD_KEY] for b in bands if FIELD_KEY in stamps.get(b, {})}


def model_image(field, x: float, y: float, half: int) -> np.ndarray:
    """The field's unit-total PSF at working-frame (x, y) on a (2 half + 1)^2 grid: its stamp, and
    beyond the stamp the bright-star wing power law (matched to the stamp's outermost ring)."""
    from tract7dt_mpi.stages.psf_poly import evaluate_field

    st, ef = evaluate_field(field, x, y)
    st = np.asarray(st, float) * ef
    n = 2 * half + 1
    yy, xx = np.indices((n, n)) - half
    r = np.hypot(xx, yy)
    out = np.zeros((n, n))
    wing = (field.wings or {}).get("bright_wing")
    s = st.shape[0] // 2
    if wing and half > s:
        edge = np.abs(xx[half - s:half + s + 1, half - s:half + s + 1]).clip(
            np.abs(yy[half - s:half + s + 1, half - s:half + s + 1])) == s
        model = wing["amp"] * np.maximum(r, 1.0) ** (-wing["slope"])
        k = st[edge].sum() / model[half - s:half + s + 1, half - s:half + s + 1][edge].sum()
        out = k * model
    h = min(s, half)
    out[half - h:half + h + 1, half - h:half + h + 1] = st[s - h:s + h + 1, s - h:s + h + 1]
    return out


def model_fractions(field, x: float, y: float, radii, background) -> np.ndarray:
    """Fraction of the PSF's total flux that each aperture of ``radii`` measures at (x, y) with
    its background taken as the benchmark takes it (``background(radius)``: the (r_in, r_out)
    of the annulus whose median is subtracted): the PSF flux times this is the aperture flux a
    correct PSF predicts, whatever the flux convention."""
    from photutils.aperture import CircularAnnulus, CircularAperture

    half = int(np.ceil(max(background(r)[1] for r in radii))) + 2
    img = model_image(field, x, y, half)
    out = []
    for r in radii:
        r_in, r_out = background(r)
        ap = CircularAperture((half, half), r).do_photometry(img, method="exact")[0][0]
        v = CircularAnnulus((half, half), r_in, r_out).to_mask(method="center").get_values(img)
        out.append(ap - np.median(v) * np.pi * r * r)
    return np.array(out)


def isolated(x, y, others_x, others_y, r):
    d2 = (others_x[None, :] - x[:, None]) ** 2 + (others_y[None, :] - y[:, None]) ** 2
    return (d2 < r * r).sum(axis=1) <= 1      # the star itself


def locus_scatter(c1, c2):
    """Robust orthogonal scatter of (c1, c2) about a quadratic c2(c1) (3-sigma clipped twice)."""
    ok = np.isfinite(c1) & np.isfinite(c2)
    c1, c2 = c1[ok], c2[ok]
    if c1.size < 8:
        return np.nan, int(c1.size)
    keep = np.ones(c1.size, bool)
    for _ in range(3):
        p = np.polyfit(c1[keep], c2[keep], 2)
        res = c2 - np.polyval(p, c1)
        slope = np.polyval(np.polyder(p), c1)
        orth = res / np.sqrt(1.0 + slope ** 2)
        s = MAD * np.median(np.abs(orth[keep] - np.median(orth[keep])))
        keep = np.abs(orth) < 3.0 * max(s, 1e-4)
    return float(s), int(c1.size)


def evaluate(work: str, data: str):
    import pandas as pd
    from astropy.io import fits
    from astropy.wcs import WCS

    from tract7dt_mpi.io.prepared import PreparedImages

    cat = pd.read_csv(os.path.join(work, "output_catalog.csv"), dtype={"ID": str})
    with PreparedImages(os.path.join(work, "prepared.h5")) as p:
        bands = list(p.bands)
        info = {b: p.band_info(b) for b in bands}
    fw = epsf_fwhm(work)
    typ = cat["TYPE"].fillna("").astype(str).str.upper() if "TYPE" in cat else pd.Series([""] * len(cat))
    stype = cat["stype_fit"].fillna("").astype(str)
    ok = cat["RA_fit"].notna() & (stype == "star") & (typ == "STAR")
    ra_all = cat["RA_fit"].fillna(cat["RA"]).to_numpy(float)
    dec_all = cat["DEC_fit"].fillna(cat["DEC"]).to_numpy(float)
    fields = psf_fields(work, bands)
    wx = cat["x_pix_white_fit"].fillna(cat["x_pix_white"]).to_numpy(float)
    wy = cat["y_pix_white_fit"].fillna(cat["y_pix_white"]).to_numpy(float)
    print("\nband  cells_ok  FWHM min/med/max (px)   n_iso  PSF/aper(6 FWHM) median  sd   PSF/aper(10 FWHM) median  sd"
          "   model f(6)  f(10)   PSF*f/aper(6)         (10)")
    ratios, fits_flux, aper_flux = {}, {}, {}
    growth = []
    for b in bands:
        path = info[b].path
        with fits.open(path) as hl:
            hdu = next(h for h in hl if getattr(h, "data", None) is not None and np.ndim(h.data) == 2)
            img = np.asarray(hdu.data, float)
            wcs = WCS(hdu.header)
        n_ok, n_cells, fmin, fmed, fmax = fw.get(b, (0, 0, np.nan, np.nan, np.nan))
        fwhm = fmed if np.isfinite(fmed) else 4.5
        radii = (6.0 * fwhm, 10.0 * fwhm)
        big = radii[-1]
        xs, ys = wcs.all_world2pix(ra_all, dec_all, 0)
        flux = cat[f"FLUX_{b}_fit"].to_numpy(float)
        err = cat[f"FLUXERR_STAT_{b}_fit"].to_numpy(float) if f"FLUXERR_STAT_{b}_fit" in cat else \
            cat[f"FLUXERR_{b}_fit"].to_numpy(float)
        sel = ok.to_numpy() & (flux / err > 50) & np.isfinite(xs) & np.isfinite(ys)
        sel &= (xs > big + 10) & (xs < img.shape[1] - big - 10) & (ys > big + 10) & (ys < img.shape[0] - big - 10)
        idx = np.flatnonzero(sel)
        idx = idx[isolated(xs[idx], ys[idx], xs, ys, big + 8.0)]
        cols = []
        frac = np.array([model_fractions(fields[b], wx[i], wy[i], radii, lambda r: (r + 2.0, r + 8.0))
                         for i in idx]).T if b in fields and idx.size else np.full((2, idx.size), np.nan)
        fcols = []
        for k, radius in enumerate(radii):
            ap = aperture_fluxes(img, wcs, ra_all[idx], dec_all[idx], radius) * info[b].scale
            r = flux[idx] / ap
            good = np.isfinite(r) & (ap > 0)
            med = np.median(r[good]) if good.any() else np.nan
            sd = MAD * np.median(np.abs(r[good] - med)) if good.any() else np.nan
            cols.append((med, sd))
            rf = (r * frac[k])[good & np.isfinite(frac[k])]
            fcols.append((np.median(frac[k]) if frac[k].size else np.nan,
                          np.median(rf) if rf.size else np.nan,
                          1.2533 * MAD * np.median(np.abs(rf - np.median(rf))) / np.sqrt(rf.size)
                          if rf.size >= 3 else np.nan))
            if k == 0:
                ratios[b] = r[good]
                allap = np.full(len(cat), np.nan)
                allap[idx] = ap
                aper_flux[b], fits_flux[b] = allap, np.where(np.isin(np.arange(len(cat)), idx), flux, np.nan)
        print(f"{b:5s} {n_ok:3d}/{n_cells:<3d}   {fmin:5.2f} {fmed:5.2f} {fmax:5.2f}        "
              f"{idx.size:5d}   {cols[0][0]:8.4f}  {cols[0][1]:7.4f}          {cols[1][0]:8.4f}  {cols[1][1]:7.4f}"
              f"     {fcols[0][0]:7.4f} {fcols[1][0]:7.4f}     {fcols[0][1]:7.4f}+-{fcols[0][2]:.4f}  "
              f"{fcols[1][1]:7.4f}+-{fcols[1][2]:.4f}")
        edge = GROWTH_BKG[1] + 2
        g = ok.to_numpy() & (flux / err > 100) & np.isfinite(xs) & np.isfinite(ys) & (xs > edge) \
            & (xs < img.shape[1] - edge) & (ys > edge) & (ys < img.shape[0] - edge)
        gi = np.flatnonzero(g)
        gi = gi[isolated(xs[gi], ys[gi], xs, ys, GROWTH_ISOLATION)]
        g_radii = (6.0 * fwhm, 10.0 * fwhm, 15.0 * fwhm, GROWTH_MAX_R)
        if gi.size >= 5:
            ap = growth_curve(img, xs[gi], ys[gi], g_radii) * info[b].scale
            gm = np.array([model_fractions(fields[b], wx[i], wy[i], g_radii, lambda r: GROWTH_BKG)
                           for i in gi]).T if b in fields else np.full((len(g_radii), gi.size), np.nan)
            growth.append((b, gi.size, np.median(ap / flux[gi][None, :], axis=1), np.median(gm, axis=1)))

    print(f"\ngrowth curve of the isolated stars at S/N > 100 (median aperture / PSF flux; background "
          f"{GROWTH_BKG[0]:g}-{GROWTH_BKG[1]:g} px; no catalogue source within {GROWTH_ISOLATION:g} px)")
    print(f"(model: the PSF field's own curve with the same background; the stars' curve over it should be ~1)")
    print(f"band  n_stars   6 FWHM   10 FWHM   15 FWHM   {GROWTH_MAX_R:g} px    model: 6 FWHM   10 FWHM   15 FWHM   {GROWTH_MAX_R:g} px")
    for b, n, v, m in growth:
        print(f"{b:5s} {n:6d}   " + "   ".join(f"{x:7.4f}" for x in v) + "           "
              + "   ".join(f"{x:7.4f}" for x in m))

    def col(fl, a, c):
        with np.errstate(all="ignore"):
            return -2.5 * np.log10(fl[a] / fl[c])

    print("\nstellar locus (orthogonal robust scatter, mag; stars isolated and S/N > 50 in every band used)")
    for (a, bb, c, d) in (("g", "r", "r", "i"), ("r", "Z", "Z", "Ks")):
        if not all(k in bands for k in (a, bb, c, d)):
            continue
        for name, fl in (("fitted", fits_flux), ("aperture", aper_flux)):
            s, n = locus_scatter(col(fl, c, d), col(fl, a, bb))
            print(f"  {a}-{bb} vs {c}-{d}  {name:8s}: {s:.4f} mag from {n} stars")
    return ratios


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default="/tmp/bench_realdata")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="evaluate an existing run in --out")
    a = ap.parse_args(argv)
    if not os.path.isdir(a.data):
        raise SystemExit(f"data folder not found: {a.data}")
    work = os.path.join(a.out, "work")
    if not (a.reuse and os.path.exists(os.path.join(work, "output_catalog.csv"))):
        cfg = write_config(a.data, a.out)
        t0, c0 = time.time(), os.times()
        wall = run(cfg, a.ranks)
        c1 = os.times()
        print(f"run: {wall:.0f} s wall, {c1.children_user - c0.children_user + c1.children_system - c0.children_system:.0f} CPU-s, {a.ranks} ranks")
        with open(os.path.join(work, "run.log"), errors="replace") as fh:
            for ln in fh:
                if "Finished" in ln:
                    print("  " + ln.strip().split("| ")[-1])
    evaluate(work, a.data)


if __name__ == "__main__":
    main()
