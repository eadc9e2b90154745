"""Append-only JSONL journal of task states: the source of truth for ``--resume``.

Why: an HDF5 file written by a killed job cannot be trusted, a line-oriented journal can.  Rank 0
appends one JSON object per state change (PLANNED/STARTED/DONE/FAILED with attempt, rank, host,
wall time, peak RSS and the error text) and flushes it to the OS at once (it survives a ``kill -9``);
``fsync`` runs at most every ``fsync_sec`` seconds so that thousands of tasks do not stall the master
on a parallel file system (a lost DONE line only means that task is re-run).  The first line is a
header holding the *plan hash*: resuming with a different config, inputs or code version is refused
unless forced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from ..errors import InputError

log = logging.getLogger("tract7dt_mpi.io.journal")

PLANNED, STARTED, DONE, FAILED = "PLANNED", "STARTED", "DONE", "FAILED"

#: config entries that do not change any result (excluded from the plan hash); the input files
#: enter by content (:func:`input_signatures`), not by path
_HASH_EXCLUDE = {("logging",), ("mpi",), ("patch_run", "resume"), ("patch_run", "fault_inject"),
                 ("patch_run", "python_exe"), ("patch_run", "max_workers"), ("performance",),
                 ("config_path",), ("config_dir",), ("inputs",), ("outputs", "work_dir")}


def _plain(obj, path=(), work_dir=None):
    """Config object -> JSON-able nested dict, dropping the excluded entries; ``outputs.*`` paths
    are made relative to ``work_dir`` (a moved work folder keeps its hash)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, dict):
        items = obj
    elif isinstance(obj, (list, tuple)):
        return [_plain(v, path, work_dir) for v in obj]
    elif obj is None or isinstance(obj, (bool, int, float)):
        return obj
    elif isinstance(obj, str):
        if path[:1] == ("outputs",) and work_dir and os.path.isabs(obj):
            return os.path.relpath(obj, work_dir)
        return obj
    else:
        return repr(obj)
    out = {}
    for k in sorted(items, key=str):
        p = path + (str(k),)
        if p in _HASH_EXCLUDE or str(k).startswith("_"):
            continue
        out[str(k)] = _plain(items[k], p, work_dir)
    return out


def config_fingerprint(cfg) -> dict:
    """The result-relevant part of a Config as a plain dict (also handy for logging)."""
    outputs = getattr(cfg, "outputs", None)
    return _plain(cfg, work_dir=getattr(outputs, "work_dir", None))


def file_signature(path: str, sample: int = 1 << 20, whole: bool = False) -> dict:
    """Size and a SHA-256 of a file's content: all of it (``whole``), else the first and last
    ``sample`` bytes (the FITS header and the data's ends).

    Neither the path nor the modification time enters, so a copied or moved tile keeps its
    signature; sampling keeps 40 x 250 MB FITS cheap to fingerprint while still catching a
    replaced file.  ``name`` (the base name) is for messages only and is not hashed.
    """
    p = Path(path)
    if not p.is_file():
        return {"name": p.name, "missing": True}
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        if whole:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        else:
            h.update(fh.read(sample))
            if size > 2 * sample:
                fh.seek(size - sample)
                h.update(fh.read(sample))
            elif size > sample:
                h.update(fh.read())
    return {"name": p.name, "size": size, "sha256": h.hexdigest()}


def input_paths(cfg, images=()) -> list[str]:
    """Catalog and GaiaXP CSV named by ``cfg.inputs``, then the image files ``images``."""
    inp = cfg.inputs
    return [p for p in (getattr(inp, "input_catalog", None), getattr(inp, "gaiaxp_synphot_csv", None))
            if p] + list(images)


def input_signatures(cfg, images=()) -> dict:
    """Content signatures of the inputs: whole-file hashes of the tables, sampled ones of images.

    The image list itself is not hashed (it holds paths); the image files it names (``images``,
    read by the caller with the image-list parser) are, in order.
    """
    inp = cfg.inputs
    out = {}
    for key in ("input_catalog", "gaiaxp_synphot_csv"):
        p = getattr(inp, key, None)
        if p:
            out[key] = file_signature(p, whole=True)
    out["images"] = [file_signature(p) for p in images]
    return out


