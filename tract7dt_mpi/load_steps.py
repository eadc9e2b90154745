"""Stage S1 as tasks on the queue: one task per band, then the white stack in row strips.

Rank 0 plans the load (:func:`plan_step`: catalogue, every header, working frame, one band job
per band). A band task (:func:`run_band`, any rank) prepares one band, writes it to its own band
file beside the prepared store (:mod:`tract7dt_mpi.io.prepared_bands`) and sends back only small
things: the band's BandInfo, its saturated pixels, its log lines and timings. A white-stack task
(:func:`run_white_strip`) reads a strip of rows of every band file and stacks them in band order:
the same float64 sums, so the same white stack, as one process streaming the bands. Rank 0 then
writes the store's top level, which links the band files, and finishes the stage
(:func:`finish_step`). Rank 0 never holds more than the white stack and the catalogue, whatever
the number of bands. :mod:`tract7dt_mpi.pipeline` runs the phases; this module is MPI-free.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time

import numpy as np

from .errors import InputError, disk_full_error, is_disk_full
from .parallel.runner import TaskResult
from .parallel.scheduler import Task

log = logging.getLogger("tract7dt_mpi.pipeline")

WHITE_ROWS = 256          #: rows of one white-stack strip (one row of the stores' 256 x 256 chunks)


class _Recorder:
    """A logger stand-in that keeps a band task's log lines; rank 0 writes them to the run's log."""

    def __init__(self):
        self.lines: list[tuple[int, str]] = []

    def log(self, level, msg, *args):
        self.lines.append((int(level), msg % args if args else str(msg)))

    def debug(self, msg, *args):
        self.log(logging.DEBUG, msg, *args)

    def info(self, msg, *args):
        self.log(logging.INFO, msg, *args)

    def warning(self, msg, *args):
        self.log(logging.WARNING, msg, *args)

    def error(self, msg, *args):
        self.log(logging.ERROR, msg, *args)


def plan_step(cfg, plots: bool = True):
    """Rank 0: the :class:`~tract7dt_mpi.stages.load.LoadPlan` (every check that needs no pixel).
    An earlier run's store goes (its band files are about to be rewritten; a load that does not
    finish must not leave a store mixing two runs), and so do band files of a run with more bands."""
    from .io.prepared_bands import band_files_dir
    from .stage_options import load_options
    from .stages.load import plan_load
    os.makedirs(cfg.outputs.work_dir, exist_ok=True)
    plan = plan_load(load_options(cfg), log, plots)
    if os.path.exists(cfg.mpi.prepared_store):
        os.remove(cfg.mpi.prepared_store)
    for path in glob.glob(os.path.join(band_files_dir(cfg.mpi.prepared_store), "band*.h5*")):
        m = re.fullmatch(r"band(\d+)\.h5", os.path.basename(path))
        if m is None or int(m.group(1)) >= len(plan.jobs):
            os.remove(path)
    return plan


def band_tasks(cfg, plan) -> list[Task]:
    """One task per band, in image-list order (equal costs: the queue keeps that order)."""
    from .io.prepared_bands import band_file_path
    H, W = plan.shape
    return [Task(f"load/{j.info.band}", "load", cost=float(H * W), index=j.index,
                 payload={"job": j, "file": band_file_path(cfg.mpi.prepared_store, j.index)})
            for j in plan.jobs]


def run_band(cfg, task: Task) -> TaskResult:
    """Prepare one band and write its band file. Bad input (an unreadable or constant image, a
    full disk) comes back as ``data["error"]`` = (error type, one-line message), so that rank 0
    reports it as an input error, not as a failed task."""
    from .io.prepared_bands import write_band_file
    from .stages.load_band import band_attrs, load_band
    job, path = task.payload["job"], task.payload["file"]
    rec = _Recorder()
    try:
        got = load_band(job, rec)
        pb = got.band
        t0 = time.perf_counter()
        write_band_file(path, pb.img, pb.mask_bits(), band_attrs(pb.info), got.ivar, got.pre_crop)
        seconds = dict(got.seconds, write=time.perf_counter() - t0)
        return TaskResult(data={"info": pb.info, "satur": got.satur_pixels, "file": path,
                                "log": rec.lines, "seconds": seconds})
    except InputError as exc:
        return TaskResult(data={"error": (type(exc), _first_line(exc)), "log": rec.lines})
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        err = disk_full_error(exc, cfg.outputs.work_dir)
        return TaskResult(data={"error": (type(err), _first_line(err)), "log": rec.lines})


def _first_line(exc) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def band_done(plan, task: Task, data, info, n_done: int, prefix: str = ""):
    """Rank 0, as each band task answers: its log lines and the "Loaded band" progress line
    (each after ``prefix``); returns what :func:`white_tasks` needs (``data``, or the failed
    task's error)."""
    if data is None:
        return {"failed": info.error_line}
    for level, line in data.get("log", ()):
        log.log(level, "%s%s", prefix, line)
    if "error" not in data:
        H, W = plan.shape
        log.info("%sLoaded band %s (%d/%d) in %.2fs, working frame %dx%d", prefix, data["info"].band,
                 n_done, len(plan.jobs), info.wall, W, H)
    return data


def _in_band_order(plan, bands: dict) -> list:
    """The band tasks' answers in image-list order; the first bad band's error is raised."""
    out = []
    for j in plan.jobs:
        got = bands.get(f"load/{j.info.band}")
        if got is None:
            raise RuntimeError(f"band {j.info.band} ({j.info.path}) was not loaded")
        if "error" in got:
            kind, msg = got["error"]
            raise kind(msg)
        if "failed" in got:
            raise RuntimeError(f"loading band {j.info.band} ({j.info.path}) failed: {got['failed']}")
        out.append(got)
    return out


def white_tasks(cfg, plan, bands: dict, to_files: bool = False) -> list[Task]:
    """Rank 0, after the band tasks: the white-stack strips (or the error of the first bad band).
    ``to_files``: each strip task writes its strip beside the band files instead of sending it
    (a multi-tile run, where the store is written by a worker: :meth:`WhiteRows.add_files`)."""
    from .io.prepared_bands import white_strip_path
    done = _in_band_order(plan, bands)
    files = [d["file"] for d in done]
    sigmas = [d["info"].skysig * d["info"].scale for d in done]     # PreparedBand.sigma_sky
    H, W = plan.shape
    return [Task(f"white/{y0:06d}", "white", cost=float(min(WHITE_ROWS, H - y0)), index=i,
                 payload={"rows": (y0, min(H, y0 + WHITE_ROWS)), "width": W, "files": files,
                          "sigma_sky": sigmas,
                          "out": white_strip_path(cfg.mpi.prepared_store, y0) if to_files else None})
            for i, y0 in enumerate(range(0, H, WHITE_ROWS))]


def run_white_strip(task: Task) -> TaskResult:
    """The white stack and its sigma over one strip of rows, from every band file in band order;
    sent back, or written to the payload's ``out`` file."""
    from .io.prepared_bands import read_band_rows, write_white_strip
    from .stages.load import WhiteStack
    from .stages.weights import sigma_from_ivar
    p = task.payload
    t0 = time.perf_counter()
    y0, y1 = p["rows"]
    stack = WhiteStack((y1 - y0, p["width"]))
    for path, sigma_sky in zip(p["files"], p["sigma_sky"]):
        img, nonfinite, ivar, _ = read_band_rows(path, y0, y1)
        stack.add(img, nonfinite, sigma_sky if ivar is None else sigma_from_ivar(ivar))
    white, sigma = stack.finalize()
    data = {"rows": (y0, y1), "seconds": time.perf_counter() - t0}
    if p.get("out"):
        write_white_strip(p["out"], white, sigma)
        data["file"] = p["out"]
    else:
        data.update(white=white, sigma=sigma)
    return TaskResult(data=data)


class WhiteRows:
    """Rank 0: the white stack put together from the strip tasks' answers as they arrive."""

    def __init__(self, plan):
        self.white = np.full(plan.shape, np.nan, dtype=np.float32)
        self.sigma = np.full(plan.shape, np.inf, dtype=np.float32)
        self.missing = {f"white/{y0:06d}": y0 for y0 in range(0, plan.shape[0], WHITE_ROWS)}
        self.errors: dict[str, str] = {}
        self.seconds = 0.0

    def add(self, task: Task, data, info) -> None:
        """``on_result`` of the strip phase."""
        if data is None:
            self.errors[task.id] = info.error_line
            return
        self._put(task.id, data, data["white"], data["sigma"])

    def add_files(self, done: dict) -> None:
        """The strips that :func:`run_white_strip` wrote to files (``done``: task id -> its
        answer); each file is removed once read."""
        from .io.prepared_bands import read_white_strip
        for tid, data in done.items():
            if data is None or "failed" in data:
                self.errors[tid] = (data or {}).get("failed", "no answer")
                continue
            self._put(tid, data, *read_white_strip(data["file"]))
            os.remove(data["file"])

    def _put(self, tid: str, data: dict, white, sigma) -> None:
        a, b = data["rows"]
        self.white[a:b], self.sigma[a:b] = white, sigma
        self.seconds += data["seconds"]
        self.missing.pop(tid, None)

    def result(self):
        """(white, sigma_white); RuntimeError when a strip was not built."""
        if self.missing:
            tid = next(iter(self.missing))
            raise RuntimeError(f"white stack rows {self.missing[tid]}.. were not built: "
                               f"{self.errors.get(tid, 'no answer')}")
        return self.white, self.sigma


def finish_step(cfg, plan, bands: dict, strips: WhiteRows, plots: bool = True):
    """Rank 0: the store's top level (linking the band files, with the white stack), the
    saturation cut and the rest of the stage; returns the LoadResult."""
    from .io.prepared import PreparedWriter
    from .io.prepared_bands import read_pre_crop
    from .stages.load import add_pre_crop, finish_load, pre_crop_stack
    done = _in_band_order(plan, bands)
    white, sigma = strips.result()
    t0 = time.perf_counter()
    writer = PreparedWriter(cfg.mpi.prepared_store)
    try:
        x0, _, y0, _ = plan.crop
        writer.create(plan.shape, x0, y0, plan.zp_ref, plan.wcs_header)
        for d in done:
            writer.link_band(d["info"].band, d["file"])
        writer.write_white(white, sigma)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    before = pre_crop_stack(plan)
    if before is not None:
        for d in done:
            add_pre_crop(before, read_pre_crop(d["file"]), d["info"])
        before = before.finalize()[0]
    tm = plan.timings                # summed task times (s), not wall
    tm["prep"] += sum(d["seconds"]["prep"] + d["seconds"]["write"] for d in done)
    tm["white"] += strips.seconds + time.perf_counter() - t0
    res = finish_load(plan, [d["info"] for d in done], [d["satur"] for d in done], white, sigma,
                      before, log)
    if plots:
        from .figures import draw_load
        draw_load(cfg, res, log)
    return res
