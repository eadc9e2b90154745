"""Dummy-task run of the parallel machinery (scheduler + journal + store), launched by the tests.

usage: python dummy_run.py OUTDIR [--ntasks N] [--sleep S] [--raise ID] [--sysexit ID] [--kill ID]
       [--resume] [--force] [--hash H] [--big-msg MB] [--stop-after K] [--master-works]
       [--prefetch K] [--freeze-rank R --freeze-at K] [--slow-rank R --slow-at K --slow-sec S]
       [--task-timeout-sec S] [--task-timeout-factor F] [--task-timeout-min S]
Writes OUTDIR/results.h5, OUTDIR/journal.jsonl and (rank 0) OUTDIR/summary.json; exits 0/3/4 like
the pipeline.  Task values are derived from the task id only (never the rank).  ``--freeze-rank R
--freeze-at K``: rank R stops itself (SIGSTOP, like a frozen node) at its K-th task (0: before the
phase);
``--slow-rank``/``--slow-at``/``--slow-sec``: rank R's K-th task sleeps S s more, then answers.
"""

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import time

import numpy as np

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.parallel import get_comm, install_excepthook, signals
from tract7dt_mpi.io import journal
from tract7dt_mpi.parallel.runner import TaskResult, plan_resume, run_phase, write_carried
from tract7dt_mpi.parallel.scheduler import Task
from tract7dt_mpi.io.store import PlanEntry, ResultsStore, StorePlan, use_parallel_h5
from tract7dt_mpi.parallel.watchdog import TaskTimeout

COLUMNS = [("val", np.float64), ("n", np.int64), ("name", "S16"), ("flag", bool)]


def make_tasks(n):
    tasks, start = [], 0
    for i in range(n):
        nrows = 1 + (i * 5) % 4
        rows = np.arange(start, start + nrows, dtype=np.int64)
        start += nrows
        tasks.append(Task(id=f"t{i:03d}", kind="dummy", cost=float((i * 7) % 11), index=i,
                          payload={"rows": rows}))
    return tasks


