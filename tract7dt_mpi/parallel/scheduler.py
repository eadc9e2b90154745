"""Master/worker task-pull queue on COMM_WORLD (hand-written; no spawn, no futures).

Protocol (tags): a worker sends READY, the master answers TASK (a small picklable :class:`Task`) or
STOP; the worker runs the task and answers DONE (result) or FAILED (traceback, host, wall, RSS),
which doubles as its next READY.  Plain ``send`` only (never ``ssend``), over an ``mpi4py.util.pkl5``
communicator so a large result cannot overflow.  Waiting is done by ``iprobe`` + short sleeps so the
master and idle workers do not spin the CPU of oversubscribed nodes.

Tasks go out largest estimated cost first (LPT; ties in plan order).  Every task is wrapped in a
``BaseException`` catch (``SystemExit`` too): a failure is reported and the run goes on.  A stop
request (signal flag, deadline, or a worker that received a signal) stops dispatching; running tasks
drain and the call returns ``stopped=True``.  With one process the master runs the tasks itself.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from typing import Any, Callable

from . import signals
from .mpienv import Comm, peak_rss_mb

log = logging.getLogger(__name__)

READY, TASK, DONE, FAILED, STOP = 11, 12, 13, 14, 15
_POLL_MIN, _POLL_MAX = 0.0002, 0.02


@dataclasses.dataclass
class Task:
    """One unit of work: ``id`` unique and stable across runs; ``payload`` small and picklable."""

    id: str
    kind: str
    cost: float = 1.0
    index: int = 0            #: position in the plan (ties and deterministic ordering)
    payload: Any = None


@dataclasses.dataclass
class TaskInfo:
    """What the master learns about a finished task."""

    task_id: str
    ok: bool
    rank: int
    host: str
    wall: float
    rss_mb: float
    error: str | None = None
    started: float = 0.0


@dataclasses.dataclass
class RunReport:
    """Outcome of one :func:`run_tasks` call (meaningful on the master)."""

    label: str
    total: int = 0
    done: int = 0
    failed: list = dataclasses.field(default_factory=list)     # TaskInfo of failed tasks
    infos: dict = dataclasses.field(default_factory=dict)      # task id -> TaskInfo
    stopped: bool = False
    stop_reason: str | None = None
    wall: float = 0.0
    busy: dict = dataclasses.field(default_factory=dict)       # rank -> busy seconds
    master_overhead: float = 0.0       # master CPU seconds spent handling messages
    n_messages: int = 0
    undispatched: list = dataclasses.field(default_factory=list)

    @property
    def overhead_per_task(self) -> float:
        return self.master_overhead / max(1, self.n_messages)

    def busy_fraction(self, nranks: int) -> dict:
        w = max(self.wall, 1e-9)
        return {r: self.busy.get(r, 0.0) / w for r in range(nranks)}


def order_tasks(tasks: list[Task]) -> list[Task]:
    """Largest estimated cost first; equal costs keep plan order (deterministic LPT)."""
    return sorted(tasks, key=lambda t: (-float(t.cost), t.index, t.id))


def _run_one(fn, task: Task, rank: int, host: str):
    """Run ``fn(task)`` catching everything; return (ok, result_or_error_text, wall, rss)."""
    t0 = time.perf_counter()
    try:
        result = fn(task)
        ok = True
    except BaseException as exc:   # noqa: BLE001 - fault isolation is the point (SystemExit too)
        if isinstance(exc, KeyboardInterrupt):
            signals.request_stop("SIGINT")
        ok = False
        result = f"{type(exc).__name__}: {exc}\n" + traceback.format_exc()
    return ok, result, time.perf_counter() - t0, peak_rss_mb()


class _Heartbeat:
    """Periodic progress line: done/total, failed, rate, ETA, slowest running task + host."""

    def __init__(self, label: str, total: int, every: float):
        self.label, self.total, self.every = label, total, float(every)
        self.t0 = time.monotonic()
        self.next = self.t0 + self.every if self.every > 0 else float("inf")

    def maybe(self, done: int, failed: int, running: dict, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next:
            return
        self.next = now + self.every
        el = now - self.t0
        fin = done + failed
        rate = fin / el if el > 0 else 0.0
        eta = (self.total - fin) / rate if rate > 0 else float("nan")
        slow = ""
        if running:
            tid, (rank, host, t_start) = max(running.items(), key=lambda kv: now - kv[1][2])
            slow = f"; slowest running {tid} on {host} (rank {rank}) for {now - t_start:.1f}s"
        eta_s = f"{eta:.0f}s" if eta == eta else "?"
        log.info("[%s] %d/%d done, %d failed, %d running, %.3g tasks/s, ETA %s%s",
                 self.label, done, self.total, failed, len(running), rate, eta_s, slow)


def run_tasks(comm: Comm, tasks: list[Task] | None, fn: Callable[[Task], Any], *,
              label: str = "tasks",
              on_done: Callable[[Task, Any, TaskInfo], None] | None = None,
              on_failed: Callable[[Task, TaskInfo], None] | None = None,
              on_start: Callable[[Task, int, str], None] | None = None,
              worker_post: Callable[[Task, Any], Any] | None = None,
              heartbeat_sec: float = 30.0) -> RunReport:
    """Run ``tasks`` over all ranks of ``comm``; every rank must call this (workers pass None).

    ``fn(task)`` runs on a worker (or on the master with one process).  ``worker_post(task,
    result)`` runs right after a successful ``fn`` on the same rank (e.g. independent HDF5 writes)
    and returns what is sent back; ``on_start``/``on_done``/``on_failed`` run on the master, in the
    order messages arrive.  Returns the master's :class:`RunReport` (workers get a small report).
    """
    if comm.size == 1:
        return _serial(comm, tasks or [], fn, label, on_done, on_failed, on_start, worker_post,
                       heartbeat_sec)
    if comm.is_master:
        return _master(comm, tasks or [], label, on_done, on_failed, on_start, heartbeat_sec)
    return _worker(comm, fn, worker_post, label)


def _finish(report, task, ok, res, info, on_done, on_failed):
    report.infos[task.id] = info
    report.busy[info.rank] = report.busy.get(info.rank, 0.0) + info.wall
    if ok:
        report.done += 1
        if on_done is not None:
            on_done(task, res, info)
    else:
        report.failed.append(info)
        log.error("[%s] task %s FAILED on %s (rank %d) after %.2fs:\n%s", report.label, task.id,
                  info.host, info.rank, info.wall, (info.error or "").rstrip())
        if on_failed is not None:
            on_failed(task, info)


def _serial(comm, tasks, fn, label, on_done, on_failed, on_start, worker_post, hb_sec):
    report = RunReport(label=label, total=len(tasks))
    t0 = time.monotonic()
    hb = _Heartbeat(label, len(tasks), hb_sec)
    queue = order_tasks(tasks)
    for i, task in enumerate(queue):
        if signals.stop_requested():
            report.stopped, report.stop_reason = True, signals.stop_reason()
            report.undispatched = [t.id for t in queue[i:]]
            break
        m0 = time.perf_counter()
        if on_start is not None:
            on_start(task, 0, comm.host)
        report.master_overhead += time.perf_counter() - m0
        started = time.time()
        ok, res, wall, rss = _run_one(fn, task, 0, comm.host)
        if ok and worker_post is not None:
            ok, res, wall2, rss = _run_one(lambda t: worker_post(t, res), task, 0, comm.host)
            wall += wall2
        m0 = time.perf_counter()
        info = TaskInfo(task.id, ok, 0, comm.host, wall, rss, None if ok else res, started)
        _finish(report, task, ok, res, info, on_done, on_failed)
        report.master_overhead += time.perf_counter() - m0
        report.n_messages += 1
        hb.maybe(report.done, len(report.failed), {})
    report.wall = time.monotonic() - t0
    return report


def _poll_recv(p2p, MPI, idle=None):
    """Receive from any source with sleeping polls; returns (message, source, tag)."""
    status = MPI.Status()
    pause = _POLL_MIN
    while not p2p.iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
        time.sleep(pause)
        pause = min(_POLL_MAX, pause * 1.5)
        if idle is not None:
            idle()
    src, tag = status.Get_source(), status.Get_tag()
    msg = p2p.recv(source=src, tag=tag)
    return msg, src, tag


def _master(comm, tasks, label, on_done, on_failed, on_start, hb_sec):
    MPI, p2p = comm.MPI, comm.p2p
    report = RunReport(label=label, total=len(tasks))
    by_id = {t.id: t for t in tasks}
    queue = order_tasks(tasks)
    qpos = 0
    running: dict[str, tuple] = {}          # task id -> (rank, host, monotonic start)
    stopped_workers = 0
    nworkers = comm.size - 1
    t0 = time.monotonic()
    hb = _Heartbeat(label, len(tasks), hb_sec)
    while stopped_workers < nworkers:
        msg, src, tag = _poll_recv(p2p, MPI, lambda: hb.maybe(report.done, len(report.failed), running))
        m0 = time.perf_counter()
        report.n_messages += 1
        if msg.get("stop"):
            signals.request_stop(msg["stop"])
        if tag in (DONE, FAILED):
            task = by_id[msg["id"]]
            running.pop(task.id, None)
            ok = tag == DONE
            info = TaskInfo(task.id, ok, src, msg["host"], msg["wall"], msg["rss"],
                            None if ok else msg["result"], msg.get("started", 0.0))
            _finish(report, task, ok, msg.get("result") if ok else None, info, on_done, on_failed)
        if signals.stop_requested() and qpos < len(queue) and not report.stopped:
            report.stopped, report.stop_reason = True, signals.stop_reason()
            report.undispatched = [t.id for t in queue[qpos:]]
            log.warning("[%s] stop requested (%s): no new tasks; draining %d running",
                        label, report.stop_reason, len(running))
            qpos = len(queue)
        if qpos < len(queue):
            task = queue[qpos]
            qpos += 1
            running[task.id] = (src, msg["host"], time.monotonic())
            if on_start is not None:
                on_start(task, src, msg["host"])
            report.master_overhead += time.perf_counter() - m0
            p2p.send(task, dest=src, tag=TASK)
        else:
            report.master_overhead += time.perf_counter() - m0
            p2p.send(None, dest=src, tag=STOP)
            stopped_workers += 1
    report.wall = time.monotonic() - t0
    hb.maybe(report.done, len(report.failed), running, force=hb_sec > 0)
    return report


def _worker(comm, fn, worker_post, label):
    MPI, p2p = comm.MPI, comm.p2p
    report = RunReport(label=label)
    msg = {"host": comm.host}
    tag = READY
    t0 = time.monotonic()
    while True:
        if signals.stop_requested():
            msg["stop"] = signals.stop_reason()
        p2p.send(msg, dest=0, tag=tag)
        status = MPI.Status()
        pause = _POLL_MIN
        while not p2p.iprobe(source=0, tag=MPI.ANY_TAG, status=status):
            time.sleep(pause)
            pause = min(_POLL_MAX, pause * 1.5)
        task = p2p.recv(source=0, tag=status.Get_tag())
        if status.Get_tag() == STOP:
            break
        started = time.time()
        ok, res, wall, rss = _run_one(fn, task, comm.rank, comm.host)
        if ok and worker_post is not None:
            ok, res, wall2, rss = _run_one(lambda t: worker_post(t, res), task, comm.rank, comm.host)
            wall += wall2
        report.busy[comm.rank] = report.busy.get(comm.rank, 0.0) + wall
        report.done += ok
        msg = {"id": task.id, "host": comm.host, "wall": wall, "rss": rss, "result": res,
               "started": started}
        tag = DONE if ok else FAILED
    report.wall = time.monotonic() - t0
    return report
