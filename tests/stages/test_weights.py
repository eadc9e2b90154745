"""Weight / RMS maps: units and masking by hand, the prepared store's ivar and sigma maps, the white
stack, and a patch fit whose flux errors follow the map (zero weight = masked)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.io.prepared import BandInfo, Cutout, PreparedImages, PreparedWriter, sigma_maps
from tract7dt_mpi.stages.fit_setup import invvar_of
from tract7dt_mpi.stages.load import load_inputs
from tract7dt_mpi.stages.weights import ivar_from_map, sigma_from_ivar
from tract7dt_mpi.stage_options import fit_options, load_options


def test_ivar_from_map_by_hand():
    w = np.array([[4.0, 0.0], [np.nan, -1.0]])
    np.testing.assert_array_equal(ivar_from_map(w, "weight", 2.0), [[1.0, 0.0], [0.0, 0.0]])
    rms = np.array([[2.0, 0.5], [np.inf, 0.0]])
    # ivar = 1 / rms² / scale²: 1/16, 1; inf rms and 0 rms carry no weight
    np.testing.assert_allclose(ivar_from_map(rms, "rms", 2.0), [[1 / 16, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(sigma_from_ivar(np.array([4.0, 0.0])), [0.5, np.inf])


def test_sigma_maps_with_ivar_match_raw_unit_formula():
    info = SimpleNamespace(scale=2.0, skysig=5.0, egain=3.0)
    w_raw = np.array([[0.25, 1.0, 0.0]])                 # ADU^-2: sigma_raw 2, 1, (none)
    raw = np.array([[30.0, -4.0, 10.0]])
    img = (raw * info.scale).astype(np.float32)
    sky, total = sigma_maps(img, np.zeros(img.shape, bool), info, ivar_from_map(w_raw, "weight", 2.0))
    # in raw ADU: sigma = 1/sqrt(w), total = sqrt(sigma² + max(raw, 0)/egain); scaled by `scale`
    np.testing.assert_allclose(sky[0, :2], [2.0 * 2, 1.0 * 2], rtol=1e-6)
    np.testing.assert_allclose(total[0, :2], [np.sqrt(4 + 30 / 3.0) * 2, 1.0 * 2], rtol=1e-6)
    assert np.isinf(sky[0, 2]) and np.isinf(total[0, 2])
    sky0, total0 = sigma_maps(img, np.zeros(img.shape, bool), info)   # no map: scalar SKYSIG
    np.testing.assert_allclose(sky0, 10.0)
    np.testing.assert_allclose(total0[0, 0], np.sqrt(25 + 10.0) * 2, rtol=1e-6)


def _with_weight_maps(tile, kind="weight"):
    """Per band a map whose sigma grows linearly in x (1x SKYSIG at x=0 to 3x at the right edge),
    and a zero-weight column x = 50 in the first band; the list names them with weight=/rms=."""
    H, W = tile.shape
    sig = 5.0 * (1.0 + 2.0 * np.arange(W) / (W - 1))[None, :] * np.ones((H, 1))
    lines, maps = [], {}
    for i, (b, p) in enumerate(zip(tile.headers, tile.image_paths)):
        w = 1.0 / sig ** 2 if kind == "weight" else sig.copy()
        if i == 0:
            w[:, 50] = 0.0
        mp = os.path.join(tile.root, f"{kind}_{b}.fits")
        fits.PrimaryHDU(data=w.astype(np.float32)).writeto(mp)
        maps[b] = w.astype(np.float32)
        lines.append(f"{os.path.basename(p)}   {kind}={os.path.basename(mp)}")
    with open(tile.image_list, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return sig, maps


@pytest.mark.parametrize("kind", ["weight", "rms"])
def test_load_stores_ivar_and_sigma(tile_factory, tmp_path, kind):
    def junk_column(raw):                  # saturated-looking junk where the weight is 0
        raw[:, 50] = 1e6
        return raw
    tile = tile_factory(extra={"m400": junk_column})
    sig, _ = _with_weight_maps(tile, kind)
    store = str(tmp_path / "prep.h5")
    with PreparedWriter(store) as w:
        res = load_inputs(load_options(tile.cfg()), writer=w, plots=False)     # crop margin 10
    b0, b1 = list(tile.headers)
    with PreparedImages(store) as p:
        ivs, imgs = {}, {}
        for b in (b0, b1):
            info = p.band_info(b)
            assert info.weight_kind == kind and info.weight.endswith(f"{kind}_{b}.fits")
            c = p.read(b, 0, p.shape[0], 0, p.shape[1])
            exp_sigma = (sig[10:-10, 10:-10] * info.scale).astype(np.float32)
            good = ~c.nonfinite
            np.testing.assert_allclose(c.sigma_sky[good], exp_sigma[good], rtol=1e-5)
            ivs[b] = np.asarray(p._f[f"bands/{b}/ivar"])
            np.testing.assert_allclose(ivs[b][good], 1.0 / exp_sigma[good] ** 2, rtol=1e-5)
            imgs[b] = c.img
            iv_fit = invvar_of(c)
            np.testing.assert_allclose(iv_fit[good & ~c.bad_final], ivs[b][good & ~c.bad_final], rtol=1e-6)
        col = 50 - 10                                           # the zero-weight column, working frame
        c0 = p.read(b0, 0, p.shape[0], 0, p.shape[1])
        assert c0.nonfinite[:, col].all() and c0.bad_final[:, col].all() and np.isinf(c0.sigma_sky[:, col]).all()
        assert (p.read_mask_bits(b0, 0, p.shape[0], col, col + 1) & 1).all()
        assert invvar_of(c0)[:, col].max() == 0
        assert not c0.nonfinite[:, col + 1].any()
        assert not c0.saturated.any() and not res.satur_any.any()
        assert not res.catalog["excluded_saturation"].any()       # star at x=40 is 10 px away
        # the white stack is weighted by the maps: at (y, x) = (30, 20) and on the masked column
        y, x = 30, 20
        exp = (ivs[b0][y, x] * imgs[b0][y, x] + ivs[b1][y, x] * imgs[b1][y, x]) / (ivs[b0][y, x] + ivs[b1][y, x])
        assert res.white[y, x] == pytest.approx(exp, rel=1e-5)
        assert res.white[y, col] == pytest.approx(imgs[b1][y, col], rel=1e-5)
        assert res.sigma_white[y, col] == pytest.approx(1.0 / np.sqrt(ivs[b1][y, col]), rel=1e-5)


# ---------------------------------------------------------------- the fit uses the map

def _gauss(shape, x, y, flux, sigma):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    return flux / (2 * np.pi * sigma ** 2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def _patch(ivar, data, stars, psf_sigma=1.5):
    from tract7dt_mpi.stages.patch_inputs import PatchInput, PsfChoiceInput
    from tract7dt_mpi.stages.patches import PatchSpec
    shape = data.shape
    info = BandInfo(band="g", filter="g", path="g.fits", scale=1.0, zp_auto=25.0, skysig=1.0,
                    egain=1e9, saturate=np.inf, fwhm_pix=2.3548 * psf_sigma)
    nonfinite = ~(ivar > 0)
    sky, total = sigma_maps(data.astype(np.float32), nonfinite, info, ivar)
    f = np.zeros(shape, bool)
    cut = Cutout(img=data.astype(np.float32), sigma_sky=sky, sigma_total=total, nonfinite=nonfinite,
                 saturated=f, bright=f, bad_final=nonfinite)
    stamp = _gauss((25, 25), 12, 12, 1.0, psf_sigma)
    cat = pd.DataFrame({"_row": np.arange(len(stars)), "ID": [f"s{i}" for i in range(len(stars))],
                        "TYPE": "STAR", "x_pix_white": [s[0] for s in stars],
                        "y_pix_white": [s[1] for s in stars]})
    cat["x_pix_patch"], cat["y_pix_patch"] = cat["x_pix_white"], cat["y_pix_white"]
    cat["_is_halo_source"] = False
    h, w = shape
    spec = PatchSpec(0, 0, 0, 0, "r00_c00", "r00_c00_pr00_pc00", 0, w, 0, h, 0, w, 0, h, 0,
                     np.arange(len(stars)), np.array([], int))
    return PatchInput(spec, ["g"], {"g": cut}, {"g": info}, cat,
                      {"g": PsfChoiceInput(stamp=stamp.astype(np.float32), nstars_used=10, path="x")})


def test_fit_flux_errors_follow_the_weight_map_and_zero_weight_masks():
    from tract7dt_mpi.stages.fit import fit_patch_input
    rng = np.random.default_rng(5)
    shape = (40, 80)
    sigma = np.where(np.arange(80)[None, :] < 40, 1.0, 3.0) * np.ones((40, 1))   # left 1, right 3
    stars = [(18.3, 20.2, 5000.0), (60.6, 19.7, 5000.0)]
    truth = sum(_gauss(shape, x, y, f, 1.5) for x, y, f in stars)
    data = truth + rng.normal(0, 1, shape) * sigma
    ivar = 1.0 / sigma ** 2
    data[:, 61] = 1e5                       # a bad column through the right star, zero weight
    ivar[:, 61] = 0.0
    cfg = config_from_dict({"patch_run": {"n_opt_iters": 30, "no_cutouts": True, "no_patch_overview": True,
                                          "flux_error_model": "sky"}})
    t = fit_patch_input(_patch(ivar, data, [s[:2] for s in stars]), fit_options(cfg)).table
    fl, fe = t["FLUX_g_fit"].to_numpy(), t["FLUXERR_g_fit"].to_numpy()
    # sky-only error of a PSF flux: 1/sqrt(sum(P² ivar)) with the PSF sampled on the pixels
    for i, (x, y, f) in enumerate(stars):
        p = _gauss(shape, t["x_pix_patch_fit"][i], t["y_pix_patch_fit"][i], 1.0, 1.5)
        assert fe[i] == pytest.approx(1.0 / np.sqrt(np.sum(p ** 2 * ivar)), rel=0.03)
        assert abs(fl[i] - f) < 4 * fe[i]
    assert fe[1] / fe[0] == pytest.approx(3.0 * np.sqrt(np.sum(_gauss(shape, 60.6, 19.7, 1, 1.5) ** 2)
                                                        / np.sum(_gauss(shape, 60.6, 19.7, 1, 1.5) ** 2
                                                                 * (ivar > 0))), rel=0.05)
