"""Patch-input dumps: a named-array .npz plus a JSON document, read back as written."""
import json
import math

import numpy as np
import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io.patch_dumps import read_patch_dump, write_patch_dump


def test_round_trip_keeps_arrays_dtypes_and_nan(tmp_path):
    arrays = {"m400/img": np.arange(6, dtype=np.float32).reshape(2, 3),
              "m400/bad_final": np.array([[True, False, True], [False, False, True]])}
    doc = {"format": "probe", "flux_err_frac": float("nan"), "rows": [1, "00019"]}
    npz, js = write_patch_dump(str(tmp_path / "d"), "r00_c00_pr00_pc00", arrays, doc)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["r00_c00_pr00_pc00.json",
                                                                  "r00_c00_pr00_pc00.npz"]
    with open(js, encoding="utf-8") as fh:
        assert json.load(fh)["rows"] == [1, "00019"]        # plain JSON, readable without numpy
    for path in (js, npz):                                   # either file names the pair
        back_doc, back = read_patch_dump(path)
        assert back_doc["rows"] == [1, "00019"] and math.isnan(back_doc["flux_err_frac"])
        assert set(back) == set(arrays)
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype
            np.testing.assert_array_equal(back[k], v)


def test_missing_half_is_an_input_error_naming_the_dump(tmp_path):
    _, js = write_patch_dump(str(tmp_path), "p", {"a": np.zeros(2)}, {})
    (tmp_path / "p.npz").unlink()
    with pytest.raises(InputError, match=r"patch input dump .*p\.json/\.npz"):
        read_patch_dump(js)
