"""psf_source: psfex -- the PSFEx model of each band evaluated at the patch centre (crop offset and
1-based pixels applied), the start-up checks, and a patch fit of GalSim stars whose PSF width
changes across the field."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io.prepared import BandInfo, Cutout, sigma_maps
from tract7dt_mpi.io.psfex import read_psfex
from tract7dt_mpi.stages.image_list import ImageEntry, attach_entry_files
from tract7dt_mpi.stages.patches import PatchSpec
from tract7dt_mpi.stages.psfex_field import psfex_patch_choices
from tract7dt_mpi.stage_options import fit_options

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "io"))
from _psfex_files import write_psfex  # noqa: E402

FIELD = 2000          # original image side [px]
CROP = 500            # crop margin: working frame = image pixels [500, 1500)


def _fwhm(x1):
    """FWHM [px] at 1-based image column x1: 2.5 at the left edge to 4.5 at the right."""
    return 3.5 + 1.0 * (x1 - 1000.5) / 1000.0


def _psfex_file(galsim, path, n=31, deg=2):
    """PSFEx model of a Gaussian PSF whose FWHM is linear in x: GalSim-drawn (pixel-integrated)
    stamps at 21 columns, expanded per pixel in u = (x - 1000.5) / 1000 to degree ``deg``."""
    us = np.linspace(-1, 1, 21)
    cube = np.array([galsim.Gaussian(fwhm=_fwhm(1000.5 + 1000.0 * u)).drawImage(nx=n, ny=n, scale=1.0).array
                     for u in us])
    coef = np.polynomial.polynomial.polyfit(us, cube.reshape(len(us), -1), deg).reshape(deg + 1, n, n)
    basis = np.zeros(((deg + 1) * (deg + 2) // 2, n, n))
    basis[:deg + 1] = coef                     # terms 1, x, ..., x^deg come first
    return write_psfex(path, basis, deg, zero=(1000.5, 1000.5), scale=(1000.0, 1000.0))


def _spec(x0, x1, y0, y1):
    return PatchSpec(0, 0, 0, 0, "r00_c00", "r00_c00_pr00_pc00", x0, x1, y0, y1, x0, x1, y0, y1, 0,
                     np.array([0]), np.array([], int))


def _prepared(bands_files):
    infos = {b: SimpleNamespace(psf_file=f) for b, f in bands_files.items()}
    return SimpleNamespace(bands=list(bands_files), band_info=infos.__getitem__, crop_x0=CROP, crop_y0=CROP)


def test_choices_at_patch_centre_with_crop_offset(tmp_path):
    rng = np.random.default_rng(0)
    path = write_psfex(str(tmp_path / "r.psf"), rng.uniform(0.5, 1, (6, 9, 9)), 2,
                       zero=(1000.5, 1000.5), scale=(1000.0, 1000.0))
    cache = {}
    ch = psfex_patch_choices(_prepared({"r": path, "g": ""}), _spec(100, 171, 40, 81), cache)
    assert list(ch) == ["r"]                   # bands without a PSFEx file get no choice
    m = read_psfex(path)
    # base-box centre (135, 60) in the working frame -> 1-based image pixel (636, 561)
    np.testing.assert_allclose(ch["r"].stamp, m.stamp(636.0, 561.0), rtol=1e-6)
    assert ch["r"].nstars_used == 25 and ch["r"].path == f"{path}@(636.0,561.0)"
    assert list(cache) == [path]


def test_startup_checks(tmp_path):
    info = BandInfo(band="r", filter="r", path="r.fits", scale=1.0, zp_auto=25.0, skysig=1.0,
                    egain=1.0, saturate=np.inf, fwhm_pix=np.nan)
    with pytest.raises(InputError, match="psf_source is psfex but no PSFEx file is given for r.fits"):
        attach_entry_files(info, ImageEntry(image="r.fits"), {}, (10, 10), need_psf=True)
    assert attach_entry_files(info, ImageEntry(image="r.fits"), {}, (10, 10)).psf_file == ""
    with pytest.raises(InputError, match="PSFEx file not found: .*gone.psf"):
        attach_entry_files(info, ImageEntry(image="r.fits", psf=str(tmp_path / "gone.psf")), {}, (10, 10))
    good = write_psfex(str(tmp_path / "ok.psf"), np.ones((1, 5, 5)), 0)
    hdr = {"PSFFILE": "ok.psf"}                # header key, relative to the image's folder
    out = attach_entry_files(info, ImageEntry(image=str(tmp_path / "r.fits")), hdr, (10, 10), need_psf=True)
    assert out.psf_file == good


def test_fit_with_psfex_recovers_galsim_star_fluxes(tmp_path):
    galsim = pytest.importorskip("galsim")
    from tract7dt_mpi.stages.fit import fit_patch_input
    path = _psfex_file(galsim, str(tmp_path / "g.psf"))
    x0, y0, shape = 100, 300, (60, 70)           # patch ROI in the working frame
    stars = [(24.3, 30.6, 20000.0), (47.8, 22.1, 8000.0)]
    img = galsim.ImageF(shape[1], shape[0], scale=1.0)
    img.setOrigin(0, 0)
    for x, y, f in stars:                         # each star with the PSF at its own image column
        psf = galsim.Gaussian(fwhm=_fwhm(x + x0 + CROP + 1.0), flux=f)
        psf.drawImage(image=img, add_to_image=True,
                      offset=galsim.PositionD(x - (shape[1] - 1) / 2.0, y - (shape[0] - 1) / 2.0))
    data = img.array.astype(np.float64) + np.random.default_rng(3).normal(0, 1.0, shape)
    info = BandInfo(band="g", filter="g", path="g.fits", scale=1.0, zp_auto=25.0, skysig=1.0,
                    egain=1e9, saturate=np.inf, fwhm_pix=np.nan, psf_file=path)
    f = np.zeros(shape, bool)
    sky, total = sigma_maps(data.astype(np.float32), f, info)
    cut = Cutout(img=data.astype(np.float32), sigma_sky=sky, sigma_total=total, nonfinite=f,
                 saturated=f, bright=f, bad_final=f)
    cat = pd.DataFrame({"_row": [0, 1], "ID": ["a", "b"], "TYPE": "STAR",
                        "x_pix_white": [s[0] + x0 for s in stars], "y_pix_white": [s[1] + y0 for s in stars]})
    cat["x_pix_patch"] = cat["x_pix_white"] - x0
    cat["y_pix_patch"] = cat["y_pix_white"] - y0
    cat["_is_halo_source"] = False
    spec = PatchSpec(0, 0, 0, 0, "r00_c00", "r00_c00_pr00_pc00", x0, x0 + shape[1], y0, y0 + shape[0],
                     x0, x0 + shape[1], y0, y0 + shape[0], 0, np.array([0, 1]), np.array([], int))
    prepared = SimpleNamespace(bands=["g"], band_info={"g": info}.__getitem__, crop_x0=CROP, crop_y0=CROP)
    cfg = config_from_dict({"patch_run": {"n_opt_iters": 30, "no_cutouts": True, "no_patch_overview": True,
                                          "psf_source": "psfex"}})
    from tract7dt_mpi.stages.patch_inputs import PatchInput

    def fit(prep):
        pin = PatchInput(spec, ["g"], {"g": cut}, {"g": info}, cat, psfex_patch_choices(prep, spec, {}))
        return fit_patch_input(pin, fit_options(cfg)).table

    t = fit(prepared)
    for i, (x, y, flux) in enumerate(stars):
        assert t["FLUX_g_fit"][i] == pytest.approx(flux, rel=0.01), i
    assert (t["psf_used_epsf_band_count"] == 1).all()
    # the same model read without the crop offset is the PSF 500 px further left (FWHM 0.5 px
    # narrower): the fluxes come out clearly wrong, so the offset above matters
    wrong = fit(SimpleNamespace(bands=["g"], band_info={"g": info}.__getitem__, crop_x0=0, crop_y0=0))
    assert abs(wrong["FLUX_g_fit"][0] / stars[0][2] - 1) > 0.03
