"""Multi-tile prediction of ``simulate-scaling --tiles T``: several tiles on one task queue.

Each tile is the chain of :mod:`tract7dt_mpi.multitile`: a one-off *prepare* step (catalogue,
headers), one *load* task per band, the white-stack strips, a one-off *inputs* step (store, Gaia,
bright mask), the bands' stellar loci, the ePSF cells, a one-off *fields* step, the bands' PSF
fields, a one-off *plan* step, the patches, a one-off *finish* step (merge, ZP) and the summary
plots.  A step's tasks join the queue when the step before is complete; the queue is ordered as
the program orders it (one-off steps first, then :data:`QUEUE_RANK`, then largest cost first
across tiles, then tile order); a one-off step never runs on a working master.  The event
simulation follows :class:`.scheduler._Master`: ``prefetch`` tasks outstanding per worker, a master
that spends ``overhead`` seconds on every message (one after the other) and, with
``master_works``, runs other tasks when no message waits.  One core per rank.

Efficiency = total task work / (ranks x makespan), i.e. against one process that runs the same
work without any overhead.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq

STEPS = ("prepare", "load", "white", "inputs", "locus", "epsf", "fields", "psf_field", "plan", "patch",
         "finish", "summary")
SERIAL = {"prepare", "inputs", "fields", "plan", "finish"}
#: queue rank of a tile's parallel tasks (``multitile.order``; unlisted kinds: 0): the short tasks
#: that unlock a tile's next step (bands, strips, loci, PSF fields) before any tile's ePSF cells,
#: and those before any patch, so that the tiles' one-off steps run while other tiles' patches
#: keep the ranks busy; a tile's plots rank with patches
QUEUE_RANK = {"epsf": 1, "patch": 2, "summary": 2}


@dataclasses.dataclass
class TileModel:
    """CPU seconds of one tile's steps: one-off steps as one number (0: none), the others per task."""

    prepare: float
    epsf: list
    plan: float
    patch: list
    finish: float
    summary: list = dataclasses.field(default_factory=list)
    load: list = dataclasses.field(default_factory=list)
    white: list = dataclasses.field(default_factory=list)
    inputs: float = 0.0
    locus: list = dataclasses.field(default_factory=list)
    fields: float = 0.0
    psf_field: list = dataclasses.field(default_factory=list)

    def tasks(self, step: str) -> list[float]:
        v = getattr(self, step)
        if step in SERIAL:
            return [float(v)] if v > 0 else []
        return sorted((float(x) for x in v), reverse=True)

    @property
    def work(self) -> float:
        return sum(sum(self.tasks(s)) for s in STEPS)


def tile_model(meas: dict) -> TileModel:
    """A tile's model from :func:`.scaling.load_measurements` of its single-tile results store:
    the measured tasks become the parallel steps, the rank-0 stages the one-off steps.  The store
    does not separate the load plan from the store's top level: all of the load stage's rank-0
    time (with augmentation and bright mask) is taken as the *inputs* step."""
    st, ph, pw = meas["stage_seconds"], meas["phases"], meas["phase_wall"]

    def stage(*keys):
        return sum(float(st.get(k, 0.0)) for k in keys)

    def wall(*keys):
        return sum(float(pw.get(k, 0.0)) for k in keys)

    inputs = max(0.0, stage("load_inputs") - wall("load", "white_stack")) + stage("augment_gaia", "bright_mask")
    fields = max(0.0, stage("build_epsf") - wall("epsf", "psf_fields"))
    summary = list(ph.get("summary_plot", []))
    if not summary and wall("summary_plots") > 0:     # a store from before the plot tasks were kept
        summary = [wall("summary_plots")]
    return TileModel(0.0, list(ph.get("epsf", [])), stage("build_patches"), list(ph.get("patch", [])),
                     stage("merge", "compute_zp"), summary, load=list(ph.get("load", [])),
                     white=list(ph.get("white", [])), inputs=inputs, locus=list(ph.get("epsf_locus", [])),
                     fields=fields, psf_field=list(ph.get("psf_field", [])))


def simulate_tiles(models: list[TileModel], nranks: int, overhead: float = 0.0, *,
                   master_works: bool = False, prefetch: int | None = None,
                   tile_major: bool = False) -> dict:
    """Makespan, work and efficiency of ``models`` run as one multi-tile job on ``nranks``
    (``tile_major``: the queue in tile order before step order, for comparison)."""
    return _TileSim(models, nranks, overhead, master_works, prefetch, tile_major).run()


