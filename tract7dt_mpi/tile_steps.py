"""The task functions of a multi-tile run (:mod:`tract7dt_mpi.multitile`), on any rank.

A tile's one-off steps are the rank-0 steps of a single-tile ``run`` (``tasks``), called
with the same inputs, so the tile's results do not change: *prepare* (load, Gaia augmentation,
bright mask, ePSF task list), *plan* (ePSF summary, PSF flux errors and fields, patch plan; it
writes the tile's task context, :mod:`tract7dt_mpi.io.tiles`) and *finish* (merge, zero points).
ePSF cells, patches and summary plots run through ``tasks.Worker`` of their tile, whose
catalog, plan and ePSF stamps come from that context file.
"""

from __future__ import annotations

import collections
import logging

from . import band_psfs
from . import tasks as steps
from .errors import InputError
from .io.tiles import read_context, write_context
from .parallel.runner import TaskResult
from .parallel.scheduler import Task

log = logging.getLogger("tract7dt_mpi.pipeline")

PREPARE, PLAN, FINISH = "tile-prepare", "tile-plan", "tile-finish"
STEP_KINDS = (PREPARE, PLAN, FINISH)
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
        if inner.kind == PLAN:
            return TaskResult(data=plan_step(cfg, self._worker(k).prepared, **inner.payload))
        if inner.kind == FINISH:
            finish_step(cfg, read_context(cfg.outputs.work_dir))
            return TaskResult()
        if inner.kind == "epsf":
            return self._worker(k).epsf_cell(inner)
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


def prepare_step(cfg) -> dict:
    """Load (+ Gaia augmentation, + bright mask) into the prepared store, the working catalog, the
    active ePSF cells and their tasks: the rank-0 input steps of a single-tile ``run``."""
    plots = cfg.plotting.level == "full"
    res = steps.load_step(cfg, True, plots)
    if cfg.zp.enabled:
        steps.augment_step(cfg, res, plots)
    if cfg.bright_mask.enabled:
        steps.bright_mask_step(cfg, res, True, plots)
    steps.save_working_catalog(cfg, res.catalog)
    cells = steps.active_cells(cfg, res.catalog, res.shape)
    return {"catalog": res.catalog, "shape": tuple(res.shape), "bands": list(res.bands), "cells": cells,
            "epsf_tasks": steps.epsf_tasks(cfg, res, cells)}


def plan_step(cfg, prepared, ordered, stamps, catalog, shape, bands, cells) -> dict:
    """ePSF summary, PSF flux errors and fields, patch plan; writes the tile's task context.
    ``prepared``: the tile's prepared store (the fields' bright-star wings read cut-outs)."""
    band_psfs.write_epsf_summary(cfg, ordered)
    stamps = band_psfs.with_psf_flux_errors(stamps, ordered)
    stamps = band_psfs.with_psf_fields(cfg, stamps, ordered, prepared.shape, prepared, catalog)
    plan = steps.patch_plan(cfg, catalog, shape, cells, len(bands))
    write_context(cfg.outputs.work_dir, {"catalog": catalog, "plan": plan, "stamps": stamps, "bands": bands})
    return {"plan": plan, "stamps": stamps}


def finish_step(cfg, ctx) -> None:
    """Merge (from the results store and the prepared store's frame) and zero points."""
    final = steps.merge_step(cfg, ctx["catalog"], steps.results_table(cfg, ctx["plan"]),
                             *steps.prepared_frame(cfg)[2:])
    if cfg.zp.enabled:
        steps.zp_step(cfg, final)
