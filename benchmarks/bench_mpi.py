"""MPI scaling on the sample tile: wall time, parallel efficiency, dispatch overhead, model check.

usage: python benchmarks/bench_mpi.py [--ranks 1,2,3] [--bands 4] [--size 512] [--light]
                                      [--dir DIR] [--cores N] [--master-works auto|true|false]
                                      [--reuse] [--calibrate]

For each N it runs ``tract7dt-mpi run`` on the same tile (N=1 without a launcher, N>1 under
``mpirun --oversubscribe``), checks that every run gives a byte-identical ``output_catalog.csv``,
and prints: whole-process wall time, the pipeline's own wall time, speed-up, efficiency T1/(N*TN),
the two distributed phases, the rank-0-only seconds and the master's handling time per message.
It measures the cost of an MPI launch (``mpirun -n N python -c 'MPI barrier'`` minus a plain
``python``), then replays the first run's store through the scaling model with processor sharing
over the free cores of each predicted run (the machine's cores minus the other programs' load,
which every run records itself: ``/run`` ``background_cores``) and prints predicted vs measured
wall time for every N (issue 7: within 15% at N = 2 and 3) and the predicted efficiency at 256
ranks.  ``--calibrate`` also measures a per-process speed table with the pipeline's own patch fit
run by k = 1..max(N) processes at once (after the first and the last run) and prints the
prediction made with it (``--speed`` of ``simulate-scaling``).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import LIGHT, run_pipeline, sample_config  # noqa: E402


def run_attrs(work: str) -> dict:
    import h5py
    with h5py.File(os.path.join(work, "results.h5"), "r") as f:
        return {k: (json.loads(v) if isinstance(v, str) and v[:1] in "{[" else v)
                for k, v in f["run"].attrs.items()}


def launch_cost(n: int, repeats: int = 3) -> float:
    """Seconds an ``mpirun -n n`` launch (start, MPI_Init, a barrier, finalize) adds to a plain
    python process that imports mpi4py (median of ``repeats``)."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    code = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"
    plain = [sys.executable, "-c", "import mpi4py"]
    mpi = ["mpirun", "-n", str(n), "--oversubscribe", "--bind-to", "none", sys.executable, "-c", code]

    def t(cmd):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=True)
        return time.perf_counter() - t0
    vals = sorted(t(mpi) - t(plain) for _ in range(repeats))
    return max(0.0, vals[len(vals) // 2])


def _kernel(cfg_path: str, n_patches: int, out_dir: str) -> float:
    """Seconds this process needs to fit the ``n_patches`` largest patches of a finished run
    (the pipeline's own patch task, inputs from that run's prepared store and ePSFs)."""
    from tract7dt_mpi import band_psfs, tasks
    from tract7dt_mpi.config import load_config
    from tract7dt_mpi.io.prepared import PreparedImages
    from tract7dt_mpi.parallel.scheduler import Task
    from tract7dt_mpi.stage_options import plan_options
    from tract7dt_mpi.stages.patches import build_patch_plan
    cfg = load_config(cfg_path).with_overrides({"outputs": {"patch_results_dir": out_dir}})
    cat = tasks.read_working_catalog(cfg)
    with PreparedImages(cfg.mpi.prepared_store) as p:
        shape, bands = p.shape, list(p.bands)
    cells = tasks.active_cells(cfg, cat, shape)
    plan = tasks.assign_plan(cfg, build_patch_plan(shape, cells, plan_options(cfg)), cat, len(bands))
    stamps = {}
    for b in bands:
        for r, c in cells:
            from tract7dt_mpi.stages.epsf_cells import cell_tag
            got = band_psfs.epsf_from_disk(cfg, b, cell_tag(r, c))
            if got is not None and got[1] is not None:
                stamps.setdefault(b, {})[cell_tag(r, c)] = (got[1], got[0].get("nstars_used"))
    w = tasks.Worker(cfg)
    w.catalog, w.plan, w.psfs = cat, plan, band_psfs.psf_choices(cfg, stamps)
    order = sorted(range(len(plan)), key=lambda i: -plan[i].cost)[:n_patches]
    w.patch_fit(Task("warm", "patch", payload=order[-1]))         # imports, caches
    t = time.perf_counter()
    for i in order:
        w.patch_fit(Task(f"p{i}", "patch", payload=i))
    return time.perf_counter() - t


def speed_table(cfg_path: str, kmax: int, n_patches: int = 4, rounds: int = 2) -> list[float]:
    """Speed of each process when k = 1..kmax processes fit patches at once, relative to one
    alone: the contention table of the scaling model, measured with the pipeline's own patch fit
    (includes the other programs' load on a shared machine, shared caches, memory bandwidth)."""
    import numpy as np
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPLBACKEND="Agg", TRACT7DT_MPI="0")
    tmp = tempfile.mkdtemp(prefix="bench_mpi_kernel_")

    def one_round(k):
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--kernel", cfg_path,
                                   str(n_patches), os.path.join(tmp, str(i))], env=env,
                                  stdout=subprocess.PIPE, text=True) for i in range(k)]
        return float(np.mean([float(p.communicate(timeout=1800)[0].split()[-1]) for p in procs]))
    t = {k: [] for k in range(1, kmax + 1)}
    for _ in range(rounds):
        for k in range(1, kmax + 1):
            t[k].append(one_round(k))
    t1 = float(np.mean(t[1]))
    return [round(t1 / float(np.mean(t[k])), 3) for k in range(1, kmax + 1)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2,3")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--light", action="store_true")
    ap.add_argument("--cores", type=float, default=None, help="cores (default: this machine's)")
    ap.add_argument("--master-works", default="auto", help="mpi.master_works for every run")
    ap.add_argument("--reuse", action="store_true",
                    help="keep runs finished by an earlier call (their work_mpi_nN/wall_s.txt)")
    ap.add_argument("--calibrate", action="store_true",
                    help="also measure a speed table with the patch-fit kernel (~4 min; noisy on "
                         "shared machines) and print its prediction")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "tract7dt_bench_sample"))
    a = ap.parse_args(argv)
    from tract7dt_mpi.parallel.mpienv import usable_cores
    cores = a.cores or usable_cores()
    ranks = [int(x) for x in a.ranks.split(",")]
    d = os.path.join(a.dir, f"b{a.bands}_s{a.size}")
    over = dict(LIGHT if a.light else {})
    over["mpi"] = {"master_works": str(a.master_works).lower()}
    kmax = max(max(ranks), 2)
    res, speed_before = {}, None
    for n in ranks:
        cfg = sample_config(d, a.bands, a.size, over, f"mpi_n{n}")
        work = os.path.join(d, f"work_mpi_n{n}")
        done = os.path.join(work, "wall_s.txt")
        if a.reuse and os.path.exists(done):
            with open(done, encoding="utf-8") as fh:
                wall = float(fh.read())
        else:
            rc, wall, log_text = run_pipeline(cfg, n)
            if rc != 0:
                print(f"N={n}: exit code {rc}\n{log_text[-3000:]}", file=sys.stderr)
                return rc
            with open(done, "w", encoding="utf-8") as fh:
                fh.write(f"{wall}\n")
        attrs = run_attrs(work)
        res[n] = {"wall": wall, "pipe": float(attrs["pipeline_seconds"]), "attrs": attrs, "work": work}
        print(f"N={n}: process wall {wall:.2f}s, pipeline {res[n]['pipe']:.2f}s, load avg "
              f"{attrs.get('load_avg')}", flush=True)
        if a.calibrate and speed_before is None:     # the first run provides the kernel's inputs
            speed_before = speed_table(cfg, kmax)
            print(f"per-process speed with 1..{kmax} patch-fitting processes at once: "
                  f"{speed_before}", flush=True)
    speed = None
    if a.calibrate:
        speed_after = speed_table(os.path.join(d, f"bench_mpi_n{ranks[0]}.yaml"), kmax)
        speed = [round((x + y) / 2, 3) for x, y in zip(speed_before, speed_after)]
        print(f"per-process speed (after): {speed_after}; mean used by the model: {speed}")
    base = ranks[0]
    t1 = res[base]["wall"] if base == 1 else None
    print(f"\ntile: {a.bands} bands x {a.size}px; light={a.light}; cores={cores:g}; "
          f"master_works={a.master_works}")
    print(f"{'N':>3} {'wall_s':>8} {'pipe_s':>8} {'speedup':>8} {'eff':>6} {'epsf_s':>7} "
          f"{'patch_s':>8} {'serial_s':>8} {'startup_s':>9} {'dispatch_ms/msg':>15}")
    for n in ranks:
        r = res[n]
        ph = r["attrs"].get("phase_seconds", {})
        sp = (t1 / r["wall"]) if t1 else float("nan")
        print(f"{n:>3} {r['wall']:>8.2f} {r['pipe']:>8.2f} {sp:>8.2f} {sp / n:>6.2f} "
              f"{ph.get('epsf', 0.0):>7.2f} {ph.get('patches', 0.0):>8.2f} "
              f"{float(r['attrs'].get('serial_seconds', 0.0)):>8.2f} "
              f"{float(r['attrs'].get('startup_seconds', 0.0)):>9.2f} "
              f"{1e3 * float(r['attrs'].get('overhead_per_task', 0.0)):>15.3f}")
    ref = res[base]["work"]
    for n in ranks[1:]:
        same = filecmp.cmp(os.path.join(ref, "output_catalog.csv"),
                           os.path.join(res[n]["work"], "output_catalog.csv"), shallow=False)
        print(f"catalog N={n} identical to N={base}: {same}")
    from tract7dt_mpi.parallel.scaling import load_measurements, predict
    meas = load_measurements(os.path.join(ref, "results.h5"))
    meas_s = load_measurements(os.path.join(ref, "results.h5"), speed) if speed else None
    rest = res[base]["wall"] - res[base]["pipe"] - (meas["startup"] if base == 1 else 0.0)
    print(f"\nscaling model from the N={base} run: processor sharing over the free cores (the "
          f"{cores:g} cores minus the other programs' load, which each run measures itself: "
          f"/proc/stat busy time minus its own CPU); launch = measured mpirun cost; process "
          f"start-up and teardown included" + (f"; pred_speed: measured speed table {speed}"
                                                if speed else ""))
    print(f"{'N':>3} {'launch_s':>8} {'free':>5} {'meas_s':>8} {'pred_s':>8} {'error':>7}"
          + (f" {'pred_speed':>10} {'error':>7}" if speed else "") + "  phases pred/meas")
    worst = 0.0
    for n in ranks:
        launch = launch_cost(n) if n > 1 else 0.0
        bg = float(res[n]["attrs"].get("background_cores", 0.0) or 0.0)
        free = max(0.5, cores - (bg if bg == bg else 0.0))
        p = predict(meas, n, cores=free, launch=launch, include_startup=True,
                    master_works=a.master_works)
        pred = p["makespan"] + max(0.0, rest)
        ph = res[n]["attrs"].get("phase_seconds", {})
        phs = ", ".join(f"{k} {v:.1f}/{ph.get('patches' if k == 'patch' else k, float('nan')):.1f}"
                        for k, v in p["phases"].items())
        err = (pred / res[n]["wall"] - 1) * 100
        if n > 1:
            worst = max(worst, abs(err))
        extra = ""
        if speed:
            ps = predict(meas_s, n, speed=speed, launch=launch, include_startup=True,
                         master_works=a.master_works)["makespan"] + max(0.0, rest)
            extra = f" {ps:>10.2f} {(ps / res[n]['wall'] - 1) * 100:>+6.1f}%"
        print(f"{n:>3} {launch:>8.2f} {free:>5.2f} {res[n]['wall']:>8.2f} {pred:>8.2f} {err:>+6.1f}%"
              f"{extra}  {phs}")
    print(f"largest |error| for N > 1: {worst:.1f}% (issue 7: within 15%)")
    from tract7dt_mpi.parallel.scaling import table
    eff256 = table(meas, [256])[0]["efficiency"]
    print(f"predicted efficiency at 256 ranks (one core per rank) for this tile: {eff256:.3f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--kernel":       # one calibration process
        print(_kernel(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
