"""Atomic writers: content lands under the final name only on success; no temp files linger."""
import csv
import json
import os
import stat

import pytest

from tract7dt_mpi.io.atomic import (atomic_open, atomic_path, atomic_write_bytes, atomic_write_csv,
                                    atomic_write_json, atomic_write_text, temp_name)


def test_text_and_bytes_written_parents_created(tmp_path):
    p = tmp_path / "a" / "b" / "x.txt"
    assert atomic_write_text(p, "héllo\n") == str(p)
    assert p.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert os.listdir(p.parent) == ["x.txt"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "cat.csv"
    p.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as fh:
            fh.write("half a catalog")
            raise RuntimeError("crash while writing")
    assert p.read_text() == "old\n"
    with pytest.raises(ValueError):
        with atomic_path(p) as tmp:
            with open(tmp, "w") as fh:
                fh.write("partial")
            raise ValueError("boom")
    assert p.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["cat.csv"]


def test_atomic_path_keeps_extension_and_same_folder(tmp_path):
    p = tmp_path / "plot.png"
    t = temp_name(p)
    assert os.path.dirname(t) == str(tmp_path) and t.endswith(".png") and t != str(p)
    with atomic_path(p) as tmp:
        assert tmp.endswith(".png") and not os.path.exists(p)
        with open(tmp, "wb") as fh:
            fh.write(b"PNG")
    assert p.read_bytes() == b"PNG"


def test_atomic_path_without_output_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="produced no file"):
        with atomic_path(tmp_path / "never.fits"):
            pass
    assert not (tmp_path / "never.fits").exists()


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "x.json"
        atomic_write_json(p, {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644


def test_json_converts_numpy_and_accepts_either_argument_order(tmp_path):
    np = pytest.importorskip("numpy")
    p = tmp_path / "m.json"
    atomic_write_json(p, {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3), "nan": float("nan")})
    text = p.read_text()
    assert json.loads(text.replace("NaN", "null")) == {"n": 3, "x": 0.5, "a": [0, 1, 2], "nan": None}
    atomic_write_json({"k": [1]}, tmp_path / "o.json")
    assert json.loads((tmp_path / "o.json").read_text()) == {"k": [1]}


def test_csv_from_rows(tmp_path):
    p = tmp_path / "t.csv"
    atomic_write_csv(p, [{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with open(p, newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"id": "a", "v": "1"}, {"id": "b", "v": "2"}]


def test_csv_from_dataframe_either_order(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"ID": ["001", "x"], "FLUX": [1.5, float("nan")]})
    atomic_write_csv(df, tmp_path / "d.csv")
    back = pd.read_csv(tmp_path / "d.csv", dtype={"ID": str})
    assert list(back.columns) == ["ID", "FLUX"] and back["ID"].tolist() == ["001", "x"]
    assert back["FLUX"].iloc[0] == 1.5 and back["FLUX"].isna().iloc[1]
    atomic_write_csv(tmp_path / "e.csv", df)
    assert (tmp_path / "e.csv").read_text() == (tmp_path / "d.csv").read_text()
