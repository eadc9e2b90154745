"""Logging set-up for one command: console + per-command log file, log header, config snapshot.

Only rank 0 writes the shared log (``logging.file``, ``auto`` = ``{work_dir}/{command}.log``,
append mode); other ranks print WARNING and above to stderr, prefixed with their rank, and with
``mpi.per_rank_logs`` also keep a full log in ``{work_dir}/logs/{command}.rank{NNNN}.log``.
The header records what is needed to reproduce a run: version, command line, host, Python and
library versions (with h5py's MPI flag and the MPI library) and the MPI world size.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
import warnings

import yaml

from ._version import __version__
from .errors import ConfigError
from .parallel.mpienv import RANK_VARS, SIZE_VARS, THREAD_VARS

LOGGER_NAME = "tract7dt_mpi"
_LIBRARIES = ("numpy", "scipy", "astropy", "pandas", "photutils", "sep", "matplotlib", "h5py", "mpi4py", "galsim")


def launcher_rank_size() -> tuple[int, int]:
    """(rank, size) from launcher environment variables, without importing mpi4py; (0, 1) if none."""
    def first_int(names):
        for name in names:
            try:
                return int(os.environ[name])
            except (KeyError, ValueError):
                continue
        return None
    rank = first_int(RANK_VARS)
    size = first_int(SIZE_VARS)
    return (rank or 0), max(size or 1, (rank or 0) + 1)


def _clear_own_handlers(logger):
    for h in list(logger.handlers):
        if getattr(h, "_tract7dt", False):
            logger.removeHandler(h)
            h.close()


def reset_logging() -> None:
    """Undo :func:`setup_logging` (handlers closed, propagation back on); for tests and re-entry."""
    logger = logging.getLogger(LOGGER_NAME)
    _clear_own_handlers(logger)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


class _LogFileHandler(logging.FileHandler):
    """A FileHandler that stays silent when the disk is full: the program reports that itself,
    in one line, instead of a "--- Logging error ---" traceback per record."""

    def handleError(self, record):
        from .errors import is_disk_full
        if is_disk_full(sys.exc_info()[1]):
            return
        super().handleError(record)


def _file_handler(logfile: str, what: str) -> logging.FileHandler:
    """Append-mode handler on ``logfile`` (folders created); ConfigError "<what> <file>: <reason>"."""
    try:
        os.makedirs(os.path.dirname(logfile), exist_ok=True)
        return _LogFileHandler(logfile, mode="a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what} {logfile}: {exc.strerror}") from None


def _add(logger, handler, level, fmt):
    handler._tract7dt = True
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt))
    logger.addHandler(handler)


def setup_logging(cfg, command: str, rank: int = 0, size: int = 1):
    """Configure the ``tract7dt_mpi`` logger for ``command``; return ``(logger, logfile or None)``.

    Calling it again replaces the handlers installed by the previous call.
    """
    level = getattr(logging, cfg.logging.level, logging.INFO)
    fmt = cfg.logging.format
    try:
        logging.Formatter(fmt, validate=True)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"logging.format: invalid log format {fmt!r} ({exc})") from None
    if cfg.logging.ignore_warnings:
        warnings.simplefilter("ignore")
    else:
        logging.captureWarnings(True)

    logger = logging.getLogger(LOGGER_NAME)
    _clear_own_handlers(logger)
    logger.setLevel(level)
    logger.propagate = False
    logfile = None
    if rank == 0:
        _add(logger, logging.StreamHandler(sys.stderr), level, fmt)
        logfile = cfg.log_file(command)
        if logfile:
            _add(logger, _file_handler(logfile, "logging.file: cannot open log file"), level, fmt)
    else:
        rank_fmt = f"[rank {rank}] {fmt}"
        _add(logger, logging.StreamHandler(sys.stderr), max(level, logging.WARNING), rank_fmt)
        if cfg.mpi.per_rank_logs:
            logfile = os.path.join(cfg.outputs.work_dir, "logs", f"{command}.rank{rank:04d}.log")
            _add(logger, _file_handler(logfile, "mpi.per_rank_logs: cannot open"), level, rank_fmt)
    # pyplot/fonts debug chatter is never useful in our logs
    logging.getLogger("matplotlib").setLevel(max(level, logging.WARNING))
    return logger, logfile


def log_to_files(logger, level: int, msg: str, exc_info=None, force: bool = False) -> None:
    """Emit a record to the logger's file handlers only (keeps tracebacks off the screen).

    ``force`` writes it whatever the handler level (run header and config dump always belong
    in the log file).
    """
    record = logger.makeRecord(logger.name, level, "(cli)", 0, msg, (), exc_info)
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler) and (force or record.levelno >= h.level):
            h.handle(record)


class _Collect(logging.Handler):
    def __init__(self, out: list):
        super().__init__(logging.NOTSET)
        self.out = out

    def emit(self, record):
        self.out.append((record.levelno, record.getMessage()))


@contextlib.contextmanager
def collected(logger):
    """Yield a list that gathers the (level, message) of ``logger``'s records while the block runs,
    instead of writing them: a task hands its log lines to rank 0, which alone writes the run log,
    once, whichever rank ran the task (in a multi-tile run with the tile's name in front). When
    the block raises, the lines gathered so far are written here before the error goes on."""
    out = []
    h = _Collect(out)
    keep = logger.propagate
    logger.addHandler(h)
    logger.propagate = False
    try:
        yield out
    except BaseException:
        logger.removeHandler(h)
        logger.propagate = keep
        for level, msg in out:
            logger.log(level, "%s", msg)
        raise
    finally:
        logger.removeHandler(h)
        logger.propagate = keep


def _info_always_in_file(logger, msg: str) -> None:
    """INFO to every handler when enabled; otherwise still to the log files."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(msg)
    else:
        log_to_files(logger, logging.INFO, msg, force=True)


def _version_of(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        mod = sys.modules.get(name)
        return getattr(mod, "__version__", "not installed") if mod else "not installed"


def _git_version() -> str | None:
    """``git describe`` of the source tree when running from a checkout (else None)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _mpi_library() -> str:
    """First line of the MPI library version, only if mpi4py.MPI is already imported."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None:
        return "not initialised (no MPI launcher detected)"
    try:
        # some MPI libraries pad the version string with NUL bytes
        return mpi.Get_library_version().replace("\x00", "").strip().splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"unknown ({exc})"


def header_lines(argv, size: int) -> list[str]:
    """The header text (one entry per line)."""
    git = _git_version()
    lines = [f"tract7dt-mpi {__version__}" + (f" (git {git})" if git else ""),
             f"Command line: {shlex.join(str(a) for a in argv)}",
             f"Host: {socket.gethostname()} | cwd: {os.getcwd()}",
             f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}"]
    versions = [f"{name} {_version_of(name)}" for name in _LIBRARIES]
    try:
        import h5py
        versions[_LIBRARIES.index("h5py")] += f" (HDF5 {h5py.version.hdf5_version}, MPI={bool(h5py.get_config().mpi)})"
    except Exception:  # noqa: BLE001 - a broken h5py must not stop the header
        pass
    lines.append("Libraries: " + ", ".join(versions))
    lines.append(f"MPI library: {_mpi_library()}")
    lines.append(f"MPI world size: {size}")
    threads = [f"{v}={os.environ[v]}" for v in THREAD_VARS if v in os.environ]
    if threads:
        lines.append("Threads: " + ", ".join(threads))
    return lines


def log_header(logger, argv, size: int = 1) -> None:
    """Log the run header (version, command line, host, library versions, MPI size)."""
    for line in header_lines(argv, size):
        _info_always_in_file(logger, line)


def snapshot_config(cfg, work_dir: str | None = None, logger=None) -> str:
    """Copy the YAML byte-for-byte to ``{work_dir}/config_used_YYYYMMDD_HHMMSS.yaml``; return the path.

    A config built from a dict (no file) is written as YAML of the user's settings.
    """
    from .io.atomic import atomic_write_bytes

    work_dir = work_dir or cfg.outputs.work_dir
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    path = os.path.join(work_dir, f"config_used_{stamp}.yaml")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(work_dir, f"config_used_{stamp}_{n}.yaml")
    if cfg.config_path:
        with open(cfg.config_path, "rb") as fh:
            data = fh.read()
    else:
        plain = json.loads(json.dumps(cfg.raw_dict(), default=str))   # tuples/paths -> YAML-safe
        data = yaml.safe_dump(plain, sort_keys=False).encode("utf-8")
    atomic_write_bytes(path, data)
    _info_always_in_file(logger or logging.getLogger(LOGGER_NAME), f"Config snapshot saved: {path}")
    return path


def log_config(logger, cfg) -> None:
    """Log the resolved config (to the log files only, it is long), then every loader notice."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None, width=120)
    _info_always_in_file(logger, f"Config file: {cfg.config_path or '(none: built from a dict)'}")
    log_to_files(logger, logging.INFO, "Resolved config:\n" + text.rstrip(), force=True)
    for notice in cfg.ignored_key_notices():
        logger.warning("Config notice: %s", notice)
