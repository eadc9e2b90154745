"""Master/worker task-pull queue on COMM_WORLD (hand-written; no spawn, no futures).

Protocol (tags): each worker sends READY once; the master keeps up to ``prefetch`` TASK messages
(small picklable :class:`Task` objects) outstanding per worker; the worker answers each with DONE
(result) or FAILED (traceback, host, wall, RSS) and the master tops its queue up again; STOP is sent
to a worker once it has nothing outstanding and nothing is left to hand out.  Sends are
non-blocking (``isend`` over an ``mpi4py.util.pkl5`` communicator, so large results cannot
overflow and a sender never waits for a busy receiver); waiting is ``iprobe`` + short sleeps, so
idle ranks do not spin the CPU of oversubscribed nodes.

With ``master_works`` the master also runs tasks itself between servicing messages (it fills every
worker's prefetch queue first, so a worker never waits while the master computes): at small rank
counts one more working rank is a large gain (N=2: two workers instead of one).

Tasks go out largest estimated cost first (LPT; ties in plan order).  Every task is wrapped in a
``BaseException`` catch (``SystemExit`` too): a failure is reported and the run goes on.  A stop
request (signal flag, deadline, or a worker that received a signal) stops dispatching; running and
queued tasks drain and the call returns ``stopped=True``.  With one process the master runs the
tasks itself.
"""

from __future__ import annotations

import collections
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


#: world sizes up to which ``mpi.master_works: auto`` lets rank 0 run tasks too
MASTER_WORKS_AUTO_MAX = 8


def resolve_master_works(value, size: int) -> bool:
    """``mpi.master_works`` ("auto" | true | false, also as text) -> bool for a world of ``size``.

    ``TRACT7DT_MASTER_WORKS`` (same values) overrides the config, e.g. for benchmarks.
    """
    import os
    env = os.environ.get("TRACT7DT_MASTER_WORKS", "").strip().lower()
    text = env or str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return size > 1
    if text in ("0", "false", "no", "off"):
        return False
    return 1 < size <= MASTER_WORKS_AUTO_MAX


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
              heartbeat_sec: float = 30.0, master_works: bool = False,
              prefetch: int | None = None) -> RunReport:
    """Run ``tasks`` over all ranks of ``comm``; every rank must call this (workers pass None).

    ``fn(task)`` runs on a worker (or on the master with one process or ``master_works``).
    ``worker_post(task, result)`` runs right after a successful ``fn`` on the same rank (e.g.
    independent HDF5 writes) and returns what is sent back; ``on_start``/``on_done``/``on_failed``
    run on the master, in the order results arrive.  ``prefetch``: tasks kept outstanding per
    worker (default 2 when the master works, else 1); every rank must pass the same
    ``master_works``.  Returns the master's :class:`RunReport` (workers get a small report).
    """
    if comm.size == 1:
        return _serial(comm, tasks or [], fn, label, on_done, on_failed, on_start, worker_post,
                       heartbeat_sec)
    if comm.is_master:
        depth = max(1, int(prefetch if prefetch else (2 if master_works else 1)))
        return _Master(comm, tasks or [], fn, worker_post, label, on_done, on_failed, on_start,
                       heartbeat_sec, master_works, depth).run()
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


def _run_local(fn, worker_post, task, rank, host):
    """Run one task (and its ``worker_post``) on this rank; returns (ok, result, wall, rss, start)."""
    started = time.time()
    ok, res, wall, rss = _run_one(fn, task, rank, host)
    if ok and worker_post is not None:
        ok, res, wall2, rss = _run_one(lambda t: worker_post(t, res), task, rank, host)
        wall += wall2
    return ok, res, wall, rss, started


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
        ok, res, wall, rss, started = _run_local(fn, worker_post, task, 0, comm.host)
        m0 = time.perf_counter()
        info = TaskInfo(task.id, ok, 0, comm.host, wall, rss, None if ok else res, started)
        _finish(report, task, ok, res, info, on_done, on_failed)
        report.master_overhead += time.perf_counter() - m0
        report.n_messages += 1
        hb.maybe(report.done, len(report.failed), {})
    report.wall = time.monotonic() - t0
    return report


