"""The order of the stages of every pipeline command, and which rank runs what.

The work itself lives in :mod:`tract7dt_mpi.tasks` (and :mod:`tract7dt_mpi.load_steps`); this
module only sequences it.  Rank 0 is the master: it runs the rank-0-only steps and dispatches
units of work (bands and white-stack strips into the prepared-image store, ePSF cells, then
patches, largest first) through :mod:`tract7dt_mpi.parallel`; the other ranks pull and run them.  After each rank-0-only step its
status is broadcast, so an input error found by rank 0 reaches the user once with exit code 2 on
every rank, and no rank waits forever.  Any other exception propagates to the CLI, which aborts
the communicator.  Results do not depend on the number of ranks: tasks are pure functions of their
descriptors and the final catalog is built in plan order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time

from . import band_psfs
from . import tasks as steps
from .errors import (EXIT_INPUT, EXIT_OK, EXIT_RESUMABLE, EXIT_TASK_FAILURES, InputError,
                     disk_full_error, is_disk_full)
from .parallel import get_comm, install_excepthook, signals
from .io import journal
from .parallel.runner import plan_resume, run_phase, write_carried
from .parallel.scheduler import Task, resolve_master_works
from .io.store import ST_DONE, ST_FAILED, PlanEntry, ResultsStore, StorePlan, write_run_attrs
from .parallel.watchdog import TaskTimeout

log = logging.getLogger("tract7dt_mpi.pipeline")

COMMANDS = ("run", "run-epsf", "build-patches", "build-patch-inputs", "run-patches", "merge",
            "compute-zp")


def _as_received(obj):
    """The object as a worker would receive it (pickled and unpickled).

    With one process the master runs the tasks itself; giving it the same unpickled copies the
    workers get (same pandas block layout, fresh contiguous arrays) keeps the floating-point
    results of N = 1 identical to those of N > 1.
    """
    import pickle
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _disk_guard(cfg, fn, *args):
    """``fn(*args)``; a full disk or quota becomes a one-line DiskFullError (an InputError)."""
    try:
        return fn(*args)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full_error(exc, cfg.outputs.work_dir) from None


class _InputStop(Exception):
    """Raised on every rank after rank 0 reported an InputError (message on rank 0 only)."""

    def __init__(self, exc):
        super().__init__(str(exc))
        self.exc = exc


class _Run:
    """State of one command on one rank."""

    def __init__(self, command, cfg, options):
        self.command, self.cfg, self.opt = command, cfg, options or {}
        self.comm = get_comm(int(cfg.mpi.threads_per_rank))
        self.t0 = time.monotonic()
        from .parallel.mpienv import process_age, process_usage, system_busy_seconds
        self.startup = process_age()       # interpreter + imports + MPI_Init before the pipeline
        self.cpu0 = process_usage()["cpu_s"]
        self.sys0 = system_busy_seconds()
        self.warmup = 0.0
        self._deferred = None              # InputError of a deferred rank-0 step
        self.timings: dict[str, float] = {}
        self.phase_seconds: dict[str, float] = {}
        self.reports = []
        self.load_runs = []                # (tasks, report) of the load stage's phases (rank 0)
        self.extra_tasks = {}              # phase -> [(start, wall)] of tasks outside the plan store
        self.journal = None
        self.failed = 0
        self.stopped = False
        self.worker = steps.Worker(cfg)
        self.hb = float(cfg.mpi.heartbeat_sec)
        self.task_timeout = TaskTimeout.from_config(cfg.mpi)     # late tasks go to other ranks
        #: rank 0 also runs tasks (mpi.master_works; auto = small worlds)
        self.master_works = resolve_master_works(cfg.mpi.master_works,
                                                 self.comm.size)
        if self.master and self.comm.size > 1:
            log.info("MPI: %d ranks; rank 0 %s", self.comm.size,
                     "dispatches and runs tasks (mpi.master_works)" if self.master_works
                     else "only dispatches")

    @property
    def master(self) -> bool:
        return self.comm.is_master

    @contextlib.contextmanager
    def stage(self, name):
        t = time.perf_counter()
        if self.master:
            log.info("Starting %s...", name)
        yield
        dt = time.perf_counter() - t
        self.timings[name] = self.timings.get(name, 0.0) + dt
        if self.master:
            log.info("Finished %s in %.2fs", name, dt)

    def on_master(self, fn, *args, share=False, defer=False):
        """Run ``fn`` on rank 0 only; broadcast InputError status (and the result if ``share``).

        ``defer``: no broadcast now; an InputError is reported by the next ``on_master`` call
        (so the other ranks do not wait here, e.g. while they import the task modules)."""
        status, result = None, None
        if defer and self.comm.size > 1:
            if self.master and self._deferred is None:
                try:
                    _disk_guard(self.cfg, fn, *args)
                except InputError as exc:
                    self._deferred = exc
            return None
        if self.master:
            if self._deferred is not None:
                status, self._deferred = self._deferred, None
            else:
                try:
                    result = _disk_guard(self.cfg, fn, *args)
                except InputError as exc:
                    status = exc
        if self.comm.size > 1:
            msg = self.comm.bcast((None if status is None else (type(status), str(status)),
                                   result if share else None))
            if msg[0] is not None and status is None:
                status = msg[0][0](msg[0][1])
            if share:
                result = msg[1]
        if status is not None:
            raise _InputStop(status)
        return result

    # ------------------------------------------------------------------ journal
    def open_journal(self):
        def _open():
            plan = journal.plan_doc(self.cfg, {"command_family": "pipeline"}, steps.listed_image_files(self.cfg))
            self.journal = journal.Journal(self.cfg.outputs.journal, journal.hash_of(plan),
                                     resume=bool(self.opt.get("resume")),
                                     force=bool(self.opt.get("force")), plan=plan,
                                     meta={"command": self.command, "argv": self.opt.get("argv"),
                                           "ranks": self.comm.size})
            if self.opt.get("resume"):
                log.info("Resuming from %s (%d task records)", self.cfg.outputs.journal,
                         len(self.journal.last))
        self.on_master(_open, defer=True)        # reported with the load step's status

    # ------------------------------------------------------------------ rank-0 input steps
    def load(self, write_store=True, plots=True, bright=True):
        """Load [+ augment] [+ bright mask] on rank 0; returns the LoadResult there (else None)."""
        cfg, res = self.cfg, None
        plots = plots and cfg.plotting.level == "full"
        with self.stage("load_inputs"):
            res = self.load_bands(plots) if write_store else self.on_master(steps.load_step, cfg, False, plots)
        if self.stopped:
            return None
        self.warm_up()      # overlaps with rank 0's end of the load stage, augmentation, bright mask
        if cfg.zp.enabled:
            with self.stage("augment_gaia"):
                self.on_master(steps.augment_step, cfg, res, plots)
        if bright and cfg.bright_mask.enabled:
            with self.stage("bright_mask"):
                self.on_master(steps.bright_mask_step, cfg, res, write_store, plots)
        if self.master and write_store:
            log.info("compose_final_masks: bad = nonfinite | saturated%s, applied when ROIs are read",
                     " | bright_mask" if (bright and cfg.bright_mask.enabled) else "")
            steps.save_working_catalog(cfg, res.catalog)
        return res

    def warm_up(self):
        """Workers of a command with ePSF or patch tasks import their modules ahead of them."""
        if not self.master and self.command in ("run", "run-epsf", "run-patches", "build-patch-inputs"):
            t = time.perf_counter()
            steps.warm_up()
            self.warmup = time.perf_counter() - t

    def load_bands(self, plots):
        """S1 with one task per band and the white stack in row strips on every rank
        (:mod:`tract7dt_mpi.load_steps`); rank 0 plans and writes the store's top level.
        Returns the LoadResult on rank 0; None when a stop request came meanwhile."""
        from . import load_steps as ls
        cfg = self.cfg
        plan = self.on_master(ls.plan_step, cfg, plots)
        bands = {}

        def band_done(task, data, info):
            bands[task.id] = ls.band_done(plan, task, data, info, len(bands) + 1)

        if not self._load_phase("load", ls.band_tasks(cfg, plan) if self.master else None,
                                functools.partial(ls.run_band, cfg), band_done):
            return None
        strip_tasks = self.on_master(ls.white_tasks, cfg, plan, bands)    # a bad band's InputError
        strips = ls.WhiteRows(plan) if self.master else None
        if not self._load_phase("white_stack", strip_tasks, ls.run_white_strip,
                                lambda task, data, info: strips.add(task, data, info)):
            return None
        return self.on_master(ls.finish_step, cfg, plan, bands, strips, plots)

    def _load_phase(self, label, tasks, fn, on_result) -> bool:
        """One phase of the load stage on every rank; False when it was stopped."""
        rep = run_phase(self.comm, label, tasks, fn, on_result=on_result, heartbeat_sec=self.hb,
                        master_works=self.master_works, timeout=self.task_timeout)
        self._account(label, rep)
        if self.master:                 # kept for the results store's plan and timing
            self.load_runs.append((tasks, rep))
        self.stopped |= self.comm.bcast(rep.stopped if self.master else None)
        return not self.stopped

    def share_catalog(self, catalog):
        """Broadcast the working catalog to every rank (workers build patch tables from it)."""
        cat = self.comm.bcast(catalog if self.master else None)
        self.worker.catalog = self._local_copy(cat)
        return cat

    @property
    def runs_tasks_here(self) -> bool:
        """True on rank 0 when it runs tasks itself (one process, or ``mpi.master_works``)."""
        return self.master and (self.comm.size == 1 or self.master_works)

    def _local_copy(self, obj):
        """What the task functions on this rank see: on a task-running rank 0, the object as a
        worker receives it (see :func:`_as_received`), so results do not depend on the rank."""
        return _as_received(obj) if self.runs_tasks_here else obj

    # ------------------------------------------------------------------ ePSF phase
    def epsf_phase(self, lr, cells):
        """ePSF units through the queue; returns stamps {band: {tag: (stamp, nstars)}} everywhere."""
        cfg = self.cfg
        tasks, skipped, metas, loci, run_list = [], {}, {}, {}, []

        def got_locus(task, data, info):
            loci[task.payload["band"]] = data["locus"] if data is not None else None

        # each band's stellar size locus, which its cells need: one task per band
        ltasks = steps.locus_tasks(cfg, lr, cells) if self.master else None
        lrep = run_phase(self.comm, "epsf_locus", ltasks, self.worker.band_locus, on_result=got_locus,
                         heartbeat_sec=self.hb, master_works=self.master_works, timeout=self.task_timeout)
        self._account("epsf_locus", lrep)
        self._record_extra("epsf_locus", lrep)
        self.stopped |= self.comm.bcast(lrep.stopped if self.master else None)
        if self.master and not self.stopped:
            tasks = steps.epsf_tasks(cfg, lr, cells, {b: loci.get(b) for b in lr.bands})
            if self.opt.get("resume") and self.journal is not None:
                keep, skipped = band_psfs.cells_to_build(
                    cfg, tasks, lambda tid: self.journal.state(tid) == journal.DONE)
                if skipped:
                    log.info("ePSF: %d cell(s) already done, %d to build", len(skipped), len(keep))
                run_list = keep
            else:
                run_list = tasks
            self.journal.record_planned([t.id for t in tasks])

        def collect(task, data, info):
            metas[task.id] = band_psfs.cell_answer(task, data, info)

        with self.stage("build_epsf"):
            rep = run_phase(self.comm, "epsf", run_list if self.master else None, self.worker.epsf_cell,
                            journal=self.journal, on_result=collect, heartbeat_sec=self.hb,
                            master_works=self.master_works, timeout=self.task_timeout)
            self._account("epsf", rep)
            stamps = ftasks = None
            if self.master:
                stamps, ordered = band_psfs.collect_epsf_cells(tasks, skipped, metas)
                band_psfs.write_epsf_summary(cfg, ordered)
                stamps = band_psfs.with_psf_flux_errors(stamps, ordered)
                ftasks = [] if rep.stopped else band_psfs.field_tasks(cfg, ordered, self.worker.prepared,
                                                                       lr.catalog)
                self.epsf_tasks, self.epsf_skipped, self.epsf_report = tasks, skipped, rep
            fields = {}

            def got_field(task, data, info):
                if data is not None:            # the task's log lines (logsetup.collected)
                    for level, msg in data.get("log") or ():
                        log.log(level, "%s", msg)
                if data is not None and data.get("field") is not None:
                    fields[task.payload["band"]] = data["field"]

            # every band's PSF field, bright-star wing and halos: one task per band
            frep = run_phase(self.comm, "psf_fields", ftasks, self.worker.psf_field, on_result=got_field,
                             heartbeat_sec=self.hb, master_works=self.master_works, timeout=self.task_timeout)
            self._account("psf_fields", frep)
            self._record_extra("psf_field", frep)
            if self.master:
                from .stages.psf_poly import FIELD_KEY
                for band in sorted(fields):
                    stamps.setdefault(band, {})[FIELD_KEY] = fields[band]
            stamps, stopped = self.comm.bcast((stamps, rep.stopped or frep.stopped) if self.master else None)
        self.stopped |= stopped
        return stamps

    # ------------------------------------------------------------------ patch phase
    def patch_phase(self, plan, stamps, bands, fn=None, label="patches", use_store=True):
        """Patch units (largest cost first) into the results store; returns the report."""
        from .stages.fit import result_columns
        cfg = self.cfg
        self.worker.plan = plan
        self.worker.psfs = band_psfs.psf_choices(cfg, self._local_copy(stamps))
        prefix = "patch" if use_store else label
        tasks = [Task(f"{prefix}/{p.patch_tag}", prefix, cost=float(p.cost), index=i, payload=i)
                 for i, p in enumerate(plan)]
        to_run, carried = tasks, {}
        if self.master:
            if self.opt.get("resume") and use_store:
                to_run, carried = plan_resume(cfg.outputs.results_h5, self.journal, tasks,
                                              recover=lambda t: steps.recover_patch_rows(cfg, plan[t.payload]))
                log.info("Resume: %d patch(es) carried over, %d to run", len(carried), len(to_run))
            self.journal.record_planned([t.id for t in tasks])
        multi = bool(cfg.patch_run.enable_multi_band_simultaneous_fitting)
        with self.stage("run_patches" if use_store else "build_patch_inputs"):
            store = None
            if use_store:
                store = ResultsStore.create(
                    self.comm, cfg.outputs.results_h5, StorePlan(self._store_entries(plan)),
                    result_columns(bands, multi), epsf=band_psfs.store_epsf_stamps(stamps),
                    attrs={"plan_hash": self.journal.plan_hash if self.journal else "",
                           "bands": list(bands), "command": self.command})
            if self.master and store is not None:
                self._epsf_status(store)
                write_carried(store, carried, self.journal)

            def on_result(task, data, info):
                if not info.ok:
                    steps.write_runner_log(cfg.outputs.patch_results_dir, plan[task.payload].patch_tag, "fail",
                                       info.wall, info.error, info.rank, info.host)

            rep = run_phase(self.comm, label, to_run if self.master else None, fn or self.worker.patch_fit,
                            store=store, journal=self.journal, on_result=on_result, heartbeat_sec=self.hb,
                            master_works=self.master_works, timeout=self.task_timeout)
            if store is not None:
                store.close()
            self._account(label, rep)
            if self.master and use_store:
                steps.write_run_summary(cfg, plan, rep, {t.id for t in tasks if t.id in carried})
            self.stopped |= self.comm.bcast(rep.stopped if self.master else None)
        return rep

    def _store_entries(self, plan):
        ent = []
        for tasks, _rep in self.load_runs if self.master else []:
            ent += [PlanEntry(t.id, t.kind, cost=t.cost) for t in tasks]
        for t in getattr(self, "epsf_tasks", []) if self.master else []:
            x0, x1, y0, y1 = t.payload["box"]
            ent.append(PlanEntry(t.id, "epsf", band=t.payload["band"], tag=t.payload["tag"],
                                 bbox=(x0, x1, y0, y1), cost=t.cost))
        ent = self.comm.bcast(ent if self.master else None)    # identical on every rank
        for p in plan:
            ent.append(PlanEntry(steps.patch_task_id(p.patch_tag), "patch", tag=p.patch_tag,
                                 bbox=(p.x0_roi, p.x1_roi, p.y0_roi, p.y1_roi), cost=float(p.cost),
                                 rows=p.base_rows))
        return ent

    def _epsf_status(self, store):
        for tasks, load_rep in self.load_runs:
            for t in tasks:
                info = load_rep.infos.get(t.id)
                if info is not None:
                    store.set_status(t.id, ST_DONE if info.ok else ST_FAILED,
                                     (info.started, info.wall, info.rss_mb, info.rank, 1))
        rep = getattr(self, "epsf_report", None)
        for t in getattr(self, "epsf_tasks", []):
            info = rep.infos.get(t.id) if rep is not None else None
            if info is not None:
                store.set_status(t.id, ST_DONE if info.ok else ST_FAILED,
                                 (info.started, info.wall, info.rss_mb, info.rank, 1))
            elif t.id in getattr(self, "epsf_skipped", {}):
                store.set_status(t.id, ST_DONE)

    def _account(self, label, rep):
        self.reports.append(rep)
        self.phase_seconds[label] = self.phase_seconds.get(label, 0.0) + rep.wall
        if self.master:
            self.failed += len(rep.failed)

    def summary_phase(self, bands):
        """The ``plotting.level`` summary figures as tasks on every rank (never fail the run)."""
        if self.cfg.plotting.level == "none":
            return
        from .summary_steps import summary_tasks
        with self.stage("summary_plots"):
            rep = run_phase(self.comm, "summary_plots", summary_tasks(self.cfg, bands) if self.master else None,
                            self.worker.summary_plot, heartbeat_sec=self.hb, master_works=self.master_works)
            self._account("summary_plots", rep)      # parallel work, not serial time of the run
            self._record_extra("summary_plot", rep)

    def _record_extra(self, kind, rep):
        """Keep the start and wall of a phase's tasks that have no row in the results store's plan
        (PSF fields, summary figures), for ``simulate-scaling`` (run attribute ``extra_tasks``)."""
        if self.master and rep is not None:
            self.extra_tasks[kind] = [(i.started, i.wall) for i in rep.infos.values() if i.ok]

    # ------------------------------------------------------------------ wrap-up
    def finish(self, code_if_ok=EXIT_OK):
        from .parallel.mpienv import process_usage, usable_cores
        total = time.monotonic() - self.t0
        code = EXIT_RESUMABLE if self.stopped else (EXIT_TASK_FAILURES if self.failed else code_if_ok)
        mine = process_usage()
        usage = self.comm.gather(dict(mine, startup_s=round(self.startup, 3),
                                      warmup_s=round(self.warmup, 3),
                                      run_cpu_s=round(mine["cpu_s"] - self.cpu0, 3)))
        background = float("nan")
        if self.master and usage:
            from .parallel.mpienv import system_busy_seconds
            ours = sum(u["run_cpu_s"] for u in usage)
            background = max(0.0, (system_busy_seconds() - self.sys0 - ours) / max(total, 1e-9))
        rss = [u["rss_mb"] for u in usage or []]            # peak RSS (MiB) of every rank
        if self.master:
            if self.journal is not None:
                self.journal.close()
            busy = {}
            msgs = sum(r.n_messages for r in self.reports)
            over = sum(r.master_overhead for r in self.reports)
            for r in self.reports:
                for k, v in r.busy.items():
                    busy[k] = busy.get(k, 0.0) + v
            if any(r.total for r in self.reports) and os.path.exists(self.cfg.outputs.results_h5) \
                    and "run_patches" in self.timings:
                write_run_attrs(self.cfg.outputs.results_h5, {
                    "pipeline_seconds": total, "stage_seconds": self.timings,
                    "phase_seconds": self.phase_seconds,
                    "extra_tasks": self.extra_tasks,
                    "serial_seconds": max(0.0, total - sum(self.phase_seconds.values())),
                    "overhead_per_task": over / max(1, msgs), "n_ranks": self.comm.size,
                    "busy_seconds": {str(k): v for k, v in busy.items()}, "peak_rss_mb": rss,
                    "rank_usage": usage, "startup_seconds": self.startup,
                    "master_works": int(self.master_works), "cores": usable_cores(),
                    "background_cores": background,
                    "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else []})
            frac = ", ".join(f"r{k}={v / max(total, 1e-9):.2f}" for k, v in
                             sorted({r: busy.get(r, 0.0) for r in range(self.comm.size)}.items()))
            log.info("Summary: %s on %d rank(s): %s; failed tasks: %d; master dispatch overhead "
                     "%.3f ms/message; busy fraction per rank: %s", self.command, self.comm.size,
                     "; ".join(f"{r.label} {r.done}/{r.total} done" for r in self.reports) or "no tasks",
                     self.failed, 1e3 * over / max(1, msgs), frac)
            steps.log_rank_usage(usage, background, usable_cores())
            if self.stopped:
                log.warning("Stopped early (%s): run the same command with --resume to continue",
                            signals.stop_reason())
            log.info("Pipeline finished in %.2fs (exit code %d)", total, code)
        self.worker.close()
        return self.comm.bcast(code if self.master else None)


# ---------------------------------------------------------------------- commands
def _cmd_run(R: _Run, epsf_only=False):
    R.open_journal()
    lr = R.load(write_store=True, plots=True, bright=not epsf_only)
    if R.stopped:
        return R.finish()
    cat = R.share_catalog(lr.catalog if R.master else None)
    cells = R.on_master(lambda: steps.active_cells(R.cfg, cat, lr.shape), share=True)
    stamps = R.epsf_phase(lr, cells)
    if epsf_only or R.stopped:
        return R.finish()
    with R.stage("build_patches"):
        plan = R.on_master(lambda: steps.patch_plan(R.cfg, cat, lr.shape, cells, len(lr.bands)), share=True)
        bands = R.comm.bcast(lr.bands if R.master else None)
    R.patch_phase(plan, stamps, bands)
    if R.stopped:
        return R.finish()
    with R.stage("merge"):
        # the working WCS as stored in the prepared store: `merge` alone gives the same RA/DEC
        final = R.on_master(lambda: steps.merge_step(R.cfg, cat, steps.results_table(R.cfg, plan),
                                                 *steps.prepared_frame(R.cfg)[2:]))
    if R.cfg.zp.enabled:
        with R.stage("compute_zp"):
            R.on_master(steps.zp_step, R.cfg, final)
    R.summary_phase(bands)
    return R.finish()


def _cmd_build_patches(R: _Run, dumps=False):
    if dumps:
        R.open_journal()
    lr = R.load(write_store=True, plots=True, bright=True)
    if R.stopped:
        return R.finish()
    cat = R.share_catalog(lr.catalog if R.master else None)
    with R.stage("build_patches"):
        cells = R.on_master(lambda: steps.active_cells(R.cfg, cat, lr.shape), share=True)
        plan = R.on_master(lambda: steps.patch_plan(R.cfg, cat, lr.shape, cells, len(lr.bands)), share=True)
    if not dumps:
        return R.finish()
    stamps = R.on_master(lambda: band_psfs.stamps_from_disk(R.cfg, lr.bands, cells, R.worker.prepared),
                         share=True)
    bands = R.comm.bcast(lr.bands if R.master else None)
    R.patch_phase(plan, stamps, bands, fn=R.worker.patch_dump, label="patch_inputs", use_store=False)
    return R.finish()


def _cmd_run_patches(R: _Run):
    R.open_journal()
    cat, shape, bands, cells = R.on_master(steps.saved_inputs, R.cfg, share=True)
    R.worker.catalog = R._local_copy(cat)
    with R.stage("build_patches"):
        plan = R.on_master(lambda: steps.patch_plan(R.cfg, cat, shape, cells, len(bands)), share=True)
    stamps = R.on_master(lambda: band_psfs.stamps_from_disk(R.cfg, bands, cells, R.worker.prepared), share=True)
    R.patch_phase(plan, stamps, bands)
    return R.finish()


def _cmd_merge(R: _Run):
    """Merge from the working catalog and the prepared store's frame (the images are not read)."""
    with R.stage("merge"):
        R.on_master(steps.merge_saved, R.cfg)
    return R.finish()


