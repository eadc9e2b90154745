"""Merge (S10) on crafted base/result tables: row set, flags, reliability, RA/DEC, FITS copy."""
import logging

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from tract7dt_mpi import flags
from tract7dt_mpi.io.catalog import write_final_catalog
from tract7dt_mpi.stages.merge import fit_summary, merge_catalog
from tract7dt_mpi.stage_options import fit_options, load_options, plan_options, psf_reach


def _car_wcs():
    # plate carree on the equator: RA = 150 + 0.001*(x + 1 - 11), DEC = 0.001*(y + 1 - 21)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---CAR", "DEC--CAR"]
    w.wcs.crval = [150.0, 0.0]
    w.wcs.crpix = [11.0, 21.0]
    w.wcs.cdelt = [0.001, 0.001]
    return w


def _base():
    return pd.DataFrame({
        "ID": ["00019", "a b", "c", "d", "gaia_1"],
        "RA": [150.0, 150.1, 150.2, 150.3, 150.4], "DEC": [0.0] * 5,
        "TYPE": ["STAR", "EXP", "STAR", "STAR", "STAR"],
        "excluded_crop": [False, True, False, False, np.nan],
        "excluded_saturation": [False, True, False, np.nan, np.nan],
        "affected_by_bright_mask": [False, False, True, False, False],
        "_row": [0, 1, 2, 3, 4],
    })


def _results():
    return pd.DataFrame({
        "_row": [3, 0, 2, 0],
        "RA": [9.0, 9.0, 9.0, 9.0],                       # clashes with base -> base wins
        "x_pix_white_fit": [10.0, 30.0, 5.0, 999.0],
        "y_pix_white_fit": [20.0, 40.0, 5.0, 999.0],
        "FLUX_g_fit": [1.0, 2.0, 3.0, 4.0],
        "opt_converged": [True, True, False, True],
        "opt_hit_max_iters": [False, False, True, False],
        "flag_bound_stalled": [False, False, False, False],
        "psf_used_epsf_band_count": [1, 1, 1, 1],
        "patch_tag": [b"r00_c00_pr00_pc00"] * 4,
    })


def test_merge_rows_flags_and_sky(caplog):
    with caplog.at_level(logging.INFO, logger="tract7dt_mpi.stages.merge"):
        out = merge_catalog(_base(), _results(), _car_wcs())
    assert out["ID"].tolist() == ["00019", "a b", "c", "d", "gaia_1"]      # base order, text ids
    assert out["RA"].tolist() == [150.0, 150.1, 150.2, 150.3, 150.4]
    assert "_row" not in out.columns
    assert out["FLUX_g_fit"].iloc[0] == 2.0                                  # first duplicate kept
    assert out["patch_tag"].iloc[0] == "r00_c00_pr00_pc00"                   # bytes decoded
    assert np.isnan(out["FLUX_g_fit"].iloc[1]) and np.isnan(out["FLUX_g_fit"].iloc[4])
    assert out["excluded_any"].tolist() == [False, True, False, False, False]
    assert out["excluded_reason"].tolist() == ["", "crop+saturation", "", "", ""]
    # RA_fit from the CAR projection by hand: row 0 at (30, 40), row 3 at (10, 20)
    np.testing.assert_allclose(out["RA_fit"].iloc[0], 150.0 + 0.001 * (30 + 1 - 11), atol=1e-9)
    np.testing.assert_allclose(out["DEC_fit"].iloc[0], 0.001 * (40 + 1 - 21), atol=1e-9)
    np.testing.assert_allclose(out["RA_fit"].iloc[3], 150.0, atol=1e-9)
    assert np.isnan(out["RA_fit"].iloc[1])
    assert out["fit_is_reliable"].tolist() == [True, False, False, True, False]
    assert out["fit_quality_issues"].tolist() == [
        "", "excluded", "hit_max_iters,bright_mask", "", "no_fit_result"]
    assert out["FIT_FLAGS"].dtype == np.int32
    assert out["FIT_FLAGS"].tolist() == [0, 1, 4 + 16, 0, 2]
    assert [flags.tags_from_flags(v) for v in out["FIT_FLAGS"]] == out["fit_quality_issues"].tolist()
    text = caplog.text
    assert "Dropping 1 duplicate key(s)" in text
    assert "merge-missing (left join rows without fit): 2" in text
    assert "Fit summary: converged=2, hit_max_iters=1, total=3" in text
    assert fit_summary(out) == {"converged": 2, "hit_max_iters": 1, "total": 3}


