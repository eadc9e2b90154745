"""input_catalog.csv, gaiaxp_synphot.csv, image_list.txt and config.yaml of a synthetic tile."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from tract7dt_mpi.sample.truth import load_truth


def _read(paths, key, text_cols):
    return pd.read_csv(paths[key], dtype={c: str for c in text_cols})


def test_input_catalog_columns_and_perturbations(tile512):
    truth, _ = load_truth(tile512["out_dir"])
    cat = _read(tile512, "input_catalog", ["ID", "TYPE"])
    bands = [Path(p).stem.split("_")[-1] for p in tile512["images"]]
    assert list(cat.columns[:4]) == ["ID", "RA", "DEC", "TYPE"]
    assert {f"FLUX_{b}" for b in bands} | {"ELL", "THETA", "Re"} <= set(cat.columns)
    assert cat["ID"].str.fullmatch(r"\d{5}").all() and cat["ID"].is_unique
    assert set(cat["ID"]) == set(truth.loc[truth["in_catalog"], "ID"])
    assert 0.02 < cat["TYPE"].isna().mean() < 0.25
    assert set(cat["TYPE"].dropna()) <= {"STAR", "EXP", "DEV", "SERSIC"}
    assert cat["THETA"].between(-90, 90).all() and cat["ELL"].between(0, 1).all()
    t = truth.set_index("ID").loc[cat["ID"]]
    with fits.open(tile512["images"][0]) as h:
        x, y = WCS(h[0].header).all_world2pix(cat["RA"], cat["DEC"], 0)
    dr = np.hypot(x - t["x"].to_numpy(), y - t["y"].to_numpy())
    assert 0.15 < np.sqrt(np.mean(dr ** 2)) < 0.5 and dr.max() < 1.5
    for b in bands:
        f = cat[f"FLUX_{b}"].to_numpy()
        good = np.isfinite(f)
        assert 0.0 < (~good).mean() < 0.2
        rel = f[good] / t[f"flux_{b}"].to_numpy()[good] - 1
        assert 0.07 < np.std(rel) < 0.25 and abs(np.median(rel)) < 0.05


def test_gaia_table_holds_bright_stars_with_true_mags(tile512):
    truth, meta = load_truth(tile512["out_dir"])
    gaia = _read(tile512, "gaiaxp_synphot", ["source_id"])
    bands = [b["band"] for b in meta["bands"]]
    assert list(gaia.columns) == ["source_id", "ra", "dec", "phot_g_mean_mag"] + [f"mag_{b}" for b in bands]
    assert gaia["source_id"].str.fullmatch(r"[1-9]\d{18}").all() and gaia["source_id"].is_unique
    want = truth[(truth["type"] == "STAR") & (truth["g_mag"] <= 18.5)]
    assert set(gaia["source_id"]) == set(want["gaia_source_id"])
    assert (~want["in_catalog"]).sum() >= 1          # the uncatalogued bright stars are there too
    t = truth.set_index("gaia_source_id").loc[gaia["source_id"]]
    for b in bands:
        d = gaia[f"mag_{b}"].to_numpy() - t[f"mag_{b}"].to_numpy()
        assert np.abs(d).max() < 0.05 and 0.004 < np.std(d) < 0.02
    dra = (gaia["ra"].to_numpy() - t["ra"].to_numpy()) * 3600 * np.cos(np.radians(2.2))
    assert np.abs(dra).max() < 0.05


def test_truth_fluxes_follow_mags_zero_points_and_smooth_seds(tile512):
    truth, meta = load_truth(tile512["out_dir"])
    for bm in meta["bands"]:
        b = bm["band"]
        expect = 10 ** (-0.4 * (truth[f"mag_{b}"] - bm["zp_true"])) * 10 ** (-0.4 * (bm["zp_auto"] - 25.0))
        assert np.allclose(truth[f"flux_{b}"], expect, rtol=1e-6)
    b0, b1 = (bm["band"] for bm in meta["bands"])
    colour = truth[f"mag_{b0}"] - truth[f"mag_{b1}"]
    assert colour.std() > 0.1 and colour.abs().max() < 5.0


def test_image_list_and_config(tile512):
    lines = Path(tile512["image_list"]).read_text().splitlines()
    assert lines[0].startswith("#")
    root = Path(tile512["out_dir"])
    assert [str(root / p) for p in lines[1:]] == tile512["images"]
    cfg = yaml.safe_load(Path(tile512["config"]).read_text())
    assert cfg["crop"]["margin"] == 16 and cfg["epsf"]["epsf_ngrid"] == 1 and cfg["plotting"]["dpi"] == 80
    for key in ("input_catalog", "image_list_file", "gaiaxp_synphot_csv"):
        assert (root / cfg["inputs"][key]).is_file()
    x0, x1, y0, y1 = cfg["overlay"]["zoom_box"]
    assert 0 <= x0 < x1 <= 512 - 32 and 0 <= y0 < y1 <= 512 - 32


def test_config_loads_with_the_project_loader(tile512):
    from tract7dt_mpi.config import load_config
    cfg = load_config(tile512["config"])
    assert cfg.crop.margin == 16
    assert cfg.inputs.input_catalog == str(Path(tile512["input_catalog"]).resolve())
