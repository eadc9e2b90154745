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
import os
import time
from pathlib import Path

from ..errors import InputError

PLANNED, STARTED, DONE, FAILED = "PLANNED", "STARTED", "DONE", "FAILED"

#: config entries that do not change any result (excluded from the plan hash)
_HASH_EXCLUDE = {("logging",), ("mpi",), ("patch_run", "resume"), ("patch_run", "fault_inject"),
                 ("patch_run", "python_exe"), ("patch_run", "max_workers"), ("performance",),
                 ("config_path",), ("config_dir",)}


def _plain(obj, path=()):
    """Config object -> JSON-able nested dict, dropping the excluded entries."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, dict):
        items = obj
    elif isinstance(obj, (list, tuple)):
        return [_plain(v, path) for v in obj]
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    else:
        return repr(obj)
    out = {}
    for k in sorted(items, key=str):
        p = path + (str(k),)
        if p in _HASH_EXCLUDE or str(k).startswith("_"):
            continue
        out[str(k)] = _plain(items[k], p)
    return out


def config_fingerprint(cfg) -> dict:
    """The result-relevant part of a Config as a plain dict (also handy for logging)."""
    return _plain(cfg)


def file_signature(path: str, sample: int = 1 << 20) -> dict:
    """Size, mtime and a SHA-256 of the first and last ``sample`` bytes of a file.

    Sampling keeps 40 x 250 MB FITS cheap to fingerprint while still catching a replaced file.
    """
    p = Path(path)
    if not p.is_file():
        return {"path": str(path), "missing": True}
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        h.update(fh.read(sample))
        if st.st_size > 2 * sample:
            fh.seek(st.st_size - sample)
            h.update(fh.read(sample))
        elif st.st_size > sample:
            h.update(fh.read())
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def input_paths(cfg) -> list[str]:
    """Catalog, image list, every listed image and the GaiaXP CSV named by ``cfg.inputs``."""
    inp = cfg.inputs
    paths = [p for p in (getattr(inp, "input_catalog", None), getattr(inp, "image_list_file", None),
                         getattr(inp, "gaiaxp_synphot_csv", None)) if p]
    lst = getattr(inp, "image_list_file", None)
    base = getattr(cfg, "config_dir", None) or (os.path.dirname(lst) if lst else ".")
    if lst and os.path.isfile(lst):
        with open(lst, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                s = line.strip()
                if s and not s.startswith("#"):
                    s = os.path.expanduser(s)
                    paths.append(s if os.path.isabs(s) else os.path.join(base, s))
    return paths


def plan_hash(cfg, extra: dict | None = None) -> str:
    """Hash of (config, input file signatures, code version, ``extra``) identifying a plan."""
    from .._version import __version__
    doc = {"config": config_fingerprint(cfg),
           "inputs": [file_signature(p) for p in input_paths(cfg)],
           "version": __version__, "extra": extra or {}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Journal:
    """Append-only task journal (rank 0 only).

    ``Journal(path, plan_hash, resume=..., force=...)``: without ``resume`` the file is started anew;
    with ``resume`` the earlier records are read back (:attr:`last`, :meth:`attempts`) and a
    different plan hash raises :class:`InputError` unless ``force``.
    """

    def __init__(self, path: str, plan_hash: str, resume: bool = False, force: bool = False,
                 fsync_sec: float = 1.0, meta: dict | None = None):
        self.path = str(path)
        self.plan_hash = plan_hash
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
                    f"(plan hash {self.previous_hash} -> {plan_hash}); refusing to resume "
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
        self._write({"type": "header", "plan_hash": plan_hash, "time": time.time(),
                     "resumed": bool(resume), **(meta or {})}, sync=True)

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue       # a line cut by a kill: ignore it
                if rec.get("type") == "header":
                    if rec.get("plan_hash") != self.previous_hash and self.previous_hash is not None:
                        self.last, self._attempts = {}, {}   # a forced re-plan started afresh
                    self.previous_hash = rec.get("plan_hash")
                    continue
                tid = rec.get("task")
                if tid is None:
                    continue
                self.last[tid] = rec
                if rec.get("state") == STARTED:
                    self._attempts[tid] = max(self._attempts.get(tid, 0), int(rec.get("attempt", 1)))

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


def read_journal(path: str) -> list[dict]:
    """All parseable records of a journal (tests, campaign tools)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out
