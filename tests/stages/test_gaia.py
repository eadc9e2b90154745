"""Gaia augmentation: window, box, sky match, backfill, injection, saturation filter."""
from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.stages.catalog import ColumnMap
from tract7dt_mpi.stages.gaia import augment_with_gaia, run_augment_gaia, selection_box, sky_match
from tract7dt_mpi.stage_options import gaia_options

SHAPE = (200, 300)


def _make_wcs(shape):
    from astropy.wcs import WCS
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cd = [[-0.5 / 3600, 0.0], [0.0, 0.5 / 3600]]
    return w


WCS0 = _make_wcs(SHAPE)


def _radec(x, y):
    ra, dec = WCS0.all_pix2world(np.atleast_1d(x), np.atleast_1d(y), 0)
    return ra, dec


def _catalog():
    x = np.array([100.0, 150.0, 200.0, 120.0])
    y = np.array([100.0, 80.0, 120.0, 150.0])
    ra, dec = _radec(x, y)
    return pd.DataFrame({
        "ID": ["s1", "s2", "s3", "s4"], "RA": ra, "DEC": dec, "TYPE": ["GAL", "STAR", "EXP", "GAL"],
        "FLUX_m400": [np.nan, 0.0, 55.0, 7.0], "FLUX_m500": [3.0, 0.0, np.nan, 7.0],
        "excluded_crop": False, "excluded_saturation": False, "excluded_any": False,
        "x_pix_white": x, "y_pix_white": y, "_row": np.arange(4)})


def _gaia():
    # g0 0.4 px from s1 (match), g1 exactly on s2 (match), g2 far from everything (inject),
    # g3 too faint in G (window), g4 near saturation (rejected), g5 outside the 60-px box
    x = np.array([100.4, 150.0, 170.0, 110.0, 130.0, 290.0])
    y = np.array([100.0, 80.0, 100.0, 110.0, 140.0, 190.0])
    ra, dec = _radec(x, y)
    return pd.DataFrame({"source_id": ["4295806720123456789", "11", "22", "33", "44", "55"],
                         "ra": ra, "dec": dec, "phot_g_mean_mag": [15.0, 16.0, 17.0, 19.5, 14.0, 15.0],
                         "mag_m400": [20.0, 21.0, 22.0, 20.0, 20.0, 20.0],
                         "mag_m500": [np.nan, 19.0, 18.0, 20.0, 20.0, 20.0]})


def _cfg(**zp):
    d = {"zp": {"min_box_size_pix": 60, "match_radius_arcsec": 1.0, **zp}}
    return config_from_dict(d, base_dir="/tmp")


def test_selection_box_rules():
    # points span 100 px; min side 60 -> side 100, centred
    assert selection_box([100, 200], [50, 60], (200, 300), 60) == (100, 200, 5, 105)
    # min side dominates and is shifted back inside the frame
    assert selection_box([10, 20], [190, 195], (200, 300), 60) == (0, 60, 140, 200)
    # no points: centred on the image, clamped
    assert selection_box([], [], (200, 300), 1000) == (0, 300, 0, 200)


def test_sky_match_radius():
    ra0, dec0 = 150.0, 2.0
    d = 1.0 / 3600.0
    idx = sky_match([ra0, ra0, np.nan], [dec0 + 0.9 * d, dec0 + 1.1 * d, 0], [ra0], [dec0], 1.0)
    assert list(idx) == [0, -1, -1]


def test_match_backfill_inject_and_saturation_filter():
    cat = _catalog()
    gaia = _gaia()
    sat_x = []

    def hits(x, y):
        sat_x.extend(list(x))
        return np.abs(np.asarray(x) - 130.0) < 1.0  # g4 sits on a saturated core
    out, info = augment_with_gaia(cat, gaia, WCS0, SHAPE, ["m400", "m500"], gaia_options(_cfg()), hits)
    assert info["box"] == (100, 200, 65, 165)
    assert info["n_candidates"] == 3 + 1  # g0, g1, g2, g4 (g3 faint, g5 outside box)
    assert list(out["gaia_source_id"][:4]) == ["4295806720123456789", "11", "", ""]
    # backfill: s1 m400 NaN -> from mag 20; s1 m500 stays 3 (Gaia mag NaN anyway);
    # s2 m400 0 -> from mag 21, s2 m500 0 -> from mag 19; s3 unmatched untouched
    assert out["FLUX_m400"][0] == pytest.approx(10 ** ((25 - 20) / 2.5))
    assert out["FLUX_m500"][0] == 3.0
    assert out["FLUX_m400"][1] == pytest.approx(10 ** ((25 - 21) / 2.5))
    assert out["FLUX_m500"][1] == pytest.approx(10 ** ((25 - 19) / 2.5))
    assert np.isnan(out["FLUX_m500"][2]) and out["FLUX_m400"][2] == 55.0
    # injection: only g2 (g4 rejected by saturation)
    assert len(out) == 5 and info["n_injected"] == 1 and info["n_sat_rejected"] == 1
    new = out.iloc[4]
    assert new["ID"] == "gaia_22" and new["TYPE"] == "STAR" and new["gaia_source_id"] == "22"
    assert new["FLUX_m400"] == pytest.approx(10 ** ((25 - 22) / 2.5))
    assert new["FLUX_m500"] == pytest.approx(10 ** ((25 - 18) / 2.5))
    assert new["POS_ERR"] == pytest.approx(0.1) and np.isnan(out["POS_ERR"][0])
    assert not new["excluded_any"] and out["excluded_any"].dtype == bool
    assert new["x_pix_white"] == pytest.approx(170.0, abs=1e-6) and new["_row"] == 4
    assert sorted(np.round(sat_x)) == [130.0, 170.0]


