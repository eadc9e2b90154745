"""Glue between the task queue, the journal and the results store for one phase of work.

``run_phase`` journals STARTED/DONE/FAILED on rank 0, puts result rows into the store (the worker
writes its own rows in parallel-HDF5 mode; otherwise the rows travel back and rank 0 writes them)
and records status/timing.  The task function returns a :class:`TaskResult`: ``rows`` (DataFrame or
mapping with ``_row``) for the store, ``data`` (small picklable object) for the master.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

from ..io.journal import DONE, FAILED, STARTED, Journal
from .scheduler import RunReport, Task, TaskInfo, run_tasks
from ..io.store import ST_DONE, ST_FAILED, ST_STARTED, ResultsStore
from .watchdog import TaskTimeout

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TaskResult:
    rows: Any = None           #: result rows for the store (None: nothing to store)
    data: Any = None           #: small object handed to ``on_result`` on rank 0


def run_phase(comm, label: str, tasks: list[Task] | None, fn: Callable[[Task], TaskResult], *,
              store: ResultsStore | None = None, journal: Journal | None = None,
              on_result: Callable[[Task, Any, TaskInfo], None] | None = None,
              heartbeat_sec: float = 30.0, master_works: bool = False,
              prefetch: int | None = None, timeout: TaskTimeout | None = None) -> RunReport:
    """Run one phase on every rank (workers pass ``tasks=None``); returns the master's report.

    ``master_works``/``prefetch``/``timeout``: see :func:`.scheduler.run_tasks` (same value on
    every rank).  Before rank 0 aborts the job because of a silent rank, the store's buffered rows
    and status and the journal are written out, so ``--resume`` keeps every finished task.
    """

    def worker_post(task: Task, res: TaskResult):
        if res is None:
            res = TaskResult()
        if store is not None and store.parallel and res.rows is not None:
            store.write_rows(task.id, res.rows)      # independent write into own row range
            return TaskResult(rows=None, data=res.data)
        if store is not None and res.rows is not None and task.id in store.plan.index:
            return TaskResult(rows=store.encode_rows(task.id, res.rows), data=res.data)
        return res

    def on_start(task: Task, rank: int, host: str):
        if journal is not None:
            journal.record(task.id, STARTED, rank=rank, host=host)
        if store is not None and task.id in store.plan.index:
            store.set_status(task.id, ST_STARTED)

    def on_done(task: Task, res: TaskResult, info: TaskInfo):
        if store is not None and res is not None and res.rows is not None and store.writable_here:
            store.write_rows(task.id, res.rows)
        attempt = journal.attempts(task.id) if journal is not None else 1
        if store is not None and task.id in store.plan.index:
            store.set_status(task.id, ST_DONE, (info.started, info.wall, info.rss_mb, info.rank, attempt))
        if journal is not None:
            journal.record(task.id, DONE, rank=info.rank, host=info.host, wall=round(info.wall, 4),
                           rss_mb=round(info.rss_mb, 1))
        if on_result is not None:
            on_result(task, None if res is None else res.data, info)

    def on_failed(task: Task, info: TaskInfo):
        attempt = journal.attempts(task.id) if journal is not None else 1
        if store is not None and task.id in store.plan.index:
            store.set_status(task.id, ST_FAILED, (info.started, info.wall, info.rss_mb, info.rank, attempt))
        if journal is not None:
            journal.record(task.id, FAILED, rank=info.rank, host=info.host, wall=round(info.wall, 4),
                           rss_mb=round(info.rss_mb, 1), error=info.error)
        if on_result is not None:
            on_result(task, None, info)

    def on_abort():
        if store is not None and store.writable_here:
            store.flush()
        if journal is not None:
            journal.close()

    return run_tasks(comm, tasks, fn, label=label, on_done=on_done, on_failed=on_failed,
                     on_start=on_start, worker_post=worker_post, heartbeat_sec=heartbeat_sec,
                     master_works=master_works, prefetch=prefetch, timeout=timeout,
                     on_abort=on_abort)


def plan_resume(store_path: str, journal: Journal | None, tasks: list[Task], recover=None):
    """Rank 0, before the store is recreated: which tasks to run and which rows to carry over.

    A task the journal calls DONE keeps its rows from the previous store when that file is readable
    and says DONE too; otherwise ``recover(task)`` (e.g. re-reading the per-patch CSV) may supply
    them; failing both, it runs again.  Returns ``(to_run, carried)`` with carried = {id: rows}.
    """
    from ..io.store import catalog_frame, read_store
    done = [t for t in tasks if journal is not None and journal.state(t.id) == DONE]
    if not done:
        return list(tasks), {}
    old = None
    try:
        old = read_store(store_path)
    except Exception as exc:  # noqa: BLE001 - any damage means "rebuild"
        log.warning("results store %s unreadable (%s: %s); rebuilding it from the journal and the "
                    "per-task products", store_path, type(exc).__name__, exc)
    old_rows = {}
    if old is not None:
        ids = old["plan"]["id"]
        idx = {tid: i for i, tid in enumerate(ids)}
        df = catalog_frame(old, done_only=False)
        offs, nrows = old["plan"]["row_offset"], old["plan"]["n_rows"]
        for t in done:
            i = idx.get(t.id)
            if i is not None and old["status"][i] == 2:
                old_rows[t.id] = df.iloc[int(offs[i]):int(offs[i] + nrows[i])].reset_index(drop=True)
    carried, to_run = {}, []
    done_ids = {t.id for t in done}
    for t in tasks:
        if t.id not in done_ids:
            to_run.append(t)
            continue
        rows = old_rows.get(t.id)
        if rows is None and recover is not None:
            try:
                rows = recover(t)
            except Exception as exc:  # noqa: BLE001
                log.warning("task %s: cannot recover earlier result (%s); re-running", t.id, exc)
                rows = None
        if rows is None:
            to_run.append(t)
        else:
            carried[t.id] = rows
    return to_run, carried


def write_carried(store: ResultsStore | None, carried: dict, journal: Journal | None = None) -> None:
    """Rank 0, after the store was (re)created: write carried-over rows and mark them DONE."""
    if store is None or not store.writable_here or not store.comm.is_master:
        return
    for tid, rows in carried.items():
        if tid not in store.plan.index:
            continue
        if rows is not True and rows is not None and len(rows):
            store.write_rows(tid, rows)
        rec = journal.last.get(tid, {}) if journal is not None else {}
        store.set_status(tid, ST_DONE, (rec.get("t", float("nan")), rec.get("wall", float("nan")),
                                        rec.get("rss_mb", float("nan")), rec.get("rank", -1),
                                        rec.get("attempt", 1)))