def plan_doc(cfg, extra: dict | None = None, images=()) -> dict:
    """What identifies a plan: result-relevant config, input contents (tables and the image files
    ``images``), code version, ``extra``."""
    from .._version import __version__
    return {"config": config_fingerprint(cfg), "inputs": input_signatures(cfg, images),
            "version": __version__, "extra": extra or {}}


def _without_names(obj):
    if isinstance(obj, dict):
        return {k: _without_names(v) for k, v in obj.items() if k != "name"}
    if isinstance(obj, list):
        return [_without_names(v) for v in obj]
    return obj


def hash_of(doc: dict) -> str:
    """Plan hash of a :func:`plan_doc` (file base names do not enter)."""
    text = json.dumps(_without_names(doc), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def plan_hash(cfg, extra: dict | None = None, images=()) -> str:
    """Hash of (config, input file contents, code version, ``extra``) identifying a plan."""
    return hash_of(plan_doc(cfg, extra, images))


def _flat(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def plan_changes(old: dict | None, new: dict | None, limit: int = 3) -> str:
    """What differs between two plan documents, in words (config keys, files, code version)."""
    if not old or not new:
        return "the earlier journal does not record its plan"
    said = []
    if old.get("version") != new.get("version"):
        said.append(f"code version {old.get('version')} -> {new.get('version')}")
    a, b = _flat(old.get("config", {})), _flat(new.get("config", {}))
    for k in sorted(set(a) | set(b)):
        if a.get(k, "(unset)") != b.get(k, "(unset)"):
            said.append(f"config {k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}")
    oi, ni = old.get("inputs", {}), new.get("inputs", {})
    for key in sorted((set(oi) | set(ni)) - {"images"}):
        if _without_names(oi.get(key)) != _without_names(ni.get(key)):
            said.append(f"inputs.{key} file {(ni.get(key) or oi.get(key) or {}).get('name')} changed")
    oimg, nimg = oi.get("images", []), ni.get("images", [])
    if len(oimg) != len(nimg):
        said.append(f"image list: {len(oimg)} -> {len(nimg)} images")
    else:
        for o, n in zip(oimg, nimg):
            if _without_names(o) != _without_names(n):
                said.append(f"image {n.get('name')} changed (size or checksum)")
    if old.get("extra") != new.get("extra"):
        said.append("command family changed")
    if not said:
        return "unknown difference"
    more = f" (+{len(said) - limit} more)" if len(said) > limit else ""
    return "; ".join(said[:limit]) + more


class Journal:
    """Append-only task journal (rank 0 only).

    ``Journal(path, plan_hash, resume=..., force=...)``: without ``resume`` the file is started anew;
    with ``resume`` the earlier records are read back (:attr:`last`, :meth:`attempts`) and a
    different plan hash raises :class:`InputError` unless ``force``.
    """

    def __init__(self, path: str, plan_hash: str, resume: bool = False, force: bool = False,
                 fsync_sec: float = 1.0, meta: dict | None = None, plan: dict | None = None):
        self.path = str(path)
        self.plan_hash = plan_hash
        self.previous_plan = None          #: plan document of the earlier run (when recorded)
        self.skipped_lines = 0             #: unreadable lines ignored on resume
        self.fsync_sec = float(fsync_sec)
        self.last: dict[str, dict] = {}
        self._attempts: dict[str, int] = {}
        self.previous_hash = None
        self._last_sync = 0.0
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if resume and os.path.exists(self.path):
            self._read()
            if self.previous_hash is not None and self.previous_hash != plan_hash and not force:
                raise InputError(
                    f"{self.path}: config, inputs or code changed since this run was started "
                    f"({plan_changes(self.previous_plan, plan)}); refusing to resume "
                    f"(use --force to re-run anyway, or start without --resume)")
            if self.previous_hash is not None and self.previous_hash != plan_hash:
                # forced: results of the old plan are not reusable
                self.last, self._attempts = {}, {}
            mode = "a"
        else:
            mode = "w"
        self._fh = open(self.path, mode, encoding="utf-8")
        if mode == "a" and self._fh.tell() > 0:
            with open(self.path, "rb") as fh:      # a kill may have cut the last line
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._fh.write("\n")
        head = {"type": "header", "plan_hash": plan_hash, "time": time.time(),
                "resumed": bool(resume), **(meta or {})}
        if plan is not None:
            head["plan"] = plan
        self._write(head, sync=True)

    def _read(self) -> None:
        h = replay(self.path, self)
        self.last, self._attempts = h.last, h.attempts
        self.previous_hash, self.previous_plan = h.plan_hash, h.plan

    def _write(self, rec: dict, sync: bool = False) -> None:
        self._fh.write(json.dumps(rec, default=_json_default, allow_nan=True) + "\n")
        self._fh.flush()
        now = time.monotonic()
        if sync or now - self._last_sync >= self.fsync_sec:
            os.fsync(self._fh.fileno())
            self._last_sync = now

    def state(self, task_id: str) -> str | None:
        rec = self.last.get(task_id)
        return None if rec is None else rec.get("state")

    def attempts(self, task_id: str) -> int:
        return self._attempts.get(task_id, 0)

    def record(self, task_id: str, state: str, **fields) -> None:
        """Append one state record (DONE/FAILED are synced at most every ``fsync_sec``)."""
        rec = {"t": round(time.time(), 3), "task": task_id, "state": state}
        if state == STARTED:
            attempt = self._attempts.get(task_id, 0) + 1
            self._attempts[task_id] = attempt
            rec["attempt"] = attempt
        else:
            rec["attempt"] = max(1, self._attempts.get(task_id, 1))
        rec.update(fields)
        self.last[task_id] = rec
        self._write(rec, sync=state == FAILED)

    def record_planned(self, task_ids) -> None:
        """One PLANNED line per task, written with a single sync."""
        t = round(time.time(), 3)
        for tid in task_ids:
            if tid not in self.last:
                rec = {"t": t, "task": tid, "state": PLANNED}
                self.last[tid] = rec
                self._fh.write(json.dumps(rec) + "\n")
        self._write({"type": "note", "t": t, "planned": True}, sync=True)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _json_default(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def _records(path: str, counter=None):
    """The JSON object records of a journal file, in order.

    Lines that cannot be read are skipped, as a kill or a disk error can leave them: a line cut
    in half (bad JSON) silently, a line with bytes that are not UTF-8 with a warning.  ``counter``
    (a Journal) gets the number of skipped undecodable lines in ``skipped_lines``.
    """
    bad = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                bad += 1
                log.warning("%s line %d is not UTF-8 text; skipped", path, lineno)
                continue
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue       # a line cut by a kill: ignore it
            if isinstance(rec, dict):
                yield rec
    if counter is not None:
        counter.skipped_lines += bad


def read_journal(path: str) -> list[dict]:
    """All parseable records of a journal, in order."""
    return list(_records(path))


@dataclasses.dataclass
class History:
    """What a journal says now: each task's latest record and its number of attempts, and the
    plan hash and plan document of the latest header."""

    last: dict = dataclasses.field(default_factory=dict)
    attempts: dict = dataclasses.field(default_factory=dict)
    plan_hash: str | None = None
    plan: dict | None = None


def replay(path: str, counter=None) -> History:
    """Replay a journal file as ``--resume`` does: a header with a new plan hash (a forced
    re-plan) discards the states recorded before it.  ``counter`` as for :func:`_records`."""
    h = History()
    for rec in _records(path, counter):
        if rec.get("type") == "header":
            if rec.get("plan_hash") != h.plan_hash and h.plan_hash is not None:
                h.last, h.attempts = {}, {}
            h.plan_hash, h.plan = rec.get("plan_hash"), rec.get("plan")
            continue
        tid = rec.get("task")
        if tid is None:
            continue
        h.last[tid] = rec
        if rec.get("state") == STARTED:
            h.attempts[tid] = max(h.attempts.get(tid, 0), int(rec.get("attempt", 1)))
    return h
