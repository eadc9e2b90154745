"""Exception types and process exit codes shared by every part of tract7dt-mpi.

Anything a user can fix (config, input files, columns, headers) raises :class:`InputError` with a
one-line message naming the file, key or column and what was expected; the CLI prints it once and
exits with :data:`EXIT_INPUT` on every rank.
"""

EXIT_OK = 0             #: every task finished
EXIT_ABORT = 1          #: internal error; the communicator was aborted
EXIT_INPUT = 2          #: bad config, bad input or bad usage
EXIT_RESUMABLE = 3      #: stopped early (signal or deadline); run again with --resume
EXIT_TASK_FAILURES = 4  #: finished, but some tasks failed (see the journal and the summary)


class Tract7dtError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_ABORT


class InputError(Tract7dtError):
    """A problem with the user's config or input files (one-line, user-facing message)."""

    exit_code = EXIT_INPUT


class ConfigError(InputError):
    """Unknown key, wrong type or bad value in the YAML config (message names the dotted key)."""


class DiskFullError(InputError):
    """No space left (ENOSPC) or disk quota exceeded (EDQUOT) while writing into a folder.

    An InputError: the user fixes it (frees space), and rank 0 reports it once like bad input.
    """


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError meaning "no space left on device" or "disk quota exceeded" (h5py puts
    the errno only into its message text)."""
    import errno
    if not isinstance(exc, OSError):
        return False
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if exc.errno in codes:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28," in text


def disk_full_error(exc: OSError, folder: str) -> DiskFullError:
    """The one-line DiskFullError for ``exc``, naming the folder written and its free space."""
    import os
    from .io.runlock import free_space_text
    target = getattr(exc, "filename", None)
    where = os.path.dirname(os.path.abspath(target)) if target else folder
    what = "disk quota exceeded" if "quota" in str(exc).lower() else "no space left on device"
    return DiskFullError(f"{what} writing in {where} ({free_space_text(where)}); free some space "
                         f"(or set outputs.work_dir elsewhere) and run again")
