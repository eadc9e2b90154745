"""The per-tile results HDF5 file (``outputs.results_h5``): plan, catalog rows, task status, ePSFs.

Layout::

    /plan/{id,kind,band,tag}   fixed-length byte strings, one entry per task (plan order)
    /plan/{bbox (n,4) int64, cost float64, row_offset int64, n_rows int64}
    /catalog/rows              one 1-D contiguous compound dataset, one record per result row, one
                               field per result column (``_row`` first: the base-catalog row key,
                               filled at creation); task i owns the records [row_offset[i],
                               row_offset[i] + n_rows[i]) and writes them in one go; fields are
                               NaN / -1 / False / b"" until written
    /tasks/status              int8: 0 planned, 1 started, 2 done, 3 failed
    /tasks/timing              float64 (n, 5): start epoch, wall s, peak RSS MiB, rank, attempt
    /epsf/<band>               float32 (n_cells, s, s) stamps; attrs cells, nstars_used
    attrs: plan_hash, version, bands, n_ranks; /run attrs (stage timings, dispatch overhead) at the end

Write protocol.  Parallel mode (``h5py.get_config().mpi`` and more than one rank, unless
``TRACT7DT_FORCE_SERIAL_H5=1``): every rank opens the file with the mpio driver and makes the same
``create_dataset`` calls from the same (broadcast) plan; metadata and fixed data are written and
flushed before the first task; afterwards ranks only do independent writes into their own rows
(workers: their task's block of catalog records, one write per task; rank 0: status/timing); all
ranks close together.  Serial mode: only rank 0 opens the file and writes what workers send back,
batched (one write for all the blocks that arrived since the last flush).  Datasets are contiguous and unfiltered (filters
need collective writes) with no maxshape, so nothing is ever resized.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np

log = logging.getLogger(__name__)

ST_PLANNED, ST_STARTED, ST_DONE, ST_FAILED = 0, 1, 2, 3
STR_DEFAULT_WIDTH = 64


@dataclasses.dataclass
class PlanEntry:
    """One task of the plan as the store records it (``rows`` = base-catalog keys it writes)."""

    id: str
    kind: str
    band: str = ""
    tag: str = ""
    bbox: tuple = (0, 0, 0, 0)
    cost: float = 0.0
    rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


class StorePlan:
    """Plan entries with their fixed row ranges (offsets in plan order)."""

    def __init__(self, entries: list[PlanEntry]):
        self.entries = list(entries)
        self.index = {e.id: i for i, e in enumerate(self.entries)}
        if len(self.index) != len(self.entries):
            raise ValueError("duplicate task ids in the plan")
        n = np.array([len(e.rows) for e in self.entries], dtype=np.int64)
        self.n_rows = n
        self.row_offset = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64) if len(n) else n
        self.total_rows = int(n.sum())

    def __len__(self):
        return len(self.entries)

    def all_rows(self) -> np.ndarray:
        if not self.entries:
            return np.zeros(0, np.int64)
        return np.concatenate([np.asarray(e.rows, np.int64) for e in self.entries])


def normalize_dtype(dt) -> np.dtype:
    """Store dtype of a result column: strings become fixed-width UTF-8 bytes."""
    dt = np.dtype(dt)
    if dt.kind == "S":
        return dt
    if dt.kind == "U":
        return np.dtype(f"S{max(1, dt.itemsize // 4)}")
    if dt.kind == "O":
        return np.dtype(f"S{STR_DEFAULT_WIDTH}")
    if dt.kind == "b":
        return np.dtype(bool)
    return dt


def _store_columns(columns) -> dict:
    """name -> store dtype of the result columns, ``_row`` first."""
    cols = {"_row": np.dtype(np.int64)}
    for name, dt in columns:
        if name != "_row":
            cols[name] = normalize_dtype(dt)
    return cols


def fill_value(dt: np.dtype):
    if dt.kind == "f":
        return np.nan
    if dt.kind in "iu":
        return -1 if dt.kind == "i" else 0
    if dt.kind == "b":
        return False
    return b""


def fill_record(dtype: np.dtype) -> np.ndarray:
    """One record of the compound ``dtype`` holding every field's fill value (shape ``()``)."""
    rec = np.zeros((), dtype=dtype)
    for name in dtype.names:
        rec[name] = fill_value(dtype[name])
    return rec


def set_hdf5_env() -> None:
    """Disable HDF5 file locking (broken on Lustre/NFS) unless the user chose a value."""
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def use_parallel_h5(comm) -> bool:
    """True when the mpio driver is available and worth using (size > 1, not forced serial)."""
    if comm.size <= 1 or os.environ.get("TRACT7DT_FORCE_SERIAL_H5", "") not in ("", "0"):
        return False
    import h5py
    return bool(h5py.get_config().mpi)


