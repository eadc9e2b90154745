"""Several tiles under one ``mpirun`` (``tract7dt-mpi run --tiles tiles.txt``), on one task queue.

Every step of a tile is a task or a set of tasks on one master-worker queue, so that a tile's
one-off steps overlap the other tiles' parallel work and rank 0 only dispatches and bookkeeps
(:mod:`tract7dt_mpi.tile_steps` has the task functions):

    prepare (catalogue, headers, load plan)                  one exclusive task on a worker
    -> load one band / white-stack strip                     any rank, one task per band / strip
    -> inputs (store, Gaia, bright mask, cell task list)     one exclusive task
    -> stellar locus of one band / ePSF cells                any rank
    -> fields (ePSF summary, PSF flux errors, patch plan)    one exclusive task
    -> PSF field of one band                                 any rank
    -> plan (task context file)                              one exclusive task
    -> patches                                               any rank; rank 0 writes the tile's results.h5
    -> finish (merge, zero points)                           one exclusive task
    -> summary plots                                         any rank

A step's tasks are put on the queue (:func:`run_tasks` ``feed``) when the step before has all its
results.  The queue holds the one-off steps first (they unlock work), then every tile's short
unlocking tasks (bands, strips, loci, PSF fields), then every tile's ePSF cells, then the patches
and plots, each largest task first whichever tile it belongs to.  Each tile keeps its own
work folder, run lock, journal, results file and resume; its task functions and their inputs
are those of a single-tile ``run``, so its catalog is the same bit for bit.  A tile whose step
fails (bad input, a crash) is reported with its name and config and the other tiles go on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import types

from . import band_psfs
from . import tasks as steps
from .errors import EXIT_ABORT, EXIT_INPUT, EXIT_OK, EXIT_RESUMABLE, EXIT_TASK_FAILURES, InputError
from .io import journal as jr
from .io.runlock import RunLock
from .io.store import ST_DONE, ST_FAILED, ST_STARTED, PlanEntry, ResultsStore, StorePlan
from .logsetup import snapshot_config
from .parallel import get_comm, install_excepthook, signals
from .parallel.runner import plan_resume, write_carried
from .parallel.scaling_tiles import QUEUE_RANK
from .parallel.scheduler import Task, resolve_master_works, run_tasks
from .parallel.watchdog import TaskTimeout
from .tile_steps import FIELDS, FINISH, INPUTS, PLAN, PREPARE, STEP_KINDS as _STEP_KINDS, TileWorker

log = logging.getLogger("tract7dt_mpi.pipeline")

TILE_TASK = "tile/run"          #: journal record of a whole tile (DONE: skipped by --resume)
_JOURNALED = set(_STEP_KINDS) | {"epsf", "patch"}    #: the tasks a tile's journal records
#: tasks whose (large) payload rank 0 drops once they answered (the queue keeps its tasks)
_DROP_PAYLOAD = set(_STEP_KINDS) | {"psf_field", "white"}


@dataclasses.dataclass
class Tile:
    """One tile of the list, as every rank knows it (config loaded on every rank)."""

    index: int
    config: str
    cfg: object = None
    error: str | None = None        #: why the tile cannot run (config/inputs), same on every rank
    name: str = ""


def load_tiles(paths: list[str], load, check=None) -> list[Tile]:
    """Tiles from config paths (``load(path) -> cfg``; ``check(cfg)`` may raise InputError); a bad
    config fails its tile only.  Two tiles writing one work folder: the later one fails."""
    tiles, seen = [], {}
    for k, path in enumerate(paths):
        t = Tile(k, path)
        try:
            t.cfg = load(path)
            if check is not None:
                check(t.cfg)
            wd = os.path.abspath(t.cfg.outputs.work_dir)
            if wd in seen:
                raise InputError(f"outputs.work_dir {wd} is also the work folder of {seen[wd]}")
            seen[wd] = path
        except InputError as exc:
            t.error = str(exc).splitlines()[0]
        tiles.append(t)
    names = [getattr(getattr(t.cfg, "inputs", None), "tile_name", None) for t in tiles]
    for t, n in zip(tiles, names):
        unique = n and names.count(n) == 1 and n != "your_tile_name"
        t.name = str(n) if unique else os.path.splitext(os.path.basename(t.config))[0] + f"#{t.index}"
    return tiles


def order(tasks: list[Task]) -> list[Task]:
    """One-off steps first (they unlock work), then by step (``scaling_tiles.QUEUE_RANK``), then
    largest estimated cost first across tiles, then tile order: the simulator
    (``parallel.scaling_tiles``) predicts 0.95 efficiency for 16 full tiles on 256 ranks this way,
    0.84 with tile order first (the last tile's largest patches then start last)."""
    return sorted(tasks, key=lambda t: (not t.exclusive, QUEUE_RANK.get(t.kind, 0), -float(t.cost),
                                        t.payload[0], t.index, t.id))


def _wrap(k: int, task: Task, exclusive: bool = False) -> Task:
    return Task(f"{k}|{task.id}", task.kind, cost=task.cost, index=task.index, payload=(k, task),
                exclusive=exclusive)


# ---------------------------------------------------------------------- rank 0: one tile's progress
class TileRun:
    """Rank 0's bookkeeping of one tile: lock, journal, store, which step it is in."""

    def __init__(self, tile: Tile, opt: dict, comm, add):
        self.tile, self.cfg, self.opt, self.comm, self.add = tile, tile.cfg, opt, comm, add
        self.k, self.name = tile.index, tile.name
        self.status = "pending"      # running | done | done_with_failures | failed | skipped | stopped
        self.error = None
        self.code = None             # the tile's own exit code (as if it had run alone)
        self.lock = self.journal = self.store = None
        self.waiting: set[str] = set()        # inner ids of the current step's unfinished tasks
        self.infos: dict = {}                 # inner id -> TaskInfo
        self.failed_tasks = 0
        self.t0 = time.monotonic()
        self.wall = 0.0

    # -------------------------------------------------------------- start
    def start(self) -> None:
        if self.tile.error is not None:
            return self.fail(self.tile.error)
        try:
            self.lock = RunLock.acquire(self.cfg.outputs.work_dir, command=" ".join(self.opt.get("argv") or []),
                                        force=bool(self.opt.get("force_unlock")))
            if self.lock.notice:
                log.warning("[tile %s] run lock: %s", self.name, self.lock.notice)
            snapshot_config(self.cfg, logger=log)          # as a single-tile run does
            plan = jr.plan_doc(self.cfg, {"command_family": "pipeline"}, steps.listed_image_files(self.cfg))
            resume = bool(self.opt.get("resume") or self.cfg.patch_run.resume)
            self.resume = resume
            self.journal = jr.Journal(self.cfg.outputs.journal, jr.hash_of(plan), resume=resume,
                                      force=bool(self.opt.get("force")), plan=plan,
                                      meta={"command": "run --tiles", "argv": self.opt.get("argv"),
                                            "ranks": self.comm.size})
        except InputError as exc:
            return self.fail(str(exc).splitlines()[0])
        except OSError as exc:
            return self.fail(f"{type(exc).__name__}: {exc}", EXIT_ABORT)
        if resume and self.journal.state(TILE_TASK) == jr.DONE:
            log.info("[tile %s] finished in an earlier run: skipped (%s)", self.name, self.tile.config)
            self.status, self.code = "skipped", EXIT_OK
            return self._release()
        self.status = "running"
        log.info("[tile %s] started (%s, work folder %s)", self.name, self.tile.config,
                 self.cfg.outputs.work_dir)
        self._step([Task(PREPARE, PREPARE, cost=1.0)], exclusive=True)

    def _step(self, inner: list[Task], exclusive=False) -> None:
        self.waiting = {t.id for t in inner}
        self.add([_wrap(self.k, t, exclusive) for t in inner])

    # -------------------------------------------------------------- results
    def started(self, inner: Task, rank: int, host: str) -> None:
        if self.journal is not None and inner.kind in _JOURNALED:
            self.journal.record(inner.id, jr.STARTED, rank=rank, host=host)
        if self.store is not None and inner.id in self.store.plan.index:
            self.store.set_status(inner.id, ST_STARTED)

    def result(self, inner: Task, res, info) -> None:
        """A task's first result (``res`` None when it failed)."""
        if inner.kind in _DROP_PAYLOAD:
            inner.payload = None
        if self.status != "running":
            return
        bad = isinstance(getattr(res, "data", None), dict) and res.data.get("input_error")
        if inner.kind in _STEP_KINDS and bad:
            res, info = None, dataclasses.replace(info, ok=False, error=f"InputError: {bad}")
        self.infos[inner.id] = info
        try:
            self._record(inner, res, info)
        except Exception as exc:  # noqa: BLE001 - e.g. the tile's results file is gone
            log.exception("[tile %s] recording %s", self.name, inner.id)
            return self.fail(f"recording {inner.id}: {type(exc).__name__}: {exc}", EXIT_ABORT)
        if inner.kind in _STEP_KINDS and not info.ok:
            first = info.error_line
            bad_input = first.split(":", 1)[0] in ("InputError", "ConfigError", "DiskFullError")
            return self.fail(f"{inner.kind[5:]} step failed: {first}", EXIT_INPUT if bad_input else EXIT_ABORT)
        data = None if res is None else res.data
        try:
            self._STEPS[inner.kind](self, inner, res, data, info)
        except InputError as exc:
            self.fail(str(exc).splitlines()[0])
        except Exception as exc:  # noqa: BLE001 - one tile's trouble must not end the others
            log.exception("[tile %s] rank 0 step after %s", self.name, inner.id)
            self.fail(f"after {inner.id}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      EXIT_ABORT)

    def _record(self, inner, res, info):
        if not info.ok:
            self.failed_tasks += inner.kind in ("epsf", "patch")
        if self.store is not None and inner.id in self.store.plan.index:
            if info.ok and res is not None and res.rows is not None:
                parts = getattr(res.rows, "parts", None)      # encoded by the worker (tile_steps)
                i = self.store.plan.index[inner.id]
                if parts is not None and parts[1] and parts[0] != self.store.plan.row_offset[i]:
                    raise RuntimeError(f"rows of {inner.id} encoded for another plan")
                self.store.write_rows(inner.id, res.rows)
            attempt = self.journal.attempts(inner.id) if self.journal is not None else 1
            self.store.set_status(inner.id, ST_DONE if info.ok else ST_FAILED,
                                  (info.started, info.wall, info.rss_mb, info.rank, attempt))
        if self.journal is not None and inner.kind in _JOURNALED:
            extra = {} if info.ok else {"error": info.error}
            self.journal.record(inner.id, jr.DONE if info.ok else jr.FAILED, rank=info.rank,
                                host=info.host, wall=round(info.wall, 4), rss_mb=round(info.rss_mb, 1),
                                **extra)

    def _done_one(self, inner) -> bool:
        self.waiting.discard(inner.id)
        return not self.waiting

    # -------------------------------------------------------------- steps (as pipeline._cmd_run)
    def _load_planned(self, inner, res, data, info):
        self.load_plan, self.loaded, self.strips = data["plan"], {}, {}
        log.info("[tile %s] loading %d band(s)", self.name, len(data["tasks"]))
        self._step(data["tasks"])

    def _band_loaded(self, inner, res, data, info):
        from . import load_steps
        self.loaded[inner.id] = load_steps.band_done(self.load_plan, inner, data, info,
                                                     len(self.loaded) + 1, f"[tile {self.name}] ")
        if self._done_one(inner):       # the first bad band's error fails the tile here
            self._step(load_steps.white_tasks(self.cfg, self.load_plan, self.loaded, to_files=True))

    def _strip_done(self, inner, res, data, info):
        self.strips[inner.id] = data if data is not None else {"failed": info.error_line}
        if self._done_one(inner):
            payload = {"plan": self.load_plan, "bands": self.loaded, "strips": self.strips}
            self.load_plan = self.loaded = self.strips = None
            self._step([Task(INPUTS, INPUTS, cost=1.0, payload=payload)], exclusive=True)

    def _prepared(self, inner, res, data, info):
        self.catalog, self.shape, self.bands, self.cells = (data["catalog"], data["shape"], data["bands"],
                                                            data["cells"])
        self.epsf_tasks = data["epsf_tasks"]
        log.info("[tile %s] loaded: %d band(s), %d ePSF cell task(s)", self.name, len(self.bands),
                 len(self.epsf_tasks))
        self.loci = {}
        if data["locus_tasks"]:
            self._step(data["locus_tasks"])
        else:
            self._epsf_start()

    def _locus_done(self, inner, res, data, info):
        self.loci[inner.payload["band"]] = data["locus"] if data is not None else None
        if self._done_one(inner):
            for t in self.epsf_tasks:           # as tasks.epsf_tasks(..., loci) of a single tile
                t.payload["size_locus"] = self.loci.get(t.payload["band"])
            self._epsf_start()

    def _epsf_start(self):
        tasks = self.epsf_tasks
        self.epsf_skipped, self.metas = {}, {}
        run_list = tasks
        if self.resume:
            run_list, self.epsf_skipped = band_psfs.cells_to_build(
                self.cfg, tasks, lambda tid: self.journal.state(tid) == jr.DONE)
            if self.epsf_skipped:
                log.info("[tile %s] ePSF: %d cell(s) already done, %d to build", self.name,
                         len(self.epsf_skipped), len(run_list))
        self.journal.record_planned([t.id for t in tasks])
        if run_list:
            self._step(run_list)
        else:
            self._epsf_done()

    def _epsf_result(self, inner, res, data, info):
        self.metas[inner.id] = band_psfs.cell_answer(inner, data, info)
        if self._done_one(inner):
            self._epsf_done()

    def _epsf_done(self):
        stamps, ordered = band_psfs.collect_epsf_cells(self.epsf_tasks, self.epsf_skipped, self.metas)
        payload = {"ordered": ordered, "stamps": stamps, "catalog": self.catalog, "shape": self.shape,
                   "bands": self.bands, "cells": self.cells}
        self.metas = None               # rank 0 keeps no tile's data longer than needed
        self._step([Task(FIELDS, FIELDS, cost=1.0, payload=payload)], exclusive=True)

    def _fields_planned(self, inner, res, data, info):
        self.stamps, self.plan, self.fields = data["stamps"], data["plan"], {}
        if data["field_tasks"]:
            self._step(data["field_tasks"])
        else:
            self._write_context()

    def _field_done(self, inner, res, data, info):
        if data is not None:
            for level, msg in data.get("log") or ():
                log.log(level, "[tile %s] %s", self.name, msg)
            if data.get("field") is not None:
                self.fields[inner.id.split(":", 1)[1]] = data["field"]
        if self._done_one(inner):
            from .stages.psf_poly import FIELD_KEY
            for band in sorted(self.fields):            # as the single-tile ePSF phase
                self.stamps.setdefault(band, {})[FIELD_KEY] = self.fields[band]
            self.fields = None
            self._write_context()

    def _write_context(self):
        payload = {"catalog": self.catalog, "plan": self.plan, "stamps": self.stamps, "bands": self.bands}
        self.catalog = None
        self._step([Task(PLAN, PLAN, cost=1.0, payload=payload)], exclusive=True)

    def _planned(self, inner, res, data, info):
        from .stages.fit import result_columns
        cfg, plan = self.cfg, self.plan
        tasks = [Task(steps.patch_task_id(p.patch_tag), "patch", cost=float(p.cost), index=i, payload=i)
                 for i, p in enumerate(plan)]
        to_run, carried = tasks, {}
        if self.resume:
            to_run, carried = plan_resume(cfg.outputs.results_h5, self.journal, tasks,
                                          recover=lambda t: steps.recover_patch_rows(cfg, plan[t.payload]))
            log.info("[tile %s] resume: %d patch(es) carried over, %d to run", self.name, len(carried),
                     len(to_run))
        self.journal.record_planned([t.id for t in tasks])
        ent = []
        for t in self.epsf_tasks:
            x0, x1, y0, y1 = t.payload["box"]
            ent.append(PlanEntry(t.id, "epsf", band=t.payload["band"], tag=t.payload["tag"],
                                 bbox=(x0, x1, y0, y1), cost=t.cost))
        for p in plan:
            ent.append(PlanEntry(steps.patch_task_id(p.patch_tag), "patch", tag=p.patch_tag,
                                 bbox=(p.x0_roi, p.x1_roi, p.y0_roi, p.y1_roi), cost=float(p.cost),
                                 rows=p.base_rows))
        multi = bool(cfg.patch_run.enable_multi_band_simultaneous_fitting)
        self.store = ResultsStore.create(
            self.comm, cfg.outputs.results_h5, StorePlan(ent), result_columns(self.bands, multi),
            epsf=band_psfs.store_epsf_stamps(self.stamps), parallel=False,
            attrs={"plan_hash": self.journal.plan_hash, "bands": list(self.bands), "command": "run"})
        self.stamps = None
        for t in self.epsf_tasks:
            info = self.infos.get(t.id)
            if info is not None:
                self.store.set_status(t.id, ST_DONE if info.ok else ST_FAILED,
                                      (info.started, info.wall, info.rss_mb, info.rank, 1))
            elif t.id in self.epsf_skipped:
                self.store.set_status(t.id, ST_DONE)
        write_carried(self.store, carried, self.journal)
        self.carried = {t.id for t in tasks if t.id in carried}
        self.epsf_tasks = None
        log.info("[tile %s] %d patch task(s) queued", self.name, len(to_run))
        if to_run:
            self._step(to_run)
        else:
            self._patches_done()

    def _patch_result(self, inner, res, data, info):
        if not info.ok:
            steps.write_runner_log(self.cfg.outputs.patch_results_dir, self.plan[inner.payload].patch_tag,
                                   "fail", info.wall, info.error, info.rank, info.host)
        if self._done_one(inner):
            self._patches_done()

    def _patches_done(self):
        self.store.close()
        self.store = None
        steps.write_run_summary(self.cfg, self.plan, types.SimpleNamespace(infos=self.infos), self.carried)
        self.plan = None
        self._step([Task(FINISH, FINISH, cost=1.0)], exclusive=True)

    def _finished(self, inner, res, data, info):
        if self.cfg.plotting.level == "none":
            return self._complete()
        from .summary_steps import summary_tasks
        self._step(summary_tasks(self.cfg, self.bands))

    def _summary_result(self, inner, res, data, info):
        if self._done_one(inner):
            self._complete()

    #: what rank 0 does with a task's first result, by task kind
    _STEPS = {PREPARE: _load_planned, "load": _band_loaded, "white": _strip_done, INPUTS: _prepared,
              "locus": _locus_done, "epsf": _epsf_result, FIELDS: _fields_planned,
              "psf_field": _field_done, PLAN: _planned, "patch": _patch_result, FINISH: _finished,
              "summary": _summary_result}

    # -------------------------------------------------------------- end
    def _complete(self):
        from .io.store import write_run_attrs
        from .parallel.mpienv import usable_cores
        self.wall = time.monotonic() - self.t0
        self.status = "done_with_failures" if self.failed_tasks else "done"
        self.code = EXIT_TASK_FAILURES if self.failed_tasks else EXIT_OK
        # the one-off steps under the single-tile stage names, so that simulate-scaling (also
        # --tiles) can model the tile from this store; the tile's wall includes waiting for others
        walls = {k: sum(self.infos[s].wall for s in ids if s in self.infos)
                 for k, ids in (("load_inputs", (PREPARE, INPUTS)), ("build_patches", (FIELDS, PLAN)),
                                ("merge", (FINISH,)))}
        write_run_attrs(self.cfg.outputs.results_h5, {
            "pipeline_seconds": self.wall, "n_ranks": self.comm.size, "multi_tile": True,
            "stage_seconds": walls, "serial_seconds": sum(walls.values()), "cores": usable_cores()})
        self.journal.record(TILE_TASK, jr.DONE, wall=round(self.wall, 3))
        log.info("[tile %s] finished in %.1fs%s: %s", self.name, self.wall,
                 f" with {self.failed_tasks} failed task(s)" if self.failed_tasks else "",
                 self.cfg.outputs.final_catalog)
        self._release()

    def fail(self, message: str, code: int = EXIT_INPUT) -> None:
        self.status, self.error, self.code = "failed", message, code
        self.wall = time.monotonic() - self.t0
        log.error("[tile %s] FAILED (%s): %s", self.name, self.tile.config, message)
        if self.journal is not None:
            self.journal.record(TILE_TASK, jr.FAILED, error=message)
        self._release()

    def stop(self) -> None:
        """End of the run while the tile is unfinished (stop request): keep state for --resume."""
        if self.status in ("running", "pending"):
            self.status, self.code = "stopped", EXIT_RESUMABLE
            self.wall = time.monotonic() - self.t0
        self._release()

    def _release(self) -> None:
        self.waiting = set()
        if self.store is not None:
            try:
                self.store.close()
            except Exception:  # noqa: BLE001 - closing must not hide the tile's outcome
                log.exception("[tile %s] closing %s", self.name, self.cfg.outputs.results_h5)
            self.store = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# ---------------------------------------------------------------------- the run
def exit_code(statuses: list[str]) -> int:
    """0: every tile done (or done before); 3: stopped early (--resume continues); 4: some tile
    failed or has failed tasks; 2: no tile could run at all (every one failed).  Each tile's own
    code (as if run alone: 0, 1 crashed step, 2 bad input, 3, 4) is in the summary CSV."""
    if "stopped" in statuses:
        return EXIT_RESUMABLE
    if statuses and all(s == "failed" for s in statuses):
        return EXIT_INPUT
    if any(s in ("failed", "done_with_failures") for s in statuses):
        return EXIT_TASK_FAILURES
    return EXIT_OK


def run_tiles(tiles: list[Tile], options: dict, summary_path: str | None = None) -> int:
    """Run every tile on every rank of the world; returns the exit code (same on every rank)."""
    cfg0 = next(t.cfg for t in tiles if t.cfg is not None)
    comm = get_comm(int(cfg0.mpi.threads_per_rank))
    install_excepthook(comm, log)
    signals.reset()
    signals.install()
    master_works = resolve_master_works(cfg0.mpi.master_works, comm.size)
    worker = TileWorker(tiles)
    t0 = time.monotonic()
    runs, ready = {}, []
    if comm.is_master:
        if options.get("deadline"):
            signals.set_deadline(float(options["deadline"]))
        log.info("Multi-tile run: %d tile(s) on %d rank(s)%s", len(tiles), comm.size,
                 "; rank 0 also runs tasks (mpi.master_works)" if master_works and comm.size > 1 else "")
        for t in tiles:
            runs[t.index] = TileRun(t, options, comm, ready.extend)
    elif comm.size > 1:
        steps.warm_up()
    pending = [t.index for t in tiles] if comm.is_master else []

    def feed():
        # tiles start one per call (lock, journal, input signatures: up to a second each), so that
        # rank 0 keeps dispatching in between; more only while a start gives no task
        while pending and not ready:
            runs[pending.pop(0)].start()
        new = list(ready)
        ready.clear()
        return new

    def on_start(task, rank, host):
        k, inner = task.payload
        runs[k].started(inner, rank, host)

    def on_done(task, res, info):
        k, inner = task.payload
        runs[k].result(inner, res, info)

    def on_failed(task, info):
        k, inner = task.payload
        runs[k].result(inner, None, info)

    def on_abort():
        for r in runs.values():
            r.stop()

    rep = run_tasks(comm, feed() if comm.is_master else None, worker.run, label="tiles",
                    on_start=on_start, on_done=on_done, on_failed=on_failed,
                    heartbeat_sec=float(cfg0.mpi.heartbeat_sec), master_works=master_works,
                    timeout=TaskTimeout.from_config(cfg0.mpi), on_abort=on_abort, feed=feed, order=order)
    worker.close()
    code = None
    if comm.is_master:
        for r in runs.values():
            r.stop()
        statuses = [runs[t.index].status for t in tiles]
        code = exit_code(statuses)
        _report(tiles, runs, rep, time.monotonic() - t0, summary_path)
        if rep.stopped:
            log.warning("Stopped early (%s): run the same command with --resume to continue",
                        signals.stop_reason())
        log.info("Multi-tile run finished in %.2fs (exit code %d)", time.monotonic() - t0, code)
    return comm.bcast(code if comm.is_master else None)


def _report(tiles, runs, rep, total, summary_path) -> None:
    """One log line per tile and ``summary_path`` (CSV: tile, config, status, wall_s, error)."""
    import pandas as pd
    rows = []
    for t in tiles:
        r = runs[t.index]
        rows.append({"tile": t.name, "config": t.config, "status": r.status, "exit_code": r.code,
                     "wall_s": round(r.wall, 3),
                     "failed_tasks": r.failed_tasks, "error": r.error or ""})
        log.info("Tile %-20s %-18s %s", t.name, r.status, r.error or (t.cfg.outputs.final_catalog
                                                                       if r.status.startswith("done") else ""))
    busy = sum(rep.busy.values())
    log.info("Summary: %d tile(s), %d/%d tasks done, %d failed; busy %.1f CPU-s in %.1fs wall",
             len(tiles), rep.done, rep.total, len(rep.failed), busy, total)
    if summary_path:
        from .io.atomic import atomic_write_csv
        atomic_write_csv(summary_path, pd.DataFrame(rows, columns=list(rows[0]) if rows else None))