class _TileSim:
    def __init__(self, models, nranks, overhead, master_works, prefetch, tile_major=False):
        self.models = models
        self.tile_major = tile_major
        self.nw = max(0, nranks - 1)
        self.mw = bool(master_works and nranks > 1) or nranks == 1
        self.depth = max(1, int(prefetch or (2 if self.mw else 1)))
        self.ov = float(overhead)
        self.queue = []                 # heap of (not serial, rank..., seq, cost, tile, step)
        self.left = {}                  # (tile, step) -> unfinished tasks
        self.events = []                # (time, seq, kind, data)
        self.seq = 0
        self.local = [collections.deque() for _ in range(self.nw)]
        self.running = [None] * self.nw
        self.out = [0] * self.nw
        self.t = 0.0
        self.master_free = 0.0
        self.work = 0.0

    def _push(self, t, kind, data):
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, data))

    def _add_step(self, k, i):
        while i < len(STEPS):
            tasks = self.models[k].tasks(STEPS[i])
            if tasks:
                break
            i += 1
        if i == len(STEPS):
            return
        self.left[(k, i)] = len(tasks)
        for c in tasks:
            self.seq += 1
            serial = STEPS[i] in SERIAL
            key = (k, -c) if self.tile_major else (QUEUE_RANK.get(STEPS[i], 0), -c, k)
            heapq.heappush(self.queue, (not serial, *key, self.seq, c, k, i))

    def _take(self, exclusive_ok=True):
        if not self.queue:
            return None
        if exclusive_ok or self.queue[0][0]:
            return heapq.heappop(self.queue)
        held, item = [], None           # a working master skips the serial steps
        while self.queue:
            cand = heapq.heappop(self.queue)
            if cand[0]:
                item = cand
                break
            held.append(cand)
        for h in held:
            heapq.heappush(self.queue, h)
        return item

    def _dispatch(self, now):
        nwork = self.nw + int(self.mw)
        for _ in range(self.depth):
            for w in range(self.nw):
                if self.out[w] < self.depth and self.queue and (self.out[w] == 0 or len(self.queue) > nwork):
                    item = self._take()
                    self.out[w] += 1
                    self.local[w].append(item)
                    if self.running[w] is None:
                        self._start(w, now)

    def _start(self, w, now):
        item = self.local[w].popleft()
        self.running[w] = item
        self._push(now + item[-3], "end", (w, item))

    def _completed(self, item, now):
        k, i = item[-2], item[-1]
        self.work += item[-3]
        self.left[(k, i)] -= 1
        if self.left[(k, i)] == 0:
            self._add_step(k, i + 1)

    def run(self) -> dict:
        for k in range(len(self.models)):
            self._add_step(k, 0)
        if self.nw == 0:            # one process: everything in a row
            total = sum(m.work for m in self.models) + self.ov * sum(
                len(m.tasks(s)) for m in self.models for s in STEPS)
            return {"makespan": total, "work": total, "efficiency": 1.0 if total else float("nan")}
        self._dispatch(0.0)
        while True:
            if not self.events:
                own = self._take(exclusive_ok=False) if self.mw else None
                if own is None:
                    break
                start = max(self.t, self.master_free)
                self.master_free = start + own[-3] + self.ov
                self._push(self.master_free, "own", own)
                continue
            t, _, kind, data = heapq.heappop(self.events)
            self.t = t
            if kind == "end":
                w, item = data
                self.running[w] = None
                if self.local[w]:
                    self._start(w, t)
                done_at = max(t, self.master_free) + self.ov
                self.master_free = done_at
                self._push(done_at, "handled", (w, item))
            elif kind == "handled":
                w, item = data
                self.out[w] -= 1
                self._completed(item, t)
                self._dispatch(t)
            elif kind == "own":
                self._completed(data, t)
                self._dispatch(t)
            if self.mw and self.master_free <= self.t and not any(e[2] == "own" for e in self.events):
                own = self._take(exclusive_ok=False)
                if own is not None:
                    self.master_free = self.t + own[-3] + self.ov
                    self._push(self.master_free, "own", own)
        makespan = self.t
        n = self.nw + 1
        return {"makespan": makespan, "work": self.work,
                "efficiency": self.work / (n * makespan) if makespan > 0 else float("nan")}


def print_table(meas: dict, n_tiles: int, ranks: list[int]) -> None:
    """``simulate-scaling --tiles``: the measured tile repeated ``n_tiles`` times on one queue."""
    from .scheduler import resolve_master_works
    model = tile_model(meas)
    parts = []
    for step in STEPS:
        t = model.tasks(step)
        if t:
            parts.append(f"{step} {t[0]:.1f}s" if step in SERIAL else f"{step} {len(t)} x ({sum(t):.1f} CPU s)")
    print(f"multi-tile: {n_tiles} copies of the measured tile on one queue; per tile: " + ", ".join(parts)
          + "; one core per rank")
    print(f"{'ranks':>6} {'makespan_s':>11} {'efficiency':>10}")
    for n in ranks:
        r = simulate_tiles([model] * n_tiles, n, meas["overhead"],
                           master_works=resolve_master_works("auto", n))
        print(f"{n:>6d} {r['makespan']:>11.2f} {r['efficiency']:>10.3f}")
