"""Per-patch fit (S9) on a GalSim-rendered patch, PSF choice/fallbacks, priors, schema, names."""
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.stages.fit import clip_text, result_columns, safe_name
from tract7dt_mpi.stages.patch_inputs import PatchInput, PsfChoiceInput
from tract7dt_mpi.stages.patches import PatchSpec
from tract7dt_mpi.stage_options import fit_options


def _engine():
    from tract7dt_mpi import engine
    return engine


# ----------------------------------------------------------------------------- pure helpers

def test_safe_name_and_clip_text():
    assert safe_name("NGC 1234/a:b*") == "NGC_1234_a_b_"
    assert safe_name("00019.x-y_z") == "00019.x-y_z"
    assert clip_text("abc", 2) == "ab"
    assert clip_text("aé", 2) == "a"                  # never splits a UTF-8 character
    assert clip_text("m400,m425", 64) == "m400,m425"


def test_result_columns_multi_and_single():
    multi = dict(result_columns(["r", "g"], True))
    assert multi["_row"] == np.dtype("i8") and multi["opt_converged"] == np.dtype("?")
    assert multi["patch_tag"].kind == "S" and multi["psf_fallback_reasons_json"].itemsize >= 1024
    for c in ("FLUX_g_fit", "FLUXERR_r_fit", "RA_fit", "THETA_fit", "flag_bound_stalled",
              "psf_used_epsf_band_count", "stype_fit", "x_pix_white_fit"):
        assert c in multi
    single = [n for n, _ in result_columns(["r", "g"], False)]
    assert "opt_converged" not in single and "x_pix_patch_fit" not in single
    for b in ("g", "r"):
        for c in (f"x_pix_patch_{b}_fit", f"RA_{b}_fit", f"THETA_{b}_fit", f"opt_niters_{b}",
                  f"opt_last_dlnp_{b}", f"flag_bound_stalled_which_parameter_{b}",
                  f"FLUX_{b}_fit"):
            assert c in single
    assert single.index("FLUX_g_fit") < single.index("FLUX_r_fit")     # alphabetical bands
    assert "stype_fit" in single


def _pr(**kw):
    return config_from_dict({"patch_run": kw}).patch_run


def _moffat():
    return config_from_dict({}).moffat_psf


def _info(fwhm=np.nan, header=""):
    return SimpleNamespace(fwhm_pix=fwhm, header=header, egain=1.0, scale=1.0)


def test_psf_choice_and_fallback_reasons():
    eng = _engine()
    from tract7dt_mpi.stages.fit_setup import choose_psf, header_fwhm_pix

    st = np.zeros((11, 11))
    st[5, 5] = 1.0
    psf, audit, _ = choose_psf("g", PsfChoiceInput(st, 5, "e/g/epsf.npy"), _info(3.0), _pr(), _moffat())
    assert audit["used_epsf"] and audit["fallback_reason"] == "" and isinstance(psf, eng.PixelizedPSF)
    psf, audit, line = choose_psf("g", PsfChoiceInput(st, 1, "e/g/epsf.npy"), _info(3.0), _pr(),
                                  _moffat())
    assert audit["fallback_reason"] == "low-star ePSF (nstars_used=1 < min_epsf_nstars_for_use=2)"
    assert not audit["used_epsf"] and isinstance(psf, eng.MoffatPSF)
    assert "using fallback path" in line
    psf, audit, _ = choose_psf("g", None, _info(), _pr(psf_fallback_model="ncircular_gaussian"),
                               _moffat())
    assert audit["fallback_reason"] == "missing ePSF"
    assert audit["fallback_fwhm_pix"] == 4.0 and audit["fallback_fwhm_source"] == "fallback_default_fwhm_pix"
    assert isinstance(psf, eng.NCircularGaussianPSF)
    # gate 0 disables the star-count test
    _, audit, _ = choose_psf("g", PsfChoiceInput(st, 1, ""), _info(), _pr(min_epsf_nstars_for_use=0),
                             _moffat())
    assert audit["used_epsf"]
    # SEEING (arcsec) is converted with the WCS pixel scale: 2.0" / 0.5"/px = 4 px
    hdr = ("SIMPLE  =                    T\nNAXIS   =                    0\n"
           "CTYPE1  = 'RA---TAN'\nCTYPE2  = 'DEC--TAN'\nCDELT1  = -1.3888888888889E-04\n"
           "CDELT2  =  1.3888888888889E-04\nSEEING  =                  2.0\n")
    assert header_fwhm_pix(hdr) == pytest.approx(4.0, rel=1e-6)
    assert header_fwhm_pix(hdr + "PEEING  =                  3.3\n") == pytest.approx(3.3)


