"""The task functions of a multi-tile run (:mod:`tract7dt_mpi.multitile`), on any rank.

A tile's steps are those of a single-tile ``run`` (``tasks``, ``load_steps``), called with the
same inputs, so the tile's results do not change. The one-off (exclusive) steps:

* *prepare*: catalogue, every header, working frame, one load task per band (``load_steps``);
* *inputs*: the prepared store's top level from the band files and the white-stack strips, Gaia
  augmentation, bright mask, working catalogue, the stellar-locus and ePSF cell tasks;
* *fields*: ePSF summary, PSF flux errors, the bands' PSF-field tasks and the patch plan;
* *plan*: writes the tile's task context (:mod:`tract7dt_mpi.io.tiles`);
* *finish*: merge and zero points.

Band loading, white-stack strips, loci, ePSF cells, PSF fields, patches and summary plots are
tasks on any rank; those that need the tile's catalogue, plan or stamps read its context file.
"""

from __future__ import annotations

import collections
import logging

from . import band_psfs
from . import load_steps
from . import tasks as steps
from .errors import InputError
from .io.tiles import read_context, write_context
from .parallel.runner import TaskResult
from .parallel.scheduler import Task

log = logging.getLogger("tract7dt_mpi.pipeline")

PREPARE, INPUTS, FIELDS, PLAN, FINISH = "tile-prepare", "tile-inputs", "tile-fields", "tile-plan", "tile-finish"
STEP_KINDS = (PREPARE, INPUTS, FIELDS, PLAN, FINISH)
_CACHED_TILES = 4               #: tiles whose task state a rank keeps in memory at once

class TileWorker:
    """What one rank keeps per tile to run its tasks (a few tiles at once, least recent dropped)."""

    def __init__(self, tiles: list[Tile]):
        self.tiles = tiles
        self.open: collections.OrderedDict = collections.OrderedDict()    # index -> steps.Worker

    def _worker(self, k: int, context: bool = False):
        w = self.open.pop(k, None)
        if w is None:
            w = steps.Worker(self.tiles[k].cfg)
            w.has_context = False
        self.open[k] = w
        while len(self.open) > _CACHED_TILES:
            self.open.popitem(last=False)[1].close()
        if context and not w.has_context:
            from .io.store import PlanEntry, ResultsStore, StorePlan
            from .stages.fit import result_columns
            ctx = read_context(self.tiles[k].cfg.outputs.work_dir)
            w.catalog, w.plan = ctx["catalog"], ctx["plan"]
            w.psfs = band_psfs.psf_choices(w.cfg, ctx["stamps"])
            # rows are encoded here, as by a single-tile run's workers: rank 0 only copies them
            multi = bool(w.cfg.patch_run.enable_multi_band_simultaneous_fitting)
            w.encoder = ResultsStore.encoder(
                StorePlan([PlanEntry(steps.patch_task_id(p.patch_tag), "patch", rows=p.base_rows)
                           for p in w.plan]), result_columns(ctx["bands"], multi))
            w.has_context = True
        return w

    def run(self, task: Task) -> TaskResult:
        if task.payload[1].kind not in STEP_KINDS:
            return self._run(task)
        try:
            return self._run(task)
        except InputError as exc:       # bad input: a one-line message for the tile, no traceback
            return TaskResult(data={"input_error": (str(exc).splitlines() or [type(exc).__name__])[0]})

    def _run(self, task: Task) -> TaskResult:
        k, inner = task.payload
        cfg = self.tiles[k].cfg
        if inner.kind == PREPARE:
            return TaskResult(data=prepare_step(cfg))
        if inner.kind == INPUTS:
            return TaskResult(data=inputs_step(cfg, **inner.payload))
        if inner.kind == FIELDS:
            return TaskResult(data=fields_step(cfg, self._worker(k).prepared, **inner.payload))
        if inner.kind == PLAN:
            write_context(cfg.outputs.work_dir, inner.payload)
            return TaskResult()
        if inner.kind == FINISH:
            finish_step(cfg, read_context(cfg.outputs.work_dir))
            return TaskResult()
        if inner.kind == "load":
            return load_steps.run_band(cfg, inner)
        if inner.kind == "white":
            return load_steps.run_white_strip(inner)
        if inner.kind == "locus":
            return self._worker(k).band_locus(inner)
        if inner.kind == "epsf":
            return self._worker(k).epsf_cell(inner)
        if inner.kind == "psf_field":
            return self._worker(k).psf_field(inner)
        if inner.kind == "patch":
            w = self._worker(k, context=True)
            res = w.patch_fit(inner)
            if res.rows is not None:
                res = TaskResult(rows=w.encoder.encode_rows(inner.id, res.rows), data=res.data)
            return res
        if inner.kind == "summary":
            return self._worker(k, context=True).summary_plot(inner)
        raise ValueError(f"unknown task kind {inner.kind!r}")

    def close(self):
        for w in self.open.values():
            w.close()
        self.open.clear()


def _plots(cfg) -> bool:
    return cfg.plotting.level == "full"


def prepare_step(cfg) -> dict:
    """The load plan (catalogue, headers, working frame) and one load task per band."""
    plan = load_steps.plan_step(cfg, _plots(cfg))
    return {"plan": plan, "tasks": load_steps.band_tasks(cfg, plan)}


def inputs_step(cfg, plan, bands: dict, strips: dict) -> dict:
    """The rest of a single-tile ``run``'s input stages once its bands are loaded and its
    white-stack strips written (``bands``, ``strips``: task id -> answer): the prepared store's
    top level, Gaia augmentation, bright mask, working catalogue; then the active ePSF cells,
    the bands' stellar-locus tasks and the cell tasks (their ``size_locus`` filled in by rank 0
    from the locus tasks)."""
    plots = _plots(cfg)
    rows = load_steps.WhiteRows(plan)
    rows.add_files(strips)
    res = load_steps.finish_step(cfg, plan, bands, rows, plots)
    if cfg.zp.enabled:
        steps.augment_step(cfg, res, plots)
    if cfg.bright_mask.enabled:
        steps.bright_mask_step(cfg, res, True, plots)
    steps.save_working_catalog(cfg, res.catalog)
    cells = steps.active_cells(cfg, res.catalog, res.shape)
    return {"catalog": res.catalog, "shape": tuple(res.shape), "bands": list(res.bands), "cells": cells,
            "locus_tasks": steps.locus_tasks(cfg, res, cells),
            "epsf_tasks": steps.epsf_tasks(cfg, res, cells, {b: None for b in res.bands})}


def fields_step(cfg, prepared, ordered, stamps, catalog, shape, bands, cells) -> dict:
    """ePSF summary, PSF flux errors, the bands' PSF-field tasks and the patch plan.
    ``prepared``: the tile's prepared store (the fields' bright-star lists read the white stack)."""
    band_psfs.write_epsf_summary(cfg, ordered)
    stamps = band_psfs.with_psf_flux_errors(stamps, ordered)
    return {"stamps": stamps, "field_tasks": band_psfs.field_tasks(cfg, ordered, prepared, catalog),
            "plan": steps.patch_plan(cfg, catalog, shape, cells, len(bands))}


def finish_step(cfg, ctx) -> None:
    """Merge (from the results store and the prepared store's frame) and zero points."""
    final = steps.merge_step(cfg, ctx["catalog"], steps.results_table(cfg, ctx["plan"]),
                             *steps.prepared_frame(cfg)[2:])
    if cfg.zp.enabled:
        steps.zp_step(cfg, final)
