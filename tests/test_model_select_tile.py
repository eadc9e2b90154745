"""Model selection on a GalSim tile whose catalogue has no TYPE at all (issue acceptance): of the
sources with S/N > 50, >= 95 % of the stars are chosen point sources and >= 90 % of the galaxies
galaxies, and their fluxes are as good as with the true TYPE (stars 0.5 %, galaxies 2 %).
Slow: one full pipeline run on a 3-band 768 px tile."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_model_selection_on_a_tile_without_types(tmp_path):
    import yaml

    from tract7dt_mpi.sample import make_sample
    from tract7dt_mpi.sample.truth import load_truth
    d = tmp_path / "tile"
    paths = make_sample(str(d), bands=3, size=768, seed=11, verbose=False, blank_type_frac=1.0,
                        galaxy_truncation=False, stamp_flux_tol=1e-3, galaxy_mag_min=14.5,
                        galaxy_mag_max=19.5)
    cfg = yaml.safe_load(open(paths["config"]))
    cfg.setdefault("plotting", {})["level"] = "none"
    cfg.setdefault("patch_run", {})["model_selection"] = "untyped"
    with open(paths["config"], "w") as fh:
        yaml.safe_dump(cfg, fh)
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "tract7dt_mpi.cli", "run", paths["config"]], env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    inp = pd.read_csv(d / "input_catalog.csv", dtype={"ID": str}, keep_default_na=False)
    assert (inp["TYPE"].astype(str).str.strip() == "").all()
    truth, meta = load_truth(d)
    bands = [b["band"] for b in meta["bands"]]
    cat = pd.read_csv(d / "work" / "output_catalog.csv", dtype={"ID": str})
    m = cat.merge(truth, on="ID", how="inner", suffixes=("", "_true"))
    m = m[m["stype_fit"].notna() & ~m["saturated"].astype(str).str.lower().isin(["true", "1"])]
    snr = np.sqrt(sum((m[f"FLUX_{b}_fit"] / m[f"FLUXERR_STAT_{b}_fit"]) ** 2 for b in bands))
    hi = m[snr > 50]
    star = hi[hi["type"] == "STAR"]
    gal = hi[hi["type"].isin(["EXP", "DEV", "SERSIC"])]
    assert len(star) >= 20 and len(gal) >= 10, (len(star), len(gal))
    assert (star["stype_fit"] == "star").mean() >= 0.95
    assert (gal["stype_fit"] != "star").mean() >= 0.90

    def med(df):
        r = np.concatenate([(df[f"FLUX_{b}_fit"] / df[f"flux_{b}"]).to_numpy(float) for b in bands])
        return float(np.median(r[np.isfinite(r)]))
    assert abs(med(star) - 1) < 0.005, med(star)
    assert abs(med(gal) - 1) < 0.02, med(gal)
