"""Photometric accuracy on GalSim tiles with known truth (issue 13 acceptance benchmark).

usage: python benchmarks/bench_accuracy.py [--out DIR] [--tiles a,b] [--reuse] [--mpi N]
       python benchmarks/bench_accuracy.py --evaluate-only TILE_DIR_OR_WORK_DIR [--no-epsf]

For each tile below (faint galaxies with a Moffat beta = 3 PSF, bright ones with Moffat beta = 2
and with a Kolmogorov PSF, all 3.6-4.4 px FWHM; and a good-seeing Kolmogorov tile of 2.3-2.8 px
FWHM): render it with ``make_sample`` (1024 x 1024 px, 8 bands; untruncated galaxy
profiles, stamps holding all but 0.1-0.2 % of every object's flux, 5 % blank TYPEs, ~0.3 px
catalogue position errors, perturbed shapes, saturated stars, a sky pedestal, bright galaxies
placed 8-16 px from bright stars), run the pipeline on it with the tile's own config in one
process (``python -m tract7dt_mpi.cli run config.yaml``; ``--mpi N`` runs it under
``mpirun -n N``) with diagnostic plots switched off, then evaluate (``accuracy_eval.py``: the
conventions and targets are in its docstring):

* per band and true kind (STAR, EXP, DEV, SERSIC): median fit/true flux at S/N > 20, robust pull
  sigma, calibrated-magnitude offset; per kind the converged and reliable fractions;
* one PASS/FAIL line per target of issue 13;
* an ePSF check: each (band, cell) ePSF against the true PSF at the cell centre (core, wing and
  normalisation errors, and the flux a PSF fit with that ePSF would give).

``--reuse`` keeps rendered tiles and finished runs (only evaluates again); ``--out`` is the folder
of the tiles (default /tmp/tract7dt_bench_accuracy). Render + run of one tile takes ~6-10 min on
a 2-core machine; the report is also written to ``{out}/report.txt``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_eval import evaluate_run  # noqa: E402

COMMON = dict(bands=8, size=1024, galaxy_truncation=False, stamp_flux_tol=1e-3, blank_type_frac=0.05,
              psf_fwhm_blue=4.4, psf_fwhm_red=3.6)
#: name -> make_sample keyword arguments (see tract7dt_mpi.sample.options)
TILES = {
    "faint_moffat3": dict(seed=101, psf_kind="moffat", psf_beta=3.0, galaxy_mag_min=17.0,
                          galaxy_mag_max=23.0, n_stars=150, n_blends=6, sky_pedestal=2.0),
    "bright_moffat2": dict(seed=202, psf_kind="moffat", psf_beta=2.0, galaxy_mag_min=14.5,
                           galaxy_mag_max=19.5, n_stars=120, n_blends=12, sky_pedestal=5.0, psf_g1=0.03),
    "bright_kolmogorov": dict(seed=303, psf_kind="kolmogorov", galaxy_mag_min=14.5, galaxy_mag_max=19.5,
                              n_stars=120, n_blends=12, sky_pedestal=3.0, psf_g2=0.03, stamp_flux_tol=2e-3),
    # good seeing: 2.3-2.8 px FWHM, about Nyquist-sampled, where sub-pixel registration matters most;
    # the bands registered up to ~0.5 px off one another, as bands resampled onto one grid are
    "sharp_kolmogorov": dict(seed=404, psf_kind="kolmogorov", psf_fwhm_blue=2.8, psf_fwhm_red=2.3,
                             galaxy_mag_min=16.0, galaxy_mag_max=21.5, n_stars=150, n_blends=8,
                             sky_pedestal=3.0, band_shift=0.25),
}
#: plot switches only (no effect on the numbers), so that a run spends its time fitting
NO_PLOTS = {"plotting": {"level": "none"}, "overlay": {"enabled": False},
            "crop": {"plot_pre_crop": False, "plot_post_crop": False},
            "epsf": {"save_growth_curve": False, "save_patch_background_diagnostics": False,
                     "save_star_local_background_diagnostics": False, "save_star_montage_max": 0},
            "patch_run": {"no_cutouts": True, "no_patch_overview": True}}


def render(tile_dir: Path, kw: dict, reuse: bool) -> None:
    from tract7dt_mpi.sample import make_sample
    if reuse and (tile_dir / "psf_truth.json").is_file():
        return
    t0 = time.perf_counter()
    make_sample(tile_dir, verbose=False, **{**COMMON, **kw})
    print(f"[{tile_dir.name}] rendered in {time.perf_counter() - t0:.0f} s", flush=True)


def bench_config(tile_dir: Path) -> Path:
    """The tile's config.yaml with the plot switches off (bench.yaml next to it)."""
    import yaml
    cfg = yaml.safe_load((tile_dir / "config.yaml").read_text()) or {}
    for sec, vals in NO_PLOTS.items():
        cfg.setdefault(sec, {}).update(vals)
    path = tile_dir / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(tile_dir: Path, ranks: int, reuse: bool) -> None:
    if reuse and (tile_dir / "work" / "output_catalog.csv").is_file():
        return
    cfg = bench_config(tile_dir)
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [sys.executable, "-m", "tract7dt_mpi.cli", "run", str(cfg)]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=4 * 3600)
    if r.returncode != 0:
        raise SystemExit(f"[{tile_dir.name}] run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    print(f"[{tile_dir.name}] pipeline run in {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "tract7dt_bench_accuracy"))
    ap.add_argument("--tiles", default=",".join(TILES), help=f"comma list out of {', '.join(TILES)}")
    ap.add_argument("--reuse", action="store_true", help="keep existing tiles and runs; only evaluate")
    ap.add_argument("--mpi", type=int, default=1, help="MPI ranks per run (default 1: one process)")
    ap.add_argument("--evaluate-only", metavar="PATH", help="evaluate one finished run and exit")
    ap.add_argument("--no-epsf", action="store_true", help="skip the ePSF check")
    a = ap.parse_args(argv)
    if a.evaluate_only:
        text, st = evaluate_run(a.evaluate_only, epsf=not a.no_epsf)
        print(text)
        return 0 if all(ok for _, ok, _ in st["verdicts"]) else 1
    names = [t.strip() for t in a.tiles.split(",") if t.strip()]
    unknown = [t for t in names if t not in TILES]
    if unknown:
        ap.error(f"unknown tile(s) {unknown}; choose from {list(TILES)}")
    out = Path(a.out)
    reports, all_ok = [], True
    for name in names:
        d = out / name
        render(d, TILES[name], a.reuse)
        run(d, a.mpi, a.reuse)
        text, st = evaluate_run(d, name=name, epsf=not a.no_epsf)
        print(text, flush=True)
        reports.append(text)
        all_ok &= all(ok for _, ok, _ in st["verdicts"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.txt").write_text("\n\n".join(reports) + "\n")
    print(f"overall: {'PASS' if all_ok else 'FAIL'} ({len(names)} tiles; report {out / 'report.txt'})")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