def test_no_injection_and_pos_err_null():
    out, info = augment_with_gaia(_catalog(), _gaia(), WCS0, SHAPE, ["m400", "m500"],
                                  gaia_options(_cfg(inject_gaia_sources=False)), None)
    assert len(out) == 4 and info["n_injected"] == 0 and out["gaia_source_id"][1] == "11"
    out2, _ = augment_with_gaia(_catalog(), _gaia(), WCS0, SHAPE, ["m400", "m500"],
                                gaia_options(_cfg(gaia_pos_err_pix=None)), None)
    assert "POS_ERR" not in out2.columns and len(out2) == 6  # g2 and g4 injected without a sat filter


def test_excluded_rows_matched_but_not_used_for_box():
    cat = _catalog()
    cat.loc[2, "excluded_any"] = True  # s3 at x=200 no longer defines the box
    gaia = _gaia()
    out, info = augment_with_gaia(cat, gaia, WCS0, SHAPE, ["m400", "m500"], gaia_options(_cfg()), None)
    assert info["box"][1] <= 180


def test_window_excludes_everything():
    out, info = augment_with_gaia(_catalog(), _gaia(), WCS0, SHAPE, ["m400", "m500"],
                                  gaia_options(_cfg(gaia_mag_min=30.0, gaia_mag_max=31.0)), None)
    assert info["n_candidates"] == 0 and (out["gaia_source_id"] == "").all() and len(out) == 4


def _fake_load(tmp_path):
    cat = _catalog()
    return SimpleNamespace(catalog=cat, column_map=ColumnMap.from_frame(cat), catalog_path=str(tmp_path / "in.csv"),
                           wcs=WCS0, shape=SHAPE, bands=["m400", "m500"], white=np.zeros(SHAPE, np.float32),
                           satur_hits=lambda x, y, r, a: np.zeros(len(x), bool))


def test_run_writes_csv_and_overlay(tmp_path):
    gpath = tmp_path / "gaia.csv"
    _gaia().to_csv(gpath, index=False)
    cfg = config_from_dict({"inputs": {"gaiaxp_synphot_csv": str(gpath)}, "outputs": {"work_dir": str(tmp_path / "w")},
                            "zp": {"min_box_size_pix": 60, "match_radius_arcsec": 1.0}, "plotting": {"dpi": 40}},
                           base_dir=str(tmp_path))
    fl = _fake_load(tmp_path)
    cat, info = run_augment_gaia(gaia_options(cfg), fl)
    csv = tmp_path / "w" / "ZP" / "in_with_Gaia.csv"
    back = pd.read_csv(csv, dtype={"ID": str, "gaia_source_id": str}, keep_default_na=False)
    assert len(back) == len(cat) == 6
    assert back["gaia_source_id"][0] == "4295806720123456789"  # 19 digits survive
    assert "_row" not in back.columns and "excluded_crop" in back.columns
    from tract7dt_mpi.figures import draw_gaia
    draw_gaia(cfg, fl.white, cat, info)
    assert os.path.getsize(tmp_path / "w" / "ZP" / "gaia_augmentation_overlay.png") > 1000


def test_missing_gaia_file_or_columns_warns_and_skips(tmp_path, caplog):
    fl = _fake_load(tmp_path)
    cfg = config_from_dict({"inputs": {"gaiaxp_synphot_csv": str(tmp_path / "nope.csv")},
                            "outputs": {"work_dir": str(tmp_path / "w")}}, base_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        cat, info = run_augment_gaia(gaia_options(cfg), fl)
    assert info["status"] == "skipped" and "GaiaXP CSV not found" in caplog.text
    assert "gaia_source_id" not in cat.columns
    gpath = tmp_path / "gaia.csv"
    _gaia().drop(columns=["phot_g_mean_mag"]).to_csv(gpath, index=False)
    cfg = cfg.with_overrides({"inputs": {"gaiaxp_synphot_csv": str(gpath)}})
    with caplog.at_level(logging.WARNING):
        cat, info = run_augment_gaia(gaia_options(cfg), fl)
    assert info["status"] == "skipped"
    assert "GaiaXP CSV missing required column: phot_g_mean_mag" in caplog.text
    assert not (tmp_path / "w" / "ZP").exists()