class _Sends:
    """Outstanding non-blocking sends (their buffers stay referenced until complete)."""

    def __init__(self):
        self.reqs = []

    def add(self, req):
        self.reqs.append(req)
        self.test()

    def test(self):
        self.reqs = [r for r in self.reqs if not r.test()[0]]

    def wait(self):
        pause = _POLL_MIN
        while self.reqs:
            self.test()
            if self.reqs:
                time.sleep(pause)
                pause = min(_POLL_MAX, pause * 1.5)


def _try_recv(p2p, MPI, source):
    """One pending message from ``source`` (or any), or None; never blocks on an empty queue."""
    status = MPI.Status()
    if not p2p.iprobe(source=source, tag=MPI.ANY_TAG, status=status):
        return None
    src, tag = status.Get_source(), status.Get_tag()
    return p2p.recv(source=src, tag=tag), src, tag


class _Master:
    """Rank 0's side: dispatch (LPT), keep ``depth`` tasks per worker, optionally run tasks."""

    def __init__(self, comm, tasks, fn, worker_post, label, on_done, on_failed, on_start, hb_sec,
                 master_works, depth):
        self.comm, self.MPI, self.p2p = comm, comm.MPI, comm.p2p
        self.fn, self.worker_post = fn, worker_post
        self.on_done, self.on_failed, self.on_start = on_done, on_failed, on_start
        self.report = RunReport(label=label, total=len(tasks))
        self.by_id = {t.id: t for t in tasks}
        self.queue = collections.deque(order_tasks(tasks))
        self.running: dict[str, tuple] = {}     # task id -> (rank, host, monotonic dispatch time)
        self.out = {r: 0 for r in range(1, comm.size)}      # outstanding tasks per worker
        self.hosts: dict[int, str] = {}
        self.stopped: set[int] = set()
        self.sends = _Sends()
        self.hb = _Heartbeat(label, len(tasks), hb_sec)
        self.master_works, self.depth = master_works, depth

    def run(self) -> RunReport:
        rep, t0 = self.report, time.monotonic()
        while len(self.hosts) < len(self.out):         # every worker announces itself first
            self._handle(*self._wait())
        while len(self.stopped) < len(self.out):
            while (got := _try_recv(self.p2p, self.MPI, self.MPI.ANY_SOURCE)) is not None:
                self._handle(*got)
            self._check_stop()
            self._dispatch()
            if len(self.stopped) == len(self.out):
                break
            if self.master_works and self.queue:
                self._run_own(self.queue.popleft())
                continue
            self._handle(*self._wait())
        self.sends.wait()
        rep.wall = time.monotonic() - t0
        self.hb.maybe(rep.done, len(rep.failed), self.running, force=self.hb.every > 0)
        return rep

    def _wait(self):
        pause = _POLL_MIN
        while (got := _try_recv(self.p2p, self.MPI, self.MPI.ANY_SOURCE)) is None:
            time.sleep(pause)
            pause = min(_POLL_MAX, pause * 1.5)
            self.sends.test()
            self.hb.maybe(self.report.done, len(self.report.failed), self.running)
        return got

    def _handle(self, msg, src, tag):
        m0 = time.perf_counter()
        rep = self.report
        rep.n_messages += 1
        self.hosts[src] = msg["host"]
        if msg.get("stop"):
            signals.request_stop(msg["stop"])
        if tag in (DONE, FAILED):
            task = self.by_id[msg["id"]]
            self.running.pop(task.id, None)
            self.out[src] -= 1
            ok = tag == DONE
            info = TaskInfo(task.id, ok, src, msg["host"], msg["wall"], msg["rss"],
                            None if ok else msg["result"], msg.get("started", 0.0))
            _finish(rep, task, ok, msg.get("result") if ok else None, info, self.on_done,
                    self.on_failed)
        rep.master_overhead += time.perf_counter() - m0

    def _check_stop(self):
        rep = self.report
        if signals.stop_requested() and self.queue and not rep.stopped:
            rep.stopped, rep.stop_reason = True, signals.stop_reason()
            rep.undispatched = [t.id for t in self.queue]
            log.warning("[%s] stop requested (%s): no new tasks; draining %d running",
                        rep.label, rep.stop_reason, len(self.running))
            self.queue.clear()

    def _dispatch(self):
        """Top every worker up to ``depth`` outstanding tasks; STOP the ones with nothing left."""
        m0 = time.perf_counter()
        nwork = len(self.out) + int(self.master_works)
        for _ in range(self.depth):        # round-robin, so the largest tasks spread out first
            for w in self.out:
                # a second task in hand only while there is more than one left per working rank,
                # so the last tasks are not queued behind a busy rank while another one idles
                if w in self.hosts and w not in self.stopped and self.out[w] < self.depth \
                        and self.queue and (self.out[w] == 0 or len(self.queue) > nwork):
                    task = self.queue.popleft()
                    self.out[w] += 1
                    self.running[task.id] = (w, self.hosts[w], time.monotonic())
                    if self.on_start is not None:
                        self.on_start(task, w, self.hosts[w])
                    self.sends.add(self.p2p.isend(task, dest=w, tag=TASK))
        if not self.queue:
            for w in self.out:
                if w in self.hosts and w not in self.stopped and self.out[w] == 0:
                    self.sends.add(self.p2p.isend(None, dest=w, tag=STOP))
                    self.stopped.add(w)
        self.report.master_overhead += time.perf_counter() - m0

    def _run_own(self, task):
        rep, host = self.report, self.comm.host
        m0 = time.perf_counter()
        self.running[task.id] = (0, host, time.monotonic())
        if self.on_start is not None:
            self.on_start(task, 0, host)
        rep.master_overhead += time.perf_counter() - m0
        ok, res, wall, rss, started = _run_local(self.fn, self.worker_post, task, 0, host)
        m0 = time.perf_counter()
        self.running.pop(task.id, None)
        info = TaskInfo(task.id, ok, 0, host, wall, rss, None if ok else res, started)
        _finish(rep, task, ok, res, info, self.on_done, self.on_failed)
        rep.n_messages += 1
        rep.master_overhead += time.perf_counter() - m0
        self.hb.maybe(rep.done, len(rep.failed), self.running)


