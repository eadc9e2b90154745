"""Run the pipeline's load stage (one task per band, white-stack strips) on every rank of
``mpirun``; each rank writes its outcome ("ok" or "ErrorType: message") to
{work_dir}/outcome.rank{R}.txt; launched by tests/test_load_steps.py.

usage: python load_bands_run.py CONFIG.yaml
Rank 0 also writes the working catalogue of the LoadResult to {work_dir}/load_catalog.csv and
its pre-crop white image (the crop figure's, drawn too) to {work_dir}/white_before_crop.npy.
"""
import os
import sys

import numpy as np

from tract7dt_mpi.config import load_config
from tract7dt_mpi.pipeline import _InputStop, _Run

cfg = load_config(sys.argv[1])
os.makedirs(cfg.outputs.work_dir, exist_ok=True)
R = _Run("run", cfg, {})
try:
    res = R.load_bands(plots=True)
    if R.master:
        res.catalog.to_csv(os.path.join(cfg.outputs.work_dir, "load_catalog.csv"), index=False)
        np.save(os.path.join(cfg.outputs.work_dir, "white_before_crop.npy"), res.white_before_crop)
    outcome = "ok"
except _InputStop as stop:
    outcome = f"{type(stop.exc).__name__}: {stop.exc}"
with open(os.path.join(cfg.outputs.work_dir, f"outcome.rank{R.comm.rank}.txt"), "w") as fh:
    fh.write(outcome)
