"""Band files linked into the prepared store: read through PreparedImages like in-file bands, the
store and its band folder movable together, a missing band file a clear error, atomic writes."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io.prepared import MASK_NONFINITE, MASK_SATURATED, PreparedImages, PreparedWriter
from tract7dt_mpi.io.prepared_bands import (band_file_path, band_files_dir, read_band_rows,
                                            read_pre_crop, write_band_file)

H, W = 40, 30


def _attrs(band, scale):
    return dict(filter=band, path=f"/x/{band}.fits", scale=scale, zp_auto=25.5, skysig=4.0, egain=2.0,
                saturate=100.0, fwhm_pix=3.0, all_nan=False, header="SIMPLE  =    T")


def _hand_made(tmp_path):
    """Two bands (the second with an ivar map) written as band files and linked in a store."""
    img = {b: np.arange(H * W, dtype=np.float32).reshape(H, W) * k for k, b in ((1, "m400"), (2, "m500"))}
    bits = np.zeros((H, W), np.uint8)
    bits[3, 4] = MASK_NONFINITE
    bits[5, 6] = MASK_SATURATED
    ivar = np.full((H, W), 0.25, np.float32)
    store = str(tmp_path / "work" / "prepared.h5")
    for k, b in enumerate(img):
        write_band_file(band_file_path(store, k), img[b], bits, _attrs(b, 0.5 * (k + 1)),
                        ivar=ivar if b == "m500" else None,
                        pre_crop=np.ones((4, 3), np.float32) if k == 0 else None)
    with PreparedWriter(store, (H, W), crop_x0=2, crop_y0=3, zp_ref=25.0) as w:
        for k, b in enumerate(img):
            w.link_band(b, band_file_path(store, k))
        w.write_white(np.zeros((H, W)), np.ones((H, W)))
    return store, img, bits


def test_linked_bands_read_like_bands_in_the_store(tmp_path):
    store, img, bits = _hand_made(tmp_path)
    assert band_files_dir(store) == str(tmp_path / "work" / "prepared_bands")
    with PreparedImages(store) as p:
        assert p.bands == ["m400", "m500"] and p.shape == (H, W)
        assert p.band_info("m500").scale == 1.0 and p.band_info("m400").filter == "m400"
        c = p.read("m400", 2, 8, 3, 9)
        np.testing.assert_array_equal(c.img, img["m400"][2:8, 3:9])
        assert c.nonfinite[1, 1] and c.saturated[3, 3] and c.nonfinite.sum() == c.saturated.sum() == 1
        assert np.all(c.sigma_sky[~c.nonfinite] == np.float32(4.0 * 0.5))          # SKYSIG * scale
        c = p.read("m500", 0, H, 0, W)
        assert np.all(c.sigma_sky[~c.nonfinite] == 2.0)                            # 1 / sqrt(ivar)
        np.testing.assert_array_equal(p.read_mask_bits("m500", 0, H, 0, W), bits)


def test_band_rows_and_pre_crop(tmp_path):
    store, img, bits = _hand_made(tmp_path)
    rows, nonfinite, ivar, attrs = read_band_rows(band_file_path(store, 1), 3, 6)
    np.testing.assert_array_equal(rows, img["m500"][3:6])
    assert nonfinite[0, 4] and nonfinite.sum() == 1 and ivar.shape == (3, W) and attrs["scale"] == 1.0
    assert read_band_rows(band_file_path(store, 0), 0, 1)[2] is None
    assert read_pre_crop(band_file_path(store, 0)).shape == (4, 3)
    assert read_pre_crop(band_file_path(store, 1)) is None


def test_store_and_band_folder_move_together_and_a_lost_band_file_is_named(tmp_path, monkeypatch):
    store, img, _ = _hand_made(tmp_path)
    moved = tmp_path / "elsewhere" / "w2"
    shutil.copytree(tmp_path / "work", moved)
    shutil.rmtree(tmp_path / "work")
    monkeypatch.chdir("/")                                 # links resolve beside the store, not here
    with PreparedImages(str(moved / "prepared.h5")) as p:
        np.testing.assert_array_equal(p.read("m500", 0, H, 0, W).img, img["m500"])
    os.remove(moved / "prepared_bands" / "band001.h5")
    with PreparedImages(str(moved / "prepared.h5")) as p:
        with pytest.raises(InputError, match="band 'm500'.*band001.h5.*missing"):
            p.read("m500", 0, 1, 0, 1)


def test_failed_band_file_write_leaves_nothing(tmp_path):
    path = str(tmp_path / "b" / "band000.h5")
    with pytest.raises(ValueError, match="mask shape"):
        write_band_file(path, np.zeros((4, 4)), np.zeros((3, 4), np.uint8), {})
    assert os.listdir(tmp_path / "b") == []
