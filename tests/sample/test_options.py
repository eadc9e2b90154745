"""make-sample scene options: PSF kinds and their FWHM, untruncated total fluxes, blends, pedestal,
catalogue knobs, psf_truth.json and the command-line flags."""
import argparse
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from scipy.special import gammainc, gammaincinv

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.sample import make_sample
from tract7dt_mpi.sample.bands import band_truths
from tract7dt_mpi.sample.options import SampleOptions, add_option_arguments, options_from_namespace
from tract7dt_mpi.sample.truth import load_truth, psf_params, true_psf_stamp

galsim = pytest.importorskip("galsim")


def _fwhm_from_area(params, x, y, scale=0.1, n=161):
    """FWHM of the unsheared profile from the area above half maximum of a fine no-pixel drawing."""
    p = replace(params, g1_0=0.0, g1_x=0.0, g2_0=0.0, g2_y=0.0)
    img = p.galsim_psf(x, y).drawImage(nx=n, ny=n, scale=scale, method="no_pixel").array
    area = (img >= 0.5 * img.max()).sum() * scale * scale
    return 2.0 * np.sqrt(area / np.pi)


@pytest.mark.parametrize("kw", [dict(psf_kind="moffat", psf_beta=2.0), dict(psf_kind="moffat", psf_beta=3.0),
                                dict(psf_kind="kolmogorov")])
def test_psf_kinds_render_with_the_requested_fwhm(kw):
    bts = band_truths(["m400", "m887"], 3, 1024, 1024, SampleOptions(**kw))
    for bt in bts:
        for x, y in ((511.5, 511.5), (30.0, 990.0)):
            want = bt.psf.at(x, y)[0]
            assert _fwhm_from_area(bt.psf, x, y) == pytest.approx(want, rel=0.02), (kw, bt.band, x, y)
    if kw["psf_kind"] == "kolmogorov":   # a real Airy part, larger in the red (lambda/D)
        assert 0.25 < bts[0].psf.lam_over_diam < bts[1].psf.lam_over_diam < 0.8


def test_per_band_fwhm_trend_shear_and_constant_field():
    o = SampleOptions(psf_fwhm_blue=4.4, psf_fwhm_red=3.6, psf_fwhm_jitter=0.0, psf_field_variation=0.0,
                      psf_g1=0.04, psf_shear_range=0.0)
    b0, b1 = band_truths(["m400", "m887"], 5, 1024, 1024, o)
    assert b0.psf.fwhm0 == pytest.approx(4.4) and b1.psf.fwhm0 == pytest.approx(3.6)       # 20 % apart
    assert b0.psf.at(0, 0)[0] == b0.psf.at(1023, 1023)[0]
    s = true_psf_stamp("m400", 511.5, 511.5, 41, b0.psf)
    yy, xx = np.mgrid[-20:21, -20:21]
    mxx, myy = (s * xx * xx).sum(), (s * yy * yy).sum()
    assert (mxx - myy) / (mxx + myy) == pytest.approx(2 * 0.04 / (1 + 0.04 ** 2), rel=0.1)   # g1 -> e1


def _one_galaxy_model(n_s, truncate, tol, re=3.0):
    from tract7dt_mpi.sample.render import galaxy_profiles, render_model
    bt = band_truths(["m625"], 1, 400, 400)[0]
    bt = replace(bt, psf=replace(bt.psf, fwhm0=0.3, fwhm_x=0, fwhm_y=0, fwhm_r=0, g1_0=0, g1_x=0, g2_0=0, g2_y=0))
    pop = pd.DataFrame([dict(kind="DEV", x=200.0, y=200.0, re=re, ab=1.0, theta=0.0, sersic_n=n_s)])
    model, _, drawn, _ = render_model(pop, galaxy_profiles(pop, truncate=truncate), np.array([1e6]), bt,
                                      400, 400, stamp_flux_tol=tol, truncated=truncate)
    yy, xx = np.mgrid[:400, :400]
    in8 = model[np.hypot(xx - 200, yy - 200) < 8 * re].sum() / 1e6
    return model, drawn[0], in8


def test_untruncated_dev_holds_its_total_flux_and_the_analytic_light_beyond_8_re():
    model, drawn, in8 = _one_galaxy_model(4.0, truncate=False, tol=1e-3)
    assert drawn >= 0.999 and model.sum() / 1e6 == pytest.approx(drawn, rel=1e-5)
    b = gammaincinv(8.0, 0.5)
    assert in8 == pytest.approx(gammainc(8.0, b * 8 ** 0.25), abs=0.005)        # 0.943: 5.7 % beyond
    _, drawn_t, in8_t = _one_galaxy_model(4.0, truncate=True, tol=None)
    assert drawn_t > 0.999 and in8_t > 0.995                                      # truncated at 8 re