def test_theta_to_phi_rule():
    from tract7dt_mpi.stages.fit_setup import theta_to_phi

    np.testing.assert_allclose(theta_to_phi([30.0, 0.0, -30.0, 90.0]), [-60.0, -90.0, 60.0, 0.0])


# ----------------------------------------------------------------------------- priors

def _tiny_pin(cat, bands=("g", "r")):
    from tract7dt_mpi.io.prepared import BandInfo, Cutout

    h = w = 30
    images, infos = {}, {}
    for b in bands:
        z = np.zeros((h, w), np.float32)
        f = np.zeros((h, w), bool)
        images[b] = Cutout(img=z + 1.0, sigma_sky=z + 1.0, sigma_total=z + 1.0, nonfinite=f,
                           saturated=f, bright=f, bad_final=f)
        infos[b] = BandInfo(band=b, filter=b, path="", scale=1.0, zp_auto=25.0, skysig=1.0,
                            egain=1e9, saturate=np.inf, fwhm_pix=3.0)
    spec = PatchSpec(0, 0, 0, 0, "r00_c00", "r00_c00_pr00_pc00", 0, w, 0, h, 0, w, 0, h, 7,
                     np.asarray(cat["_row"]), np.zeros(0, np.int64))
    cat = cat.copy()
    cat["x_pix_patch"] = cat["x_pix_white"]
    cat["y_pix_patch"] = cat["y_pix_white"]
    cat["_is_halo_source"] = False
    return PatchInput(spec, list(bands), images, infos, cat, {})


