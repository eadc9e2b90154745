"""Cost and accuracy of the model choice (``patch_run.model_selection``) on a GalSim tile.

usage: python benchmarks/bench_model_select.py [--out DIR] [--bands 3] [--size 768] [--reuse]

Renders one tile with ``make_sample`` (``TILE``: every TYPE withheld) and runs the
pipeline (``python -m tract7dt_mpi.cli run``, one process, plots off as in bench_accuracy.py,
``model_selection: untyped``) on three catalogues of the same objects:

* ``withheld``: every TYPE blank (all rows get a model choice);
* ``known``: the true TYPE on every row (no choice: the reference cost and accuracy);
* ``ten``: the true TYPE with 10 % of the rows blanked (the issue's cost target: within 2x of
  ``known``).

Printed: the fraction of S/N > 50 stars chosen PSF and of S/N > 50 galaxies chosen as a galaxy
(S/N of the truth, bands in quadrature, unsaturated objects), EXP/DEV/SERSIC chosen as their own
kind, the star and galaxy median fit/true flux (S/N > 50, bands pooled) and the fraction of rows
tagged model_close for every run, and the wall, CPU and patch-fit (sum of meta.json ``fit_sec``)
time ratios withheld/known and ten/known.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_eval import load_matched  # noqa: E402
from bench_accuracy import NO_PLOTS  # noqa: E402

#: make_sample options: bench_accuracy's untruncated galaxies and complete stamps (so the true
#: flux is the profile's total), brighter galaxies for more S/N > 50 ones, every TYPE withheld
TILE = dict(galaxy_truncation=False, stamp_flux_tol=1e-3, psf_fwhm_blue=4.4, psf_fwhm_red=3.6,
            psf_kind="moffat", psf_beta=3.0, galaxy_mag_min=14.5, galaxy_mag_max=19.5, blank_type_frac=1.0)
SNR = 50.0
GALAXIES = ("EXP", "DEV", "SERSIC")
KIND = {"STAR": "star", "EXP": "exp", "DEV": "dev", "SERSIC": "sersic"}


def render(tile: Path, bands: int, size: int, reuse: bool) -> None:
    from tract7dt_mpi.sample import make_sample
    if reuse and (tile / "truth.csv").is_file():
        return
    make_sample(tile, bands=bands, size=size, seed=11, verbose=False, **TILE)


def catalogues(tile: Path) -> dict:
    """name -> input catalogue path (withheld, known, ten)."""
    cat = pd.read_csv(tile / "input_catalog.csv", dtype={"ID": str}, keep_default_na=False)
    truth = pd.read_csv(tile / "truth.csv", dtype={"ID": str})
    known = cat.copy()
    known["TYPE"] = known["ID"].map(dict(zip(truth["ID"], truth["type"]))).fillna("")
    ten = known.copy()
    ten.loc[np.random.default_rng(5).uniform(size=len(ten)) < 0.10, "TYPE"] = ""
    out = {}
    for name, df in (("withheld", cat), ("known", known), ("ten", ten)):
        p = tile / f"catalog_{name}.csv"
        df.to_csv(p, index=False)
        out[name] = p
    return out


def run(tile: Path, name: str, catalog: Path, reuse: bool) -> tuple[float, float]:
    """(wall s, CPU s) of one pipeline run into ``work_{name}``."""
    import yaml
    work = tile / f"work_{name}"
    if reuse and (work / "output_catalog.csv").is_file() and (work / "bench_time.txt").is_file():
        w, c = (work / "bench_time.txt").read_text().split()
        return float(w), float(c)
    cfg = yaml.safe_load((tile / "config.yaml").read_text()) or {}
    for sec, vals in NO_PLOTS.items():
        cfg.setdefault(sec, {}).update(vals)
    cfg["inputs"]["input_catalog"] = catalog.name
    cfg["outputs"]["work_dir"] = work.name
    cfg["patch_run"]["model_selection"] = "untyped"
    path = tile / f"bench_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tract7dt_mpi.cli", "run", str(path)], env=env,
                       capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"[{name}] run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    (work / "bench_time.txt").write_text(f"{wall} {cpu}\n")
    return wall, cpu


def fit_seconds(tile: Path, name: str) -> float:
    """Sum of the patches' fit times (meta.json ``fit_sec``): the fitting stage alone."""
    import json
    return float(sum(json.loads(p.read_text()).get("fit_sec", 0.0)
                     for p in (tile / f"work_{name}" / "outputs").glob("*/meta.json")))