@pytest.fixture(scope="module")
def tile_opts(tmp_path_factory):
    out = tmp_path_factory.mktemp("opts")
    return make_sample(out, bands=2, size=384, seed=4, verbose=False, psf_kind="moffat", psf_beta=2.0,
                       galaxy_mag_min=14.5, galaxy_mag_max=19.5, n_stars=60, n_blends=5, sky_pedestal=4.0,
                       blank_type_frac=0.05, galaxy_truncation=False, stamp_flux_tol=1e-3, n_sources=110)


def test_truth_fluxes_are_the_drawn_totals_and_stars_mags_as_asked(tile_opts):
    truth, meta = load_truth(tile_opts["out_dir"])
    assert meta["options"]["n_blends"] == 5 and meta["options"]["psf_beta"] == 2.0
    cat = truth[truth["in_catalog"]]
    assert (cat["type"] == "STAR").sum() == 60 and len(cat) == 110 + 5
    gal = truth[truth["type"] != "STAR"]
    assert gal["mag_m400"].notna().all()
    interior = truth[~truth["near_edge"] & truth["x"].between(60, 323) & truth["y"].between(60, 323)]
    centre = truth[truth["x"].between(140, 244) & truth["y"].between(140, 244)]   # stamps inside the image
    for b in ("m400", "m887"):
        assert centre[f"drawn_frac_{b}"].min() > 0.9985 and interior[f"drawn_frac_{b}"].median() > 0.999
        assert (truth[f"snr_{b}"] > 0).all()
    for path in tile_opts["images"]:
        assert fits.getheader(path)["SKYPED"] == 4.0


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_a_moffat_star_holds_its_total_flux_with_the_analytic_wings(beta):
    """Noise-free star with --stamp-flux-tol 1e-3: drawn share >= 0.999, and the light inside 10 and
    30 px is the analytic Moffat enclosed fraction 1 - (1 + r^2/alpha^2)^(1 - beta)."""
    from tract7dt_mpi.sample.render import render_model
    bt = band_truths(["m625"], 1, 600, 600, SampleOptions(psf_beta=beta, psf_shear_range=0.0))[0]
    bt = replace(bt, psf=replace(bt.psf, fwhm_x=0, fwhm_y=0, fwhm_r=0))
    pop = pd.DataFrame([dict(kind="STAR", x=300.2, y=299.7, re=0.0, ab=1.0, theta=0.0, sersic_n=np.nan)])
    model, _, drawn, snr = render_model(pop, [None], np.array([1e6]), bt, 600, 600, stamp_flux_tol=1e-3)
    assert drawn[0] >= 0.999 and model.sum() / 1e6 == pytest.approx(drawn[0], rel=1e-5)
    alpha = bt.psf.fwhm0 / (2 * np.sqrt(2 ** (1 / beta) - 1))
    yy, xx = np.mgrid[:600, :600]
    rr = np.hypot(xx - 300.2, yy - 299.7)
    for r in (10.0, 30.0):
        want = 1 - (1 + (r / alpha) ** 2) ** (1 - beta)
        assert model[rr < r].sum() / 1e6 == pytest.approx(want, abs=0.004)
    assert snr[0] == pytest.approx(np.sqrt((model.astype(float) ** 2 / (bt.skysig ** 2 + model / bt.egain)).sum()), rel=1e-4)


def test_blends_sit_next_to_bright_stars_and_catalogue_knobs(tile_opts):
    truth, _ = load_truth(tile_opts["out_dir"])
    bl = truth[truth["blend_host_id"] != ""]
    assert len(bl) == 5 and set(bl["type"]) <= {"EXP", "DEV", "SERSIC"}
    host = truth.set_index("ID").loc[bl["blend_host_id"]]
    assert (host["type"] == "STAR").all() and (host["mag_m400"] < 20).all()
    d = np.hypot(bl["x"].to_numpy() - host["x"].to_numpy(), bl["y"].to_numpy() - host["y"].to_numpy())
    assert np.all((d > 7.9) & (d < 16.1))
    cat = pd.read_csv(tile_opts["input_catalog"], dtype={"ID": str, "TYPE": str})
    assert 0.0 < cat["TYPE"].isna().mean() < 0.12
    gal = truth[(truth["type"] != "STAR") & (truth["blend_host_id"] == "")]
    assert gal["mag_m400"].notna().all() and len(gal) == 50