def test_priors_only_from_catalog_values():
    eng = _engine()
    from tract7dt_mpi.stages.fit_setup import build_sources, engine_images

    nan = np.nan
    cat = pd.DataFrame({
        "_row": [0, 1, 2, 3], "type": ["star", "EXP", "gal", "SERSIC"],
        "x_pix_white": [5.0, 15.0, 23.0, 15.0], "y_pix_white": [5.0, 15.0, 23.0, 6.0],
        "FLUX_g": [100.0, nan, -5.0, 50.0], "FLUX_g_ERR": [3.0, 4.0, 4.0, 0.0],
        "FLUX_r": [100.0, 200.0, 100.0, 50.0], "flux_r_err": [nan, 5.0, 6.0, 7.0],
        "POS_ERR": [0.1, nan, -1.0, 0.2], "Re": [nan, 2.0, nan, 4.0], "Re_ERR": [1.0, 0.5, 0.5, 0.0],
        "ELL": [0.3, 0.4, nan, 0.5], "ELL_ERR": [0.1, 0.1, 0.1, 0.1],
        "THETA": [10.0, -30.0, 20.0, nan], "THETA_ERR": [5.0, 5.0, 5.0, 5.0],
        "SERSIC_n": [nan, nan, nan, 2.0],
    })
    pin = _tiny_pin(cat)
    pr = _pr(gal_model="dev", re_fallback_pix=3.0)
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    psfs = {b: eng.PixelizedPSF(delta) for b in pin.bands}
    ims = engine_images(pin, psfs)
    srcs, inits = build_sources(pin, ims, pr)
    assert [s.kind for s in srcs] == ["star", "exp", "dev", "sersic"]   # lower-case TYPE column
    s0, s1, s2, s3 = srcs
    # fluxes: catalog value when finite > 0, else aperture sum of the flat image (pi r_ap^2)
    assert s0.fluxes[0] == 100.0 and s1.fluxes[1] == 200.0
    assert s1.fluxes[0] == pytest.approx(math.pi * 25.0, rel=0.02)
    assert s2.fluxes[0] == pytest.approx(math.pi * 25.0, rel=0.02)
    # flux priors: only when the start came from the catalog and the error is finite > 0
    np.testing.assert_array_equal(np.isnan(s0.flux_sigma), [False, True])
    assert s0.flux_sigma[0] == 3.0
    assert np.isnan(s1.flux_sigma[0]) and s1.flux_sigma[1] == 5.0
    assert np.isnan(s2.flux_sigma[0]) and s2.flux_sigma[1] == 6.0
    assert s3.flux_sigma is None or np.isnan(s3.flux_sigma[0])
    assert s3.flux_sigma[1] == 7.0
    # position prior
    assert s0.pos_sigma == 0.1 and s1.pos_sigma is None and s2.pos_sigma is None
    # size prior only when Re came from the catalog
    assert s1.re_sigma == 0.5 and s2.re_sigma is None and s3.re_sigma is None
    assert s2.re == 3.0 and s1.re == 2.0
    # shape prior needs ELL and THETA from the catalog and both errors
    assert s1.ell_sigma == 0.1 and s1.theta_sigma_deg == 5.0
    assert s2.ell_sigma is None and s3.ell_sigma is None
    # shape init: ab = 1-ELL, NaN ELL -> 1.0; phi from THETA, NaN THETA -> -90
    assert s1.ab == pytest.approx(0.6) and s1.phi_deg == pytest.approx(60.0)
    assert s2.ab == 1.0 and s2.phi_deg == pytest.approx(-70.0)
    assert s3.phi_deg == pytest.approx(-90.0) and s3.sersic_n == 2.0
    assert inits[1].re_from_catalog and not inits[2].re_from_catalog


# ----------------------------------------------------------------------------- GalSim fit

TRUTH = [  # kind, x, y, flux g, flux r, hlr(semi-major px), q, beta(deg, CCW from +x)
    ("STAR", 20.3, 25.7, 20000.0, 30000.0, 0, 1, 0),
    ("STAR", 52.6, 18.2, 8000.0, 5000.0, 0, 1, 0),
    ("EXP", 30.4, 50.9, 25000.0, 40000.0, 3.0, 0.6, 30.0),
    ("EXP", 55.2, 47.3, 15000.0, 12000.0, 2.2, 0.9, -50.0),
    ("STAR", 75.5, 35.0, 10000.0, 10000.0, 0, 1, 0),        # halo source (outside base box)
]
FWHM = {"g": 3.2, "r": 2.8}


def _render(galsim, band, shape, rng):
    h, w = shape
    img = galsim.ImageF(w, h, scale=1.0)
    img.setOrigin(0, 0)
    psf = galsim.Moffat(beta=3.5, fwhm=FWHM[band], trunc=14.0)
    for kind, x, y, fg, fr, hlr, q, beta in TRUTH:
        flux = fg if band == "g" else fr
        if kind == "STAR":
            obj = psf.withFlux(flux)
        else:   # hlr is the semi-major half-light radius; shear keeps the area
            gal = galsim.Exponential(half_light_radius=hlr * math.sqrt(q), flux=flux)
            obj = galsim.Convolve(gal.shear(q=q, beta=beta * galsim.degrees), psf)
        offset = galsim.PositionD(x - (w - 1) / 2.0, y - (h - 1) / 2.0)
        obj.drawImage(image=img, offset=offset, add_to_image=True)
    stamp = psf.drawImage(nx=31, ny=31, scale=1.0).array.astype(np.float64)
    stamp /= stamp.sum()
    return img.array.astype(np.float64) + rng.normal(0, 1.0, (h, w)), stamp


@pytest.fixture(scope="module")
def galsim_patch():
    return make_galsim_patch(pytest.importorskip("galsim"))


