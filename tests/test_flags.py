"""Fit-quality tag registry: tags, order and reliability on hand-built rows."""
import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi import flags


def test_registry_order_and_split():
    assert flags.HARD_TAGS == ("excluded", "no_fit_result", "hit_max_iters", "bound_stalled",
                               "bright_mask", "core_masked", "dead_data")
    assert flags.SOFT_TAGS == ("not_converged", "all_psf_fallback", "model_close", "shape_fallback")
    assert set(flags.TAG_DOCS) == set(flags.TAG_ORDER)


def test_as_bool_handles_missing_and_text():
    got = flags.as_bool(pd.Series([True, None, np.nan, "True", "false", 1, 0.0, b"true"],
                                  dtype=object))
    assert got.tolist() == [True, False, False, True, False, True, False, True]


def test_excluded_reason():
    got = flags.excluded_reason([True, True, False, False], [True, False, True, None])
    assert got.tolist() == ["crop+saturation", "crop", "saturation", ""]


def test_excluded_reason_for_rows_without_coordinates():
    got = flags.excluded_reason([False, False, False], [False, True, False], [True, True, False])
    assert got.tolist() == ["coords", "coords+saturation", ""]
    assert set(got) <= set(flags.EXCLUDED_REASONS)


def test_dead_data_is_never_reliable():
    df = pd.DataFrame({"x_pix_white_fit": [1.0, 2.0], "y_pix_white_fit": [1.0, 2.0],
                       "flag_dead_data": [True, False]})
    ok, issues = flags.reliability(df)
    assert ok.tolist() == [False, True] and issues.tolist() == ["dead_data", ""]


def _rows():
    nan = np.nan
    return pd.DataFrame({
        # 0 clean, 1 excluded, 2 no fit, 3 hit max, 4 stalled+bright, 5 not converged, 6 all fallback
        "excluded_any": [False, True, False, False, False, False, False],
        "affected_by_bright_mask": [False, False, False, False, True, False, False],
        "x_pix_white_fit": [1.0, nan, nan, 2.0, 3.0, 4.0, 5.0],
        "y_pix_white_fit": [1.0, nan, nan, 2.0, 3.0, 4.0, 5.0],
        "FLUX_g_fit": [1.0, nan, nan, 1.0, 1.0, 1.0, 1.0],
        "opt_converged": [True, nan, nan, False, True, False, True],
        "opt_hit_max_iters": [False, nan, nan, True, False, False, False],
        "flag_bound_stalled": [False, nan, nan, False, True, False, False],
        "psf_used_epsf_band_count": [1, nan, nan, 1, 1, 1, 0],
    })


def test_reliability_multi_band():
    ok, issues = flags.reliability(_rows())
    assert ok.tolist() == [True, False, False, False, False, True, True]
    assert issues.tolist() == ["", "excluded", "no_fit_result", "hit_max_iters",
                               "bound_stalled,bright_mask", "not_converged", "all_psf_fallback"]


def test_reliability_single_band_any_band():
    df = pd.DataFrame({
        "excluded_any": [False, False],
        "x_pix_white_g_fit": [1.0, 1.0], "y_pix_white_g_fit": [1.0, 1.0],
        "x_pix_white_r_fit": [1.0, 1.0], "y_pix_white_r_fit": [1.0, 1.0],
        "FLUX_g_fit": [1.0, 1.0], "FLUX_r_fit": [1.0, 1.0],
        "opt_converged_g": [True, True], "opt_converged_r": [True, False],
        "opt_hit_max_iters_g": [False, False], "opt_hit_max_iters_r": [False, True],
        "flag_bound_stalled_g": [False, False], "flag_bound_stalled_r": [True, False],
    })
    ok, issues = flags.reliability(df)
    assert ok.tolist() == [False, False]
    assert issues.tolist() == ["bound_stalled", "hit_max_iters"]


def test_fit_flags_bits_are_fixed_and_unique():
    # the bit numbers are a published contract (docs/outputs.md): never renumber
    assert flags.TAG_BITS == {"excluded": 1, "no_fit_result": 2, "hit_max_iters": 4,
                              "bound_stalled": 8, "bright_mask": 16, "core_masked": 32, "dead_data": 256,
                              "not_converged": 64, "all_psf_fallback": 128,
                              "model_close": 512, "shape_fallback": 1024}
    bits = [t.bit for t in flags.TAGS]
    assert len(set(bits)) == len(bits) and all(0 <= b < 31 for b in bits)   # fits int32


def test_fit_flags_round_trip_every_tag():
    n = len(flags.TAG_ORDER)
    df = pd.DataFrame(index=range(n + 2))
    # row i carries tag i alone, row n none, row n+1 every tag
    masks = {t: np.array([i == k for k in range(n)] + [False, True]) for i, t in enumerate(flags.TAG_ORDER)}
    ff = flags.fit_flags(df, masks)
    assert ff.dtype == np.int32
    _, issues = flags.reliability(df, masks)
    for k in range(n + 2):
        assert flags.tags_from_flags(ff[k]) == issues[k]
    assert [flags.tags_from_flags(v) for v in ff[:n]] == list(flags.TAG_ORDER)
    assert ff[n] == 0 and flags.tags_from_flags(ff[n + 1]) == ",".join(flags.TAG_ORDER)
    with pytest.raises(ValueError, match="no registered tag"):
        flags.tags_from_flags(1 << 30)


def test_fit_flags_of_real_rows_match_the_text_tags():
    df = _rows()
    df["flag_core_masked"] = [False, False, False, False, False, False, True]
    ok, issues = flags.reliability(df)
    ff = flags.fit_flags(df)
    assert [flags.tags_from_flags(v) for v in ff] == issues.tolist()
    assert issues[6] == "core_masked,all_psf_fallback" and ff[6] == 32 + 128
    hard = sum(flags.TAG_BITS[t] for t in flags.HARD_TAGS)
    assert ((ff & hard) == 0).tolist() == ok.tolist()
