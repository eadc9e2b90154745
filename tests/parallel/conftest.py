"""Helpers for tests that launch ``mpirun`` in a subprocess (always with a timeout)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"


def mpi_env(extra=None):
    env = dict(os.environ)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "OMPI_MCA_rmaps_base_oversubscribe": "1", "MPLBACKEND": "Agg",
                "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "HDF5_USE_FILE_LOCKING": "FALSE", "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"})
    env.pop("TRACT7DT_FORCE_SERIAL_H5", None)
    env.update(extra or {})
    return env


def mpirun_cmd(n, argv):
    if n is None:      # plain process, no launcher
        return [sys.executable] + list(argv)
    return ["mpirun", "-n", str(n), "--oversubscribe", "--bind-to", "none", sys.executable] + list(argv)


def run(n, argv, timeout=120, env=None, **kw):
    """Run ``python argv`` under ``mpirun -n n`` (n=None: no launcher); return CompletedProcess."""
    return subprocess.run(mpirun_cmd(n, argv), env=mpi_env(env), capture_output=True, text=True,
                          timeout=timeout, **kw)


def popen(n, argv, env=None, **kw):
    return subprocess.Popen(mpirun_cmd(n, argv), env=mpi_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


need_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
