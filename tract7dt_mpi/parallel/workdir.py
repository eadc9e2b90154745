"""Claim the work folder for this run, once, before any rank touches it.

Rank 0 creates ``outputs.work_dir`` (checking that it is writable) and takes its run lock
(:mod:`tract7dt_mpi.io.runlock`); the outcome is broadcast, so a locked or unwritable folder is
reported once and every rank stops together with exit code 2 (no rank writes a log file into
it first, none waits for the others).
"""
from __future__ import annotations

from ..errors import InputError
from .mpienv import get_comm


class WorkDirRefused(InputError):
    """Raised on every rank when rank 0 could not claim the work folder.

    ``collective`` tells the CLI that every rank knows already: exit 2 without aborting MPI
    (the CLI prints the message on rank 0 only).
    """

    collective = True


def claim_work_dir(cfg, command: str = "", force_unlock: bool = False):
    """Take the work folder's lock on rank 0; return the RunLock there (None on other ranks).

    Raises :class:`WorkDirRefused` on every rank when rank 0 cannot (locked, unwritable).
    """
    from ..io.runlock import RunLock
    comm = get_comm(int(cfg.mpi.threads_per_rank))
    lock, error = None, None
    if comm.is_master:
        try:
            lock = RunLock.acquire(cfg.outputs.work_dir, command=command, force=force_unlock)
        except InputError as exc:
            error = str(exc)
    error = comm.bcast(error if comm.is_master else None)
    if error is not None:
        raise WorkDirRefused(error)
    return lock
