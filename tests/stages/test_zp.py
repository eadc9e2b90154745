"""Zero points (S11) on crafted numbers, recomputed by hand."""
import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.stages.zp import (SUMMARY_COLUMNS, compute_zero_points, mad_clip,
                                    weighted_median, write_zp_products)

K = 2.5 / np.log(10.0)


def _frame(zp, zp_err, mag=18.0, reliable=None, ids=None):
    zp, zp_err = np.asarray(zp, float), np.asarray(zp_err, float)
    f = 10 ** (0.4 * (zp - mag))
    n = len(zp)
    ids = ids or [str(1000 + i) for i in range(n)]
    cat = pd.DataFrame({"ID": [f"s{i}" for i in range(n)], "gaia_source_id": ids,
                        "FLUX_g_fit": f, "FLUXERR_g_fit": f * zp_err / K,
                        "fit_is_reliable": reliable if reliable is not None else [True] * n})
    gaia = pd.DataFrame({"source_id": ids, "mag_g": [mag] * n})
    return cat, gaia


def _zp_cfg(**kw):
    return config_from_dict({"zp": kw}).zp


def test_mad_clip_and_weighted_median_by_hand():
    z = np.array([25.0, 25.1, 25.2, 25.3, 27.0])
    keep = mad_clip(z, 3.0, 10)
    # med 25.2, MAD 0.1 -> 3*1.4826*0.1 = 0.445: only 27.0 leaves; second pass unchanged
    assert keep.tolist() == [True, True, True, True, False]
    # weights 100,100,10000,100 -> cumulative 100,200,10200,10300; half 5150 -> 25.2
    assert weighted_median(z[keep], np.array([0.1, 0.1, 0.01, 0.1])) == 25.2
    assert weighted_median(z[keep], np.full(4, np.nan)) == pytest.approx(25.15)
    assert mad_clip(np.array([1.0, 1.0, 1.0, 5.0]), 3.0, 10).tolist() == [True] * 4  # MAD 0 stops


def test_compute_zero_points_crafted():
    zp = [25.0, 25.1, 25.2, 25.3, 27.0, 20.0]
    err = [0.1, 0.1, 0.01, 0.1, 0.1, 0.1]
    rel = [True, True, True, True, True, False]            # 20.0 is unreliable: never used
    cat, gaia = _frame(zp, err, reliable=rel)
    cat.loc[len(cat)] = ["x", "", 5.0, 0.5, True]          # not Gaia-matched
    cat.loc[len(cat)] = ["y", "nan", -1.0, 0.5, True]      # "nan" id and negative flux
    out, summ, per = compute_zero_points(cat, gaia, _zp_cfg(), 25.0)
    assert list(summ.columns) == SUMMARY_COLUMNS
    s = summ.iloc[0]
    assert (s.band, s.n_raw, s.n_kept, s.n_clipped, s.n_unreliable) == ("g", 5, 4, 1, 1)
    assert s.zp_median == pytest.approx(25.2)
    assert s.zp_err_mad == pytest.approx(0.1)              # median(|.2 .1 0 .1|), no 1.4826
    # fewer than 10 stars at any S/N cut -> std falls back to the MAD value
    assert s.zp_err_std == pytest.approx(0.1) and np.isnan(s.zp_err_snr_used)
    assert per["is_clipped"].tolist() == [False, False, False, False, True]
    assert set(per["gaia_source_id"]) == {"1000", "1001", "1002", "1003", "1004"}
    f = out["FLUX_g_fit"].to_numpy()
    fe = out["FLUXERR_g_fit"].to_numpy()
    np.testing.assert_allclose(out["MAG_g_fit"].iloc[:7], 25.2 - 2.5 * np.log10(f[:7]))
    np.testing.assert_allclose(out["MAGERR_g_fit"].iloc[:7],
                               np.sqrt((K * fe[:7] / f[:7]) ** 2 + 0.1 ** 2))
    assert np.isnan(out["MAG_g_fit"].iloc[7]) and np.isnan(out["MAGERR_g_fit"].iloc[7])
    # idempotent: a second run replaces the columns instead of adding new ones
    out2, _, _ = compute_zero_points(out, gaia, _zp_cfg(), 25.0)
    assert list(out2.columns) == list(out.columns)
    np.testing.assert_allclose(out2["MAG_g_fit"], out["MAG_g_fit"], equal_nan=True)


def test_zp_err_std_snr_fallback_and_method():
    rng = np.random.default_rng(3)
    zp = 25.0 + rng.normal(0, 0.01, 12)
    err = np.r_[np.full(5, K / 200.0), np.full(6, K / 70.0), [K / 30.0]]   # S/N 200, 70, 30
    cat, gaia = _frame(zp, err)
    cfg = _zp_cfg(zp_err_method="bright_std", zp_err_snr_min=100.0, clip_sigma=10.0)
    out, summ, per = compute_zero_points(cat, gaia, cfg, 25.0)
    s = summ.iloc[0]
    assert s.zp_err_snr_used == 50.0 and s.n_zp_err_src == 11      # 100 -> 50 (5 < 10 stars)
    assert s.zp_err_std == pytest.approx(np.std(zp[:11], ddof=1))
    f, fe = out["FLUX_g_fit"].to_numpy(), out["FLUXERR_g_fit"].to_numpy()
    np.testing.assert_allclose(out["MAGERR_g_fit"], np.sqrt((K * fe / f) ** 2 + s.zp_err_std ** 2))


def test_no_gaia_or_missing_band_leaves_catalog(tmp_path):
    cat, gaia = _frame([25.0, 25.1, 25.2], [0.1] * 3)
    out, summ, per = compute_zero_points(cat, gaia.drop(columns=["mag_g"]), _zp_cfg(), 25.0)
    assert out is cat and len(summ) == 0
    out, summ, _ = compute_zero_points(cat.drop(columns=["gaia_source_id"]), gaia, _zp_cfg(), 25.0)
    assert len(summ) == 0
    assert write_zp_products(summ, per, str(tmp_path)) == []


def test_write_zp_products(tmp_path):
    cat, gaia = _frame([25.0, 25.1, 25.2, 25.3, 27.0, 20.0], [0.1] * 6,
                       reliable=[True] * 5 + [False])
    out, summ, per = compute_zero_points(cat, gaia, _zp_cfg(), 25.0)
    from tract7dt_mpi.figures import draw_zp
    paths = write_zp_products(summ, per, str(tmp_path))
    paths += draw_zp(out, summ, per, gaia, str(tmp_path), _zp_cfg(), dpi=40)
    names = sorted(p.split("/")[-1] for p in paths)
    assert names == ["zp_all_bands__per_object.csv", "zp_summary.csv", "zp_vs_mag__g.png",
                     "zp_vs_mag__g_fullrange.png"]
    assert list(pd.read_csv(tmp_path / "zp_summary.csv").columns) == SUMMARY_COLUMNS
