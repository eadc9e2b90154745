"""Provenance of a catalog: program version and git commit, config hash, bands, zero points,
MPI ranks and date. The same dict becomes FITS header cards of ``output_catalog.fits``
(``io.catalog.provenance_cards``) and root attributes of ``results.h5``.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import subprocess

log = logging.getLogger(__name__)

PROGRAM = "tract7dt-mpi"


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """Commit hash of the checkout this package was imported from (``-dirty`` with tracked
    changes), or ``unknown`` when the package is not in a git checkout or git is missing."""
    pkg = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(pkg)

    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        top = git("rev-parse", "--show-toplevel")
        # a package installed into some other repository's tree is not "in a checkout"
        if os.path.realpath(top) != os.path.realpath(root):
            return "unknown"
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"
    return rev + ("-dirty" if dirty else "") if rev else "unknown"


def config_hash(cfg) -> str:
    """SHA-256 prefix (16 hex) of the result-relevant config (logging, MPI and resume settings
    left out, as for the resume plan hash)."""
    from .io.journal import config_fingerprint
    text = json.dumps(config_fingerprint(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def zero_points(zp_summary, method: str = "all_mad") -> tuple[dict, dict]:
    """``(zp, zp_err)`` band dicts from the ZP stage's summary table (``zp_err_std`` when
    ``zp.zp_err_method`` is ``bright_std``, else ``zp_err_mad``: the error MAGERR uses)."""
    if zp_summary is None or len(zp_summary) == 0:
        return {}, {}
    err_col = "zp_err_std" if method == "bright_std" else "zp_err_mad"
    zp = {str(r["band"]): float(r["zp_median"]) for _, r in zp_summary.iterrows()}
    err = {str(r["band"]): float(r[err_col]) for _, r in zp_summary.iterrows()}
    return zp, err


def catalog_provenance(cfg, bands, n_ranks=None, zp_summary=None) -> dict:
    """The provenance dict; bands without a calibrated zero point map to None in zp/zp_err."""
    zp, err = zero_points(zp_summary, str(cfg.zp.zp_err_method))
    bands = [str(b) for b in bands]
    from ._version import __version__
    return {
        "program": PROGRAM, "version": __version__, "git_hash": git_revision(),
        "config_hash": config_hash(cfg), "bands": bands,
        "zp_ref": float(cfg.image_scaling.zp_ref),
        "zp": {b: zp.get(b) for b in bands}, "zp_err": {b: err.get(b) for b in bands},
        "n_ranks": None if n_ranks is None else int(n_ranks),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
    }
