"""Master/worker task-pull queue on COMM_WORLD (hand-written; no spawn, no futures).

Protocol (tags): each worker sends READY once; the master keeps up to ``prefetch`` TASK messages
(small picklable :class:`Task` objects) outstanding per worker; the worker answers each with DONE
(result) or FAILED (traceback, host, wall, RSS) and the master tops its queue up again; STOP is sent
to a worker once it has nothing outstanding, nothing is left to hand out and every task handed out
has a result.  Sends are non-blocking (``isend`` over an ``mpi4py.util.pkl5`` communicator, so
large results cannot overflow and a sender never waits for a busy receiver); waiting is ``iprobe``
+ short sleeps, so idle ranks do not spin the CPU of oversubscribed nodes.

With ``master_works`` the master also runs tasks itself between servicing messages (it fills every
worker's prefetch queue first, so a worker never waits while the master computes): at small rank
counts one more working rank is a large gain (N=2: two workers instead of one).

A worker whose task runs far beyond its expected time (:mod:`.watchdog`, ``mpi.task_timeout_*``)
gets no more work and its unfinished tasks go to other ranks; the first result of a task wins and a
later duplicate is ignored (a task's result does not depend on the rank); idle workers stay
available for such re-runs until the last result is in.  A rank still silent twice its limit after
its task started, with no useful work left on the others, ends the job: rank 0 logs it, flushes the
journal (``on_abort``) and aborts the communicator with the resumable exit code 3 (Open MPI's
``mpirun`` returns it).

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

from ..errors import EXIT_RESUMABLE
from . import signals
from .mpienv import Comm, peak_rss_mb
from .watchdog import Heartbeat, TaskTimeout, Watchdog

log = logging.getLogger(__name__)

READY, TASK, DONE, FAILED, STOP = 11, 12, 13, 14, 15
_POLL_MIN, _POLL_MAX = 0.0002, 0.02
_WATCH_SEC = 0.2        #: how often rank 0 looks for late tasks while it waits


@dataclasses.dataclass
class Task:
    """One unit of work: ``id`` unique and stable across runs; ``payload`` small and picklable."""

    id: str
    kind: str
    cost: float = 1.0
    index: int = 0            #: position in the plan (ties and deterministic ordering)
    payload: Any = None
    #: a serial step (e.g. a tile's loading in a multi-tile run): never handed to a second rank
    #: while late, never run by a working master (it would stop dispatching meanwhile)
    exclusive: bool = False


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

    @property
    def error_line(self) -> str:
        """The error's first line (the exception, without its traceback)."""
        return ((self.error or "").splitlines() or ["unknown error"])[0]


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


def run_tasks(comm: Comm, tasks: list[Task] | None, fn: Callable[[Task], Any], *,
              label: str = "tasks",
              on_done: Callable[[Task, Any, TaskInfo], None] | None = None,
              on_failed: Callable[[Task, TaskInfo], None] | None = None,
              on_start: Callable[[Task, int, str], None] | None = None,
              worker_post: Callable[[Task, Any], Any] | None = None,
              heartbeat_sec: float = 30.0, master_works: bool = False,
              prefetch: int | None = None, timeout: TaskTimeout | None = None,
              on_abort: Callable[[], None] | None = None,
              feed: Callable[[], list[Task]] | None = None,
              order: Callable[[list[Task]], list[Task]] | None = None) -> RunReport:
    """Run ``tasks`` over all ranks of ``comm``; every rank must call this (workers pass None).

    ``fn(task)`` runs on a worker (or on the master with one process or ``master_works``).
    ``worker_post(task, result)`` runs right after a successful ``fn`` on the same rank (e.g.
    independent HDF5 writes) and returns what is sent back; ``on_start``/``on_done``/``on_failed``
    run on the master, in the order results arrive.  ``prefetch``: tasks kept outstanding per
    worker (default 2 when the master works, else 1); every rank must pass the same
    ``master_works``.  ``timeout``: when a task is late (default :class:`.TaskTimeout()`);
    ``on_abort()`` runs on the master before it aborts the job because of a silent rank.  Returns
    the master's :class:`RunReport` (workers get a small report).

    ``feed()`` (master only): new tasks that became ready (e.g. added by ``on_done``), taken before
    every dispatch; the run ends when the queue is empty, every task answered and ``feed`` gives
    nothing.  ``order(tasks)``: the dispatch order (default :func:`order_tasks`).
    """
    if comm.size == 1:
        return _serial(comm, tasks or [], fn, label, on_done, on_failed, on_start, worker_post,
                       heartbeat_sec, feed, order or order_tasks)
    if comm.is_master:
        depth = max(1, int(prefetch if prefetch else (2 if master_works else 1)))
        return _Master(comm, tasks or [], fn, worker_post, label, on_done, on_failed, on_start,
                       heartbeat_sec, master_works, depth, timeout or TaskTimeout(), on_abort,
                       feed, order or order_tasks).run()
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