def _encode(values, dt: np.dtype, col: str) -> np.ndarray:
    """Column values -> array of the store dtype (strings UTF-8, truncated with a warning)."""
    if dt.kind == "S":
        out = []
        width = dt.itemsize
        for v in values:
            if v is None or (isinstance(v, float) and np.isnan(v)):
                b = b""
            else:
                b = v if isinstance(v, bytes) else str(v).encode("utf-8")
            if len(b) > width:
                log.warning("results store: column %s value truncated to %d bytes", col, width)
                b = b[:width]
            out.append(b)
        return np.array(out, dtype=dt)
    arr = np.asarray(values)
    if dt.kind == "b":
        if arr.dtype.kind == "O":
            arr = np.array([bool(v) if v is not None and v == v else False for v in arr])
        return arr.astype(bool)
    if dt.kind in "iu" and arr.dtype.kind == "f":
        arr = np.where(np.isfinite(arr), arr, fill_value(dt))
    if arr.dtype.kind == "O":
        arr = np.array([np.nan if v is None else v for v in arr], dtype=float)
    return arr.astype(dt)


class ResultsStore:
    """Open results file; create with :meth:`create` on every rank (parallel) or on rank 0 only."""

    def __init__(self, path, comm, parallel, h5file, plan: StorePlan, columns: dict):
        self.path, self.comm, self.parallel = str(path), comm, parallel
        self.f = h5file
        self.plan = plan
        self.columns = columns          # name -> store dtype
        self.dtype = np.dtype(list(columns.items()))      # one record = one result row
        self._fill = fill_record(self.dtype)
        self._row_pos = {}              # task index -> dict row key -> local position (lazy)
        self._pending = {}              # row offset -> record block awaiting flush
        self._mtype = self._ds = None
        self.buffered = not parallel    # the serial (rank-0) writer batches its writes
        # seconds between batched writes (env override for tests and very slow file systems)
        self.flush_sec = float(os.environ.get("TRACT7DT_STORE_FLUSH_SEC", "2.0"))
        self._last_flush = time.monotonic()
        self._status = np.zeros(len(plan), dtype=np.int8)
        self._timing = np.full((len(plan), 5), np.nan)
        self._dirty = False

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, comm, path, plan: StorePlan, columns, *, epsf: dict | None = None,
               attrs: dict | None = None, parallel: bool | None = None) -> "ResultsStore":
        """Create (overwrite) the store; in parallel mode every rank must call with equal args.

        ``columns``: list of (name, dtype); ``epsf``: band -> (cell tags, stamps (n, s, s),
        nstars list) or None.
        """
        import h5py
        set_hdf5_env()
        if parallel is None:
            parallel = use_parallel_h5(comm)
        cols = _store_columns(columns)
        if not parallel and not comm.is_master:
            return cls(path, comm, False, None, plan, cols)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if parallel:
            info = comm.MPI.Info.Create()
            info.Set("romio_ds_write", "disable")
            info.Set("romio_ds_read", "disable")
            f = h5py.File(path, "w", driver="mpio", comm=comm.world, info=info)
        else:
            f = h5py.File(path, "w")
        n = len(plan)
        g = f.create_group("plan")
        for key in ("id", "kind", "band", "tag"):
            vals = [getattr(e, key).encode("utf-8") for e in plan.entries]
            width = max([1] + [len(v) for v in vals])
            g.create_dataset(key, shape=(n,), dtype=f"S{width}")
        g.create_dataset("bbox", shape=(n, 4), dtype=np.int64)
        g.create_dataset("cost", shape=(n,), dtype=np.float64)
        g.create_dataset("row_offset", shape=(n,), dtype=np.int64)
        g.create_dataset("n_rows", shape=(n,), dtype=np.int64)
        cat = f.create_group("catalog")
        nr = plan.total_rows
        rec = np.dtype(list(cols.items()))
        cat.create_dataset("rows", shape=(nr,), dtype=rec, fillvalue=fill_record(rec))
        t = f.create_group("tasks")
        t.create_dataset("status", shape=(n,), dtype=np.int8, fillvalue=0)
        t.create_dataset("timing", shape=(n, 5), dtype=np.float64, fillvalue=np.nan)
        eg = f.create_group("epsf")
        for band, (cells, stamps, nstars) in (epsf or {}).items():
            shape = tuple(np.shape(stamps)) if len(cells) else (0, 0, 0)
            d = eg.create_dataset(band, shape=shape, dtype=np.float32)
            d.attrs["cells"] = json.dumps(list(cells))
            d.attrs["nstars_used"] = json.dumps([None if v is None else int(v) for v in nstars])
        for k, v in (attrs or {}).items():
            f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v, default=str)
        f.attrs["n_tasks"] = n
        f.attrs["columns"] = json.dumps([[k, v.str] for k, v in cols.items()])
        f.attrs["n_ranks"] = comm.size
        # fixed data: written once by rank 0 (independent writes in parallel mode)
        if comm.is_master:
            if n:
                for key in ("id", "kind", "band", "tag"):
                    g[key][...] = np.array([getattr(e, key).encode("utf-8") for e in plan.entries],
                                           dtype=g[key].dtype)
                g["bbox"][...] = np.array([list(e.bbox) for e in plan.entries], dtype=np.int64)
                g["cost"][...] = np.array([e.cost for e in plan.entries], dtype=np.float64)
                g["row_offset"][...] = plan.row_offset
                g["n_rows"][...] = plan.n_rows
            if nr:
                init = np.full(nr, fill_record(rec), dtype=rec)
                init["_row"] = plan.all_rows()
                cat["rows"][...] = init
            for band, (cells, stamps, nstars) in (epsf or {}).items():
                if len(cells):
                    eg[band][...] = np.asarray(stamps, dtype=np.float32)
        f.flush()
        if parallel:
            comm.barrier()
        return cls(path, comm, parallel, f, plan, cols)

    @classmethod
    def encoder(cls, plan: StorePlan, columns) -> "ResultsStore":
        """An unopened store that only encodes rows (:meth:`encode_rows`) for ``plan``; a plan
        holding just the tasks with rows gives the same offsets as the full one (tasks without
        rows take no records)."""
        return cls("", None, False, None, plan, _store_columns(columns))

    # ------------------------------------------------------------------ writing
    @property
    def writable_here(self) -> bool:
        """True when this rank may write rows directly (rank 0 serial, any rank parallel)."""
        return self.f is not None

    def _write(self, spans) -> None:
        """Write record blocks ``[(offset, block), ...]`` with one H5Dwrite (hyperslab union)."""
        from h5py import h5s, h5t
        if self._mtype is None:     # the compound memory type, built once (238 fields at 40 bands)
            self._mtype = h5t.py_create(self.dtype)
            self._ds = self.f["catalog/rows"]
        buf = spans[0][1] if len(spans) == 1 else np.concatenate([b for _, b in spans])
        fspace = self._ds.id.get_space()
        fspace.select_none()
        for off, b in spans:
            fspace.select_hyperslab((off,), (len(b),), op=h5s.SELECT_OR)
        self._ds.id.write(h5s.create_simple((len(buf),)), fspace, np.ascontiguousarray(buf), mtype=self._mtype)

    def _blocks(self, task_id: str, table):
        """Encode one task's rows into one record block (plan row order): (offset, n, block, n_good)."""
        i = self.plan.index[task_id]
        n = int(self.plan.n_rows[i])
        off = int(self.plan.row_offset[i])
        if n == 0:
            return off, 0, None, 0
        keys = np.asarray(table["_row"], dtype=np.int64)
        pos_map = self._row_pos.get(i)
        if pos_map is None:
            pos_map = {int(r): k for k, r in enumerate(np.asarray(self.plan.entries[i].rows))}
            self._row_pos[i] = pos_map
        pos = np.array([pos_map.get(int(k), -1) for k in keys], dtype=np.int64)
        good = pos >= 0
        if not good.all():
            log.warning("task %s: %d result rows are not in its plan rows; ignored", task_id,
                        int((~good).sum()))
        order = np.argsort(pos[good], kind="stable")
        src_idx = np.nonzero(good)[0][order]
        dst = pos[good][order]
        have = _columns_of(table)
        block = np.full(n, self._fill, dtype=self.dtype)
        block["_row"] = np.asarray(self.plan.entries[i].rows, dtype=np.int64)
        for name, dt in self.columns.items():
            if name == "_row" or name not in have:
                continue
            vals = np.asarray(table[name])
            if dt.kind == "S" or (dt.kind == "b" and vals.dtype.kind != "b"):   # converted per value
                vals = vals.astype(object)
            block[name][dst] = _encode(vals[src_idx], dt, name)
        return off, n, block, int(good.sum())

    def encode_rows(self, task_id: str, table) -> "EncodedRows":
        """Encode rows on the rank that produced them (any rank; the file need not be open), so
        the rank-0 writer of serial mode only copies blocks into place."""
        return EncodedRows(self._blocks(task_id, table))

    def write_rows(self, task_id: str, table) -> int:
        """Write one task's result rows, aligned on ``_row`` with the plan; returns rows written.

        ``table``: DataFrame or mapping column -> sequence, with a ``_row`` column.  Rows whose key
        the plan does not give this task are ignored (logged); plan rows missing from the table
        keep the fill value (they become ``no_fit_result`` downstream).  The rank-0 writer of
        serial mode buffers rows and writes them in batches (:meth:`flush`, at most every
        ``flush_sec``) so that the master's time per task stays small.
        """
        if self.f is None:
            raise RuntimeError("results store is not open on this rank")
        off, n, block, ngood = table.parts if isinstance(table, EncodedRows) else \
            self._blocks(task_id, table)
        if n == 0:
            return 0
        if self.buffered:
            self._pending[off] = block
            self._maybe_flush()
        else:
            self._write([(off, block)])          # the task's one write
        return ngood

    def set_status(self, task_id: str, status: int, timing=None) -> None:
        """Task status (and [start, wall, rss, rank, attempt]) - rank 0 only; written at flush."""
        if self.f is None:
            return
        i = self.plan.index[task_id]
        self._status[i] = np.int8(status)
        if timing is not None:
            self._timing[i, :] = np.asarray(timing, dtype=np.float64)
        self._dirty = True
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_sec:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows (one write: the union of their hyperslabs), then status and timing.

        Rows go first: a store that says DONE always holds that task's rows.  Independent I/O
        only (safe on any rank in parallel mode; the file-level flush is done in serial mode).
        """
        if self.f is None:
            return
        if self._pending:
            self._write(sorted(self._pending.items()))
            self._pending.clear()
        if self._dirty and self.comm.is_master:
            self.f["tasks/status"][...] = self._status
            self.f["tasks/timing"][...] = self._timing
            self._dirty = False
        if not self.parallel:
            self.f.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close (collective in parallel mode: every rank must call it)."""
        if self.f is not None:
            self.flush()
            self.f.close()
            self.f = None


