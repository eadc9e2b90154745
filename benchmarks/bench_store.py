"""Benchmark the results store (``io/store.py``): write time per patch task at 40 bands.

Builds a plan of ``--tasks`` patch tasks of ``--rows`` sources each with the fit columns of a
40-band multi-band run (``stages.fit.result_columns``), then times, per task:

* ``encode``: turning the task's result table into the store's form (done on the worker),
* ``direct``: writing it straight into the file (what a worker does under parallel HDF5),
* ``batched``: the serial rank-0 writer (rows buffered, then written at ``flush``; total / tasks).

One process, plain h5py (the file operations a rank does are the same with the mpio driver).
Run it against another checkout with ``PYTHONPATH=that_checkout`` to compare layouts:

    OMP_NUM_THREADS=1 nice python benchmarks/bench_store.py [--tasks 300 --rows 12 --bands 40]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd


def _tables(cols, plan, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for e in plan.entries:
        n = len(e.rows)
        t = {}
        for name, dt in cols:
            dt = np.dtype(dt)
            t[name] = (rng.normal(size=n) if dt.kind == "f" else rng.integers(0, 9, n) if dt.kind == "i"
                       else rng.integers(0, 2, n).astype(bool) if dt.kind == "b" else ["exp"] * n)
        t["_row"] = np.asarray(e.rows)
        out[e.id] = pd.DataFrame(t)
    return out


def run(n_tasks: int, n_rows: int, n_bands: int) -> dict:
    from tract7dt_mpi.parallel.mpienv import Comm
    from tract7dt_mpi.io.store import PlanEntry, ResultsStore, StorePlan
    from tract7dt_mpi.stages.fit import result_columns

    cols = result_columns([f"m{400 + 10 * i}" for i in range(n_bands)], True)
    plan = StorePlan([PlanEntry(f"patch/p{i}", "patch", rows=np.arange(i * n_rows, (i + 1) * n_rows))
                      for i in range(n_tasks)])
    tables = _tables(cols, plan)
    res = {"columns": len(cols)}
    with tempfile.TemporaryDirectory() as d:
        for mode in ("direct", "batched"):
            st = ResultsStore.create(Comm(None), os.path.join(d, f"{mode}.h5"), plan, cols)
            st.buffered = mode == "batched"
            st.flush_sec = 1e9                     # batched: one flush at the end
            t_enc = t_write = 0.0
            for e in plan.entries:
                t0 = time.perf_counter()
                enc = st.encode_rows(e.id, tables[e.id])
                t1 = time.perf_counter()
                st.write_rows(e.id, enc)
                t_write += time.perf_counter() - t1
                t_enc += t1 - t0
            t0 = time.perf_counter()
            st.close()                             # flush + close
            t_write += time.perf_counter() - t0
            res["encode"] = t_enc / n_tasks
            res[mode] = t_write / n_tasks
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--rows", type=int, default=12, help="sources per patch")
    ap.add_argument("--bands", type=int, default=40)
    a = ap.parse_args(argv)
    r = run(a.tasks, a.rows, a.bands)
    print(f"results store, {a.bands} bands ({r['columns']} columns), {a.tasks} tasks x {a.rows} rows")
    print(f"  encode on the worker : {1e3 * r['encode']:8.3f} ms/task")
    print(f"  direct write         : {1e3 * r['direct']:8.3f} ms/task   (parallel-HDF5 worker)")
    print(f"  batched rank-0 write : {1e3 * r['batched']:8.3f} ms/task   (serial store)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
