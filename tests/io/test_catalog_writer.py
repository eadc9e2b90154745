"""Final catalog files: product columns only, TUNIT on every numeric column, provenance cards."""
import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from tract7dt_mpi import columns
from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.io.catalog import write_final_catalog
from tract7dt_mpi.provenance import catalog_provenance
from tract7dt_mpi.stages.merge import merge_catalog

STORE_ONLY = ("_is_halo_source", "x_pix_patch", "y_pix_patch", "x_pix_patch_fit", "Re_fit",
              "PSFCHK_g_fit")


def _merged():
    base = pd.DataFrame({
        "ID": ["00019", "b", "c"], "RA": [150.0, 150.1, 150.2], "DEC": [2.0, 2.0, 2.0],
        "TYPE": ["STAR", "EXP", "STAR"], "FLUX_g": [100.0, 200.0, 50.0], "Re": [np.nan, 2.0, np.nan],
        "excluded_crop": [False, False, True], "excluded_saturation": [False, False, False],
        "x_pix_white": [10.0, 20.0, np.nan], "y_pix_white": [11.0, 21.0, np.nan], "_row": [0, 1, 2],
    })
    res = pd.DataFrame({
        "_row": [0, 1], "x_pix_patch": [3.0, 4.0], "y_pix_patch": [3.0, 4.0],
        "_is_halo_source": [False, False], "patch_tag": ["r00_c00_pr00_pc00"] * 2,
        "psf_used_epsf_band_count": [1, 1], "stype_fit": ["star", "exp"],
        "opt_niters": [5, 7], "opt_converged": [True, True], "opt_hit_max_iters": [False, False],
        "opt_last_dlnp": [1e-3, 1e-3], "x_pix_patch_fit": [3.1, 4.1], "y_pix_patch_fit": [3.1, 4.1],
        "x_pix_white_fit": [10.1, 20.1], "y_pix_white_fit": [11.1, 21.1],
        "re_pix_fit": [np.nan, 2.2], "Re_fit": [np.nan, 2.2], "ELL_fit": [np.nan, 0.1],
        "FLUX_g_fit": [101.0, 190.0], "FLUXERR_g_fit": [1.0, 2.0], "PSFCHK_g_fit": [0.01, np.nan],
        "flag_bound_stalled": [False, False],
    })
    out = merge_catalog(base, res, None, crop_offset=(32, 32))
    out["MAG_g_fit"] = 25.1 - 2.5 * np.log10(out["FLUX_g_fit"])
    return out


def _prov():
    cfg = config_from_dict({"image_scaling": {"zp_ref": 25.0}})
    summary = pd.DataFrame({"band": ["g"], "zp_median": [25.1], "zp_err_mad": [0.01],
                            "zp_err_std": [0.02]})
    return catalog_provenance(cfg, ["g", "m400"], n_ranks=3, zp_summary=summary)


def test_fits_catalog_units_and_provenance(tmp_path):
    csv, path = write_final_catalog(_merged(), tmp_path / "output_catalog.csv", _prov())
    t = Table.read(path)
    for name in STORE_ONLY:
        assert name not in t.colnames
    assert list(pd.read_csv(csv, nrows=0).columns) == t.colnames
    with fits.open(path) as hdul:
        hdr = hdul["CATALOG"].header
    numeric = [n for n in t.colnames if t[n].dtype.kind in "iuf"]
    assert len(numeric) > 15
    for i, name in enumerate(t.colnames, 1):
        if name in numeric:
            assert f"TUNIT{i}" in hdr, f"{name} has no TUNIT"
            assert hdr[f"TUNIT{i}"] == columns.fits_unit(name)
    assert t["FLUX_g_fit"].unit == u.count and t["FLUX_g"].unit == u.count
    assert t["MAG_g_fit"].unit == u.mag and t["RA"].unit == u.deg
    assert t["X_IMAGE"].unit == u.pix and t["Re"].unit == u.pix
    assert t["FIT_FLAGS"].dtype.kind == "i" and t["FIT_FLAGS"].dtype.itemsize == 4
    assert hdr["TUNIT%d" % (t.colnames.index("FIT_FLAGS") + 1)] == ""
    m = t.meta
    assert m["PROGRAM"] == "tract7dt-mpi" and m["PROGVER"] and m["GITHASH"]
    assert len(m["CFGHASH"]) == 16 and m["NRANKS"] == 3 and m["ZP_REF"] == 25.0
    assert m["DATE"][:2] == "20" and "T" in m["DATE"]
    assert (m["NBANDS"], m["BAND01"], m["BAND02"]) == (2, "g", "m400")
    assert m["ZP01"] == pytest.approx(25.1) and m["ZPERR01"] == pytest.approx(0.01)
    assert "band m400" in hdr.comments["ZP02"] and "ZP_REF" in hdr.comments["ZP02"]
    assert hdr["ZP02"] is None and hdr["ZPERR02"] is None          # undefined FITS values
    assert any("ZP_REF" in c for c in m["comments"])
    row = t[t["ID"] == "00019"][0]
    assert row["X_IMAGE"] == pytest.approx(10.1 + 32 + 1)


def test_unregistered_input_column_is_copied_without_unit(tmp_path):
    df = _merged()
    df["my_mag"] = 1.0
    _, path = write_final_catalog(df, tmp_path / "c.csv")
    t = Table.read(path)
    assert t["my_mag"].unit is None and "PROGRAM" not in t.meta
