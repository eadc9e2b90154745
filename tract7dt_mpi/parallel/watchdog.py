"""Rank 0's watch over running tasks: which task is late, which rank has gone silent; heartbeat.

Why: a frozen node, a stalled NFS mount or a process stopped by SIGSTOP does not fail, it just stops
answering; MPI notices nothing and the job waits forever.  The master knows what it sent to each
worker and in which order (a worker runs its tasks one after the other), so it knows when each
worker's current task started.  A task is *late* when it runs longer than its limit:

* ``mpi.task_timeout_sec`` when > 0 (the same limit for every task), otherwise
* ``mpi.task_timeout_factor`` x the task's expected time, but at least ``mpi.task_timeout_min_sec``.
  The expected time comes from this phase's own finished tasks: the 90th percentile of their wall
  times, or, for a task of larger estimated cost, its cost x the median of wall/cost.
  Until a task of the phase has finished there is no auto limit.

The scheduler stops sending work to a late rank and hands its unfinished tasks to other ranks (each
task at most :data:`MAX_COPIES` times at once; the first result wins).  A late rank that answers is
back in service.  A late rank still silent twice its limit after its task started is *silent*: once
no other rank has useful work left the job ends with the resumable exit code (see ``scheduler``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time

log = logging.getLogger(__name__)

#: finished-task percentile that defines a phase's typical task time
QUANTILE = 0.9
#: copies of one task handed out in one phase (the original and one re-run)
MAX_COPIES = 2


@dataclasses.dataclass(frozen=True)
class TaskTimeout:
    """When a running task counts as late (the ``mpi.task_timeout_*`` keys)."""

    factor: float = 10.0        #: x the expected time; 0 = no auto limit
    min_sec: float = 60.0       #: floor of the auto limit (s)
    limit_sec: float = 0.0      #: fixed limit for every task (s); 0 = auto

    @classmethod
    def from_config(cls, mpi) -> "TaskTimeout":
        """From the ``mpi`` config section (missing keys keep the defaults)."""
        d = cls()
        return cls(float(getattr(mpi, "task_timeout_factor", d.factor)),
                   float(getattr(mpi, "task_timeout_min_sec", d.min_sec)),
                   float(getattr(mpi, "task_timeout_sec", d.limit_sec)))

    @property
    def join_sec(self) -> float:
        """How long the master waits for every worker to announce itself at the start of a phase
        (a worker that never does counts as silent after twice this)."""
        return max(self.min_sec, self.limit_sec, 1.0)


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile of a non-empty list (as numpy's default)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


class TaskTimes:
    """Wall times (and estimated costs) of the phase's finished tasks -> per-task limits."""

    def __init__(self, policy: TaskTimeout):
        self.policy = policy
        self.walls: list[float] = []
        self.per_cost: list[float] = []
        self._cache = None

    def add(self, wall: float, cost: float) -> None:
        self.walls.append(max(0.0, float(wall)))
        if cost and cost > 0:
            self.per_cost.append(max(0.0, float(wall)) / float(cost))
        self._cache = None

    def typical(self) -> tuple[float, float]:
        """(90th percentile of wall times, median of wall/cost); NaN when nothing finished yet."""
        if self._cache is None:
            w = _quantile(self.walls, QUANTILE) if self.walls else float("nan")
            c = _quantile(self.per_cost, 0.5) if self.per_cost else float("nan")
            self._cache = (w, c)
        return self._cache

    def expected(self, cost: float) -> float:
        w, c = self.typical()
        if cost and cost > 0 and c == c:
            return max(w, float(cost) * c)
        return w

    def limit(self, cost: float) -> float:
        """Seconds after which a task of this cost is late (inf: no limit yet)."""
        p = self.policy
        if p.limit_sec > 0:
            return p.limit_sec
        if p.factor <= 0 or not self.walls:
            return math.inf
        return max(p.min_sec, p.factor * self.expected(cost))

    def describe(self) -> str:
        p = self.policy
        if p.limit_sec > 0:
            return f"mpi.task_timeout_sec = {p.limit_sec:g}s"
        w, _ = self.typical()
        return (f"{p.factor:g} x expected time (phase p{int(QUANTILE * 100)} {w:.3g}s), "
                f"at least {p.min_sec:g}s")


@dataclasses.dataclass
class Late:
    """A rank whose current task overran its limit."""

    task_id: str
    since: float          #: monotonic time the task started on that rank
    declared: float       #: monotonic time it was found late
    limit: float

    @property
    def silent_at(self) -> float:
        """Time from which the rank counts as silent (twice the limit after the task started)."""
        return self.since + 2.0 * self.limit


