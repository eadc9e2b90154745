"""The image list's optional fields (weight=, rms=, psf=, HDU suffixes), the header keys that name
the same files, and a load of compressed extension images through the whole load stage."""
from __future__ import annotations

import os

import numpy as np
import pytest
from astropy.io import fits

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io.prepared import PreparedImages, PreparedWriter
from tract7dt_mpi.stages.image_list import read_image_entries
from tract7dt_mpi.stages.load import load_inputs
from tract7dt_mpi.stage_options import load_options


def _write(tmp_path, text):
    p = tmp_path / "list.txt"
    p.write_text(text)
    return str(p)


def test_entries_fields_and_hdus(tmp_path):
    p = _write(tmp_path, "# header\n\na.fits\n"
                         "b.fits.fz[1]   weight=b.wht.fits.fz[WGT]  psf=psf/b.psf\n"
                         "/abs/c.fits[SCI,2]\tRMS=/abs/c_rms.fits\n")
    e = read_image_entries(p, "/base")
    assert [x.image for x in e] == ["/base/a.fits", "/base/b.fits.fz[1]", "/abs/c.fits[SCI,2]"]
    assert (e[0].weight, e[0].weight_kind, e[0].psf) == (None, None, None)
    assert (e[1].weight, e[1].weight_kind, e[1].psf) == ("/base/b.wht.fits.fz[WGT]", "weight", "/base/psf/b.psf")
    assert (e[2].weight, e[2].weight_kind, e[2].line) == ("/abs/c_rms.fits", "rms", 5)


@pytest.mark.parametrize("line, msg", [
    ("a.fits mask=m.fits", r"line 1: bad field 'mask=m.fits'"),
    ("a.fits w.fits", r"line 1: bad field 'w.fits'"),
    ("a.fits weight=", r"line 1: bad field 'weight='"),
    ("a.fits psf=a.psf psf=b.psf", r"line 1: psf= given twice"),
    ("a.fits weight=w.fits rms=r.fits", r"line 1: give weight= or rms=, not both"),
])
def test_entry_errors_name_list_and_line(tmp_path, line, msg):
    with pytest.raises(InputError, match=msg):
        read_image_entries(_write(tmp_path, line + "\n"), "/base")


def _load(tile, store, **sections):
    with PreparedWriter(store) as w:
        return load_inputs(load_options(tile.cfg(**sections)), writer=w, plots=False)


