"""true_psf_stamp: analytic Moffat check and agreement with real stars of the tile."""
from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.sample.psf import PsfParams
from tract7dt_mpi.sample.truth import load_truth, psf_params, true_psf_stamp


def _moffat_pixels(fwhm, beta, size, dx, dy, sub=15):
    """Pixel integrals of an analytic unit-flux Moffat by brute-force sub-sampling (no GalSim)."""
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    c = size // 2
    s = (np.arange(size * sub) + 0.5) / sub - 0.5 - c
    xx, yy = np.meshgrid(s - dx, s - dy)
    prof = (beta - 1) / (np.pi * alpha ** 2) * (1 + (xx ** 2 + yy ** 2) / alpha ** 2) ** (-beta)
    pix = prof.reshape(size, sub, size, sub).mean(axis=(1, 3))
    return pix / pix.sum()


def test_stamp_equals_pixel_integrated_analytic_moffat():
    p = PsfParams(fwhm0=4.2, fwhm_x=0.03, fwhm_y=-0.02, fwhm_r=0.02, beta0=3.4, beta_x=0.1,
                  g1_0=0.0, g1_x=0.0, g2_0=0.0, g2_y=0.0, width=1000, height=800)
    x, y = 900.0, 100.0
    fwhm, beta, g1, g2 = p.at(x, y)
    assert fwhm != pytest.approx(4.2, abs=0.02) and beta != pytest.approx(3.4, abs=0.02)
    stamp = true_psf_stamp("m500", x, y, size=31, header_or_params=p, offset=(0.3, -0.2))
    ref = _moffat_pixels(fwhm, beta, 31, 0.3, -0.2)
    assert stamp.shape == (31, 31) and stamp.sum() == pytest.approx(1.0)
    assert np.abs(stamp - ref).max() < 2e-3 * ref.max()
    # the position dependence is real: the PSF at the opposite corner differs
    other = true_psf_stamp("m500", 0.0, 700.0, size=31, header_or_params=p, offset=(0.3, -0.2))
    assert np.abs(other - ref).max() > 2e-2 * ref.max()


def test_stamp_is_sheared_by_the_documented_g1():
    p = PsfParams(4.0, 0, 0, 0, 3.5, 0, 0.05, 0, 0, 0)
    s = true_psf_stamp("m500", 511.5, 511.5, size=41, header_or_params=p)
    yy, xx = np.mgrid[-20:21, -20:21]
    mxx, myy = (s * xx * xx).sum(), (s * yy * yy).sum()
    assert mxx > 1.05 * myy             # g1 > 0 stretches along x


def test_true_psf_matches_a_bright_star_of_the_tile(tile512):
    truth, meta = load_truth(tile512["out_dir"])
    with fits.open(tile512["images"][1]) as h:
        hdr, img = h[0].header, h[0].data.astype(np.float64)
    band = hdr["FILTER"]
    d = np.hypot(truth["x"].to_numpy()[:, None] - truth["x"].to_numpy(), truth["y"].to_numpy()[:, None] - truth["y"].to_numpy())
    np.fill_diagonal(d, 1e9)
    ok = ((truth["type"] == "STAR") & (truth["peak_over_saturate"] < 0.4) & (d.min(axis=1) > 30)
          & truth["x"].between(30, 481) & truth["y"].between(30, 481))
    star = truth[ok].sort_values(f"flux_{band}").iloc[-1]
    x, y = star["x"], star["y"]
    xc, yc, h = int(round(x)), int(round(y)), 12
    cut = img[yc - h:yc + h + 1, xc - h:xc + h + 1]
    flux_adu = star[f"flux_{band}"] / 10 ** (-0.4 * (hdr["ZP_AUTO"] - 25.0))
    assert flux_adu / hdr["SKYSIG"] > 2e4                       # a high-S/N star

    def chi2(stamp):
        model = flux_adu * stamp
        var = hdr["SKYSIG"] ** 2 + np.maximum(model, 0) / hdr["EGAIN"]
        return float(((cut - model) ** 2 / var).mean())

    good = chi2(true_psf_stamp(band, x, y, size=2 * h + 1, header_or_params=hdr, offset=(x - xc, y - yc)))
    assert good < 1.5                                             # noise-limited agreement
    # A PSF 5% broader, or the other band's PSF, is clearly rejected by the same statistic.
    p = psf_params(band, hdr)
    broad = true_psf_stamp(band, x, y, 2 * h + 1, replace(p, fwhm0=p.fwhm0 * 1.05), offset=(x - xc, y - yc))
    assert chi2(broad) > 3 * good
    other = meta["bands"][0]["band"]
    assert chi2(true_psf_stamp(other, x, y, 2 * h + 1, tile512["out_dir"], offset=(x - xc, y - yc))) > 3 * good


def test_header_folder_and_path_sources_agree(tile512):
    path = tile512["images"][0]
    hdr = fits.getheader(path)
    band = hdr["FILTER"]
    a = true_psf_stamp(band, 100.5, 300.2, 25, hdr)
    assert np.array_equal(a, true_psf_stamp(band, 100.5, 300.2, 25, path))
    assert np.array_equal(a, true_psf_stamp(band, 100.5, 300.2, 25, tile512["out_dir"]))
    with pytest.raises(InputError, match="FILTER"):
        true_psf_stamp("m999", 1, 1, 25, hdr)
    with pytest.raises(InputError, match="odd"):
        true_psf_stamp(band, 1, 1, 24, hdr)
    with pytest.raises(InputError, match="PSFFWHM0"):
        true_psf_stamp(band, 1, 1, 25, {"FILTER": band})
