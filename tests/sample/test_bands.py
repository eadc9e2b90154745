"""7DT band names and the per-band instrument truth."""
import numpy as np
import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.sample.bands import ALL_BANDS, band_truths, band_wavelength_nm, pick_bands


def test_forty_bands_12p5nm_apart_and_even_picks():
    waves = [band_wavelength_nm(b) for b in ALL_BANDS]
    assert len(set(ALL_BANDS)) == 40 and ALL_BANDS[0] == "m400" and ALL_BANDS[-1] == "m887"
    assert np.allclose(np.diff(waves), 12.5) and band_wavelength_nm("m412") == 412.5
    assert pick_bands(40) == list(ALL_BANDS)
    eight = pick_bands(8)
    assert eight[0] == "m400" and eight[-1] == "m887" and len(set(eight)) == 8
    assert np.ptp(np.diff([band_wavelength_nm(b) for b in eight])) <= 12.5
    with pytest.raises(InputError, match="m999"):
        band_wavelength_nm("m999")


def test_band_truth_is_smooth_in_wavelength_and_independent_of_band_count():
    bts = band_truths(list(ALL_BANDS), 7, 1024, 1024)
    fwhm = np.array([b.psf.fwhm0 for b in bts])
    assert fwhm[0] > fwhm[-1] + 0.7 and 3.4 < fwhm.min() and fwhm.max() < 4.8   # narrower at red
    off = np.array([b.zp_auto - b.zp_true for b in bts])
    assert np.all((np.abs(off) > 0.0299) & (np.abs(off) < 0.0601)) and (off > 0).any() and (off < 0).any()
    assert all(b.skysig == pytest.approx(np.sqrt(b.sky_e) / b.egain) for b in bts)
    assert band_truths(["m612"], 7, 1024, 1024)[0] == bts[ALL_BANDS.index("m612")]