def make_galsim_patch(galsim):
    """A 70x84 two-band patch of TRUTH rendered by GalSim (Moffat PSF, unit Gaussian noise)."""
    from tract7dt_mpi.io.prepared import BandInfo, Cutout

    rng = np.random.default_rng(42)
    shape = (70, 84)
    x0, y0 = 100, 200                         # ROI origin in the working frame
    images, infos, psfs = {}, {}, {}
    for b in ("g", "r"):
        data, stamp = _render(galsim, b, shape, rng)
        f = np.zeros(shape, bool)
        sig = np.ones(shape, np.float32)
        images[b] = Cutout(img=data.astype(np.float32), sigma_sky=sig, sigma_total=sig,
                           nonfinite=f, saturated=f, bright=f, bad_final=f)
        infos[b] = BandInfo(band=b, filter=b, path=f"{b}.fits", scale=1.0, zp_auto=25.0,
                            skysig=1.0, egain=1e9, saturate=np.inf, fwhm_pix=FWHM[b])
        psfs[b] = PsfChoiceInput(stamp=stamp.astype(np.float32), nstars_used=10,
                                 path=f"EPSFs/{b}/r00_c00/epsf.npy")
    prng = np.random.default_rng(7)
    rows = []
    for i, (kind, x, y, fg, fr, hlr, q, beta) in enumerate(TRUTH):
        dx, dy = prng.uniform(-0.6, 0.6, 2)
        rows.append({"_row": 10 + i, "ID": f"src {i}" if i != 0 else "00019", "TYPE": kind,
                     "x_pix_white": x + dx + x0, "y_pix_white": y + dy + y0,
                     "Re": hlr * 1.2 if hlr else np.nan, "ELL": 1 - q if hlr else np.nan,
                     "THETA": beta + 10.0 if hlr else np.nan})
    cat = pd.DataFrame(rows)
    cat["x_pix_patch"] = cat["x_pix_white"] - x0
    cat["y_pix_patch"] = cat["y_pix_white"] - y0
    cat["_is_halo_source"] = [False, False, False, False, True]
    h, w = shape
    spec = PatchSpec(0, 0, 0, 0, "r00_c00", "r00_c00_pr00_pc00", x0, x0 + 70, y0, y0 + h,
                     x0, x0 + w, y0, y0 + h, 14, np.arange(10, 14), np.array([14]))
    return PatchInput(spec, ["g", "r"], images, infos, cat, psfs)


def _fit_cfg(**pr):
    base = {"n_opt_iters": 50, "no_cutouts": True, "no_patch_overview": True}
    base.update(pr)
    return config_from_dict({"patch_run": base, "plotting": {"dpi": 40, "level": "full"}})


def test_unmatched_saturated_stars_start_at_their_halo_flux():
    """A saturated star the catalogue lacks (``_row`` < 0) starts at the flux its band's halo
    list measured on its far rings (within 3 px), not at the ~0 aperture sum of its masked core;
    a band without a matching halo keeps the aperture start, and catalogue rows are untouched."""
    eng = _engine()
    from tract7dt_mpi.stages.fit_setup import build_sources, engine_images

    cat = pd.DataFrame({"_row": [0, -1, -2], "type": ["star", "STAR", "STAR"],
                        "x_pix_white": [5.0, 15.0, 24.0], "y_pix_white": [5.0, 15.0, 24.0],
                        "FLUX_g": [100.0, np.nan, np.nan], "FLUX_r": [100.0, np.nan, np.nan]})
    pin = _tiny_pin(cat)
    pin.psfs = {"g": PsfChoiceInput(stamp=None, halos=((16.5, 14.0, 3.0e6), (5.0, 5.0, 7.0e4))),
                "r": PsfChoiceInput(stamp=None, halos=((19.0, 15.0, 4.0e6),))}
    delta = np.zeros((5, 5))
    delta[2, 2] = 1.0
    ims = engine_images(pin, {b: eng.PixelizedPSF(delta) for b in pin.bands})
    srcs, _ = build_sources(pin, ims, _pr(gal_model="dev", re_fallback_pix=3.0))
    np.testing.assert_array_equal(srcs[0].fluxes, [100.0, 100.0])
    assert srcs[1].fluxes[0] == 3.0e6                              # 1.8 px off: matched
    assert srcs[1].fluxes[1] == pytest.approx(math.pi * 25.0, rel=0.02)   # 4 px off: aperture
    assert srcs[2].fluxes[0] == pytest.approx(srcs[1].fluxes[1], rel=0.05)