def test_psf_truth_json_box_fractions_bracket_the_analytic_moffat(tile_opts):
    psf = json.loads(open(tile_opts["psf_truth"]).read())
    for b, rec in psf["bands"].items():
        assert rec["kind"] == "moffat" and rec["beta"] == 2.0
        alpha = rec["fwhm_px"] / (2 * np.sqrt(2 ** 0.5 - 1))
        ee = lambda r: 1 - 1 / (1 + (r / alpha) ** 2)                        # noqa: E731
        for side in ("25", "55", "101"):
            h = int(side) / 2
            assert ee(h) - 1e-3 < rec["box_flux_fraction"][side] < ee(h * np.sqrt(2)) + 1e-3


def test_sky_pedestal_is_a_constant_offset(tmp_path):
    kw = dict(bands=1, size=160, seed=2, n_sources=12, verbose=False)
    a = fits.getdata(make_sample(tmp_path / "a", **kw)["images"][0]).astype(float)
    p = make_sample(tmp_path / "b", sky_pedestal=4.0, **kw)["images"][0]
    b, hdr = fits.getdata(p).astype(float), fits.getheader(p)
    keep = b < hdr["SATURATE"]
    assert hdr["SKYPED"] == 4.0 and keep.mean() > 0.99
    assert np.allclose(b[keep] - a[keep], 4.0, atol=1e-3)


def test_kolmogorov_header_round_trip(tmp_path):
    paths = make_sample(tmp_path, bands=1, size=160, seed=2, n_sources=12, verbose=False, psf_kind="kolmogorov")
    hdr = fits.getheader(paths["images"][0])
    assert hdr["PSFMODEL"] == "KOLMOGOROV" and hdr["PSFKIND"] == "kolmogorov" and hdr["PSFLOD"] > 0
    a = true_psf_stamp("m625", 80.0, 70.0, 31, hdr)
    assert np.array_equal(a, true_psf_stamp("m625", 80.0, 70.0, 31, tmp_path))
    moffat = true_psf_stamp("m625", 80.0, 70.0, 31, replace(psf_params("m625", hdr), kind="moffat", beta0=3.5))
    assert np.abs(a - moffat).max() > 1e-3


def test_band_shift_moves_every_object_of_a_band_and_round_trips_in_the_header(tmp_path):
    kw = dict(bands=2, size=160, seed=2, n_sources=12, verbose=False)
    plain = make_sample(tmp_path / "a", **kw)
    shifted = make_sample(tmp_path / "b", band_shift=0.4, **kw)
    assert "PSFSX0" not in fits.getheader(plain["images"][0])
    for p0, p1 in zip(plain["images"], shifted["images"]):
        hdr = fits.getheader(p1)
        band = hdr["FILTER"]
        par = psf_params(band, hdr)
        dx, dy = par.shift_at(80.0, 70.0)
        assert 0 < np.hypot(dx, dy) < 0.4 * 2 ** 1.5 and abs(par.shift_x0) <= 0.4
        assert psf_params(band, tmp_path / "a").shift_at(80.0, 70.0) == (0.0, 0.0)
        # the truth stamp is the plain one moved by (dx, dy): its centroid moves by that much
        a = true_psf_stamp(band, 80.0, 70.0, 41, tmp_path / "a")
        b = true_psf_stamp(band, 80.0, 70.0, 41, hdr)
        yy, xx = np.indices(a.shape)
        assert (xx * b).sum() - (xx * a).sum() == pytest.approx(dx, abs=0.01)
        assert (yy * b).sum() - (yy * a).sum() == pytest.approx(dy, abs=0.01)
    # the other truths do not change with it
    assert band_truths(["m625"], 2, 160, 160)[0].zp_true == band_truths(
        ["m625"], 2, 160, 160, SampleOptions(band_shift=0.4))[0].zp_true


def test_command_line_flags_and_bad_values():
    ap = argparse.ArgumentParser()
    add_option_arguments(ap)
    ns = ap.parse_args(["--psf", "kolmogorov", "--galaxy-truncation", "--blends", "3", "--psf-g1", "0.03"])
    assert options_from_namespace(ns) == {"psf_kind": "kolmogorov", "galaxy_truncation": True,
                                          "n_blends": 3, "psf_g1": 0.03}
    assert options_from_namespace(ap.parse_args([])) == {}
    for kw, word in ((dict(psf_kind="gauss"), "--psf"), (dict(psf_beta=1.0), "--psf-beta"),
                     (dict(galaxy_mag_min=20.0, galaxy_mag_max=19.0), "--galaxy-mag-max"),
                     (dict(n_blends=-1), "--blends"), (dict(blank_type_frac=2.0), "--blank-type-frac")):
        with pytest.raises(InputError) as err:
            SampleOptions(**kw)
        assert word in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="unknown option"):
        make_sample("/nonexistent", verbose=False, psf_wings=3)
