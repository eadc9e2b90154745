"""Catalog reading, case-insensitive column lookup and validation."""
from __future__ import annotations

import logging

import pandas as pd
import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.stages.catalog import (ColumnMap, catalog_bands, check_bands, read_catalog,
                                         validate_catalog)


def _write(tmp_path, text, name="cat.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_ids_are_text_with_leading_zeros_and_missing_empty(tmp_path):
    p = _write(tmp_path, "id,ra,dec,gaia_source_id\n00019,1.0,2.0,4295806720123456789\n,1.1,2.1,\n")
    df = read_catalog(p)
    assert list(df["id"]) == ["00019", ""]
    assert list(df["gaia_source_id"]) == ["4295806720123456789", ""]


def test_column_map_case_insensitive_and_bands(tmp_path):
    df = pd.DataFrame(columns=["ra", "Dec", "Id", "type", "ell", "theta", "RE", "sersic_N", "pos_err",
                               "RE_ERR", "ell_err", "Theta_Err", "flux_m400", "FLUX_m400_ERR",
                               "FLUX_m500", "FLUX_", "note"])
    cm = ColumnMap.from_frame(df)
    assert (cm.ra, cm.dec, cm.id, cm.type) == ("ra", "Dec", "Id", "type")
    assert (cm.ell, cm.theta, cm.re, cm.sersic_n) == ("ell", "theta", "RE", "sersic_N")
    assert (cm.pos_err, cm.re_err, cm.ell_err, cm.theta_err) == ("pos_err", "RE_ERR", "ell_err", "Theta_Err")
    assert cm.flux == {"m400": "flux_m400", "m500": "FLUX_m500"}
    assert cm.flux_err == {"m400": "FLUX_m400_ERR"}
    assert set(catalog_bands(df.columns)) == {"m400", "m500"}
    # exact-case names win over case variants
    both = pd.DataFrame(columns=["ra", "RA", "DEC"])
    assert ColumnMap.from_frame(both).ra == "RA"


def test_lowercase_radec_warns(tmp_path, caplog):
    p = _write(tmp_path, "ra,dec\n1.0,2.0\n")
    df = read_catalog(p)
    with caplog.at_level(logging.WARNING):
        validate_catalog(df, p)
    assert "interpreted as right ascension/declination" in caplog.text


def test_missing_radec(tmp_path):
    p = _write(tmp_path, "ID,X,Y\n1,2,3\n")
    with pytest.raises(InputError, match="input_catalog must have RA/DEC columns: .*cat.csv"):
        validate_catalog(read_catalog(p), p)


def test_non_numeric_ra_names_column_and_row(tmp_path):
    p = _write(tmp_path, "ID,RA,DEC\na,1.0,2.0\nb,,2.0\nc,12h30m,2.0\n")
    with pytest.raises(InputError, match=r"cat.csv: column 'RA' must be numeric degrees; data row 3 has '12h30m'"):
        validate_catalog(read_catalog(p), p)


def test_blank_radec_cells_become_nan(tmp_path):
    p = _write(tmp_path, "ID,RA,DEC\na,1.0,2.0\nb,,2.0\n")
    df = read_catalog(p)
    validate_catalog(df, p)
    assert df["RA"].isna().tolist() == [False, True]


def test_empty_catalog(tmp_path):
    p = _write(tmp_path, "ID,RA,DEC\n")
    with pytest.raises(InputError, match="input catalog .*cat.csv has no rows"):
        validate_catalog(read_catalog(p), p)
    p2 = _write(tmp_path, "", "empty.csv")
    with pytest.raises(InputError, match="input catalog is empty"):
        read_catalog(p2)


def test_missing_catalog_file(tmp_path):
    with pytest.raises(InputError, match="input catalog not found"):
        read_catalog(str(tmp_path / "none.csv"))


def test_duplicate_ids(tmp_path):
    p = _write(tmp_path, "ID,RA,DEC\n007,1,2\n008,1,2\n007,1,2\n")
    with pytest.raises(InputError, match=r"column 'ID' has 1 duplicated ID value\(s\), e.g. \['007'\]"):
        validate_catalog(read_catalog(p), p)


def test_check_bands_mismatch_and_match(caplog):
    df = pd.DataFrame(columns=["RA", "DEC", "FLUX_m400", "FLUX_m500", "FLUX_m500_ERR"])
    with pytest.raises(InputError, match=r"Band mismatch between input catalog and image list: "
                                         r"catalog-only \['m500'\], image-only \['m600'\]"):
        check_bands(df, ["m400", "m600"])
    with caplog.at_level(logging.INFO):
        check_bands(df, ["m500", "m400"])
    assert "[CHECK] Input catalog bands match image FILTERs." in caplog.text
    check_bands(pd.DataFrame(columns=["RA", "DEC"]), ["m400"])  # no FLUX columns: skipped
