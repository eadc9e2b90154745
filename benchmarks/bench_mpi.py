"""MPI scaling on the sample tile: wall time and parallel efficiency for N ranks, dispatch overhead.

usage: python benchmarks/bench_mpi.py [--ranks 1,2] [--bands 4] [--size 512] [--light] [--dir DIR]

For each N it runs ``tract7dt-mpi run`` on the same tile (N=1 without a launcher), checks that every
run gives a byte-identical ``output_catalog.csv``, and prints: wall time, speed-up, efficiency
T1/(N*TN), efficiency per *working* rank T1/(max(1,N-1)*TN) (rank 0 only dispatches when N > 1),
the time of the two distributed phases, and the master's measured handling time per message
(from ``results.h5`` /run attributes).  Finally it replays the N=1 run's task times through the
scaling model (``simulate-scaling``) and prints predicted vs measured wall time for each N.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import LIGHT, run_pipeline, sample_config  # noqa: E402


def run_attrs(work: str) -> dict:
    import h5py
    with h5py.File(os.path.join(work, "results.h5"), "r") as f:
        return {k: (json.loads(v) if isinstance(v, str) and v[:1] in "{[" else v)
                for k, v in f["run"].attrs.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--light", action="store_true")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "tract7dt_bench_sample"))
    a = ap.parse_args(argv)
    ranks = [int(x) for x in a.ranks.split(",")]
    d = os.path.join(a.dir, f"b{a.bands}_s{a.size}")
    res = {}
    for n in ranks:
        cfg = sample_config(d, a.bands, a.size, LIGHT if a.light else None, f"mpi_n{n}")
        rc, wall, log_text = run_pipeline(cfg, n)
        work = os.path.join(d, f"work_mpi_n{n}")
        if rc != 0:
            print(f"N={n}: exit code {rc}\n{log_text[-3000:]}", file=sys.stderr)
            return rc
        attrs = run_attrs(work)
        res[n] = {"wall": float(attrs["pipeline_seconds"]), "startup_wall": wall, "attrs": attrs,
                  "work": work}
    base = ranks[0]
    t1 = res[base]["wall"] * base if base == 1 else None
    print(f"tile: {a.bands} bands x {a.size}px; light={a.light}")
    print(f"{'N':>3} {'wall_s':>8} {'speedup':>8} {'eff':>6} {'eff_work':>8} {'epsf_s':>7} "
          f"{'patch_s':>8} {'serial_s':>8} {'dispatch_ms/msg':>15}")
    for n in ranks:
        r = res[n]
        ph = r["attrs"].get("phase_seconds", {})
        sp = (t1 / r["wall"]) if t1 else float("nan")
        print(f"{n:>3} {r['wall']:>8.2f} {sp:>8.2f} {sp / n:>6.2f} {sp / max(1, n - 1):>8.2f} "
              f"{ph.get('epsf', 0.0):>7.2f} {ph.get('patches', 0.0):>8.2f} "
              f"{float(r['attrs'].get('serial_seconds', 0.0)):>8.2f} "
              f"{1e3 * float(r['attrs'].get('overhead_per_task', 0.0)):>15.3f}")
    ref = res[base]["work"]
    for n in ranks[1:]:
        same = filecmp.cmp(os.path.join(ref, "output_catalog.csv"),
                           os.path.join(res[n]["work"], "output_catalog.csv"), shallow=False)
        print(f"catalog N={n} identical to N={base}: {same}")
    from tract7dt_mpi.parallel.scaling import load_measurements, predict
    meas = load_measurements(os.path.join(ref, "results.h5"))
    for n in ranks:
        p = predict(meas, n)["makespan"]
        print(f"model from N={base} run: N={n} predicted {p:.2f}s, measured {res[n]['wall']:.2f}s "
              f"({(p / res[n]['wall'] - 1) * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