def test_fit_recovers_galsim_fluxes(galsim_patch, tmp_path):
    _engine()
    from tract7dt_mpi.stages.fit import fit_patch_input

    from tract7dt_mpi.figures import draw_patch
    from tract7dt_mpi.stages.fit import write_patch_products

    cfg = _fit_cfg(no_cutouts=False, no_patch_overview=False, cutout_max_sources=2)
    res = fit_patch_input(galsim_patch, fit_options(cfg))
    draw_patch(res, str(tmp_path), cfg)        # the pipeline's order: figures, then the products
    write_patch_products(res, str(tmp_path))
    t = res.table
    assert t["_row"].tolist() == [10, 11, 12, 13]            # halo row fitted but dropped
    assert [n for n, _ in result_columns(["g", "r"], True)] == list(t.columns)
    for i, (kind, x, y, fg, fr, hlr, q, beta) in enumerate(TRUTH[:4]):
        tol = 0.01 if kind == "STAR" else 0.03
        assert t["FLUX_g_fit"][i] == pytest.approx(fg, rel=tol), (i, kind)
        assert t["FLUX_r_fit"][i] == pytest.approx(fr, rel=tol), (i, kind)
        assert 0 < t["FLUXERR_g_fit"][i] < 0.01 * fg
        assert t["x_pix_white_fit"][i] == pytest.approx(x + 100, abs=0.1)
        assert t["y_pix_white_fit"][i] == pytest.approx(y + 200, abs=0.1)
        assert t["x_pix_patch_fit"][i] == pytest.approx(x, abs=0.1)
    stars = t["stype_fit"] == "star"
    assert stars.tolist() == [True, True, False, False]
    assert t.loc[stars, ["re_pix_fit", "ab_fit", "THETA_fit", "sersic_n_fit"]].isna().all().all()
    # galaxy 2: semi-major re 3.0, b/a 0.6, major axis at 30 deg CCW from +x
    assert t["Re_fit"][2] == pytest.approx(3.0, rel=0.1)
    assert t["ab_fit"][2] == pytest.approx(0.6, abs=0.05)
    assert t["THETA_fit"][2] == pytest.approx(30.0, abs=4.0)
    assert t["ELL_fit"][2] == pytest.approx(1 - t["ab_fit"][2])
    assert t["opt_converged"].all() and not t["opt_hit_max_iters"].any()
    assert (t["patch_tag"] == "r00_c00_pr00_pc00").all()
    assert (t["psf_used_epsf_band_count"] == 2).all() and (t["psf_fallback_bands"] == "").all()
    assert (t["psf_fallback_reasons_json"] == "{}").all()
    assert t["RA_fit"].isna().all()
    # products
    pdir = tmp_path / "r00_c00_pr00_pc00"
    csv = pd.read_csv(pdir / "r00_c00_pr00_pc00_cat_fit.csv", dtype={"ID": str})
    assert csv["ID"].tolist() == ["00019", "src 1", "src 2", "src 3"]
    meta = json.loads((pdir / "meta.json").read_text())
    assert meta["n_sources"] == 4 and meta["n_halo_sources"] == 1
    assert meta["staged_fit_enabled"] is True and len(meta["staged_fit_stages"]) == 3
    assert meta["psf_audit"]["g"]["used_epsf"] is True
    assert (pdir / "r00_c00_pr00_pc00.log").read_text().count("[PSF]") == 2
    assert (pdir / "patch_overview.png").exists()
    assert sorted(os.listdir(pdir / "cutouts")) == ["src_00019.png", "src_src_1.png"]
    assert res.plot is None
    from tract7dt_mpi.stages.fit import patch_is_complete
    assert patch_is_complete(str(tmp_path), "r00_c00_pr00_pc00")
    (tmp_path / "r00_c00_pr00_pc01").mkdir()
    assert not patch_is_complete(str(tmp_path), "r00_c00_pr00_pc01")   # folder alone: not done


