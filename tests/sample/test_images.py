"""The rendered images agree with the headers and with truth.csv (independent measurements)."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.stats import mad_std, sigma_clipped_stats
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from tract7dt_mpi.sample.truth import band_meta, load_truth

sep = pytest.importorskip("sep")


def _band_images(paths):
    for p in paths["images"]:
        with fits.open(p) as hdul:
            yield hdul[0].header.copy(), hdul[0].data.astype(np.float64)


def _isolated(truth, i, band, radius=45.0, frac=2e-3):
    d = np.hypot(truth["x"] - truth.at[i, "x"], truth["y"] - truth.at[i, "y"])
    near = (d < radius) & (d > 0)
    return not (truth.loc[near, f"flux_{band}"] > frac * truth.at[i, f"flux_{band}"]).any()


def test_headers_present_with_right_types(tile512):
    truth, meta = load_truth(tile512["out_dir"])
    for hdr, img in _band_images(tile512):
        assert img.shape == (512, 512) and hdr["BITPIX"] == -32
        assert isinstance(hdr["FILTER"], str) and hdr["FILTER"].startswith("m")
        for key in ("ZP_AUTO", "SKYSIG", "EGAIN", "SATURATE", "PEEING", "SEEING"):
            assert isinstance(hdr[key], float) and np.isfinite(hdr[key]) and hdr[key] > 0, key
        bm = band_meta(meta, hdr["FILTER"])
        assert 0.03 <= abs(hdr["ZP_AUTO"] - bm["zp_true"]) <= 0.0601
        assert 3.0 < hdr["PEEING"] < 5.0
        assert hdr["SEEING"] == pytest.approx(hdr["PEEING"] * 0.505, rel=1e-3)
        assert hdr["SKYSIG"] == pytest.approx(np.sqrt(bm["sky_e"]) / hdr["EGAIN"], rel=1e-5)
        w = WCS(hdr)
        assert np.allclose(proj_plane_pixel_scales(w) * 3600, 0.505)
        assert w.wcs.ctype[0] == "RA---TAN" and w.wcs.ctype[1] == "DEC--TAN"
        assert float(img.max()) <= hdr["SATURATE"]


def test_skysig_matches_robust_std_of_source_free_pixels(tile512):
    truth, _ = load_truth(tile512["out_dir"])
    yy, xx = np.mgrid[:512, :512]
    for hdr, img in _band_images(tile512):
        band = hdr["FILTER"]
        mask = np.zeros(img.shape, bool)
        mag = truth[f"mag_{band}"].to_numpy()
        rad = np.clip(12 + 6 * (20.5 - mag), 12, 120) + 8 * truth["re"].to_numpy()
        for x, y, r in zip(truth["x"], truth["y"], rad):
            mask |= (xx - x) ** 2 + (yy - y) ** 2 < r * r
        free = img[~mask]
        assert free.size > 50_000
        assert mad_std(free) == pytest.approx(hdr["SKYSIG"], rel=0.03)
        assert sigma_clipped_stats(free, sigma=4)[2] == pytest.approx(hdr["SKYSIG"], rel=0.03)
        assert abs(np.median(free)) < 0.05 * hdr["SKYSIG"]          # sky subtracted


def test_truth_fluxes_match_20px_apertures_of_isolated_stars(tile512):
    truth, meta = load_truth(tile512["out_dir"])
    n_checked = 0
    for hdr, img in _band_images(tile512):
        band = hdr["FILTER"]
        scale = 10 ** (-0.4 * (hdr["ZP_AUTO"] - meta["zp_ref"]))
        counts = truth[f"flux_{band}"] / scale
        sky_var = 1257 * hdr["SKYSIG"] ** 2
        noise = np.sqrt(sky_var + counts / hdr["EGAIN"]) / counts
        ok = ((truth["type"] == "STAR") & (truth["peak_over_saturate"] < 0.5) & (noise < 0.0033)
              & truth["x"].between(25, 486) & truth["y"].between(25, 486))
        idx = [i for i in truth.index[ok] if _isolated(truth, i, band, radius=40, frac=5e-3)]
        data = np.ascontiguousarray(img.astype(np.float32))
        flux, _, _ = sep.sum_circle(data, truth.loc[idx, "x"].to_numpy(), truth.loc[idx, "y"].to_numpy(), 20.0)
        ratio = flux * scale / truth.loc[idx, f"flux_{band}"].to_numpy()
        assert np.all(np.abs(ratio - 1) < 0.01), (band, ratio)
        n_checked += len(idx)
    assert n_checked >= 6


def _moments_angle_q(img, x, y, r):
    """Position angle (deg, CCW from +x) and axis ratio from second moments inside radius r."""
    x0, y0, h = int(round(x)), int(round(y)), int(np.ceil(r)) + 1
    cut = img[y0 - h:y0 + h + 1, x0 - h:x0 + h + 1]
    dy, dx = np.mgrid[-h:h + 1, -h:h + 1] + np.array([y0 - y, x0 - x])[:, None, None]
    w = cut * (dx ** 2 + dy ** 2 < r * r)
    mxx, myy, mxy = (w * dx * dx).sum(), (w * dy * dy).sum(), (w * dx * dy).sum()
    ev = np.linalg.eigvalsh([[mxx, mxy], [mxy, myy]])
    return 0.5 * np.degrees(np.arctan2(2 * mxy, mxx - myy)), float(np.sqrt(ev[0] / ev[1]))


def test_galaxy_orientation_follows_catalog_convention_in_the_tile(tile512):
    """Bright elongated galaxies: image second moments give THETA (CCW from +x), rounder than ab."""
    truth, _ = load_truth(tile512["out_dir"])
    dang, n = [], 0
    for hdr, img in _band_images(tile512):
        band = hdr["FILTER"]
        gal = truth[(truth["type"] != "STAR") & (truth["ab"] < 0.7) & (truth["re"] > 2.0)
                    & (truth[f"mag_{band}"] < 19.5) & ~truth["near_edge"]]
        for i in gal.index:
            if not _isolated(truth, i, band, radius=30, frac=0.2):
                continue
            g = truth.loc[i]
            ang, q = _moments_angle_q(img, g["x"], g["y"], 2.0 * g["re"])
            dang.append(abs((ang - g["theta"] + 90) % 180 - 90))
            assert g["ab"] - 0.05 < q < 1.0
    assert len(dang) >= 4 and np.median(dang) < 10, dang


@pytest.mark.parametrize("theta", [30.0, -60.0, 85.0])
def test_rendered_galaxy_has_catalog_theta_and_major_axis_re(theta):
    """Noise-free render with a tiny PSF: moments give THETA; half the flux lies inside the
    ellipse of semi-major axis re, axis ratio ab, at angle THETA (the Tractor's re convention)."""
    from tract7dt_mpi.sample.bands import band_truths
    from tract7dt_mpi.sample.render import galaxy_profiles, render_model
    bt = band_truths(["m625"], 1, 200, 200)[0]
    bt = replace(bt, psf=replace(bt.psf, fwhm0=0.3, fwhm_x=0, fwhm_y=0, fwhm_r=0, g1_0=0, g1_x=0, g2_0=0, g2_y=0))
    pop = pd.DataFrame([dict(kind="EXP", x=100.3, y=99.6, re=9.0, ab=0.4, theta=theta, sersic_n=1.0)])
    model = render_model(pop, galaxy_profiles(pop), np.array([1e5]), bt, 200, 200)[0]
    ang, q = _moments_angle_q(model.astype(float), 100.3, 99.6, 60)
    assert abs((ang - theta + 90) % 180 - 90) < 0.5
    assert q == pytest.approx(0.4, abs=0.02)
    yy, xx = np.mgrid[:200, :200]
    t = np.radians(theta)
    u = (xx - 100.3) * np.cos(t) + (yy - 99.6) * np.sin(t)          # along the major axis
    v = -(xx - 100.3) * np.sin(t) + (yy - 99.6) * np.cos(t)
    inside = (u / 9.0) ** 2 + (v / 3.6) ** 2 < 1
    assert model[inside].sum() / model.sum() == pytest.approx(0.5, abs=0.02)


def test_saturated_stars_are_clipped_and_flagged(tile512):
    """Clipped pixels occur only at objects flagged saturated; each flagged one is clipped somewhere."""
    truth, _ = load_truth(tile512["out_dir"])
    sat = truth[truth["saturated"]]
    assert pd.api.types.is_bool_dtype(truth["saturated"])
    assert len(sat) >= 2 and (~sat["in_catalog"]).any() and sat["in_catalog"].any()
    clipped_somewhere = np.zeros(len(sat), bool)
    for hdr, img in _band_images(tile512):
        ys, xs = np.nonzero(img >= hdr["SATURATE"])
        d = np.hypot(xs[:, None] - sat["x"].to_numpy(), ys[:, None] - sat["y"].to_numpy())
        assert np.all(d.min(axis=1) < 10)
        clipped_somewhere |= (d < 3).any(axis=0)
    assert clipped_somewhere.all()
