"""Zero points from a plain reference table (ra, dec, mag_<band>; any letter case) matched by
position, the messages naming missing columns, and the log line for `gaiaxp_synphot_csv: null`."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.stages.zp import compute_zero_points
from tract7dt_mpi.stage_options import gaia_options

ARCSEC = 1 / 3600.0


def _catalog():
    """Six rows 20" apart on a line at dec 10; row i has ZP_i = 18 + 2.5 log10(flux_i)."""
    zp = np.array([25.0, 25.1, 25.2, 25.3, 27.0, 25.2])
    err = np.array([0.1, 0.1, 0.01, 0.1, 0.1, 0.1])
    f = 10 ** (0.4 * (zp - 18.0))
    K = 2.5 / np.log(10.0)
    return pd.DataFrame({"ID": [f"s{i}" for i in range(6)], "RA": 150.0 + 20 * ARCSEC * np.arange(6),
                         "DEC": 10.0, "FLUX_g_fit": f, "FLUXERR_g_fit": f * err / K,
                         "FLUX_r_fit": f, "FLUXERR_r_fit": f * err / K, "fit_is_reliable": True})


def _ref(cat, cols=("RA", "Dec", "MAG_G")):
    """Reference stars 0.5" off rows 0-4 (row 5 has none), a decoy 2" off row 2 and one far away."""
    ra = list(cat["RA"][:5] + 0.5 * ARCSEC / np.cos(np.radians(10.0))) + [cat["RA"][2], 151.0]
    dec = [10.0] * 5 + [10.0 + 2.0 * ARCSEC, 10.0]
    mag = [18.0] * 5 + [10.0, 12.0]             # decoy / far star: wildly wrong if ever used
    return pd.DataFrame({cols[0]: ra, cols[1]: dec, cols[2]: mag})


def _cfg(**kw):
    return config_from_dict({"zp": kw}).zp


def test_position_match_plain_table_case_insensitive(caplog):
    cat = _catalog()
    with caplog.at_level(logging.INFO):
        out, summ, per = compute_zero_points(cat, _ref(cat), _cfg(), 25.0)
    assert "matched to the reference table by position (radius 3 arcsec)" in caplog.text
    assert summ["band"].tolist() == ["g"]           # no mag_r column: r stays uncalibrated
    s = summ.iloc[0]
    # rows 0-4 matched (27.0 clipped, decoy and far star never used, row 5 unmatched)
    assert (s.n_raw, s.n_kept, s.n_clipped) == (5, 4, 1)
    assert s.zp_median == pytest.approx(25.2) and s.zp_err_mad == pytest.approx(0.1)
    assert per["gaia_source_id"].tolist() == ["ref0", "ref1", "ref2", "ref3", "ref4"]
    np.testing.assert_allclose(out["MAG_g_fit"], 25.2 - 2.5 * np.log10(cat["FLUX_g_fit"]))
    assert out["MAG_r_fit"].isna().all()
    # a tighter radius than the 0.5" offsets matches nothing
    _, summ2, _ = compute_zero_points(cat, _ref(cat), _cfg(match_radius_arcsec=0.3), 25.0)
    assert len(summ2) == 0


@pytest.mark.parametrize("ref_cols, cat_drop, msg", [
    (("x", "Dec", "mag_g"), None, "reference table lacks column(s) ra (needs ra, dec and mag_<band>"),
    (("x", "y", "mag_g"), None, "lacks column(s) ra, dec"),
    (("ra", "dec", "mag_z"), None, "no mag_<band> column for any fitted band (expected one of mag_g, mag_r)"),
    (("ra", "dec", "mag_g"), "DEC", "catalog lacks column(s) DEC to match the reference table"),
])
def test_missing_columns_are_named(caplog, ref_cols, cat_drop, msg):
    cat = _catalog()
    ref = _ref(cat, ref_cols)
    if cat_drop:
        cat = cat.drop(columns=[cat_drop])
    with caplog.at_level(logging.WARNING):
        out, summ, _ = compute_zero_points(cat, ref, _cfg(), 25.0)
    assert len(summ) == 0 and out is cat
    assert msg in caplog.text


def test_null_gaiaxp_table_messages(tmp_path, caplog):
    from tract7dt_mpi.tasks import zp_step
    from tract7dt_mpi.stages.gaia import run_augment_gaia
    cfg = config_from_dict({"inputs": {"gaiaxp_synphot_csv": None},
                            "outputs": {"work_dir": str(tmp_path)}}, base_dir=str(tmp_path))
    cat = _catalog()
    with caplog.at_level(logging.WARNING):
        assert zp_step(cfg, cat) is cat
        back, info = run_augment_gaia(gaia_options(cfg), SimpleNamespace(catalog=cat))
    assert back is cat and info["status"] == "skipped"
    assert "no GaiaXP table given: zero points skipped" in caplog.text
    assert "no GaiaXP table given: Gaia augmentation skipped" in caplog.text
    assert "not found: None" not in caplog.text
