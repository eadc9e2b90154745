"""Catalog provenance: git commit (or 'unknown'), config hash, and the copy in results.h5."""
import subprocess

import h5py
import numpy as np
import pandas as pd
from astropy.table import Table

from tract7dt_mpi import provenance
from tract7dt_mpi.config import config_from_dict


def test_git_revision_is_unknown_without_git_or_checkout(monkeypatch):
    def no_git(*a, **k):
        raise FileNotFoundError("git")
    monkeypatch.setattr(subprocess, "run", no_git)
    assert provenance.git_revision.__wrapped__() == "unknown"

    def other_repo(cmd, **k):       # the package sits inside some other repository's tree
        if "--show-toplevel" in cmd:
            return subprocess.CompletedProcess(cmd, 0, "/somewhere/else\n", "")
        raise AssertionError("should not ask further")
    monkeypatch.setattr(subprocess, "run", other_repo)
    assert provenance.git_revision.__wrapped__() == "unknown"


def test_config_hash_follows_result_relevant_keys_only():
    a = provenance.config_hash(config_from_dict({}))
    assert len(a) == 16 and a == provenance.config_hash(config_from_dict({}))
    assert provenance.config_hash(config_from_dict({"patch_run": {"n_opt_iters": 3}})) != a
    assert provenance.config_hash(config_from_dict({"mpi": {"threads_per_rank": 2}})) == a


def test_catalog_files_and_results_store_carry_the_same_provenance(tmp_path):
    from tract7dt_mpi.io.store import read_root_attrs
    from tract7dt_mpi.tasks import write_catalog_files

    cfg = config_from_dict({"outputs": {"work_dir": str(tmp_path)}}, base_dir=str(tmp_path))
    with h5py.File(cfg.outputs.results_h5, "w") as f:     # as ResultsStore.create leaves it
        f.attrs["bands"] = '["r", "g"]'
        f.attrs["n_ranks"] = 4
    cat = pd.DataFrame({"ID": ["1"], "FLUX_g_fit": [1.0], "FLUX_r_fit": [2.0], "FIT_FLAGS": [0]})
    summary = pd.DataFrame({"band": ["r"], "zp_median": [24.9], "zp_err_mad": [0.02],
                            "zp_err_std": [0.05]})
    write_catalog_files(cfg, cat, summary)
    m = Table.read(cfg.outputs.final_catalog.replace(".csv", ".fits")).meta
    h = read_root_attrs(cfg.outputs.results_h5)
    assert (m["BAND01"], m["BAND02"], m["NRANKS"]) == ("r", "g", 4)      # image-list order
    assert h["bands"] == ["r", "g"] and h["n_ranks"] == 4
    assert m["ZP01"] == h["zp"]["r"] == 24.9 and h["zp"]["g"] is None
    assert m["ZPERR01"] == h["zp_err"]["r"] == 0.02
    for card, attr in (("PROGVER", "version"), ("GITHASH", "git_hash"), ("CFGHASH", "config_hash"),
                       ("DATE", "date"), ("ZP_REF", "zp_ref"), ("PROGRAM", "program")):
        assert m[card] == h[attr], card
    assert np.isclose(h["zp_ref"], float(cfg.image_scaling.zp_ref))
