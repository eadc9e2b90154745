"""FITS I/O: clear errors for unusable files, box reads, WCS snapshot and mask products."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io import fits as fio


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [10.0, -5.0]
    w.wcs.crpix = [20.5, 15.5]
    w.wcs.cd = [[-1e-4, 0], [0, 1e-4]]
    return w


def test_read_image_float32_and_box(tmp_path):
    data = np.arange(30 * 40, dtype=np.int16).reshape(30, 40)
    p = str(tmp_path / "a.fits")
    fits.PrimaryHDU(data=data, header=_wcs().to_header()).writeto(p)
    img, hdr = fio.read_image(p)
    assert img.dtype == np.float32 and img.shape == (30, 40) and img[3, 5] == data[3, 5]
    sub, _ = fio.read_image(p, box=(10, 20, 5, 25))
    np.testing.assert_array_equal(sub, data[10:20, 5:25])
    assert fio.image_shape(hdr, p) == (30, 40)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="FITS image not found: .*none.fits"):
        fio.read_image(str(tmp_path / "none.fits"))
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError, match="Cannot read FITS image .*junk.fits"):
        fio.read_header(str(junk))
    empty = str(tmp_path / "empty.fits")
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(InputError, match="no image data in its primary HDU: .*empty.fits"):
        fio.read_image(empty)
    cube = str(tmp_path / "cube.fits")
    fits.PrimaryHDU(data=np.zeros((2, 3, 4), np.float32)).writeto(cube)
    with pytest.raises(InputError, match="not a 2-D image"):
        fio.read_image(cube)


def test_header_text_round_trip():
    h = _wcs().to_header()
    h["FILTER"] = "m400"
    h2 = fio.header_from_text(fio.header_to_text(h))
    assert h2["FILTER"] == "m400" and h2["CRPIX1"] == 20.5


def test_wcs_snapshot_and_mask(tmp_path):
    w = _wcs()[5:25, 3:33]
    p = str(tmp_path / "sub" / "wcs.fits")
    fio.write_wcs_snapshot(p, w, (20, 30))
    hdr = fits.getheader(p)
    assert hdr["CRPIX1"] == pytest.approx(17.5) and hdr["CRPIX2"] == pytest.approx(10.5)
    assert hdr["IMAGEW"] == 30 and hdr["IMAGEH"] == 20
    back = fio.wcs_from_header(hdr)
    ra, dec = back.all_pix2world([0.0], [0.0], 0)
    ra0, dec0 = _wcs().all_pix2world([3.0], [5.0], 0)
    assert ra[0] == pytest.approx(ra0[0], abs=1e-12) and dec[0] == pytest.approx(dec0[0], abs=1e-12)
    m = np.zeros((4, 5), bool)
    m[1, 2] = True
    mp = str(tmp_path / "m.fits")
    fio.write_mask_fits(mp, m, w)
    assert fits.getdata(mp).dtype == np.uint8
    np.testing.assert_array_equal(fio.read_mask_fits(mp), m)
