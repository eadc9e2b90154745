"""``tract7dt-mpi simulate-scaling``: predict wall time at other rank counts from a measured run.

The results store of a real run holds, per task, its estimated cost (dispatch order) and measured
wall time, the master's measured handling time per message, and the wall time of the rank-0-only
stages.  The model replays each phase (ePSF units, then patch units) through the same policy as
:mod:`.scheduler`: largest estimated cost first, one master that spends ``overhead`` seconds per
message and hands the next task to whichever worker frees first; phases are separated by a barrier.
With one rank the master runs every task itself.  Output per rank count: predicted makespan,
parallel efficiency T(1)/(N*T(N)) and the idle tail (time between the first worker running out of
work and the end of the phase, summed over phases).
"""

from __future__ import annotations

import argparse
import heapq
import json

import numpy as np

from .store import read_store


def simulate_phase(walls, nranks: int, overhead: float) -> dict:
    """Makespan of one phase: ``walls`` in dispatch order, ``nranks`` total ranks, master
    ``overhead`` seconds per message.  Returns makespan, idle tail and idle worker fraction."""
    walls = [float(w) for w in walls]
    if not walls:
        return {"makespan": 0.0, "idle_tail": 0.0, "idle_frac": 0.0, "workers": max(1, nranks - 1)}
    if nranks <= 1:
        return {"makespan": sum(walls) + overhead * len(walls), "idle_tail": 0.0, "idle_frac": 0.0,
                "workers": 1}
    nw = nranks - 1
    free = [(0.0, w) for w in range(nw)]          # (time the worker asks for work, worker id)
    heapq.heapify(free)
    master = 0.0
    finish = [0.0] * nw
    for wall in walls:
        t_ready, w = heapq.heappop(free)
        start = max(t_ready, master) + overhead      # master handles the READY/DONE, sends TASK
        master = start
        finish[w] = start + wall
        heapq.heappush(free, (finish[w], w))
    makespan = max(finish) + overhead               # last DONE handled
    busy_end = [f for f in finish]
    first_idle = min(busy_end)
    idle = sum(makespan - f for f in busy_end)
    return {"makespan": makespan, "idle_tail": makespan - first_idle,
            "idle_frac": idle / (nw * makespan) if makespan > 0 else 0.0, "workers": nw}


def load_measurements(path: str) -> dict:
    """Task walls per phase in dispatch order, overhead per message and serial seconds."""
    s = read_store(path)
    plan, timing, status = s["plan"], s["timing"], s["status"]
    run = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v) for k, v in s["run"].items()}
    kinds = np.array(plan["kind"], dtype=object)
    cost = np.asarray(plan["cost"], dtype=float)
    wall = timing[:, 1] if len(timing) else np.zeros(0)
    phases = {}
    for kind in dict.fromkeys(kinds.tolist()):
        idx = np.nonzero((kinds == kind) & np.isfinite(wall))[0]
        order = sorted(idx, key=lambda i: (-cost[i], i))
        phases[kind] = [float(wall[i]) for i in order]
    overhead = float(run.get("overhead_per_task", 0.0) or 0.0)
    return {"phases": phases, "overhead": overhead,
            "serial_seconds": float(run.get("serial_seconds", 0.0) or 0.0),
            "measured_wall": run.get("pipeline_seconds"), "measured_ranks": int(s["attrs"].get("n_ranks", 1)),
            "phase_wall": run.get("phase_seconds", {}), "unmeasured": int(np.sum(~np.isfinite(wall)))}


def predict(meas: dict, nranks: int) -> dict:
    """Predicted totals for ``nranks`` ranks from :func:`load_measurements` output."""
    tot, tail, idle_w = meas["serial_seconds"], 0.0, 0.0
    per_phase = {}
    for kind, walls in meas["phases"].items():
        r = simulate_phase(walls, nranks, meas["overhead"])
        per_phase[kind] = r["makespan"]
        tot += r["makespan"]
        tail += r["idle_tail"]
        idle_w += r["idle_frac"] * r["makespan"]
    return {"ranks": nranks, "makespan": tot, "idle_tail": tail, "phases": per_phase,
            "idle_frac": idle_w / max(1e-12, sum(per_phase.values()) or 1e-12)}


def table(meas: dict, ranks: list[int]) -> list[dict]:
    t1 = predict(meas, 1)["makespan"]
    rows = []
    for n in ranks:
        p = predict(meas, n)
        p["efficiency"] = t1 / (n * p["makespan"]) if p["makespan"] > 0 else float("nan")
        p["speedup"] = t1 / p["makespan"] if p["makespan"] > 0 else float("nan")
        rows.append(p)
    return rows


def _parse(args):
    if isinstance(args, argparse.Namespace):
        return args
    ap = argparse.ArgumentParser(prog="tract7dt-mpi simulate-scaling",
                                 description="Predict makespan/efficiency at other rank counts.")
    ap.add_argument("--store", required=True, help="results.h5 of a finished run")
    ap.add_argument("--ranks", default="1,2,4,16,64,256,1024", help="comma-separated rank counts")
    return ap.parse_args(args)


def main(args=None) -> int:
    """CLI entry: print the prediction table; returns an exit code."""
    from ..errors import InputError
    ns = _parse(args)
    ranks = ns.ranks if isinstance(ns.ranks, (list, tuple)) else \
        [int(x) for x in str(ns.ranks).replace(" ", "").split(",") if x]
    if not ranks or min(ranks) < 1:
        raise InputError(f"--ranks {ns.ranks!r}: expected comma-separated positive integers")
    try:
        meas = load_measurements(ns.store)
    except (OSError, KeyError) as exc:
        raise InputError(f"{ns.store}: not a readable tract7dt-mpi results store ({exc})") from None
    n_tasks = sum(len(v) for v in meas["phases"].values())
    print(f"store {ns.store}: {n_tasks} measured tasks "
          + ", ".join(f"{k}={len(v)} ({sum(v):.1f}s)" for k, v in meas["phases"].items())
          + f"; rank-0 serial stages {meas['serial_seconds']:.1f}s; "
            f"master overhead {meas['overhead'] * 1e3:.3f} ms/task")
    if meas["unmeasured"]:
        print(f"note: {meas['unmeasured']} planned tasks have no timing (not run) and are left out")
    if meas["measured_wall"]:
        mp = predict(meas, meas["measured_ranks"])["makespan"]
        print(f"measured run: N={meas['measured_ranks']} wall {float(meas['measured_wall']):.2f}s; "
              f"model {mp:.2f}s ({(mp / float(meas['measured_wall']) - 1) * 100:+.1f}%)")
    print(f"{'ranks':>6} {'makespan_s':>11} {'speedup':>8} {'efficiency':>10} {'idle_tail_s':>11} "
          f"{'idle_frac':>9}")
    for r in table(meas, ranks):
        print(f"{r['ranks']:>6d} {r['makespan']:>11.2f} {r['speedup']:>8.2f} {r['efficiency']:>10.3f} "
              f"{r['idle_tail']:>11.2f} {r['idle_frac']:>9.3f}")
    return 0