def _serial(comm, tasks, fn, label, on_done, on_failed, on_start, worker_post, hb_sec, feed=None,
            order=order_tasks):
    report = RunReport(label=label, total=len(tasks))
    t0 = time.monotonic()
    hb = Heartbeat(label, len(tasks), hb_sec)
    queue = collections.deque(order(tasks))
    while True:
        new = feed() if feed is not None else []
        if new:
            report.total += len(new)
            hb.total = report.total
            queue = collections.deque(order(list(queue) + list(new)))
        if not queue:
            break
        if signals.stop_requested():
            report.stopped, report.stop_reason = True, signals.stop_reason()
            report.undispatched = [t.id for t in queue]
            break
        task = queue.popleft()
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
        hb.maybe(report.done, len(report.failed))
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
    """Rank 0's side: dispatch (LPT), keep ``depth`` tasks per worker, optionally run tasks, and
    hand the tasks of a late worker to others (first result wins)."""

    def __init__(self, comm, tasks, fn, worker_post, label, on_done, on_failed, on_start, hb_sec,
                 master_works, depth, timeout, on_abort, feed=None, order=order_tasks):
        self.comm, self.MPI, self.p2p = comm, comm.MPI, comm.p2p
        self.fn, self.worker_post = fn, worker_post
        self.on_done, self.on_failed, self.on_start = on_done, on_failed, on_start
        self.on_abort = on_abort
        self.report = RunReport(label=label, total=len(tasks))
        self.by_id = {t.id: t for t in tasks}
        self.feed, self.order = feed, order
        self.queue = collections.deque(order(tasks))
        self.own = None                         # (task id, start) of the master's own task
        self.out = {r: 0 for r in range(1, comm.size)}      # outstanding tasks per worker
        self.hosts: dict[int, str] = {}
        self.stopped: set[int] = set()
        self.result_from: dict[str, int] = {}   # task id -> rank whose (first) result was taken
        self.copies_queued: set[str] = set()    # tasks put back in the queue for another rank
        self.dog = Watchdog(timeout, list(self.out), lambda tid: float(self.by_id[tid].cost),
                            lambda tid: self.by_id[tid].kind)
        self.next_watch = 0.0
        self.t0 = time.monotonic()
        self.sends = _Sends()
        self.hb = Heartbeat(label, len(tasks), hb_sec)
        self.master_works, self.depth = master_works, depth

    def run(self) -> RunReport:
        rep, t0 = self.report, time.monotonic()
        self.t0 = t0
        join_until = t0 + self.dog.times.policy.join_sec
        while len(self.hosts) < len(self.out) and time.monotonic() < join_until:
            got = self._wait()                         # every worker announces itself first
            if got is not None:
                self._handle(*got)
        if len(self.hosts) < len(self.out):
            log.warning("[%s] rank(s) %s not ready after %.0fs: starting without them", rep.label,
                        ", ".join(str(w) for w in self.out if w not in self.hosts),
                        time.monotonic() - t0)
        while len(self.stopped) < len(self.out):
            while (got := _try_recv(self.p2p, self.MPI, self.MPI.ANY_SOURCE)) is not None:
                self._handle(*got)
            self._take_feed()
            self._check_stop()
            self._watch()
            self._dispatch()
            if len(self.stopped) == len(self.out):
                break
            own = self._own_pick() if self.master_works else None
            if own is not None:
                self._run_own(own)
                continue
            got = self._wait()
            if got is not None:
                self._handle(*got)
        self.sends.wait()
        rep.wall = time.monotonic() - t0
        self._beat(force=self.hb.every > 0)
        return rep

    def _take_feed(self):
        """Tasks that became ready (``feed``) join the queue in dispatch order (not after a stop)."""
        new = self.feed() if self.feed is not None else []
        if not new:
            return
        rep = self.report
        if rep.stopped:
            rep.undispatched += [t.id for t in new]
            return
        for t in new:
            self.by_id[t.id] = t
        rep.total += len(new)
        self.hb.total = rep.total
        self.queue = collections.deque(self.order(list(self.queue) + list(new)))

    def _own_pick(self):
        """The first queued task the master may run itself (not an exclusive serial step)."""
        for i, t in enumerate(self.queue):
            if not t.exclusive:
                del self.queue[i]
                return t
        return None

    def _running(self):
        run = [(tid, w, self.hosts.get(w, "?"), t0) for w, tid, t0 in self.dog.running()]
        if self.own is not None:
            run.append((self.own[0], 0, self.comm.host, self.own[1]))
        return run

    def _late_text(self) -> str:
        now = time.monotonic()
        return ", ".join(f"{lt.task_id} on {self.hosts.get(w, '?')} (rank {w}) for "
                         f"{now - lt.since:.1f}s (limit {lt.limit:.1f}s)"
                         for w, lt in sorted(self.dog.late.items()))

    def _beat(self, force=False):
        self.hb.maybe(self.report.done, len(self.report.failed), self._running, self._late_text,
                      force=force)

    def _wait(self):
        """The next message, or None after ``_WATCH_SEC`` without one (time to look for late tasks)."""
        pause, until = _POLL_MIN, time.monotonic() + _WATCH_SEC
        while (got := _try_recv(self.p2p, self.MPI, self.MPI.ANY_SOURCE)) is None:
            if time.monotonic() >= until:
                return None
            time.sleep(pause)
            pause = min(_POLL_MAX, pause * 1.5)
            self.sends.test()
            self._beat()
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
            self.out[src] -= 1
            late = self.dog.answered(src, task.id, time.monotonic())
            if late is not None:
                log.warning("[%s] rank %d (%s) answered again (task %s, %.1fs after it started); "
                            "it gets new tasks again", rep.label, src, msg["host"], task.id,
                            time.monotonic() - late.since)
            if task.id in self.result_from:
                log.warning("[%s] late result of %s from %s (rank %d) ignored: rank %d gave it "
                            "first", rep.label, task.id, msg["host"], src, self.result_from[task.id])
            else:
                self._accept(task, src, tag == DONE, msg)
        rep.master_overhead += time.perf_counter() - m0

    def _accept(self, task, rank, ok, msg):
        """The first result of ``task``: record it and drop a copy still waiting in the queue."""
        self.result_from[task.id] = rank
        if task.id in self.copies_queued:
            self.copies_queued.discard(task.id)
            self.queue = collections.deque(t for t in self.queue if t.id != task.id)
        self.dog.finished(msg["wall"], task.id)
        info = TaskInfo(task.id, ok, rank, msg["host"], msg["wall"], msg["rss"],
                        None if ok else msg["result"], msg.get("started", 0.0))
        _finish(self.report, task, ok, msg.get("result") if ok else None, info, self.on_done,
                self.on_failed)

    def _check_stop(self):
        rep = self.report
        if signals.stop_requested() and self.queue and not rep.stopped:
            rep.stopped, rep.stop_reason = True, signals.stop_reason()
            rep.undispatched = [t.id for t in self.queue]
            log.warning("[%s] stop requested (%s): no new tasks; draining %d running",
                        rep.label, rep.stop_reason, len(self._running()))
            self.queue.clear()
            self.copies_queued.clear()

    def _watch(self):
        """Hand the tasks of newly late workers to others; end the job if one stays silent."""
        now = time.monotonic()
        if now < self.next_watch:
            return
        self.next_watch = now + _WATCH_SEC
        rep = self.report
        for w in self.dog.find_late(now):
            lt = self.dog.late[w]
            moved = []
            if not rep.stopped:
                for tid in reversed(list(self.dog.held[w])):
                    if tid not in self.result_from and tid not in self.copies_queued \
                            and self.dog.can_copy(tid) and not self.by_id[tid].exclusive:
                        self.queue.appendleft(self.by_id[tid])
                        self.copies_queued.add(tid)
                        moved.insert(0, tid)
            what = (f"handing {', '.join(moved)} to another rank" if moved else
                    "not re-run (stopping)" if rep.stopped else "already re-run once")
            log.warning("[%s] task %s on %s (rank %d) is late: running for %.1fs, limit %.1fs (%s); "
                        "rank %d gets no new tasks; %s", rep.label, lt.task_id, self.hosts.get(w, "?"),
                        w, now - lt.since, lt.limit, self.dog.times.describe(), w, what)
        silent = self.dog.silent(now)
        if now - self.t0 > 2 * self.dog.times.policy.join_sec:
            silent += [w for w in self.out if w not in self.hosts]     # never joined the phase
        if silent and not self._useful_work():
            self._abort(silent, now)

    def _useful_work(self) -> bool:
        """True while a rank that still answers has (or can be given) a task without a result."""
        live = [w for w in self.hosts if w not in self.dog.late]
        if self.queue and (self.master_works and any(not t.exclusive for t in self.queue)
                           or any(w not in self.stopped for w in live)):
            return True
        return self.dog.unfinished_on(live, self.result_from)

    def _abort(self, silent, now):
        rep = self.report
        for w in silent:
            lt = self.dog.late.get(w)
            if lt is None:
                log.error("[%s] rank %d never announced itself in this phase (%.0fs)", rep.label, w,
                          now - self.t0)
                continue
            log.error("[%s] rank %d (%s) is silent: task %s started %.1fs ago (limit %.1fs) and no "
                      "answer since", rep.label, w, self.hosts.get(w, "?"), lt.task_id,
                      now - lt.since, lt.limit)
        log.error("[%s] ending the job so that it does not hang: %d/%d tasks of this phase done and "
                  "kept in the journal; exit code %d: run the same command with --resume",
                  rep.label, len(self.result_from), rep.total, EXIT_RESUMABLE)
        try:
            if self.on_abort is not None:
                self.on_abort()
        except Exception:  # noqa: BLE001 - the abort must happen anyway
            log.exception("[%s] while saving state before the abort", rep.label)
        logging.shutdown()              # flush every log file before the processes go
        self.comm.abort(EXIT_RESUMABLE)

    def _all_answered(self) -> bool:
        return not self.dog.unfinished_on(self.out, self.result_from)

    def _dispatch(self):
        """Top every worker up to ``depth`` outstanding tasks; STOP the ones with nothing left."""
        m0 = time.perf_counter()
        nwork = len(self.out) + int(self.master_works)
        for _ in range(self.depth):        # round-robin, so the largest tasks spread out first
            for w in self.out:
                # a second task in hand only while there is more than one left per working rank,
                # so the last tasks are not queued behind a busy rank while another one idles
                if w in self.hosts and w not in self.stopped and w not in self.dog.late \
                        and self.out[w] < self.depth and self.queue \
                        and (self.out[w] == 0 or len(self.queue) > nwork):
                    task = self.queue.popleft()
                    self.copies_queued.discard(task.id)
                    self.out[w] += 1
                    self.dog.sent(w, task.id, time.monotonic())
                    if self.on_start is not None:
                        self.on_start(task, w, self.hosts[w])
                    self.sends.add(self.p2p.isend(task, dest=w, tag=TASK))
        if not self.queue and self._all_answered():
            for w in self.out:
                if w in self.hosts and w not in self.stopped and self.out[w] == 0:
                    self.sends.add(self.p2p.isend(None, dest=w, tag=STOP))
                    self.stopped.add(w)
        self.report.master_overhead += time.perf_counter() - m0

    def _run_own(self, task):
        rep, host = self.report, self.comm.host
        m0 = time.perf_counter()
        self.copies_queued.discard(task.id)
        self.own = (task.id, time.monotonic())
        if self.on_start is not None:
            self.on_start(task, 0, host)
        rep.master_overhead += time.perf_counter() - m0
        ok, res, wall, rss, started = _run_local(self.fn, self.worker_post, task, 0, host)
        m0 = time.perf_counter()
        self.own = None
        if task.id in self.result_from:
            log.warning("[%s] own result of %s ignored: rank %d gave it first", rep.label, task.id,
                        self.result_from[task.id])
        else:
            self.result_from[task.id] = 0
            self.dog.finished(wall, task.id)
            info = TaskInfo(task.id, ok, 0, host, wall, rss, None if ok else res, started)
            _finish(rep, task, ok, res, info, self.on_done, self.on_failed)
        rep.n_messages += 1
        rep.master_overhead += time.perf_counter() - m0
        self._beat()


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