@dataclasses.dataclass
class EncodedRows:
    """Rows already encoded by :meth:`ResultsStore.encode_rows`: (offset, n, record block, n_good)."""

    parts: tuple


def _columns_of(table):
    return set(table.columns) if hasattr(table, "columns") else set(table.keys())


# ---------------------------------------------------------------------- reading (rank 0, serial)
def _dec(a):
    return [x.decode("utf-8") for x in np.asarray(a)]


def read_store(path: str, decode: bool = True) -> dict:
    """Read a whole store serially: {'attrs', 'plan' (dict of lists/arrays), 'catalog' (dict of
    arrays; strings decoded), 'status', 'timing', 'epsf' (band -> (cells, stamps)), 'run'}.
    Raises ``OSError``/``KeyError`` when the file is unreadable or incomplete."""
    import h5py
    set_hdf5_env()
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        p = f["plan"]
        out["plan"] = {k: _dec(p[k][...]) for k in ("id", "kind", "band", "tag")}
        for k in ("bbox", "cost", "row_offset", "n_rows"):
            out["plan"][k] = p[k][...]
        cat = {}
        if "rows" in f["catalog"]:
            recs = f["catalog/rows"][...]      # fields in name order, as the per-column layout
            fields = [(name, recs[name]) for name in sorted(recs.dtype.names)]
        else:       # stores of earlier versions: one dataset per column
            fields = [(name, d[...]) for name, d in f["catalog"].items()]
        for name, a in fields:
            cat[name] = np.array(_dec(a), dtype=object) if (decode and a.dtype.kind == "S") else a
        out["catalog"] = cat
        out["status"] = f["tasks/status"][...]
        out["timing"] = f["tasks/timing"][...]
        out["epsf"] = {b: (json.loads(d.attrs["cells"]), d[...]) for b, d in f["epsf"].items()}
        out["run"] = dict(f["run"].attrs) if "run" in f else {}
    return out