def test_fit_single_band_and_fallback_audit(galsim_patch):
    _engine()
    from tract7dt_mpi.stages.fit import fit_patch_input

    pin = PatchInput(galsim_patch.spec, galsim_patch.bands, galsim_patch.images,
                     galsim_patch.band_info, galsim_patch.cat,
                     {"g": galsim_patch.psfs["g"], "r": PsfChoiceInput(None, None, "")})
    res = fit_patch_input(pin, fit_options(_fit_cfg(enable_multi_band_simultaneous_fitting=False,
                                        enable_staged_fit=False)))
    t = res.table
    assert [n for n, _ in result_columns(["g", "r"], False)] == list(t.columns)
    assert t["FLUX_g_fit"][0] == pytest.approx(20000.0, rel=0.01)
    assert t["FLUX_r_fit"][0] == pytest.approx(30000.0, rel=0.05)   # Moffat fallback PSF, true FWHM
    assert t["x_pix_white_g_fit"][0] == pytest.approx(120.3, abs=0.1)
    assert (t["psf_fallback_bands"] == "r").all() and (t["psf_used_epsf_band_count"] == 1).all()
    assert json.loads(t["psf_fallback_reasons_json"][0]) == {"r": "missing ePSF"}
    assert "staged_fit_stages_by_band" in res.meta and res.meta["staged_fit_enabled"] is False


def test_fault_injection(galsim_patch):
    from tract7dt_mpi.stages.fit import fit_patch_input

    with pytest.raises(RuntimeError, match="fault injected for test"):
        fit_patch_input(galsim_patch, fit_options(_fit_cfg(fault_inject=["r00_c00_pr00_pc00"])))


def test_engine_images_mask_and_gain():
    _engine()
    from tract7dt_mpi.io.prepared import BandInfo
    from tract7dt_mpi.stages.fit_setup import engine_images

    cat = pd.DataFrame({"_row": [0], "x_pix_white": [5.0], "y_pix_white": [5.0]})
    pin = _tiny_pin(cat, bands=("g",))
    c = pin.images["g"]
    c.bad_final[1, 2] = True
    c.sigma_sky[3, 4] = np.inf
    c.img[5, 6] = np.nan
    c.sigma_sky[0, 0] = 2.0
    pin.band_info["g"] = BandInfo(band="g", filter="g", path="", scale=4.0, zp_auto=26.5,
                                  skysig=0.5, egain=2.0, saturate=np.inf, fwhm_pix=3.0)
    (im,) = engine_images(pin, {"g": None})
    assert im.gain == pytest.approx(0.5)                       # EGAIN / scale
    assert im.invvar[1, 2] == 0 and im.invvar[3, 4] == 0 and im.invvar[5, 6] == 0
    assert im.data[5, 6] == 0 and np.isfinite(im.data).all()
    assert im.invvar[0, 0] == pytest.approx(0.25) and im.invvar[9, 9] == pytest.approx(1.0)


