"""One run per work folder: an exclusively created lock file holding the owner's identity.

Why: two runs writing one folder corrupt the journal and ``results.h5``.  HDF5 file locking is no
guard (it is off on most parallel file systems), but creating a file with ``O_CREAT | O_EXCL`` is
atomic on local disks, NFS (v3 and later) and Lustre.  The file ``tract7dt-mpi.lock`` holds the
owner's host, pid, start time and command line as JSON; the owner touches it every
:data:`HEARTBEAT_SEC` seconds while it runs and removes it when it exits (also on errors).

A lock left behind by a killed run is *stale* and is taken over with a warning when
- it was written by an earlier run of this same batch job (a requeued SLURM job keeps its id), or
- it was written on this host and its pid is no longer alive (or is now another program), or
- it was written on another host and has not been touched for :data:`STALE_SEC` seconds.
Otherwise the new run is refused (``InputError``, exit 2) with a message naming the owner.
``force=True`` (``--force-unlock``) removes any lock; so does deleting the file by hand.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import secrets
import shutil
import socket
import threading
import time

from ..errors import InputError

LOCK_NAME = "tract7dt-mpi.lock"
HEARTBEAT_SEC = 60.0        #: the owner refreshes the lock's modification time this often
STALE_SEC = 600.0           #: a lock from another host untouched this long belongs to a dead run

__all__ = ["RunLock", "LOCK_NAME", "STALE_SEC", "HEARTBEAT_SEC", "free_space_text"]


def free_space_text(folder: str) -> str:
    """Free space of the file system holding ``folder``, e.g. ``'12.3 MB free'`` (or ``'? free'``)."""
    p = os.path.abspath(folder)
    while p and not os.path.exists(p):
        p = os.path.dirname(p)
    try:
        free = shutil.disk_usage(p or "/").free
    except OSError:
        return "? free"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1000.0
    return "? free"  # pragma: no cover


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True          # exists but belongs to someone else (or unparsable: be careful)
    return True


def _job_id() -> str | None:
    """The batch job this process belongs to (SLURM, PBS), if any."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or None


def _runs_other_program(pid: int) -> bool:
    """True when ``pid`` is alive but its command line is no tract7dt-mpi (a reused pid)."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as fh:
            cmd = fh.read()
    except OSError:
        return False                      # no /proc (macOS) or no access: assume it is ours
    return b"tract7dt" not in cmd


def _describe(owner: dict) -> str:
    return (f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, started "
            f"{owner.get('started', '?')}, command: {owner.get('command', '?')}")


def _read_owner(path: str) -> dict | None:
    """The owner record of a lock file; {} when unreadable/corrupt, None when it vanished."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(65536)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        rec = json.loads(raw.decode("utf-8"))
        return rec if isinstance(rec, dict) else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _work_dir_error(work_dir: str, exc: OSError) -> InputError:
    why = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        why += f" ({free_space_text(work_dir)})"
    return InputError(f"outputs.work_dir: cannot write to {work_dir}: {why}")


class RunLock:
    """The lock of one work folder, held by this process (see the module docstring)."""

    def __init__(self, path: str, owner: dict):
        self.path, self.owner = path, owner
        self.notice = None           #: one-line warning when a stale lock was taken over
        self._stop = threading.Event()
        self._thread = None

    # ------------------------------------------------------------------ acquire
    @classmethod
    def acquire(cls, work_dir: str, command: str = "", force: bool = False,
                heartbeat: bool = True) -> "RunLock":
        """Create the work folder if needed and take its lock; InputError when not possible.

        The same call checks that the folder is writable (the lock is its first file): an
        unwritable folder gives "outputs.work_dir: cannot write to ...".
        """
        work_dir = os.path.abspath(work_dir)
        try:
            os.makedirs(work_dir, exist_ok=True)
        except OSError as exc:
            raise _work_dir_error(work_dir, exc) from None
        if not os.path.isdir(work_dir):
            raise InputError(f"outputs.work_dir: {work_dir} is not a folder")
        path = os.path.join(work_dir, LOCK_NAME)
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "time": time.time(), "command": command, "job": _job_id(),
                 "token": secrets.token_hex(8)}
        notice = None
        for _ in range(3):
            if cls._create(path, owner, work_dir):
                lock = cls(path, owner)
                lock.notice = notice
                if heartbeat:
                    lock._start_heartbeat()
                return lock
            other = _read_owner(path)
            if other is None:
                continue                     # released meanwhile: try again
            why = None if force else cls._stale_reason(path, other)
            if not force and why is None:
                raise InputError(
                    f"work folder {work_dir} is in use by another run ({_describe(other)}); "
                    f"wait for it to end, or if it is dead remove {path} (or use --force-unlock)")
            cls._take_over(path, other)
            notice = (f"took over the lock {path} of an earlier run ({_describe(other)}): "
                      f"{'--force-unlock' if force else why}")
        raise InputError(f"work folder {work_dir}: could not take the lock {path} "
                         f"(other runs keep creating it)")

    @staticmethod
    def _create(path: str, owner: dict, work_dir: str) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _work_dir_error(work_dir, exc) from None
        try:
            os.write(fd, (json.dumps(owner) + "\n").encode("utf-8"))
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise _work_dir_error(work_dir, exc) from None
        os.close(fd)
        return True

    @staticmethod
    def _stale_reason(path: str, other: dict) -> str | None:
        """Why the lock ``other`` is stale, or None when its owner may still be running."""
        try:
            age = time.time() - os.stat(path).st_mtime
        except OSError:
            return "lock file vanished"
        if other.get("job") and other.get("job") == _job_id():
            return f"left by an earlier run of this batch job {other['job']} (requeued)"
        if other.get("host") == socket.gethostname():
            pid = other.get("pid")
            if isinstance(pid, int) and not _pid_alive(pid):
                return f"pid {pid} is no longer running on this host"
            if isinstance(pid, int) and pid != os.getpid() and _runs_other_program(pid):
                return f"pid {pid} now belongs to another program"
            if not isinstance(pid, int) and age > STALE_SEC:
                return f"unreadable lock untouched for {age:.0f} s"
            return None
        if age > STALE_SEC:
            return f"not refreshed for {age:.0f} s > {STALE_SEC:.0f} s"
        return None

    @staticmethod
    def _take_over(path: str, other: dict) -> None:
        """Move the stale lock aside (atomic rename: of two runs taking over, one wins)."""
        aside = f"{path}.stale-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        if _read_owner(aside) != other:       # someone else's fresh lock: put it back
            with contextlib.suppress(OSError):
                os.link(aside, path)
        with contextlib.suppress(OSError):
            os.unlink(aside)

    # ------------------------------------------------------------------ while running
    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_SEC):
                with contextlib.suppress(OSError):
                    os.utime(self.path)
        self._thread = threading.Thread(target=beat, name="tract7dt-runlock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent)."""
        self._stop.set()
        if _read_owner(self.path) == self.owner:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
