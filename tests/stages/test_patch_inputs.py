"""Patch inputs: ROI cut-outs from the prepared store, catalog sub-table, dumps."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.io.patch_dumps import read_patch_dump, write_patch_dump
from tract7dt_mpi.io.prepared import PreparedImages, PreparedWriter
from tract7dt_mpi.stages.patch_inputs import (PsfChoiceInput, build_patch_input, patch_input_from_record,
                                              patch_input_record)
from tract7dt_mpi.stages.patches import assign_sources, build_patch_plan
from tract7dt_mpi.stage_options import plan_options, psf_reach

H, W = 60, 80


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {b: rng.normal(0, 1, (H, W)).astype(np.float32) for b in ("m400", "m425")}
    bits = {b: np.zeros((H, W), np.uint8) for b in imgs}
    bits["m400"][10, 12] = 1          # non-finite
    bits["m425"][11, 13] = 2          # saturated
    imgs["m400"][10, 12] = np.nan
    bright = np.zeros((H, W), np.uint8)
    bright[20:22, 30:32] = 1
    path = str(tmp_path / "prepared.h5")
    w = PreparedWriter(path, (H, W))
    for b in imgs:
        w.write_band(b, imgs[b], bits[b], {"filter": b, "path": f"/data/{b}.fits", "scale": 2.0,
                                           "zp_auto": 24.0, "skysig": 0.5, "egain": 1.5,
                                           "saturate": 6e4, "fwhm_pix": 3.0})
    w.write_bright_mask(bright)
    w.close()
    return path, imgs


def _cfg():
    return config_from_dict({"epsf": {"epsf_ngrid": 1, "ngrid": 2, "final_psf_size": 11},
                             "patches": {"halo_pix_min": 5}})


def _catalog():
    return pd.DataFrame({"_row": [0, 1, 2, 3], "ID": ["00019", "b", "c", "d"],
                         "TYPE": ["STAR", "EXP", "STAR", "STAR"],
                         "x_pix_white": [12.5, 38.0, 44.0, 70.0],
                         "y_pix_white": [10.0, 20.0, 5.0, 50.0],
                         "excluded_any": [False, False, False, True]})


def test_build_patch_input(store):
    path, imgs = store
    plan = assign_sources(build_patch_plan((H, W), None, plan_options(_cfg())), _catalog(), skip_empty=True)
    spec = next(p for p in plan if p.patch_tag == "r00_c00_pr00_pc00")
    # base box [0,40) x [0,30), halo 7 -> ROI [0,47) x [0,37)
    assert (spec.x0_roi, spec.x1_roi, spec.y0_roi, spec.y1_roi) == (0, 47, 0, 37)
    assert spec.base_rows.tolist() == [0, 1] and spec.halo_rows.tolist() == [2]
    with PreparedImages(path) as p:
        pin = build_patch_input(spec, p, _catalog(), {"m400": PsfChoiceInput(
            stamp=np.ones((3, 3), np.float32) / 9, nstars_used=7, path="x/epsf.npy")}, psf_reach(_cfg()))
    assert pin.bands == ["m400", "m425"]
    c = pin.images["m425"]
    assert c.img.shape == (37, 47)
    np.testing.assert_array_equal(c.img, imgs["m425"][0:37, 0:47])
    assert c.bad_final[11, 13] and c.bad_final[20, 30] and not c.bad_final[0, 0]
    assert pin.images["m400"].bad_final[10, 12]
    np.testing.assert_allclose(c.sigma_sky[0, 0], 0.5 * 2.0)
    assert pin.band_info["m400"].egain == 1.5
    assert pin.psfs["m400"].nstars_used == 7 and pin.psfs["m425"].stamp is None
    cat = pin.cat
    assert cat["_row"].tolist() == [0, 1, 2]
    assert cat["_is_halo_source"].tolist() == [False, False, True]
    np.testing.assert_allclose(cat["x_pix_patch"], [12.5, 38.0, 44.0])
    assert pin.meta()["n_sources"] == 2 and pin.meta()["n_halo_sources"] == 1
    # a patch away from the origin: pixel columns shift by the ROI origin
    spec2 = next(p for p in plan if p.patch_tag == "r00_c00_pr00_pc01")
    with PreparedImages(path) as p:
        pin2 = build_patch_input(spec2, p, _catalog(), {}, psf_reach(_cfg()))
    assert spec2.x0_roi == 33
    np.testing.assert_allclose(pin2.cat["x_pix_patch"], pin2.cat["x_pix_white"] - 33)
    np.testing.assert_array_equal(pin2.images["m400"].img, imgs["m400"][0:37, 33:80])


def test_dump_round_trip(store, tmp_path):
    path, _ = store
    plan = assign_sources(build_patch_plan((H, W), None, plan_options(_cfg())), _catalog(), skip_empty=True)
    spec = plan[0]
    with PreparedImages(path) as p:
        pin = build_patch_input(spec, p, _catalog(), {"m400": PsfChoiceInput(
            stamp=np.ones((3, 3), np.float32) / 9, nstars_used=7, path="x/epsf.npy")})
    halo = np.full(pin.images["m400"].img.shape, 0.25, np.float32)      # light subtracted as halos
    pin.images["m400"] = dataclasses.replace(pin.images["m400"], halo=halo)
    npz, js = write_patch_dump(str(tmp_path / "dump"), pin.tag, *patch_input_record(pin))
    assert npz.endswith(f"{spec.patch_tag}.npz") and js.endswith(f"{spec.patch_tag}.json")
    back = patch_input_from_record(*read_patch_dump(js))
    assert back.spec.patch_tag == spec.patch_tag
    assert back.spec.base_rows.tolist() == spec.base_rows.tolist()
    assert back.cat["ID"].tolist() == ["00019", "b", "c"]          # text ids survive
    assert back.cat["_is_halo_source"].dtype == bool
    np.testing.assert_array_equal(back.images["m400"].img, pin.images["m400"].img)
    np.testing.assert_array_equal(back.images["m425"].bad_final, pin.images["m425"].bad_final)
    np.testing.assert_array_equal(back.images["m400"].halo, halo)                 # its wing error needs it
    assert back.images["m425"].halo is None
    assert back.psfs["m400"].nstars_used == 7 and back.psfs["m425"].stamp is None
    assert back.band_info["m425"].scale == 2.0


def test_saturated_stars_join_as_halo_rows_near_the_roi():
    from tract7dt_mpi.stages.patch_inputs import patch_catalog
    plan = assign_sources(build_patch_plan((H, W), None, plan_options(_cfg())), _catalog(), skip_empty=True)
    spec = plan[0]
    extra = pd.DataFrame({"x": [spec.x1_roi + 3.0, spec.x1_roi + 40.0, spec.x0_roi + 2.0],
                          "y": [spec.y0_roi + 5.0, spec.y0_roi + 5.0, spec.y0_roi + 1.0]})
    base = patch_catalog(spec, _catalog())
    got = patch_catalog(spec, _catalog(), extra, outer=5)
    added = got.iloc[len(base):]
    assert added["_row"].tolist() == [-1, -3] and added["_is_halo_source"].all()
    assert (added["TYPE"] == "STAR").all() and added["ID"].tolist() == ["saturated_0", "saturated_2"]
    np.testing.assert_allclose(added["x_pix_patch"], extra["x"].to_numpy()[[0, 2]] - spec.x0_roi)
    assert patch_catalog(spec, _catalog(), extra, outer=0)["_row"].min() == -3   # only the inside one
