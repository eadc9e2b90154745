"""Load stage (S1) timing: one process streaming the bands vs one task per band on N ranks.

usage: python benchmarks/bench_load.py [--bands 8] [--size 1024] [--ranks 1,2] [--dir DIR]

Makes (or reuses, with ``--dir``) a ``make-sample`` tile, then times on it: the in-process stage
(``stages.load.load_inputs``, one band after another: the serial reference) and the pipeline's
band-task load (``pipeline._Run.load_bands``: band tasks + white-stack strips) for every N (N=1
without a launcher, N>1 under ``mpirun --oversubscribe``). Each run is timed between barriers in
its own processes (no start-up; the stage modules are imported before); it prints wall seconds, CPU seconds summed over the
ranks (up to the end of each rank's part; a rank waiting for rank 0's steps in a broadcast counts),
rank 0's peak RSS, and checks that every run gives the reference's white stack bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))


def _child(config: str, out: str, serial: bool) -> None:
    import resource
    import time

    import numpy as np

    from tract7dt_mpi.config import load_config
    cfg = load_config(config)
    os.makedirs(cfg.outputs.work_dir, exist_ok=True)
    import tract7dt_mpi.load_steps  # noqa: F401 - imports outside the timing, for both paths
    import tract7dt_mpi.stage_options  # noqa: F401
    import tract7dt_mpi.stages.load  # noqa: F401
    if serial:
        from tract7dt_mpi.io.prepared import PreparedWriter
        from tract7dt_mpi.stage_options import load_options
        from tract7dt_mpi.stages.load import load_inputs
        t0, c0 = time.perf_counter(), time.process_time()
        w = PreparedWriter(cfg.mpi.prepared_store)
        res = load_inputs(load_options(cfg), writer=w, plots=False)
        w.close()
        wall, cpu = time.perf_counter() - t0, [time.process_time() - c0]
        master = True
    else:
        from tract7dt_mpi.pipeline import _Run
        R = _Run("run", cfg, {})
        R.comm.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        res = R.load_bands(plots=False)
        mine = time.process_time() - c0             # before the barrier: MPI may spin in it
        R.comm.barrier()
        wall = time.perf_counter() - t0
        cpu = R.comm.gather(mine)
        master = R.master
    if master:
        np.save(out + ".white.npy", res.white)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        with open(out, "w") as fh:
            json.dump({"wall": wall, "cpu": cpu, "rss0_mib": rss, "bands": len(res.bands)}, fh)


def _env():
    env = dict(os.environ)
    env.update(PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def _run(n, config, out, serial=False, timeout=1800):
    cmd = [sys.executable, HERE, "--child", config, out] + (["--serial"] if serial else [])
    if n is not None:
        cmd = ["mpirun", "-n", str(n), "--oversubscribe", "--bind-to", "none"] + cmd
    subprocess.run(cmd, env=_env(), check=True, timeout=timeout)
    with open(out) as fh:
        return json.load(fh)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bands", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--dir", default=None, help="tile folder (made when missing)")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--serial", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(a.child[0], a.child[1], a.serial)
        return 0
    import numpy as np
    tile = a.dir or os.path.join(tempfile.mkdtemp(prefix="bench_load_"), "T")
    if not os.path.exists(os.path.join(tile, "config.yaml")):
        subprocess.run([sys.executable, "-m", "tract7dt_mpi.cli", "make-sample", tile, "--bands",
                        str(a.bands), "--size", str(a.size)], env=_env(), check=True,
                       stdout=subprocess.DEVNULL)
    config = os.path.join(tile, "config.yaml")
    work = os.path.join(tile, "work")
    runs = [("one process, serial", None, True)] + \
        [(f"band tasks, N={n}", None if n == 1 else n, False) for n in map(int, a.ranks.split(","))]
    ref = None
    print(f"{'load of ' + tile:<44} {'wall s':>8} {'CPU s':>8} {'rank-0 RSS MiB':>15}  CPU s per rank")
    for label, n, serial in runs:
        shutil.rmtree(work, ignore_errors=True)
        out = os.path.join(tile, "bench_load.json")
        got = _run(n, config, out, serial)
        white = np.load(out + ".white.npy")
        ref = white if ref is None else ref
        same = np.array_equal(white, ref, equal_nan=True)
        name = f"{label} ({got['bands']} bands)"
        print(f"{name:<44} {got['wall']:>8.2f} {sum(got['cpu']):>8.2f} "
              f"{got['rss0_mib']:>15.0f}  {' '.join(f'{c:.2f}' for c in got['cpu'])}"
              f"{'' if same else '   WHITE STACK DIFFERS'}")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