def test_fit_iteration_limit_and_position_bounds(galsim_patch):
    _engine()
    from tract7dt_mpi.stages.fit import fit_patch_input

    t = fit_patch_input(galsim_patch, fit_options(_fit_cfg(n_opt_iters=1, enable_staged_fit=False))).table
    assert (t["opt_niters"] == 1).all() and t["opt_hit_max_iters"].all()
    assert not t["opt_converged"].any()
    t = fit_patch_input(galsim_patch, fit_options(_fit_cfg(pos_max_shift_pix=0.05,
                                               enable_staged_fit=False))).table
    x0 = galsim_patch.cat["x_pix_patch"].to_numpy()[:4]
    y0 = galsim_patch.cat["y_pix_patch"].to_numpy()[:4]
    assert np.all(np.abs(t["x_pix_patch_fit"] - x0) <= 0.05 + 1e-6)
    assert np.all(np.abs(t["y_pix_patch_fit"] - y0) <= 0.05 + 1e-6)
    # every input position is off by more than 0.05 px in x or y -> pushed against the box
    assert t["flag_bound_stalled"].all()
    assert all("pos." in s and ("@lower" in s or "@upper" in s)
               for s in t["flag_bound_stalled_which_parameter"])


def test_band_without_usable_pixels_reports_nan(galsim_patch):
    _engine()
    from tract7dt_mpi.io.prepared import Cutout
    from tract7dt_mpi.stages.fit import fit_patch_input

    r = galsim_patch.images["r"]
    dead = Cutout(img=r.img, sigma_sky=r.sigma_sky, sigma_total=r.sigma_total,
                  nonfinite=r.nonfinite, saturated=r.saturated, bright=r.bright,
                  bad_final=np.ones_like(r.bad_final))
    pin = PatchInput(galsim_patch.spec, galsim_patch.bands, {"g": galsim_patch.images["g"],
                                                             "r": dead},
                     galsim_patch.band_info, galsim_patch.cat, galsim_patch.psfs)
    res = fit_patch_input(pin, fit_options(_fit_cfg(enable_staged_fit=False)))
    assert res.table["FLUX_r_fit"].isna().all() and res.table["FLUXERR_r_fit"].isna().all()
    assert res.table["FLUX_g_fit"][0] == pytest.approx(20000.0, rel=0.01)
    assert res.meta["bands_without_data"] == ["r"]


def test_core_masked_flag_needs_a_usable_pixel_near_the_centre():
    from types import SimpleNamespace
    from tract7dt_mpi.stages.fit import core_masked
    iv = np.ones((20, 20))
    good = SimpleNamespace(invvar=iv)
    hole = iv.copy()
    hole[8:13, 8:13] = 0.0          # a 5x5 masked core around (10, 10)
    masked = SimpleNamespace(invvar=hole)
    assert not core_masked([good, good], 10.0, 10.0)
    assert core_masked([good, masked], 10.0, 10.0)      # any band with a masked core
    assert not core_masked([masked], 5.0, 5.0)           # away from the hole
    assert core_masked([good], 30.0, 10.0)               # off the image


def test_psf_term_is_added_in_quadrature_only_for_epsf_bands_under_total():
    from types import SimpleNamespace

    from tract7dt_mpi.stages.psf_error import psf_term_fractions, with_psf_term
    from tract7dt_mpi.stages.patch_inputs import PsfChoiceInput
    assert with_psf_term(3.0, 400.0, 0.01) == pytest.approx(5.0)
    assert with_psf_term(3.0, 400.0, float("nan")) == 3.0
    pin = SimpleNamespace(psfs={"a": PsfChoiceInput(stamp=None, flux_err_frac=0.01),
                                "b": PsfChoiceInput(stamp=None, flux_err_frac=0.02)})
    audits = {"a": {"used_epsf": True}, "b": {"used_epsf": False}}
    got = psf_term_fractions(["a", "b"], pin, audits, "total")
    assert got["a"] == 0.01 and np.isnan(got["b"])                    # fallback PSF: no estimate
    assert np.isnan(psf_term_fractions(["a"], pin, audits, "sky")["a"])