def task_fn(args, rank):
    count = {"n": 0}

    def fn(task):
        count["n"] += 1
        if rank == args.freeze_rank and count["n"] == args.freeze_at:
            os.kill(os.getpid(), signal.SIGSTOP)
        if rank == args.slow_rank and count["n"] == args.slow_at:
            time.sleep(args.slow_sec)
        time.sleep(args.sleep)
        if task.id == args.raise_id:
            raise ValueError(f"injected failure in {task.id}")
        if task.id == args.sysexit:
            sys.exit(7)
        if task.id == args.kill:
            os.kill(os.getpid(), 9)
        seed = int(hashlib.sha256(task.id.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(seed)
        rows = task.payload["rows"]
        table = {"_row": rows[::-1].copy(), "val": rng.normal(size=len(rows))[::-1],
                 "n": (rows * 3)[::-1], "name": [f"{task.id}_{r}" for r in rows[::-1]],
                 "flag": (rows % 2 == 0)[::-1]}
        data = None
        if args.big_msg:
            data = np.ones(int(args.big_msg * 2**20) // 8)
        return TaskResult(rows=table, data=data)
    return fn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ntasks", type=int, default=24)
    ap.add_argument("--sleep", type=float, default=0.02)
    ap.add_argument("--raise", dest="raise_id")
    ap.add_argument("--sysexit")
    ap.add_argument("--kill")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--hash", default="H1")
    ap.add_argument("--big-msg", type=float, default=0.0)
    ap.add_argument("--stop-after", type=int)
    ap.add_argument("--master-works", action="store_true", help="rank 0 runs tasks too")
    ap.add_argument("--prefetch", type=int, help="tasks outstanding per worker")
    ap.add_argument("--master-raise", type=int, help="raise on rank 0 after K results (outside tasks)")
    ap.add_argument("--freeze-rank", type=int, help="this rank SIGSTOPs itself at its --freeze-at-th task")
    ap.add_argument("--freeze-at", type=int, default=1)
    ap.add_argument("--slow-rank", type=int, help="this rank's --slow-at-th task sleeps --slow-sec more")
    ap.add_argument("--slow-at", type=int, default=1)
    ap.add_argument("--slow-sec", type=float, default=0.0)
    ap.add_argument("--task-timeout-sec", type=float, default=0.0)
    ap.add_argument("--task-timeout-factor", type=float, default=10.0)
    ap.add_argument("--task-timeout-min", type=float, default=60.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    comm = get_comm()
    install_excepthook(comm)
    signals.install()
    os.makedirs(args.out, exist_ok=True)
    store_path = os.path.join(args.out, "results.h5")
    tasks = make_tasks(args.ntasks)
    jr, carried, to_run, status = None, {}, tasks, "ok"
    if comm.is_master:
        try:
            jr = journal.Journal(os.path.join(args.out, "journal.jsonl"), args.hash, resume=args.resume,
                           force=args.force)
        except InputError as exc:
            status = str(exc)
        if jr is not None:
            to_run, carried = plan_resume(store_path, jr, tasks) if args.resume else (tasks, {})
            jr.record_planned([t.id for t in tasks])
    status = comm.bcast(status)
    if status != "ok":
        if comm.is_master:
            print(status, file=sys.stderr)
        return 2
    plan = StorePlan([PlanEntry(t.id, t.kind, rows=t.payload["rows"]) for t in tasks])
    store = ResultsStore.create(comm, store_path, plan, COLUMNS, attrs={"plan_hash": args.hash})
    write_carried(store, carried, jr)
    got, results = {}, []

    def on_result(task, data, info):
        got[task.id] = None if data is None else float(np.sum(data))
        results.append(task.id)

    if args.master_raise is not None and comm.is_master:
        seen = {"n": 0}

        def on_result(task, data, info):  # noqa: F811
            seen["n"] += 1
            if seen["n"] == args.master_raise:
                raise RuntimeError("master bug after dispatch started")

    if args.stop_after is not None and comm.is_master:
        count = {"n": 0}

        def on_result(task, data, info):  # noqa: F811
            count["n"] += 1
            if count["n"] == args.stop_after:
                signals.request_stop("test")

    import resource
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    if comm.rank == args.freeze_rank and args.freeze_at == 0:
        os.kill(os.getpid(), signal.SIGSTOP)          # frozen before the phase starts
    timeout = TaskTimeout(args.task_timeout_factor, args.task_timeout_min, args.task_timeout_sec)
    rep = run_phase(comm, "dummy", to_run if comm.is_master else None, task_fn(args, comm.rank),
                    store=store, journal=jr, on_result=on_result, heartbeat_sec=0.2,
                    master_works=args.master_works, prefetch=args.prefetch, timeout=timeout)
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - w0
    cpu = comm.gather((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))
    store.close()
    code = 0
    if comm.is_master:
        jr.close()
        code = 3 if rep.stopped else (4 if rep.failed else 0)
        summary = {"code": code, "done": rep.done, "failed": [f.task_id for f in rep.failed],
                   "errors": [f.error for f in rep.failed], "stopped": rep.stopped,
                   "ran": sorted(rep.infos), "skipped": sorted(carried), "size": comm.size,
                   "parallel_h5": use_parallel_h5(comm), "got": got, "results": results,
                   "rank_of": {t: i.rank for t, i in rep.infos.items()},
                   "ranks": sorted({i.rank for i in rep.infos.values()}),
                   "overhead": rep.overhead_per_task, "phase_wall": wall, "cpu": cpu,
                   "by_rank": {str(r): sum(1 for i in rep.infos.values() if i.rank == r)
                               for r in range(comm.size)}}
        with open(os.path.join(args.out, "summary.json"), "w") as fh:
            json.dump(summary, fh)
    return comm.bcast(code)


if __name__ == "__main__":
    sys.exit(main())
