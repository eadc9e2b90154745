"""Images in an extension HDU and tile-compressed (.fits.fz): found automatically or named by the
cfitsio ``path[HDU]`` convention; an extension's header is completed from the primary header."""
from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io import fits as fio

KIDS = "/work/shared/data/kids-viking/WAVES_r.fits.fz"


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [10.0, -5.0]
    w.wcs.crpix = [20.5, 15.5]
    w.wcs.cd = [[-1e-4, 0], [0, 1e-4]]
    return w


def _mef(path, data, sci_name="SCI"):
    """Primary (no data, FILTER/ZP_AUTO) + a table + two image extensions (SCI v1, SCI v2)."""
    prim = fits.PrimaryHDU()
    prim.header["FILTER"] = "m500"
    prim.header["ZP_AUTO"] = 25.5
    prim.header["SKYSIG"] = 9.0          # overridden by the extension
    prim.header["CD1_1"] = 5.0           # a primary WCS key never mixes with the extension's WCS
    prim.header["RADESYS"] = "FK5"
    prim.header["OBJECT"] = "field 7"    # a non-WCS key the extension lacks: merged
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])], name="CAT")
    h = _wcs().to_header()
    h["SKYSIG"] = 3.0
    sci = fits.ImageHDU(data=data, header=h, name=sci_name, ver=1)
    sci2 = fits.ImageHDU(data=data * 2, header=h, name=sci_name, ver=2)
    fits.HDUList([prim, table, sci, sci2]).writeto(path)


def test_split_hdu_spec():
    assert fio.split_hdu_spec("/a/b.fits") == ("/a/b.fits", None)
    assert fio.split_hdu_spec("/a/b.fits[1]") == ("/a/b.fits", 1)
    assert fio.split_hdu_spec("/a/b.fits.fz[SCI]") == ("/a/b.fits.fz", "SCI")
    assert fio.split_hdu_spec("/a/b.fits[SCI, 2]") == ("/a/b.fits", ("SCI", 2))


def test_extension_found_and_header_merged(tmp_path):
    data = np.arange(30 * 40, dtype=np.float32).reshape(30, 40)
    p = str(tmp_path / "mef.fits")
    _mef(p, data)
    img, hdr = fio.read_image(p)                       # first 2-D image HDU = SCI v1 (HDU 2)
    np.testing.assert_array_equal(img, data)
    assert hdr["FILTER"] == "m500" and hdr["ZP_AUTO"] == 25.5   # from the primary header
    assert hdr["SKYSIG"] == 3.0                                  # the extension's own value wins
    assert fio.wcs_from_header(hdr).wcs.crpix[0] == 20.5
    assert "CD1_1" not in hdr and hdr["RADESYS"] == "ICRS" and hdr["OBJECT"] == "field 7"
    assert fio.wcs_from_header(hdr).wcs.get_pc()[0, 0] == pytest.approx(-1e-4)   # PC/CDELT kept
    assert fio.image_shape(fio.read_header(p), p) == (30, 40)
    for spec in (p + "[2]", p + "[SCI]", p + "[sci,1]"):
        np.testing.assert_array_equal(fio.read_image(spec)[0], data)
    np.testing.assert_array_equal(fio.read_image(p + "[SCI,2]")[0], 2 * data)
    np.testing.assert_array_equal(fio.read_image(p + "[3]", box=(5, 9, 2, 30))[0], 2 * data[5:9, 2:30])


def test_named_hdu_errors(tmp_path):
    data = np.zeros((10, 12), np.float32)
    p = str(tmp_path / "mef.fits")
    _mef(p, data)
    with pytest.raises(InputError, match=r"has no HDU 'WGT' \(HDUs: 0:PRIMARY, 1:CAT, 2:SCI, 3:SCI\)"):
        fio.read_header(p + "[WGT]")
    with pytest.raises(InputError, match="has no HDU 7"):
        fio.read_image(p + "[7]")
    with pytest.raises(InputError, match="not a 2-D image"):
        fio.read_image(p + "[1]")                      # the binary table
    only_table = str(tmp_path / "table.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="E", array=[1.0])])]).writeto(only_table)
    with pytest.raises(InputError, match="no 2-D image HDU: .*table.fits"):
        fio.read_image(only_table)


def test_rice_compressed_fz(tmp_path):
    rng = np.random.default_rng(3)
    ints = rng.integers(-500, 3000, size=(70, 90)).astype(np.int32)
    floats = rng.normal(100.0, 5.0, size=(70, 90)).astype(np.float32)
    p = str(tmp_path / "img.fits.fz")
    h = _wcs().to_header()
    h["FILTER"] = "r"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.CompImageHDU(data=ints, header=h, compression_type="RICE_1", tile_shape=(16, 16)),
                  fits.CompImageHDU(data=floats, header=h, compression_type="RICE_1",
                                    quantize_level=64.0, name="FLT")]).writeto(p)
    img, hdr = fio.read_image(p)                       # HDU 1, lossless for integers
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img, ints)
    assert hdr["FILTER"] == "r" and fio.image_shape(hdr, p) == (70, 90)
    np.testing.assert_array_equal(fio.read_image(p, box=(10, 41, 33, 80))[0], ints[10:41, 33:80])
    np.testing.assert_array_equal(fio.read_image(p, step=3)[0], ints[::3, ::3])
    flt = fio.read_image(p + "[FLT]")[0]   # RICE on floats quantises in steps of ~ noise / 64
    err = flt - floats
    assert np.max(np.abs(err)) < 0.15 and np.std(err) < 0.05 and abs(np.mean(err)) < 0.01
    np.testing.assert_array_equal(fio.read_image(p + "[FLT]", box=(0, 20, 0, 20))[0], flt[:20, :20])


@pytest.mark.skipif(not os.path.exists(KIDS), reason="KiDS/VIKING test image not present")
def test_real_kids_fz_image_in_hdu1():
    hdr = fio.read_header(KIDS)
    assert fio.image_shape(hdr, KIDS) == (2600, 2600)
    assert hdr["FILTER"] == "r" and float(hdr["ZP_AUTO"]) == 25.0 and float(hdr["SKYSIG"]) > 0
    box, _ = fio.read_image(KIDS, box=(1200, 1264, 1300, 1380))
    same, _ = fio.read_image(KIDS + "[1]", box=(1200, 1264, 1300, 1380))
    assert box.shape == (64, 80) and np.isfinite(box).all()
    np.testing.assert_array_equal(box, same)
    # sky-subtracted image: the clipped rms of an empty-ish box is of the order of SKYSIG
    assert 0.3 < np.std(np.clip(box, -5 * hdr["SKYSIG"], 5 * hdr["SKYSIG"])) / hdr["SKYSIG"] < 5
    assert fio.wcs_from_header(hdr).has_celestial
