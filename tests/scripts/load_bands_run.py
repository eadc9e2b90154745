"""Run the pipeline's load stage (one task per band, white-stack strips) on every rank of
``mpirun`` and print each rank's outcome; launched by tests/test_load_steps.py.

usage: python load_bands_run.py CONFIG.yaml
Rank 0 also writes the working catalogue of the LoadResult to {work_dir}/load_catalog.csv.
"""
import os
import sys

from tract7dt_mpi.config import load_config
from tract7dt_mpi.pipeline import _InputStop, _Run

cfg = load_config(sys.argv[1])
os.makedirs(cfg.outputs.work_dir, exist_ok=True)
R = _Run("run", cfg, {})
try:
    res = R.load_bands(plots=False)
    if R.master:
        res.catalog.to_csv(os.path.join(cfg.outputs.work_dir, "load_catalog.csv"), index=False)
    print(f"rank {R.comm.rank}: ok", flush=True)
except _InputStop as stop:
    print(f"rank {R.comm.rank}: {type(stop.exc).__name__}: {stop.exc}", flush=True)