def test_star_checks_are_made_for_the_psf_term_and_the_wing_error_each_when_on(galsim_patch):
    """The fitted stars' PSF check (PSFCHK) needs the band's PSF term, the wing check (WINGCHK)
    the wing error: with ``flux_error_psf_wing: 0`` the PSF check is still made and the wing
    responses and checks are NaN; with it on the stars have both and the galaxies their signed
    wing responses."""
    import dataclasses

    _engine()
    from tract7dt_mpi.stages.fit import fit_patch_input
    pin = dataclasses.replace(galsim_patch, psfs={b: dataclasses.replace(c, flux_err_frac=0.01)
                                                 for b, c in galsim_patch.psfs.items()})
    off = fit_patch_input(pin, fit_options(_fit_cfg(flux_error_psf_wing=0.0))).table
    on = fit_patch_input(pin, fit_options(_fit_cfg())).table
    stars = (on["stype_fit"] == "star").to_numpy()
    for b in ("g", "r"):
        assert np.isfinite(off[f"PSFCHK_{b}_fit"][stars]).all() and np.isfinite(on[f"PSFCHK_{b}_fit"][stars]).all()
        assert off[f"WINGCHK_IN_{b}_fit"].isna().all() and off[f"WINGRESP_IN_{b}_fit"].isna().all()
        assert np.isfinite(on[f"WINGCHK_IN_{b}_fit"][stars]).all()
        assert on[f"WINGCHK_IN_{b}_fit"][~stars].isna().all()
        assert np.isfinite(on[f"WINGRESP_IN_{b}_fit"][~stars]).all()


def test_fit_to_a_zero_filled_band_is_flagged_dead(galsim_patch):
    """All-zero pixels that are not masked (a zero-filled gap): the fitted 0.0 is no measurement."""
    _engine()
    from tract7dt_mpi import flags
    from tract7dt_mpi.io.prepared import Cutout
    from tract7dt_mpi.stages.fit import fit_patch_input

    r = galsim_patch.images["r"]
    zero = Cutout(img=np.zeros_like(r.img), sigma_sky=r.sigma_sky, sigma_total=r.sigma_total,
                  nonfinite=r.nonfinite, saturated=r.saturated, bright=r.bright, bad_final=r.bad_final)
    pin = PatchInput(galsim_patch.spec, galsim_patch.bands, {"g": galsim_patch.images["g"], "r": zero},
                     galsim_patch.band_info, galsim_patch.cat, galsim_patch.psfs)
    res = fit_patch_input(pin, fit_options(_fit_cfg(enable_staged_fit=False)))
    assert res.table["flag_dead_data"].all()
    ok, issues = flags.reliability(res.table)
    assert not ok.any() and all("dead_data" in s for s in issues)
    live = fit_patch_input(galsim_patch, fit_options(_fit_cfg(enable_staged_fit=False)))
    assert not live.table["flag_dead_data"].any()


def test_tractor_engine_is_the_backend_or_a_clear_error(monkeypatch):
    from tract7dt_mpi.engine import tractor_backend
    from tract7dt_mpi.errors import InputError
    from tract7dt_mpi.stages.fit import _fit_function

    class PR:
        engine = "tractor"
    monkeypatch.setattr(tractor_backend, "tractor_available", lambda: (True, ""))
    fn, name = _fit_function(PR)
    assert fn is tractor_backend.fit_patch_tractor and name == "tractor"
    monkeypatch.setattr(tractor_backend, "tractor_available", lambda: (False, "no module"))
    with pytest.raises(InputError, match="patch_run.engine: tractor"):
        _fit_function(PR)


def test_engine_value_error_on_catalog_data_is_input_error(galsim_patch):
    """The engine refuses a non-finite position with ValueError; the stage names the source."""
    from tract7dt_mpi.errors import InputError
    from tract7dt_mpi.stages.fit import fit_patch_input

    cat = galsim_patch.cat.copy()
    cat.loc[cat.index[1], "x_pix_patch"] = np.nan
    pin = PatchInput(galsim_patch.spec, galsim_patch.bands, galsim_patch.images,
                     galsim_patch.band_info, cat, galsim_patch.psfs)
    with pytest.raises(InputError, match=r"input catalog source 'src 1': Source position must be finite"):
        fit_patch_input(pin, fit_options(_fit_cfg(enable_staged_fit=False)))