def _cmd_compute_zp(R: _Run):
    with R.stage("compute_zp"):
        R.on_master(steps.zp_step, R.cfg)
    return R.finish()


_DISPATCH = {"run": _cmd_run, "run-epsf": lambda R: _cmd_run(R, epsf_only=True),
             "build-patches": _cmd_build_patches,
             "build-patch-inputs": lambda R: _cmd_build_patches(R, dumps=True),
             "run-patches": _cmd_run_patches, "merge": _cmd_merge, "compute-zp": _cmd_compute_zp}


def run_command(command: str, cfg, options: dict | None = None) -> int:
    """Run pipeline ``command`` on this rank; every rank calls it; returns the exit code."""
    if command not in _DISPATCH:
        raise InputError(f"unknown pipeline command {command!r}; expected one of {', '.join(COMMANDS)}")
    options = options or {}
    R = _Run(command, cfg, options)
    install_excepthook(R.comm, log)
    signals.reset()
    signals.install()
    if R.master and options.get("deadline"):
        signals.set_deadline(float(options["deadline"]))
    os.makedirs(cfg.outputs.work_dir, exist_ok=True)
    if command == "run-patches":
        R.warm_up()           # overlaps with rank 0's reading of the saved inputs
    try:
        return _DISPATCH[command](R)
    except _InputStop as stop:
        R.worker.close()
        if R.journal is not None:
            R.journal.close()
        if R.comm.size == 1:
            raise stop.exc from None
        if R.master:
            sys.stderr.write(f"tract7dt-mpi: error: {str(stop.exc).splitlines()[0]}\n")
            sys.stderr.flush()
            try:
                from .logsetup import log_to_files
                log_to_files(logging.getLogger("tract7dt_mpi"), logging.ERROR, f"Input error: {stop.exc}")
            except Exception:  # noqa: BLE001 - logging must not hide the exit code
                pass
        return EXIT_INPUT