class Watchdog:
    """What each worker holds (in the order sent), when its current task started, who is late."""

    def __init__(self, policy: TaskTimeout, workers, cost_of, kind_of=None):
        self.times = TaskTimes(policy)
        self.cost_of = cost_of                                   # task id -> estimated cost
        self.kind_of = kind_of      # task id -> kind: each kind has its own expected times
        self._kinds: dict = {}
        self.held = {w: collections.deque() for w in workers}    # task ids sent, oldest first
        self.since = {w: 0.0 for w in workers}                   # start of the oldest one
        self.late: dict[int, Late] = {}
        self.copies = collections.Counter()                      # task id -> times handed out

    def sent(self, rank: int, task_id: str, now: float) -> None:
        q = self.held[rank]
        if not q:
            self.since[rank] = now
        q.append(task_id)
        self.copies[task_id] += 1

    def answered(self, rank: int, task_id: str, now: float) -> Late | None:
        """A result from ``rank``; its next task starts now.  Returns its Late record if it was late."""
        q = self.held[rank]
        try:
            q.remove(task_id)
        except ValueError:
            pass
        self.since[rank] = now
        return self.late.pop(rank, None)

    def times_of(self, task_id: str) -> TaskTimes:
        """The finished-task times a task is compared with (its kind's, when kinds are given:
        a queue mixing ePSF cells, patches and a tile's loading must not share one scale)."""
        if self.kind_of is None:
            return self.times
        kind = self.kind_of(task_id)
        if kind not in self._kinds:
            self._kinds[kind] = TaskTimes(self.times.policy)
        return self._kinds[kind]

    def finished(self, wall: float, task_id: str) -> None:
        """A first result: its wall time joins the phase's distribution."""
        self.times.add(wall, self.cost_of(task_id))
        if self.kind_of is not None:
            self.times_of(task_id).add(wall, self.cost_of(task_id))

    def running(self):
        """(rank, task id, start) of every worker's current task."""
        return [(w, q[0], self.since[w]) for w, q in self.held.items() if q]

    def find_late(self, now: float) -> list[int]:
        """Ranks whose current task just passed its limit (they are marked late)."""
        new = []
        for w, tid, t0 in self.running():
            if w in self.late:
                continue
            lim = self.times_of(tid).limit(self.cost_of(tid))
            if now - t0 > lim:
                self.late[w] = Late(tid, t0, now, lim)
                new.append(w)
        return new

    def can_copy(self, task_id: str) -> bool:
        return self.copies[task_id] < MAX_COPIES

    def silent(self, now: float) -> list[int]:
        """Late ranks that have been silent for twice their limit."""
        return [w for w, lt in self.late.items() if now >= lt.silent_at]

    def unfinished_on(self, ranks, done) -> bool:
        """True if one of ``ranks`` holds a task that has no result yet."""
        return any(tid not in done for w in ranks for tid in self.held[w])


class Heartbeat:
    """Periodic progress line: done/total, failed, rate, ETA, slowest running task + host, late ones."""

    def __init__(self, label: str, total: int, every: float):
        self.label, self.total, self.every = label, total, float(every)
        self.t0 = time.monotonic()
        self.next = self.t0 + self.every if self.every > 0 else float("inf")

    def maybe(self, done: int, failed: int, running=(), late="", force: bool = False) -> None:
        """``running``: [(task id, rank, host, monotonic start)]; ``late``: text naming the late
        ranks and tasks ("" if none); either may be a callable, evaluated only when a line is due."""
        now = time.monotonic()
        if not force and now < self.next:
            return
        self.next = now + self.every
        running = running() if callable(running) else list(running)
        late = late() if callable(late) else late
        el = now - self.t0
        fin = done + failed
        rate = fin / el if el > 0 else 0.0
        eta = (self.total - fin) / rate if rate > 0 else float("nan")
        slow = ""
        if running:
            tid, rank, host, t_start = min(running, key=lambda r: r[3])
            slow = f"; slowest running {tid} on {host} (rank {rank}) for {now - t_start:.1f}s"
        eta_s = f"{eta:.0f}s" if eta == eta else "?"
        log.info("[%s] %d/%d done, %d failed, %d running, %.3g tasks/s, ETA %s%s%s",
                 self.label, done, self.total, failed, len(running), rate, eta_s, slow,
                 f"; LATE: {late}" if late else "")