def _worker(comm, fn, worker_post, label):
    MPI, p2p = comm.MPI, comm.p2p
    report = RunReport(label=label)
    sends = _Sends()
    local = collections.deque()
    t0 = time.monotonic()
    p2p.send({"host": comm.host, "stop": signals.stop_reason() if signals.stop_requested() else None},
             dest=0, tag=READY)
    done = False
    while not done:
        pause = _POLL_MIN
        while True:                 # take every message that is there; sleep-wait if none
            got = _try_recv(p2p, MPI, 0)
            if got is None:
                if local:
                    break
                sends.test()
                time.sleep(pause)
                pause = min(_POLL_MAX, pause * 1.5)
                continue
            if got[2] == STOP:
                done = True
                break
            local.append(got[0])
        while local:
            task = local.popleft()
            ok, res, wall, rss, started = _run_local(fn, worker_post, task, comm.rank, comm.host)
            report.busy[comm.rank] = report.busy.get(comm.rank, 0.0) + wall
            report.done += ok
            msg = {"id": task.id, "host": comm.host, "wall": wall, "rss": rss, "result": res,
                   "started": started}
            if signals.stop_requested():
                msg["stop"] = signals.stop_reason()
            sends.add(p2p.isend(msg, dest=0, tag=DONE if ok else FAILED))
            if _try_pending(p2p, MPI):
                break               # pick up queued messages (a new task) before the next one
    sends.wait()
    report.wall = time.monotonic() - t0
    return report


def _try_pending(p2p, MPI) -> bool:
    return bool(p2p.iprobe(source=0, tag=MPI.ANY_TAG))
