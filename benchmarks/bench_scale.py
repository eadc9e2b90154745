"""Full-size 7DT tile end to end under ``mpirun``: stage times, memory per rank, I/O, sources/s.

usage: python benchmarks/bench_scale.py [--tile DIR] [--out DIR] [--ranks 2] [--quick]
                                        [--box-frac F] [--iters N] [--light] [--no-plots]
                                        [--no-8band] [--reuse] [--realistic]

The tile (default ``/tmp/h2_full40``) is a full-size (9576 x 6388 px) 40-band synthetic tile from
``make_sample(dir, bands=40, full_size=True)``; it is generated when missing (~12 min, 9.2 GB).
Two runs are made with the same options: all 40 bands, then the first 8 bands of the same image
list (same image size), so the rank-0 peak memory of 8 and 40 bands can be compared (issue 7:
ratio < 1.5, because rank 0 streams one band at a time).

Printed per run (from the results store's ``/run`` attributes, gathered from every rank at the
end of the run): wall time per stage, whole-process wall, peak RSS of rank 0 and of the largest
worker, bytes read/written per rank (``/proc/self/io``: storage-level bytes, and bytes passed to
read/write calls), and sources fitted per second.  A JSON summary is written to OUT/summary.json.

``--realistic`` uses a tile at survey density instead (default ``/tmp/h2_full40_real``):
REALISTIC_SOURCES catalogued sources (a third of them stars, galaxies to mag 23, as on the
accuracy benchmark's faint tile, ~350 per 1024 x 1024 px), generated when missing (about an
hour and 9 GB); expect hours for the run on 2 cores (start it in the background, niced).
Besides the stage table every run prints the CPU seconds of each task phase and of the serial
part, and the CPU seconds per fitted source and band.

``--quick`` keeps the full-size images (so rank 0 still loads 40 full bands) but fits only the
sources inside a central box of ``--box-frac`` of the tile's width and height (the catalog and
GaiaXP table are filtered, so only the ePSF cells and patches there are active) with a few
optimizer iterations and no diagnostic plots: minutes instead of hours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import LIGHT  # noqa: E402

DEFAULT_TILE = "/tmp/h2_full40"
REALISTIC_TILE = "/tmp/h2_full40_real"
#: catalogued sources of the --realistic tile and its scene (make_sample options)
REALISTIC_SOURCES = 20000
REALISTIC_SCENE = dict(n_stars=7000, galaxy_mag_min=17.0, galaxy_mag_max=23.0, n_blends=200)


def ensure_tile(tile: str, realistic: bool = False) -> None:
    if os.path.exists(os.path.join(tile, "config.yaml")):
        return
    from tract7dt_mpi.sample import make_sample
    if realistic:
        print(f"generating the survey-density 40-band tile in {tile} ({REALISTIC_SOURCES} sources, "
              "~1 h, 9 GB)...", flush=True)
        make_sample(tile, bands=40, full_size=True, n_sources=REALISTIC_SOURCES, verbose=True,
                    **REALISTIC_SCENE)
        return
    print(f"generating the full-size 40-band tile in {tile} (~12 min, 9.2 GB)...", flush=True)
    make_sample(tile, bands=40, full_size=True, verbose=True)


def _image_paths(tile: str) -> list[str]:
    with open(os.path.join(tile, "image_list.txt"), encoding="utf-8") as fh:
        lines = [x.strip() for x in fh if x.strip() and not x.lstrip().startswith("#")]
    return [p if os.path.isabs(p) else os.path.join(tile, p) for p in lines]


def _filter_tables(tile: str, dest: str, frac: float | None, bands: list[str]) -> tuple[str, str]:
    """Catalog and GaiaXP copies in ``dest``: columns of bands not in ``bands`` dropped (the
    catalog's bands must match the image list) and, with ``frac``, only rows inside the central
    ``frac`` x ``frac`` box of the tile."""
    import numpy as np
    import pandas as pd
    from astropy.io import fits
    from astropy.wcs import WCS
    img = _image_paths(tile)[0]
    hdr = fits.getheader(img)
    w, h = int(hdr["NAXIS1"]), int(hdr["NAXIS2"])
    wcs = WCS(hdr)
    all_bands = [str(fits.getheader(p).get("FILTER", "")).strip().lower() for p in _image_paths(tile)]
    drop = {b for b in all_bands if b and b not in {x.lower() for x in bands}}
    out = []
    for name in ("input_catalog.csv", "gaiaxp_synphot.csv"):
        df = pd.read_csv(os.path.join(tile, name), dtype=str, keep_default_na=False)
        df = df[[c for c in df.columns if c.lower().rsplit("_", 1)[-1] not in drop]]
        if frac:
            ra_col = next(c for c in df.columns if c.lower() in ("ra", "ra_icrs"))
            dec_col = next(c for c in df.columns if c.lower() in ("dec", "de_icrs", "dec_icrs"))
            x, y = wcs.all_world2pix(pd.to_numeric(df[ra_col]), pd.to_numeric(df[dec_col]), 0)
            x0, x1 = w * (0.5 - frac / 2), w * (0.5 + frac / 2)
            y0, y1 = h * (0.5 - frac / 2), h * (0.5 + frac / 2)
            df = df[np.asarray((x >= x0) & (x < x1) & (y >= y0) & (y < y1))]
        path = os.path.join(dest, name)
        df.to_csv(path, index=False)
        out.append(path)
    return out[0], out[1]


def _no_plots(light: dict) -> dict:
    """The plot switches of LIGHT only (production iteration counts kept)."""
    keep = {"overlay": ("enabled",), "plotting": ("level",), "patch_run": ("no_cutouts", "no_patch_overview")}
    out = {sec: {k: v for k, v in vals.items() if k in keep.get(sec, ()) or k.startswith("save_")}
           for sec, vals in light.items()}
    return {sec: vals for sec, vals in out.items() if vals}


def make_config(tile: str, dest: str, n_bands: int | None, quick: bool, frac: float,
                iters: int | None, light: bool, no_plots: bool = False) -> str:
    """A config for the tile in ``dest`` (bands: the first ``n_bands`` of the image list)."""
    import yaml
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(tile, "config.yaml"), encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    imgs = _image_paths(tile)[:n_bands] if n_bands else _image_paths(tile)
    with open(os.path.join(dest, "image_list.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(imgs) + "\n")
    from astropy.io import fits
    bands = [str(fits.getheader(p).get("FILTER", "")).strip() for p in imgs]
    inp = cfg.setdefault("inputs", {})
    inp["image_list_file"] = os.path.join(dest, "image_list.txt")
    inp["input_catalog"], inp["gaiaxp_synphot_csv"] = _filter_tables(
        tile, dest, frac if quick else None, bands)
    over = LIGHT if (quick or light) else (_no_plots(LIGHT) if no_plots else {})
    for sec, vals in over.items():
        cfg.setdefault(sec, {}).update(vals)
    if quick or light or no_plots:
        cfg.setdefault("crop", {}).update({"plot_pre_crop": False, "plot_post_crop": False})
    if iters is not None:
        cfg.setdefault("patch_run", {})["n_opt_iters"] = int(iters)
    cfg.setdefault("outputs", {})["work_dir"] = os.path.join(dest, "work")
    cfg.setdefault("mpi", {})["heartbeat_sec"] = 60
    path = os.path.join(dest, "config.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def run(cfg: str, ranks: int, log_path: str, timeout: float) -> tuple[int, float]:
    env = dict(os.environ, MPLBACKEND="Agg", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tract7dt_mpi.cli", "run", cfg]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    return rc, time.perf_counter() - t0


def summarize(work: str, wall: float) -> dict:
    import h5py
    import numpy as np
    with h5py.File(os.path.join(work, "results.h5"), "r") as f:
        run_attrs = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v)
                     for k, v in f["run"].attrs.items()}
        kinds = [k.decode() for k in f["plan/kind"][...]]
        status = f["tasks/status"][...]
        n_rows = f["plan/n_rows"][...]
        bands = f.attrs.get("bands", [])
        bands = json.loads(bands) if isinstance(bands, str) else [str(b) for b in bands]
    patch = np.array([k == "patch" for k in kinds])
    usage = run_attrs.get("rank_usage") or []
    stages = run_attrs.get("stage_seconds") or {}
    n_src = int(n_rows[patch & (status == 2)].sum())
    fit_s = float(stages.get("run_patches", 0.0))
    from tract7dt_mpi.parallel.scaling import load_measurements
    meas = load_measurements(os.path.join(work, "results.h5"))
    return {"n_bands": len(bands),
            "phase_cpu": {k: float(sum(v)) for k, v in meas["phases"].items()},
            "serial_s": float(meas["serial_seconds"]),
            "wall_s": wall, "pipeline_s": float(run_attrs.get("pipeline_seconds", 0.0)),
            "stages_s": stages, "n_epsf": sum(k == "epsf" for k in kinds), "n_patches": int(patch.sum()),
            "sources_fitted": n_src, "sources_per_s_fit": n_src / fit_s if fit_s else float("nan"),
            "sources_per_s_total": n_src / wall if wall else float("nan"),
            "rss_rank0_mib": usage[0]["rss_mb"] if usage else float("nan"),
            "rss_worker_max_mib": max((u["rss_mb"] for u in usage[1:]), default=float("nan")),
            "usage": usage, "master_works": run_attrs.get("master_works")}


def report(name: str, s: dict) -> None:
    gib = 2.0 ** 30
    print(f"\n== {name}: {s['n_epsf']} ePSF cells, {s['n_patches']} patches, "
          f"{s['sources_fitted']} sources fitted; rank 0 runs tasks: {bool(s['master_works'])}")
    print(f"{'stage':<22}{'seconds':>10}")
    for k, v in s["stages_s"].items():
        print(f"{k:<22}{v:>10.1f}")
    print(f"{'pipeline':<22}{s['pipeline_s']:>10.1f}\n{'process wall':<22}{s['wall_s']:>10.1f}")
    print(f"peak RSS: rank 0 {s['rss_rank0_mib'] / 1024:.2f} GiB (limit 6), largest worker "
          f"{s['rss_worker_max_mib'] / 1024:.2f} GiB (limit 3)")
    for i, u in enumerate(s["usage"]):
        print(f"  rank {i}: read {u['read_bytes'] / gib:.2f} GiB from storage "
              f"({u['rchar'] / gib:.2f} GiB via read calls), wrote {u['write_bytes'] / gib:.2f} GiB, "
              f"CPU {u['cpu_s']:.0f} s, start-up {u.get('startup_s', float('nan')):.1f} s")
    print(f"sources/s: {s['sources_per_s_fit']:.2f} in the patch phase, "
          f"{s['sources_per_s_total']:.3f} over the whole run")
    cpu = sum(float(u.get("cpu_s", 0.0)) for u in s["usage"])
    per = cpu / (s["sources_fitted"] * s["n_bands"]) if s["sources_fitted"] and s["n_bands"] else float("nan")
    print(f"CPU: {cpu:.0f} s over all ranks = {per:.3f} CPU-s per fitted source and band "
          f"({s['sources_fitted']} sources x {s['n_bands']} bands)")
    if s.get("phase_cpu"):
        print("task CPU-s per phase (contention undone): " + ", ".join(
            f"{k} {v:.0f}" for k, v in s["phase_cpu"].items()) + f"; serial (rank 0 alone) {s['serial_s']:.0f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", default=DEFAULT_TILE)
    ap.add_argument("--out", default=None, help="work area (default /tmp/bench_scale[_quick])")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="central sub-area, few iterations")
    ap.add_argument("--box-frac", type=float, default=0.12, help="--quick box (fraction of W, H)")
    ap.add_argument("--iters", type=int, default=None, help="patch_run.n_opt_iters")
    ap.add_argument("--light", action="store_true", help="no diagnostic plots, few iterations")
    ap.add_argument("--no-plots", action="store_true",
                    help="no diagnostic plots; production iteration counts (the campaign setting)")
    ap.add_argument("--no-8band", action="store_true", help="skip the 8-band comparison run")
    ap.add_argument("--timeout", type=float, default=12 * 3600)
    ap.add_argument("--reuse", action="store_true", help="keep finished runs of an earlier call")
    ap.add_argument("--realistic", action="store_true",
                    help=f"a tile at survey density ({REALISTIC_SOURCES} sources; default {REALISTIC_TILE})")
    a = ap.parse_args(argv)
    if a.realistic and a.tile == DEFAULT_TILE:
        a.tile = REALISTIC_TILE
    out = a.out or ("/tmp/bench_scale_quick" if a.quick else
                    "/tmp/bench_scale_real" if a.realistic else "/tmp/bench_scale")
    ensure_tile(a.tile, a.realistic)
    results = {}
    for name, nb in [("40 bands", None), ("8 bands", 8)][:1 if a.no_8band else 2]:
        dest = os.path.join(out, "b40" if nb is None else f"b{nb}")
        cfg = make_config(a.tile, dest, nb, a.quick, a.box_frac, a.iters, a.light, a.no_plots)
        log_path = os.path.join(dest, "bench.log")
        done = os.path.join(dest, "wall_s.txt")
        if a.reuse and os.path.exists(done):
            with open(done, encoding="utf-8") as fh:
                wall = float(fh.read())
            print(f"{name}: reusing the finished run in {dest}")
        else:
            print(f"running {name}: mpirun -n {a.ranks} tract7dt-mpi run {cfg} (log {log_path})",
                  flush=True)
            rc, wall = run(cfg, a.ranks, log_path, a.timeout)
            if rc not in (0, 4):
                print(f"{name}: exit code {rc}; see {log_path}", file=sys.stderr)
                return rc
            with open(done, "w", encoding="utf-8") as fh:
                fh.write(f"{wall}\n")
        results[name] = summarize(os.path.join(dest, "work"), wall)
        report(name, results[name])
    from tract7dt_mpi.parallel.scaling import load_measurements, table
    meas = load_measurements(os.path.join(out, "b40", "work", "results.h5"))
    print("\nscaling model from the 40-band run (one core per rank; mpi.master_works auto):")
    print(f"{'ranks':>6} {'wall_s':>9} {'speedup':>8} {'efficiency':>10} {'idle_tail_s':>11}")
    for r in table(meas, [1, 2, 16, 64, 256, 1024]):
        print(f"{r['ranks']:>6d} {r['makespan']:>9.1f} {r['speedup']:>8.2f} {r['efficiency']:>10.3f} "
              f"{r['idle_tail']:>11.1f}")
        results["40 bands"].setdefault("model", {})[str(r["ranks"])] = {
            "wall_s": r["makespan"], "efficiency": r["efficiency"]}
    if len(results) == 2:
        r40, r8 = results["40 bands"]["rss_rank0_mib"], results["8 bands"]["rss_rank0_mib"]
        print(f"\nrank-0 peak RSS 40 bands / 8 bands: {r40:.0f} / {r8:.0f} MiB = {r40 / r8:.2f} "
              f"(issue 7: < 1.5)")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, default=float)
    print(f"summary: {os.path.join(out, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