def catalog_frame(store: dict, done_only: bool = True):
    """Result rows of a read store as a DataFrame in plan order (rows of unfinished tasks
    dropped when ``done_only``), with ``patch_task`` naming the owning task."""
    import pandas as pd
    plan = store["plan"]
    df = pd.DataFrame(store["catalog"])
    owner = np.repeat(np.arange(len(plan["id"])), plan["n_rows"])
    if done_only and len(owner):
        df = df[store["status"][owner] == ST_DONE]
    return df.reset_index(drop=True)


def write_run_attrs(path: str, attrs: dict) -> None:
    """Attach run-level attributes under /run (rank 0, after the collective close)."""
    import h5py
    with h5py.File(path, "r+") as f:
        g = f.require_group("run")
        for k, v in attrs.items():
            g.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v, default=str)


def write_root_attrs(path: str, attrs: dict) -> None:
    """Set root attributes of an existing store (rank 0, e.g. the catalog provenance at merge);
    non-scalar values as JSON text."""
    import h5py
    with h5py.File(path, "r+") as f:
        for k, v in attrs.items():
            f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v, default=str)


def read_root_attrs(path: str) -> dict:
    """Root attributes of a store, JSON text decoded where it parses; {} when unreadable."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            raw = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError):
        return {}
    out = {}
    for k, v in raw.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out