def test_merge_without_results_and_without_row_column():
    base = _base().drop(columns=["_row"])
    out = merge_catalog(base, None, None)
    assert len(out) == 5
    assert out["fit_quality_issues"].tolist() == ["no_fit_result", "excluded", "no_fit_result,bright_mask",
                                                  "no_fit_result", "no_fit_result"]


def test_write_final_catalog_csv_and_fits(tmp_path):
    out = merge_catalog(_base(), _results(), _car_wcs())
    csv, fpath = write_final_catalog(out, tmp_path / "output_catalog.csv")
    back = pd.read_csv(csv, dtype={"ID": str})
    assert back["ID"].tolist() == ["00019", "a b", "c", "d", "gaia_1"]
    with fits.open(fpath) as hdul:
        t = hdul[1]
        cols = {c.name: c.format for c in t.columns}
        assert cols["fit_is_reliable"] == "L"
        assert cols["excluded_any"] == "L"
        assert cols["ID"].endswith("A") or cols["ID"].startswith("A") or "A" in cols["ID"]
        assert cols["opt_converged"] == "L"                  # object bool column with gaps
        assert t.data["ID"][0] == "00019"
        assert t.data["fit_quality_issues"][2] == "hit_max_iters,bright_mask"
        np.testing.assert_allclose(t.data["FLUX_g_fit"][0], 2.0)
        assert np.isnan(t.data["FLUX_g_fit"][1])


def test_image_positions_are_one_based_in_the_input_frame():
    res = _results()
    res["x_pix_patch_fit"] = 1.0
    out = merge_catalog(_base(), res, _car_wcs(), crop_offset=(500, 300))
    # working-frame pixel 30 (0-based) after a crop starting at input column 500 = input column
    # 530 (0-based) = 531 in the 1-based FITS convention
    assert out["X_IMAGE"].iloc[0] == 531.0 and out["Y_IMAGE"].iloc[0] == 341.0
    assert out["X_IMAGE"].iloc[3] == 511.0 and np.isnan(out["X_IMAGE"].iloc[1])
    cols = list(out.columns)
    assert cols.index("X_IMAGE") == cols.index("y_pix_white_fit") + 1


def test_input_x_image_columns_win(caplog):
    base = _base()
    base["X_IMAGE"] = 7.0
    base["Y_IMAGE"] = 8.0
    with caplog.at_level(logging.WARNING, logger="tract7dt_mpi.stages.merge"):
        out = merge_catalog(base, _results(), _car_wcs(), crop_offset=(5, 5))
    assert (out["X_IMAGE"] == 7.0).all() and (out["Y_IMAGE"] == 8.0).all()
    assert "input catalog has X_IMAGE/Y_IMAGE columns; kept" in caplog.text


def test_single_band_image_positions_per_band():
    base = _base().iloc[:2]
    res = pd.DataFrame({"_row": [0, 1], "x_pix_white_g_fit": [1.5, 2.0], "y_pix_white_g_fit": [3.0, 4.0],
                        "FLUX_g_fit": [1.0, 1.0], "x_pix_white_r_fit": [1.0, np.nan],
                        "y_pix_white_r_fit": [1.0, np.nan], "FLUX_r_fit": [1.0, 1.0]})
    out = merge_catalog(base, res, None, crop_offset=(10, 20))
    assert out["X_IMAGE_g"].tolist() == [12.5, 13.0] and out["Y_IMAGE_g"].tolist() == [24.0, 25.0]
    assert out["X_IMAGE_r"].iloc[0] == 12.0 and np.isnan(out["X_IMAGE_r"].iloc[1])
    assert "X_IMAGE" not in out.columns


