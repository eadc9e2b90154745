"""Process environment for MPI runs: thread variables, lazy mpi4py, a one-process-safe ``Comm``.

Why: one code path must run under ``mpirun``/``srun`` and as a plain ``python`` process without any
MPI launcher (laptops, tests).  ``mpi4py`` is imported only when a launcher is detected (or forced
with ``TRACT7DT_MPI=1``), so a one-process run never initialises MPI.  Blocking waits sleep between
polls: on oversubscribed nodes Open MPI's busy-polling would steal the CPU of the ranks that work.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback

log = logging.getLogger(__name__)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
#: environment variables set by common launchers (Open MPI, MPICH/Hydra, PMIx, Slurm srun, Intel MPI)
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS",
                  "SLURM_STEP_NUM_TASKS", "MV2_COMM_WORLD_SIZE", "I_MPI_HYDRA_HOST_FILE")
_POLL_MIN, _POLL_MAX = 0.0005, 0.02     # seconds between polls of a pending receive/barrier


def set_thread_env(threads: int, override: bool = True) -> list[str]:
    """Set the BLAS/OpenMP thread variables to ``threads`` (>= 1); return the names changed.

    Call this before numpy is imported: thread pools read the variables once at load time.
    A warning is logged when numpy was already imported (the setting then only reaches
    libraries loaded later, e.g. OpenMP in SEP or child processes).
    """
    threads = max(1, int(threads))
    changed = []
    for name in THREAD_VARS:
        if override or name not in os.environ:
            if os.environ.get(name) != str(threads):
                changed.append(name)
            os.environ[name] = str(threads)
    if changed and "numpy" in sys.modules:
        log.debug("thread variables set after numpy import (%s=%d): BLAS may keep its old pool size",
                  changed[0], threads)
    return changed


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (or ``TRACT7DT_MPI=1`` forces MPI)."""
    forced = os.environ.get("TRACT7DT_MPI", "").strip().lower()
    if forced in ("0", "no", "false", "off"):
        return False
    if forced in ("1", "yes", "true", "on"):
        return True
    return any(v in os.environ for v in _LAUNCHER_VARS)


_MPI = None


def get_mpi(threads: int = 1):
    """Return the ``mpi4py.MPI`` module (imported once), or None when not launched by MPI."""
    global _MPI
    if _MPI is not None:
        return _MPI
    if not launched_by_mpi():
        return None
    import mpi4py
    if threads > 1:
        mpi4py.rc.thread_level = "funneled"     # BLAS/OpenMP threads, MPI calls from one thread
    from mpi4py import MPI
    _MPI = MPI
    return MPI


def hostname() -> str:
    return socket.gethostname()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux ru_maxrss is KiB, macOS bytes)."""
    try:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0
    except Exception:   # pragma: no cover - platform without resource
        return float("nan")


class Comm:
    """Thin facade over COMM_WORLD that also works with one process and no mpi4py.

    ``rank``, ``size``, ``is_master``; ``bcast`` and ``barrier`` wait by sleeping-polls;
    ``p2p`` is the (pkl5-wrapped) communicator used by the task queue (None for one process).
    """

    def __init__(self, mpi=None):
        self.MPI = mpi
        if mpi is None:
            self.world = None
            self.rank, self.size = 0, 1
            self.p2p = None
        else:
            self.world = mpi.COMM_WORLD
            self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
            self.p2p = None
            if self.size > 1:
                from mpi4py.util import pkl5   # messages > 2 GiB are split, no OverflowError
                self.p2p = pkl5.Intracomm(self.world)
        self.host = hostname()

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        """Barrier that sleeps while waiting (no CPU spin on oversubscribed nodes)."""
        if self.size == 1:
            return
        req = self.world.Ibarrier()
        wait_request(req)

    def bcast(self, obj=None, root: int = 0):
        """Broadcast a picklable object from ``root``; waits in a sleeping barrier first."""
        if self.size == 1:
            return obj
        self.barrier()
        return self._coll("bcast")(obj, root=root)

    def bcast_array(self, arr, root: int = 0):
        """Broadcast a numpy array as a raw buffer (shape/dtype sent first)."""
        if self.size == 1:
            return arr
        import numpy as np
        meta = self.bcast(None if arr is None else (arr.shape, arr.dtype.str), root=root)
        if meta is None:
            return None
        if self.rank != root:
            arr = np.empty(meta[0], dtype=np.dtype(meta[1]))
        arr = np.ascontiguousarray(arr)
        self.world.Bcast(arr, root=root)
        return arr

    def allreduce_max(self, value):
        if self.size == 1:
            return value
        self.barrier()
        return self.world.allreduce(value, op=self.MPI.MAX)

    def gather(self, obj, root: int = 0):
        if self.size == 1:
            return [obj]
        self.barrier()
        return self._coll("gather")(obj, root=root)

    def _coll(self, name):
        """pkl5 collective (mpi4py >= 4: no 2 GiB limit) or the plain one (older mpi4py)."""
        return getattr(self.p2p, name, None) or getattr(self.world, name)

    def abort(self, code: int = 1) -> None:
        """Abort every rank (no-op hard exit with one process)."""
        if self.size > 1:
            self.world.Abort(code)
        os._exit(code)  # pragma: no cover


def wait_request(req) -> None:
    """Complete an MPI request by polling with exponentially growing sleeps (bounded)."""
    pause = _POLL_MIN
    while not req.Test():
        time.sleep(pause)
        pause = min(_POLL_MAX, pause * 1.5)


_COMM: Comm | None = None


def get_comm(threads: int = 1) -> Comm:
    """The process-wide ``Comm`` (created on first use)."""
    global _COMM
    if _COMM is None:
        _COMM = Comm(get_mpi(threads))
    return _COMM


def install_excepthook(comm: Comm, logger: logging.Logger | None = None) -> None:
    """Unhandled exception -> log it, then ``COMM_WORLD.Abort(1)`` so no rank hangs waiting."""
    lg = logger or log
    previous = sys.excepthook

    def hook(etype, value, tb):
        try:
            lg.critical("Unhandled exception on rank %d (%s):\n%s", comm.rank, comm.host,
                        "".join(traceback.format_exception(etype, value, tb)).rstrip())
        finally:
            if comm.size > 1:
                sys.stderr.flush()
                comm.world.Abort(1)
            else:
                previous(etype, value, tb)

    sys.excepthook = hook


def set_hdf5_env() -> None:
    """Disable HDF5 file locking (broken on Lustre/NFS) unless the user chose a value."""
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
