"""``tract7dt-mpi simulate-scaling``: predict wall time at other rank counts from a measured run.

The results store of a real run holds, per task, its estimated cost (dispatch order), start time,
wall time and rank; the master's measured handling time per message; the wall time of every stage;
the process start-up time; whether rank 0 ran tasks; and the cores the run had.  The model:

* **task work**: each measured wall is turned into CPU work by undoing the CPU contention it ran
  under (``wall * min(1, cores / concurrent)``, ``concurrent`` = tasks running at the same time on
  the measuring machine, averaged over the task's run);
* **phases** (load, white stack, ePSF cells, PSF fields, patches, summary figures, separated by
  barriers; the PSF-field and figure tasks, which have no row in the plan, from the run attribute
  ``extra_tasks``, largest first) are replayed by an event simulation
  of the same policy as :mod:`.scheduler`: largest estimated cost first, up to ``prefetch`` tasks
  outstanding per worker, a master that needs ``overhead`` seconds per message and, with
  ``master_works``, runs tasks itself when no message is waiting; with more busy processes than
  ``cores`` each runs at ``cores / busy`` speed (an idle master sleeps and does not count);
* **serial parts** (load, augmentation, bright mask, plan, merge, ZP, store creation) are taken
  as measured on rank 0; an MPI run adds the launch cost (``--launch``, measured by
  ``benchmarks/bench_mpi.py``) and, when ranks outnumber cores, the workers' start-up imports
  competing with rank 0.

Output per rank count: predicted wall, speed-up and parallel efficiency T(1)/(N*T(N)) against the
model's own one-process prediction, and the idle tail (end of a phase minus the moment the first
rank ran out of work, summed over phases).
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np

from ..io.store import read_store

#: default per-run cost of an MPI launch (mpirun + MPI_Init + finalize) on top of a plain process
DEFAULT_LAUNCH_S = 1.0


def _rate(busy: float, cores: float | None, speed=None) -> float:
    """Speed of each of ``busy`` processes relative to one running alone.

    ``speed``: measured table (speed of each process when 1, 2, ... run at once; beyond the
    table the last entry's total throughput is shared), else processor sharing over ``cores``.
    """
    if speed:
        if busy <= 1:
            return 1.0
        sp = [float(v) for v in speed]
        k = busy - 1.0
        if k <= len(sp) - 1:
            i = int(k)
            j = min(i + 1, len(sp) - 1)
            return sp[i] + (sp[j] - sp[i]) * (k - i)
        return sp[-1] * len(sp) / busy
    return 1.0 if cores is None else min(1.0, cores / max(busy, 1.0))


def simulate_phase(walls, nranks: int, overhead: float, *, master_works: bool = False,
                   prefetch: int | None = None, cores: float | None = None, speed=None) -> dict:
    """Makespan of one phase.

    ``walls``: task CPU seconds in dispatch order; ``nranks`` total ranks; ``overhead``: master
    seconds per message; ``prefetch``: tasks outstanding per worker (default 2 if the master
    works, else 1); ``cores``: CPU cores shared by the ranks (None = one per rank); ``speed``: a
    measured per-process speed table instead of ``cores`` (see :func:`_rate`).  Returns
    makespan, idle tail, idle fraction of the working ranks and the number of working ranks.
    """
    walls = [float(w) for w in walls]
    if not walls:
        return {"makespan": 0.0, "idle_tail": 0.0, "idle_frac": 0.0, "workers": max(1, nranks - 1)}
    if nranks <= 1:
        return {"makespan": sum(walls) / _rate(1, cores, speed) + overhead * len(walls),
                "idle_tail": 0.0, "idle_frac": 0.0, "workers": 1}
    depth = max(1, int(prefetch or (2 if master_works else 1)))
    return _Sim(walls, nranks - 1, overhead, master_works, depth, cores, speed).run()


class _Sim:
    """Event simulation of :class:`.scheduler._Master` and its workers (processor sharing)."""

    def __init__(self, walls, nw, overhead, master_works, depth, cores, speed=None):
        self.queue = collections.deque(walls)
        self.speed = speed
        self.nw, self.ov, self.mw, self.depth, self.cores = nw, float(overhead), master_works, depth, cores
        self.local = [collections.deque() for _ in range(nw)]
        self.run_rem = [None] * nw          # remaining work of the task a worker is running
        self.out = [0] * nw                 # outstanding (dispatched, DONE not yet handled)
        self.pending = collections.deque(range(nw))     # messages for the master (READY first)
        self.registered = [False] * nw
        self.m_kind, self.m_rem, self.m_msg = None, 0.0, None    # master: None | "msg" | "own"
        self.idle_since = [None] * nw
        self.busy_time = [0.0] * (nw + 1)
        self.t = 0.0
        self.first_out = None               # first time a rank had nothing left to run

    def _top_up(self):
        nwork = self.nw + int(self.mw)
        for _ in range(self.depth):
            for w in range(self.nw):
                if self.registered[w] and self.out[w] < self.depth and self.queue and (
                        self.out[w] == 0 or len(self.queue) > nwork):
                    self.local[w].append(self.queue.popleft())
                    self.out[w] += 1

    def _master_next(self):
        if self.m_kind is not None:
            return
        if self.pending:
            self.m_kind, self.m_rem, self.m_msg = "msg", self.ov, self.pending.popleft()
        elif self.mw and self.queue and all(self.registered):
            self.m_kind, self.m_rem = "own", self.queue.popleft()

    def _workers_next(self):
        for w in range(self.nw):
            if self.run_rem[w] is None and self.local[w]:
                self.run_rem[w] = self.local[w].popleft()

    def _done(self) -> bool:
        return (not self.queue and self.m_kind is None and not self.pending
                and all(r is None for r in self.run_rem) and not any(self.out))

    def run(self) -> dict:
        guard = 0
        while True:
            self._master_next()
            self._workers_next()
            if self._done():
                break
            if self.first_out is None and not self.queue and (
                    any(r is None and not self.local[w] for w, r in enumerate(self.run_rem))):
                self.first_out = self.t
            busy = sum(r is not None for r in self.run_rem) + (self.m_kind is not None)
            rate = _rate(busy, self.cores, self.speed)
            dts = [r / rate for r in self.run_rem if r is not None]
            if self.m_kind is not None:
                dts.append(self.m_rem / rate)
            dt = min(dts) if dts else 0.0
            self._advance(dt, rate)
            guard += 1
            if guard > 50 * (len(self.local) + 1) * (len(self.queue) + 10) + 10**6:
                raise RuntimeError("scaling simulation did not converge")
        makespan = self.t
        nwork = self.nw + (1 if self.mw else 0)
        work = sum(self.busy_time[:self.nw]) + (self.busy_time[self.nw] if self.mw else 0.0)
        idle = max(0.0, nwork * makespan - work)
        tail = makespan - (self.first_out if self.first_out is not None else makespan)
        return {"makespan": makespan, "idle_tail": tail,
                "idle_frac": idle / (nwork * makespan) if makespan > 0 else 0.0, "workers": nwork}

    def _advance(self, dt, rate):
        self.t += dt
        eps = 1e-12
        for w, r in enumerate(self.run_rem):
            if r is None:
                continue
            self.busy_time[w] += dt
            left = r - dt * rate
            if left <= eps:
                self.run_rem[w] = None
                self.pending.append(w)           # DONE waits for the master
            else:
                self.run_rem[w] = left
        if self.m_kind is not None:
            if self.m_kind == "own":
                self.busy_time[self.nw] += dt
            self.m_rem -= dt * rate
            if self.m_rem <= eps:
                if self.m_kind == "msg":
                    w = self.m_msg
                    if self.registered[w]:
                        self.out[w] -= 1
                    self.registered[w] = True
                    self._top_up()
                self.m_kind, self.m_msg = None, None


# ---------------------------------------------------------------------- measurements
def _intrinsic(start, wall, cores, speed=None) -> np.ndarray:
    """Task CPU work: measured wall scaled by the contention it ran under (mean concurrency)."""
    wall = np.asarray(wall, float)
    if (cores is None and not speed) or len(wall) == 0:
        return wall.copy()
    start = np.asarray(start, float)
    end = start + wall
    out = wall.copy()
    for i in range(len(wall)):
        if not (np.isfinite(start[i]) and wall[i] > 0):
            continue
        ov = np.clip(np.minimum(end, end[i]) - np.maximum(start, start[i]), 0.0, None)
        conc = float(np.sum(ov[np.isfinite(ov)])) / wall[i]     # includes the task itself
        out[i] = wall[i] * _rate(max(conc, 1.0), cores, speed)
    return out


def _js(v):
    return json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v


def load_measurements(path: str, speed=None) -> dict:
    """Task work per phase in dispatch order, per-message overhead, stage and start-up seconds.

    ``speed``: the measuring machine's per-process speed table (see :func:`_rate`), when known;
    otherwise contention is undone by processor sharing over its free cores."""
    s = read_store(path)
    plan, timing = s["plan"], s["timing"]
    run = {k: _js(v) for k, v in s["run"].items()}
    kinds = np.array(plan["kind"], dtype=object)
    cost = np.asarray(plan["cost"], dtype=float)
    ntask = len(kinds)
    start = timing[:, 0] if len(timing) else np.zeros(ntask)
    wall = timing[:, 1] if len(timing) else np.zeros(ntask)
    cores = float(run.get("cores") or 0) or None
    bg = float(run.get("background_cores", 0.0) or 0.0)
    bg = bg if bg == bg else 0.0
    free = max(0.5, cores - bg) if cores else None      # cores the run really had
    work = _intrinsic(start, wall, free, speed)
    phases = {}
    for kind in dict.fromkeys(kinds.tolist()):
        idx = np.nonzero((kinds == kind) & np.isfinite(wall))[0]
        order = sorted(idx, key=lambda i: (-cost[i], i))
        phases[kind] = [float(work[i]) for i in order]
    for kind, pairs in (run.get("extra_tasks") or {}).items():   # phases outside the plan store
        sw = np.array(pairs, float).reshape(-1, 2)
        if len(sw):
            phases[kind] = sorted((float(v) for v in _intrinsic(sw[:, 0], sw[:, 1], free, speed)), reverse=True)
    stages = run.get("stage_seconds") or {}
    phase_wall = run.get("phase_seconds") or {}
    total = float(run.get("pipeline_seconds", 0.0) or 0.0)
    serial = float(run.get("serial_seconds", 0.0) or 0.0)
    usage = run.get("rank_usage") or []
    warm = [float(u.get("warmup_s", 0.0)) for u in usage[1:] if u.get("warmup_s")]
    if warm:
        warmup = float(np.median(warm)) * _rate(len(usage), free, speed)
    else:       # one process: the imports happened inside the first task of the first phase
        first = next(iter(phases.values()), [])
        warmup = max(0.0, first[0] - float(np.median(first))) if len(first) > 2 else 0.0
    return {"phases": phases, "overhead": float(run.get("overhead_per_task", 0.0) or 0.0),
            "serial_seconds": serial, "measured_wall": total or None,
            "measured_ranks": int(s["attrs"].get("n_ranks", 1)), "phase_wall": phase_wall,
            "stage_seconds": stages, "startup": float(run.get("startup_seconds", 0.0) or 0.0),
            "cores": cores, "free_cores": free, "background": bg, "warmup": warmup,
            "master_works": bool(run.get("master_works", 0)),
            "load_s": float(stages.get("load_inputs", 0.0)),
            "unmeasured": int(np.sum(~np.isfinite(wall)))}


def predict(meas: dict, nranks: int, *, cores: float | None = None, master_works=None,
            prefetch: int | None = None, launch: float = DEFAULT_LAUNCH_S,
            include_startup: bool = False, speed=None) -> dict:
    """Predicted wall for ``nranks`` ranks from :func:`load_measurements` output.

    ``cores``: CPU cores free for the ranks (None: one per rank; on a shared machine the cores
    minus the other processes' load); ``master_works``: None = the program's ``auto`` rule;
    ``launch``: extra seconds of an MPI launch; ``include_startup``: add the process start-up
    (interpreter, imports) so the result compares with a whole-process wall; ``speed``: measured
    per-process speed table of the target machine, used instead of ``cores``.
    """
    from .scheduler import resolve_master_works
    mw = resolve_master_works("auto" if master_works is None else master_works, nranks)
    serial = meas["serial_seconds"]
    extra = 0.0
    share = 1.0 / _rate(nranks, cores, speed)          # > 1: processes slow each other down
    if nranks > 1:
        extra += launch
        load, w = meas["load_s"], meas["warmup"]
        if share > 1 and w > 0:
            # the workers import their task modules while rank 0 loads (processor sharing)
            extra += (w * share + load - w if load > w else load * share) - load
    ref_rate = _rate(max(1, meas.get("measured_ranks", 1)), meas.get("free_cores"))
    start = meas["startup"] * ref_rate * share if include_startup else 0.0   # as measured -> here
    tot, tail, idle_w, per_phase = serial + extra + start, 0.0, 0.0, {}
    for kind, walls in meas["phases"].items():
        r = simulate_phase(walls, nranks, meas["overhead"], master_works=mw, prefetch=prefetch,
                           cores=cores, speed=speed)
        per_phase[kind] = r["makespan"]
        tot += r["makespan"]
        tail += r["idle_tail"]
        idle_w += r["idle_frac"] * r["makespan"]
    return {"ranks": nranks, "makespan": tot, "idle_tail": tail, "phases": per_phase,
            "master_works": mw, "serial": serial + extra + start,
            "idle_frac": idle_w / max(1e-12, sum(per_phase.values()) or 1e-12)}


def table(meas: dict, ranks: list[int], **kw) -> list[dict]:
    t1 = predict(meas, 1, **kw)["makespan"]
    rows = []
    for n in ranks:
        p = predict(meas, n, **kw)
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
    ap.add_argument("--cores", type=float, default=None,
                    help="CPU cores the ranks share (default: one core per rank)")
    ap.add_argument("--speed", default=None,
                    help="measured speed of each process when 1,2,3,... run at once, e.g. "
                         "1,0.6,0.4 (benchmarks/bench_mpi.py measures it); overrides --cores")
    ap.add_argument("--launch", type=float, default=DEFAULT_LAUNCH_S,
                    help="seconds an MPI launch adds to a plain process (default %(default)s)")
    ap.add_argument("--tiles", type=int, default=1,
                    help="predict a multi-tile run (run --tiles) of this many copies of the tile")
    return ap.parse_args(args)


def main(args=None) -> int:
    """CLI entry: print the prediction table; returns an exit code."""
    from ..errors import InputError
    ns = _parse(args)
    ranks = ns.ranks if isinstance(ns.ranks, (list, tuple)) else \
        [int(x) for x in str(ns.ranks).replace(" ", "").split(",") if x]
    if not ranks or min(ranks) < 1:
        raise InputError(f"--ranks {ns.ranks!r}: expected comma-separated positive integers")
    cores = getattr(ns, "cores", None)
    if cores is not None and cores <= 0:
        raise InputError(f"--cores {cores}: expected a positive number")
    launch = float(getattr(ns, "launch", DEFAULT_LAUNCH_S))
    speed = getattr(ns, "speed", None)
    if speed:
        try:
            speed = [float(x) for x in str(speed).split(",") if x.strip()]
            assert speed and all(0 < v <= 1.5 for v in speed)
        except (ValueError, AssertionError):
            raise InputError(f"--speed {ns.speed!r}: expected comma-separated speeds in (0, 1.5]") \
                from None
    try:
        meas = load_measurements(ns.store, speed)
    except (OSError, KeyError) as exc:
        raise InputError(f"{ns.store}: not a readable tract7dt-mpi results store ({exc})") from None
    if int(getattr(ns, "tiles", 1) or 1) > 1:
        from .scaling_tiles import print_table
        print_table(meas, int(ns.tiles), ranks)
        return 0
    n_tasks = sum(len(v) for v in meas["phases"].values())
    print(f"store {ns.store}: {n_tasks} measured tasks "
          + ", ".join(f"{k}={len(v)} ({sum(v):.1f} CPU s)" for k, v in meas["phases"].items())
          + f"; rank-0 serial stages {meas['serial_seconds']:.1f}s; "
            f"master overhead {meas['overhead'] * 1e3:.3f} ms/message")
    if meas["unmeasured"]:
        print(f"note: {meas['unmeasured']} planned tasks have no timing (not run) and are left out")
    if meas["measured_wall"]:
        mp = predict(meas, meas["measured_ranks"], cores=meas["free_cores"], launch=0.0,
                     master_works=meas["master_works"], speed=speed)["makespan"]
        print(f"measured run: N={meas['measured_ranks']} on {meas['cores'] or '?'} cores, wall "
              f"{float(meas['measured_wall']):.2f}s; model {mp:.2f}s "
              f"({(mp / float(meas['measured_wall']) - 1) * 100:+.1f}%)")
    print(f"cores: {cores or 'one per rank'}; rank 0 runs tasks for N <= 8 (mpi.master_works: auto)")
    print(f"{'ranks':>6} {'makespan_s':>11} {'speedup':>8} {'efficiency':>10} {'idle_tail_s':>11} "
          f"{'idle_frac':>9}")
    for r in table(meas, ranks, cores=cores, launch=launch, speed=speed):
        print(f"{r['ranks']:>6d} {r['makespan']:>11.2f} {r['speedup']:>8.2f} {r['efficiency']:>10.3f} "
              f"{r['idle_tail']:>11.2f} {r['idle_frac']:>9.3f}")
    return 0


if __name__ == "__main__":      # python -m tract7dt_mpi.parallel.scaling --store ... --cores 2
    raise SystemExit(main())