def test_x_image_of_a_galsim_star_is_its_true_one_based_pixel(tmp_path, synth):
    """Load (crop) -> prepared store -> patch input -> fit -> merge: X_IMAGE/Y_IMAGE of a GalSim
    star equal the 1-based position GalSim drew it at in the input image."""
    import pytest
    galsim = pytest.importorskip("galsim")
    from tract7dt_mpi.config import config_from_dict
    from tract7dt_mpi.io.prepared import PreparedImages, PreparedWriter
    from tract7dt_mpi.stages.fit import fit_patch_input
    from tract7dt_mpi.stages.load import load_inputs
    from tract7dt_mpi.stages.patch_inputs import PsfChoiceInput, build_patch_input
    from tract7dt_mpi.stages.patches import assign_sources, build_patch_plan

    H, W = 70, 90
    true_x, true_y = 47.3, 31.8                  # 1-based (GalSim/FITS): first pixel centre = 1
    wcs = synth.make_wcs((H, W))
    psf = galsim.Moffat(beta=3.5, fwhm=3.0, trunc=15.0)
    img = galsim.ImageF(W, H, scale=1.0)         # GalSim images start at (1, 1)
    psf.withFlux(2e5).drawImage(image=img, offset=galsim.PositionD(true_x, true_y) - img.true_center)
    rng = np.random.default_rng(3)
    synth.write_fits(tmp_path / "img_g.fits", (img.array + rng.normal(0, 5.0, (H, W))).astype(np.float32),
                     {"FILTER": "g", "ZP_AUTO": 25.0, "SKYSIG": 5.0, "EGAIN": 1e6, "SATURATE": 1e9,
                      "PEEING": 3.0}, wcs)
    (tmp_path / "images.txt").write_text("img_g.fits\n")
    ra, dec = wcs.all_pix2world([true_x + 0.4], [true_y - 0.3], 1)      # catalog position 0.5 px off
    pd.DataFrame({"ID": ["s"], "RA": ra, "DEC": dec, "TYPE": ["STAR"]}).to_csv(tmp_path / "cat.csv",
                                                                             index=False)
    margin = 9
    cfg = config_from_dict({
        "inputs": {"input_catalog": "cat.csv", "image_list_file": "images.txt", "gaiaxp_synphot_csv": None},
        "outputs": {"work_dir": "work"}, "overlay": {"enabled": False},
        "crop": {"enabled": True, "margin": margin, "plot_pre_crop": False, "plot_post_crop": False},
        "epsf": {"epsf_ngrid": 1, "ngrid": 1},
        "patch_run": {"n_opt_iters": 30, "no_cutouts": True, "no_patch_overview": True},
    }, base_dir=str(tmp_path))
    store = str(tmp_path / "prepared.h5")
    w = PreparedWriter(store)
    lr = load_inputs(load_options(cfg), writer=w, plots=False)
    w.close()
    assert lr.crop[0] == margin and lr.crop[2] == margin
    cat = lr.catalog.copy()
    cat["_row"] = np.arange(len(cat))
    spec = assign_sources(build_patch_plan(lr.shape, None, plan_options(cfg)), cat, True, 1)[0]
    stamp = psf.drawImage(nx=41, ny=41, scale=1.0).array
    with PreparedImages(store) as p:
        pin = build_patch_input(spec, p, cat, {"g": PsfChoiceInput((stamp / stamp.sum()).astype(np.float32), 10)}, psf_reach(cfg))
    fit = fit_patch_input(pin, fit_options(cfg)).table
    out = merge_catalog(cat, fit, lr.wcs, crop_offset=lr.crop[::2])
    assert out["X_IMAGE"].iloc[0] == pytest.approx(true_x, abs=0.05)
    assert out["Y_IMAGE"].iloc[0] == pytest.approx(true_y, abs=0.05)
    # the sky position agrees with the input image's own WCS at that 1-based pixel
    r, d = wcs.all_pix2world(out["X_IMAGE"], out["Y_IMAGE"], 1)
    assert r[0] == pytest.approx(out["RA_fit"].iloc[0], abs=1e-9)
    assert d[0] == pytest.approx(out["DEC_fit"].iloc[0], abs=1e-9)
