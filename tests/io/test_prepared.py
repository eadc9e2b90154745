"""Prepared-image HDF5 store: round trip, ROI reads, derived sigma maps, concurrent readers."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io.prepared import MASK_NONFINITE, MASK_SATURATED, PreparedImages, PreparedWriter

H, W = 300, 280


def _attrs(scale, skysig=4.0, egain=2.0):
    return dict(filter="m400", path="/x/m400.fits", scale=scale, zp_auto=25.5, skysig=skysig,
                egain=egain, saturate=np.inf, fwhm_pix=np.nan, all_nan=False, header="SIMPLE  =    T")


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    raw = {b: rng.normal(50, 10, (H, W)).astype(np.float32) for b in ("m400", "m500")}
    raw["m400"][10, 20] = np.nan
    bits = np.zeros((H, W), np.uint8)
    bits[10, 20] = MASK_NONFINITE
    bits[200, 100] = MASK_SATURATED
    scales = {"m400": 0.5, "m500": 2.0}
    path = str(tmp_path / "prep.h5")
    with PreparedWriter(path, (H, W), crop_x0=7, crop_y0=9, zp_ref=25.0, wcs_header="") as w:
        for b in raw:
            w.write_band(b, raw[b] * scales[b], bits, _attrs(scales[b]))
        w.write_white(np.ones((H, W)), np.full((H, W), 3.0))
        bright = np.zeros((H, W), np.uint8)
        bright[250:260, 250:270] = 1
        w.write_bright_mask(bright)
    return path, raw, scales


def test_round_trip_and_roi(store):
    path, raw, scales = store
    with PreparedImages(path) as p:
        assert p.bands == ["m400", "m500"] and p.shape == (H, W) and (p.crop_x0, p.crop_y0) == (7, 9)
        info = p.band_info("m500")
        assert info.scale == 2.0 and info.skysig == 4.0 and np.isinf(info.saturate) and np.isnan(info.fwhm_pix)
        c = p.read("m500", 190, 260, 90, 265)
        np.testing.assert_array_equal(c.img, raw["m500"][190:260, 90:265] * 2.0)
        assert c.saturated[10, 10] and c.saturated.sum() == 1
        assert c.bright[60:70, 160:175].all() and c.bright.sum() == 10 * 15
        assert c.bad_final.sum() == 1 + 150  # saturated pixel + bright block
    # clipping at the frame edge
    with PreparedImages(path) as p:
        c = p.read("m400", -5, 15, 270, 400)
        assert c.img.shape == (15, 10)
        with pytest.raises(ValueError):
            p.read("m400", 400, 500, 0, 10)


def test_sigma_maps_formula(store):
    path, raw, scales = store
    with PreparedImages(path) as p:
        c = p.read("m400", 0, 40, 0, 40)
    r = raw["m400"][0:40, 0:40].astype(np.float64)
    exp_total = np.sqrt(16.0 + np.maximum(r, 0) / 2.0) * 0.5
    fin = np.isfinite(r)
    np.testing.assert_allclose(c.sigma_total[fin], exp_total[fin], rtol=1e-5)
    np.testing.assert_allclose(c.sigma_sky[fin], 2.0)
    assert np.isinf(c.sigma_sky[10, 20]) and np.isinf(c.sigma_total[10, 20])
    assert c.nonfinite[10, 20] and c.bad_final[10, 20] and not c.saturated[10, 20]


def test_without_bright_and_pickling(store, tmp_path):
    path, raw, _ = store
    with PreparedImages(path) as p:
        c = p.read("m500", 250, 255, 250, 255, with_bright=False)
        assert not c.bright.any() and not c.bad_final.any()
        q = pickle.loads(pickle.dumps(p))
        np.testing.assert_array_equal(q.read("m500", 0, 5, 0, 5).img, p.read("m500", 0, 5, 0, 5).img)
        q.close()


def test_concurrent_readers_in_other_processes(store):
    path, raw, scales = store
    code = ("import sys, numpy as np; from tract7dt_mpi.io.prepared import PreparedImages;"
            "p = PreparedImages(sys.argv[1]); print(float(np.nansum(p.read('m400', 0, 300, 0, 280).img)))")
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    with PreparedImages(path) as mine:  # held open while two other processes read
        procs = [subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, env=env)
                 for _ in range(2)]
        outs = [float(pr.communicate(timeout=120)[0]) for pr in procs]
        exp = float(np.nansum(mine.read("m400", 0, 300, 0, 280).img))
    assert outs == [pytest.approx(exp, rel=1e-6)] * 2


def test_missing_store_and_partial_write(tmp_path):
    with pytest.raises(InputError, match="Prepared-image store not found"):
        PreparedImages(str(tmp_path / "none.h5"))
    path = str(tmp_path / "p.h5")
    with pytest.raises(RuntimeError):
        with PreparedWriter(path, (4, 4)) as w:
            w.write_band("a", np.zeros((4, 4)), np.zeros((4, 4), np.uint8), _attrs(1.0))
            raise RuntimeError("crash mid-write")
    assert not os.path.exists(path) and not os.listdir(tmp_path)


def test_append_bright_mask_later(tmp_path):
    path = str(tmp_path / "p.h5")
    w = PreparedWriter(path)
    w.create((4, 5), 0, 0, 25.0, "")
    w.write_band("a", np.ones((4, 5)), np.zeros((4, 5), np.uint8), _attrs(1.0))
    w.close()
    with PreparedImages(path) as p:
        assert not p.has_bright_mask
    a = PreparedWriter.append(path)
    m = np.zeros((4, 5), np.uint8)
    m[1, 1] = 1
    a.write_bright_mask(m)
    a.close()
    with PreparedImages(path) as p:
        assert p.has_bright_mask and p.read("a", 0, 4, 0, 5).bad_final.sum() == 1
