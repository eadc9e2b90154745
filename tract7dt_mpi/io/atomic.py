"""Atomic file writers: write to a temporary name in the target folder, fsync, then rename.

A crash or a killed rank therefore never leaves a half-written product under its final name
(issue 2 item 7); the temporary file is removed when the writer fails. ``os.replace`` is atomic
on POSIX within one file system, which is why the temporary file lives in the same folder. The
temporary name keeps the final extension so that writers choosing a format by suffix
(matplotlib, astropy) behave as for the real name.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets

__all__ = ["atomic_path", "atomic_open", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "atomic_write_csv", "temp_name"]


def temp_name(path: str) -> str:
    """A unique hidden temporary name next to ``path`` with the same extension."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}")


def _fsync_path(path: str) -> None:
    """fsync a file or a folder by path; best effort (some file systems refuse folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_fsync_dir = _fsync_file = _fsync_path


@contextlib.contextmanager
def atomic_path(path, fsync: bool = True):
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    For writers that need a file name (``df.to_csv(tmp)``, ``fig.savefig(tmp)``, FITS, HDF5).
    The parent folder is created. If the body raises, the temporary file is removed and
    ``path`` is left untouched.
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"atomic write of {path}: the writer produced no file")
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(os.path.dirname(path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None,
                fsync: bool = True):
    """Open a temporary file for writing (``"w"`` or ``"wb"``); rename it to ``path`` on success.

    The file is created with the usual permissions (0666 minus the umask).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, fsync=False) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if mode == "wb":
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    if fsync:
        _fsync_dir(os.path.dirname(os.path.abspath(os.fspath(path))))


def atomic_write_bytes(path, data: bytes, fsync: bool = True) -> str:
    """Write ``data`` to ``path`` atomically; return the absolute path."""
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)
    return os.path.abspath(os.fspath(path))


def atomic_write_text(path, text: str, encoding: str = "utf-8", fsync: bool = True) -> str:
    """Write ``text`` to ``path`` atomically; return the absolute path."""
    with atomic_open(path, "w", encoding=encoding, fsync=fsync) as fh:
        fh.write(text)
    return os.path.abspath(os.fspath(path))


def _json_default(obj):
    """JSON conversion for numpy scalars/arrays, paths and sets (no numpy import needed)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def atomic_write_json(path, obj, indent: int | None = 2, allow_nan: bool = True, fsync: bool = True) -> str:
    """Write ``obj`` as JSON atomically (numpy values converted); ``(obj, path)`` order also accepted."""
    if not _is_path(path) and _is_path(obj):
        path, obj = obj, path
    text = json.dumps(obj, indent=indent, allow_nan=allow_nan, default=_json_default)
    return atomic_write_text(path, text + "\n", fsync=fsync)


def atomic_write_csv(path, table, fieldnames=None, fsync: bool = True, **to_csv_kwargs) -> str:
    """Write a table as CSV atomically; ``(table, path)`` order also accepted.

    ``table`` is a pandas DataFrame (written with ``index=False`` unless given) or an iterable
    of dict rows (``fieldnames`` = header order; default: keys of the first row).
    """
    if not _is_path(path) and _is_path(table):
        path, table = table, path
    if hasattr(table, "to_csv"):
        to_csv_kwargs.setdefault("index", False)
        with atomic_open(path, "w", newline="", fsync=fsync) as fh:
            table.to_csv(fh, **to_csv_kwargs)
    else:
        rows = list(table)
        if fieldnames is None:
            fieldnames = list(rows[0].keys()) if rows else []
        with atomic_open(path, "w", newline="", fsync=fsync) as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
    return os.path.abspath(os.fspath(path))