def stats(tile: Path, name: str) -> dict:
    m, bands, _ = load_matched(tile, tile / f"work_{name}")
    snr = np.sqrt(sum(m[f"t_snr_{b}"].to_numpy(float) ** 2 for b in bands))
    sat = m["t_saturated"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    hi = (snr > SNR) & ~sat & m["stype_fit"].notna().to_numpy()
    t, st = m["t_type"].to_numpy(), m["stype_fit"].fillna("").astype(str).to_numpy()
    star, gal = hi & (t == "STAR"), hi & np.isin(t, GALAXIES)
    out = {"n_star": int(star.sum()), "n_gal": int(gal.sum()),
           "star_psf": float((st[star] == "star").mean()) if star.any() else np.nan,
           "gal_gal": float((st[gal] != "star").mean()) if gal.any() else np.nan}
    for k in GALAXIES:
        sel = hi & (t == k)
        out[f"{k}_own"] = (float((st[sel] == KIND[k]).mean()) if sel.any() else np.nan, int(sel.sum()))
    for label, sel in (("star", star), ("gal", gal)):
        r = np.concatenate([m[f"FLUX_{b}_fit"].to_numpy(float)[sel] / m[f"t_flux_{b}"].to_numpy(float)[sel]
                            for b in bands])
        r = r[np.isfinite(r)]
        out[f"{label}_median"] = float(np.median(r)) if len(r) else np.nan
    if "flag_model_close" in m:
        out["close"] = float(m["flag_model_close"].astype(str).str.lower().isin(["true", "1"]).mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "tract7dt_bench_model_select"))
    ap.add_argument("--bands", type=int, default=3)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--reuse", action="store_true", help="keep the tile and finished runs")
    a = ap.parse_args(argv)
    tile = Path(a.out)
    t0 = time.perf_counter()
    render(tile, a.bands, a.size, a.reuse)
    print(f"tile {tile} ({a.bands} bands, {a.size} px) ready in {time.perf_counter() - t0:.0f} s", flush=True)
    times, res = {}, {}
    for name, cat in catalogues(tile).items():
        times[name] = run(tile, name, cat, a.reuse)
        res[name] = stats(tile, name)
        res[name]["fit_sec"] = fit_seconds(tile, name)
        print(f"[{name}] wall {times[name][0]:.1f} s, CPU {times[name][1]:.1f} s, patch fits "
              f"{res[name]['fit_sec']:.1f} s", flush=True)
    print(f"{'run':9s} {'nstar':>5s} {'star->PSF':>9s} {'ngal':>5s} {'gal->gal':>8s} {'EXP->EXP':>8s} "
          f"{'DEV->DEV':>8s} {'SER->SER':>8s} {'star f/t':>8s} {'gal f/t':>8s} {'close':>6s}")
    for name, s in res.items():
        own = " ".join(f"{s[f'{k}_own'][0]:8.3f}" for k in GALAXIES)
        print(f"{name:9s} {s['n_star']:5d} {s['star_psf']:9.3f} {s['n_gal']:5d} {s['gal_gal']:8.3f} {own} "
              f"{s['star_median']:8.4f} {s['gal_median']:8.4f} {s.get('close', np.nan):6.3f}")
    kw, kc = times["known"]
    for name in ("withheld", "ten"):
        w, c = times[name]
        print(f"time {name}/known: wall {w / kw:.2f}x, CPU {c / kc:.2f}x, patch fits "
              f"{res[name]['fit_sec'] / res['known']['fit_sec']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