def _fz_tile(tile, with_weight_key=False):
    """Rewrite every band of ``tile`` as a .fits.fz (image in HDU 1, FILTER etc. only in the
    primary header) and point the image list at them with an explicit or implicit HDU."""
    lines = []
    for i, (b, p) in enumerate(zip(tile.headers, tile.image_paths)):
        with fits.open(p) as h:
            data, hdr = h[0].data.astype(np.int32), h[0].header
        prim = fits.PrimaryHDU()
        for k in ("FILTER", "ZP_AUTO", "SKYSIG", "EGAIN", "SATURATE", "PEEING"):
            prim.header[k] = hdr[k]
        ext_hdr = fits.Header([c for c in hdr.cards if c.keyword not in
                               ("FILTER", "ZP_AUTO", "SKYSIG", "EGAIN", "SATURATE", "PEEING")])
        if with_weight_key:
            prim.header["RMSFILE"] = f"rms_{b}.fits"
            fits.PrimaryHDU(data=np.full(data.shape, 2.0, np.float32)).writeto(
                os.path.join(tile.root, f"rms_{b}.fits"))
        fz = os.path.join(tile.root, f"img_{b}.fits.fz")
        fits.HDUList([prim, fits.CompImageHDU(data=data, header=ext_hdr, compression_type="RICE_1")]).writeto(fz)
        tile.raw[b] = data.astype(np.float32)
        lines.append(os.path.basename(fz) + ("[1]" if i == 0 else ""))
    with open(tile.image_list, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def test_load_compressed_extension_images(tile_factory, tmp_path):
    tile = tile_factory()
    _fz_tile(tile)
    store = str(tmp_path / "prep.h5")
    _load(tile, store)
    with PreparedImages(store) as p:
        for b in tile.headers:
            info = p.band_info(b)
            assert info.filter == b and info.skysig == 5.0 and info.egain == 1.5
            c = p.read(b, 0, 20, 0, 30)
            np.testing.assert_allclose(c.img, tile.raw[b][10:30, 10:40] * info.scale, rtol=1e-6)
            assert info.weight == "" and np.all(c.sigma_sky == np.float32(5.0 * info.scale))


def test_weight_map_from_header_key(tile_factory, tmp_path):
    tile = tile_factory()
    _fz_tile(tile, with_weight_key=True)
    store = str(tmp_path / "prep.h5")
    _load(tile, store)
    with PreparedImages(store) as p:
        for b in tile.headers:
            info = p.band_info(b)
            assert info.weight == os.path.join(tile.root, f"rms_{b}.fits") and info.weight_kind == "rms"
            c = p.read(b, 0, 5, 0, 5)
            np.testing.assert_allclose(c.sigma_sky, 2.0 * info.scale, rtol=1e-6)


def test_weight_map_shape_checked_before_pixels(tile_factory):
    tile = tile_factory()
    w = os.path.join(tile.root, "small_w.fits")
    fits.PrimaryHDU(data=np.ones((10, 10), np.float32)).writeto(w)
    with open(tile.image_list, "w") as fh:
        fh.write(f"{os.path.basename(tile.image_paths[0])} weight=small_w.fits\n"
                 f"{os.path.basename(tile.image_paths[1])}\n")
    with pytest.raises(InputError, match=r"weight map .*small_w.fits has shape \(10, 10\), expected \(120, 140\)"):
        load_inputs(load_options(tile.cfg()), plots=False)
    with open(tile.image_list, "w") as fh:
        fh.write(f"{os.path.basename(tile.image_paths[0])} rms=none.fits\n")
    with pytest.raises(InputError, match="FITS image not found: .*none.fits"):
        load_inputs(load_options(tile.cfg()), plots=False)


KIDS = "/work/shared/data/kids-viking"


@pytest.mark.skipif(not os.path.exists(os.path.join(KIDS, "WAVES_r.fits.fz")), reason="KiDS/VIKING data not present")
def test_load_real_kids_fz_bands(tmp_path):
    """Two real RICE-compressed bands (image in HDU 1) through the load stage, by path."""
    from tract7dt_mpi.config import config_from_dict
    lst = tmp_path / "images.txt"
    lst.write_text(f"{KIDS}/WAVES_r.fits.fz\n{KIDS}/WAVES_i.fits.fz[1]\n")
    cfg = config_from_dict({"inputs": {"input_catalog": f"{KIDS}/input_catalog.csv", "image_list_file": str(lst),
                                       "gaiaxp_synphot_csv": None},
                            "outputs": {"work_dir": str(tmp_path / "w")},
                            "crop": {"margin": 1000, "plot_pre_crop": False}}, base_dir=str(tmp_path))
    store = str(tmp_path / "prep.h5")
    res = _load_cfg(cfg, store)
    assert res.bands == ["r", "i"] and res.shape == (600, 600)
    with PreparedImages(store) as p:
        for b in ("r", "i"):
            info = p.band_info(b)
            assert info.path.endswith(".fits.fz") or info.path.endswith("[1]")
            c = p.read(b, 0, 600, 0, 600)
            assert np.isfinite(c.img).all() and not c.nonfinite.any()
            assert np.allclose(c.sigma_sky, info.skysig * info.scale)
    assert np.isfinite(res.white).all()


def _load_cfg(cfg, store):
    with PreparedWriter(store) as w:
        return load_inputs(load_options(cfg), writer=w, plots=False)
