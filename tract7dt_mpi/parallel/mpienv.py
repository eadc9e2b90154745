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

#: the thread-count variables of the numerical libraries (OpenMP, OpenBLAS, MKL, numexpr, Accelerate)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
#: environment variables set by common launchers (Open MPI, MPICH/Hydra, PMIx, Slurm srun, Intel MPI)
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS",
                  "SLURM_STEP_NUM_TASKS", "MV2_COMM_WORLD_SIZE", "I_MPI_HYDRA_HOST_FILE")
#: where launchers put this process's rank and the world size (read without importing mpi4py)
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
_POLL_MIN, _POLL_MAX = 0.0005, 0.02     # seconds between polls of a pending receive/barrier


#: exported by the job scripts (SLURM --cpus-per-task, PBS ompthreads); wins over the config
THREADS_ENV = "TRACT7DT_THREADS_PER_RANK"


def configured_threads(cfg) -> int | None:
    """``mpi.threads_per_rank`` when the user's YAML set it (or its legacy spelling), else None."""
    raw = cfg._raw or {}
    given = "threads_per_rank" in (raw.get("mpi") or {}) or \
        "threads_per_process" in (raw.get("patch_run") or {})
    n = int(cfg.mpi.threads_per_rank)
    return n if given or n != 1 else None


def resolve_threads(threads: int | None) -> tuple[int | None, str]:
    """Threads per rank and where the number came from.

    Precedence: ``TRACT7DT_THREADS_PER_RANK`` (job scripts) > ``threads`` (the config value) >
    nothing (None: keep what the user exported).  A bad environment value is ignored with a
    warning.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return n, THREADS_ENV
        except ValueError:
            pass
        log.warning("%s=%r is not a positive integer; ignored", THREADS_ENV, env)
    if threads is None:
        return None, "environment"
    return max(1, int(threads)), "mpi.threads_per_rank"


def set_thread_env(threads: int | None, override: bool = True) -> list[str]:
    """Set the BLAS/OpenMP thread variables; return the names changed.

    ``threads`` is the config value (None = not given).  ``TRACT7DT_THREADS_PER_RANK`` overrides
    it.  With a number, every variable is set to it (``override=False``: only unset ones); with
    neither, variables the user exported are kept and unset ones become 1 (one rank per core).
    Call this before numpy is imported: thread pools read the variables once at load time.
    """
    n, source = resolve_threads(threads)
    if n is None:
        n, override = 1, False
    changed = []
    for name in THREAD_VARS:
        if override or name not in os.environ:
            if os.environ.get(name) != str(n):
                changed.append(name)
            os.environ[name] = str(n)
    if changed and "numpy" in sys.modules:
        log.debug("thread variables set after numpy import (%s=%d from %s): BLAS may keep its "
                  "old pool size", changed[0], n, source)
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
    threads = resolve_threads(threads)[0] or _int_env("OMP_NUM_THREADS", 1)
    # Open MPI: yield the core while polling when the node is oversubscribed (read at MPI_Init)
    os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    if threads > 1:
        mpi4py.rc.thread_level = "funneled"     # BLAS/OpenMP threads, MPI calls from one thread
    from mpi4py import MPI
    _MPI = MPI
    return MPI


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


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


def process_usage() -> dict:
    """This process's resource use so far: peak RSS (MiB), CPU seconds, bytes read/written.

    ``read_bytes``/``write_bytes`` are what reached the storage layer (Linux ``/proc/self/io``;
    page-cache hits are not counted), ``rchar``/``wchar`` every byte passed to read/write calls;
    -1 where the platform does not say.
    """
    out = {"rss_mb": round(peak_rss_mb(), 1), "cpu_s": float("nan"), "read_bytes": -1,
           "write_bytes": -1, "rchar": -1, "wchar": -1}
    try:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = round(r.ru_utime + r.ru_stime, 3)
    except Exception:  # noqa: BLE001 - platform without resource
        pass
    try:
        with open("/proc/self/io", encoding="ascii") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                if key in out:
                    out[key] = int(val)
    except (OSError, ValueError):
        pass
    return out


def system_busy_seconds() -> float:
    """CPU seconds all cores of this machine spent busy since boot (Linux ``/proc/stat``; NaN
    elsewhere).  The difference over a run minus the run's own CPU time is the background load."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)         # idle + iowait
        busy = sum(vals[:8]) - idle                                  # without guest (in user)
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def process_age() -> float:
    """Seconds since this process started (interpreter start-up, imports, ``MPI_Init``); NaN if
    unknown.  Linux: start time from ``/proc/self/stat`` against the system uptime."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime", encoding="ascii") as fh:
            return float(fh.read().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return float("nan")


def usable_cores() -> int:
    """Cores this process may run on (affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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


