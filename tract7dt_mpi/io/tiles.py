"""Files of a multi-tile run: the tile list and each tile's task context.

Tile list (``tract7dt-mpi run --tiles tiles.txt``, the same format as a campaign's tile list): one
tile config YAML per line; text after ``#`` is a comment; blank lines are skipped; a relative path
is resolved against the list file's folder.

Task context (``{work_dir}/tile_context.pkl``): what every rank needs to fit a tile's patches (the
working catalog, the patch plan and the ePSF stamps), written once by the rank that planned the
patches and read by the ranks that fit them.  A pickle, written atomically; it is an internal
hand-over file of one run (same program version on every rank), not a product.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

from ..errors import InputError
from .atomic import atomic_write_bytes

CONTEXT_NAME = "tile_context.pkl"


def read_tile_list(path: str | os.PathLike) -> list[str]:
    """Absolute config paths listed in ``path``; InputError naming the file (and line) if unusable."""
    src = Path(path).expanduser().resolve()
    try:
        lines = src.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--tiles {src}: tile list not readable ({type(exc).__name__})") from None
    tiles = []
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cfg = (src.parent / os.path.expanduser(line)).resolve()
        if not cfg.is_file():
            raise InputError(f"--tiles {src}:{n}: tile config {cfg} not found")
        if str(cfg) in tiles:
            raise InputError(f"--tiles {src}:{n}: tile config {cfg} listed twice")
        tiles.append(str(cfg))
    if not tiles:
        raise InputError(f"--tiles {src}: no tile configs listed (expected one config.yaml path per line)")
    return tiles


def context_path(work_dir: str) -> str:
    return os.path.join(work_dir, CONTEXT_NAME)


def write_context(work_dir: str, context: dict) -> str:
    """Write a tile's task context atomically; returns its path."""
    path = context_path(work_dir)
    atomic_write_bytes(path, pickle.dumps(context, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def read_context(work_dir: str) -> dict:
    with open(context_path(work_dir), "rb") as fh:
        return pickle.load(fh)
