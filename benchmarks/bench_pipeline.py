"""Whole pipeline on the synthetic sample tile: time per stage and peak memory.

usage: python benchmarks/bench_pipeline.py [--dir DIR] [--bands 8] [--size 1024] [--ranks 1]
                                           [--light] [--keep]

Generates the tile with ``make_sample`` (cached in DIR), runs ``tract7dt-mpi run`` (under
``mpirun -n R`` when R > 1) in a subprocess, then prints the "Finished X in N.NNs" stage times from
the log, the total wall time and the peak RSS of the run (largest single process, from
``getrusage(RUSAGE_CHILDREN)``).  ``--light`` uses a few optimizer iterations and no diagnostic
plots (a smoke-size run).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

LIGHT = {"overlay": {"enabled": False}, "plotting": {"level": "none"},
         "epsf": {"maxiters": 5, "save_growth_curve": False, "save_residual_diagnostics": False,
                  "save_patch_background_diagnostics": False,
                  "save_star_local_background_diagnostics": False, "save_star_montage_max": 0},
         "patch_run": {"n_opt_iters": 5, "no_cutouts": True, "no_patch_overview": True}}


def sample_config(d: str, bands: int, size: int, overrides: dict | None, tag: str) -> str:
    """Make (or reuse) the sample tile in ``d`` and write a config with ``overrides`` next to it."""
    import yaml

    from tract7dt_mpi.sample import make_sample
    src = os.path.join(d, "config.yaml")
    if not os.path.exists(src):
        make_sample(d, bands=bands, size=size, verbose=False)
    with open(src) as fh:
        cfg = yaml.safe_load(fh) or {}
    for sec, vals in (overrides or {}).items():
        cfg.setdefault(sec, {}).update(vals)
    cfg.setdefault("outputs", {})["work_dir"] = f"work_{tag}"
    path = os.path.join(d, f"bench_{tag}.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def run_pipeline(cfg: str, ranks: int, extra_env: dict | None = None, timeout: float = 7200):
    """Run ``tract7dt-mpi run cfg``; return (returncode, wall seconds, log text)."""
    env = dict(os.environ, MPLBACKEND="Agg", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **(extra_env or {}))
    cmd = [sys.executable, "-m", "tract7dt_mpi.cli", "run", cfg]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return r.returncode, time.perf_counter() - t0, r.stderr


def stage_times(log_text: str) -> list[tuple[str, float]]:
    return [(m.group(1), float(m.group(2)))
            for m in re.finditer(r"Finished (\S+) in ([0-9.]+)s", log_text)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "tract7dt_bench_sample"))
    ap.add_argument("--bands", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--light", action="store_true")
    a = ap.parse_args(argv)
    d = os.path.join(a.dir, f"b{a.bands}_s{a.size}")
    cfg = sample_config(d, a.bands, a.size, LIGHT if a.light else None, f"pipe_n{a.ranks}")
    rc, wall, log_text = run_pipeline(cfg, a.ranks)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    print(f"tile: {a.bands} bands x {a.size}px ({d}); ranks={a.ranks}; light={a.light}; exit code {rc}")
    print(f"{'stage':<22}{'seconds':>10}")
    for name, sec in stage_times(log_text):
        print(f"{name:<22}{sec:>10.2f}")
    m = re.search(r"Pipeline finished in ([0-9.]+)s", log_text)
    print(f"{'pipeline (log)':<22}{float(m.group(1)) if m else float('nan'):>10.2f}")
    print(f"{'wall incl. start-up':<22}{wall:>10.2f}")
    print(f"peak RSS (largest process): {peak:.0f} MiB")
    if rc != 0:
        print(log_text[-3000:], file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
