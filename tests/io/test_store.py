"""Results store (one process): layout, row alignment by ``_row``, resume carry-over, scaling CLI."""

import json
import os

import h5py

import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io import journal
from tract7dt_mpi.parallel import scaling
from tract7dt_mpi.parallel.mpienv import Comm
from tract7dt_mpi.parallel.runner import TaskResult, plan_resume, run_phase, write_carried
from tract7dt_mpi.parallel.scheduler import Task
from tract7dt_mpi.io.store import (ST_DONE, ST_FAILED, PlanEntry, ResultsStore, StorePlan, catalog_frame,
                                   read_store, set_hdf5_env, write_run_attrs)

COLS = [("_row", np.int64), ("flux", np.float64), ("stype", "S4"), ("ok", bool), ("n", np.int64)]


def _plan():
    return StorePlan([PlanEntry("epsf/a/r00_c00", "epsf", band="a", tag="r00_c00", bbox=(0, 10, 0, 10)),
                      PlanEntry("patch/p0", "patch", tag="p0", cost=5.0, rows=np.array([7, 3, 5])),
                      PlanEntry("patch/p1", "patch", tag="p1", cost=9.0, rows=np.array([0, 9]))])


def test_layout_and_row_alignment(tmp_path):
    path = str(tmp_path / "r.h5")
    stamps = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    st = ResultsStore.create(Comm(None), path, _plan(), COLS, epsf={"a": (["r00_c00", "r00_c01"], stamps, [12, 3])},
                             attrs={"plan_hash": "H"})
    assert not st.parallel
    # rows arrive in any order, with an extra column and a string longer than the width
    n = st.write_rows("patch/p0", pd.DataFrame({"_row": [5, 7, 3], "flux": [0.5, 0.7, 0.3],
                                                "stype": ["exp", "star", "sersic"],
                                                "ok": [True, False, True], "n": [1, 2, 3], "junk": 1}))
    assert n == 3
    st.set_status("patch/p0", ST_DONE, (1.0, 2.0, 3.0, 1, 1))
    st.set_status("patch/p1", ST_FAILED)
    st.close()
    with h5py.File(path, "r") as f:
        rows = f["catalog/rows"]            # one compound dataset, one record per result row
        assert rows.chunks is None and rows.compression is None   # contiguous
        assert rows.dtype.names == ("_row", "flux", "stype", "ok", "n") and list(f["catalog"]) == ["rows"]
        assert list(f["plan/row_offset"][...]) == [0, 0, 3] and list(f["plan/n_rows"][...]) == [0, 3, 2]
        assert f.attrs["plan_hash"] == "H"
    s = read_store(path)
    assert list(s["catalog"]["_row"]) == [7, 3, 5, 0, 9]           # plan order
    assert list(s["catalog"]["flux"][:3]) == [0.7, 0.3, 0.5]        # aligned on _row
    assert list(s["catalog"]["stype"][:3]) == ["star", "sers", "exp"]
    assert list(s["catalog"]["ok"][:3]) == [False, True, True]
    assert np.isnan(s["catalog"]["flux"][3:]).all() and list(s["catalog"]["n"][3:]) == [-1, -1]
    assert np.array_equal(s["epsf"]["a"][1], stamps)
    assert list(s["status"]) == [0, ST_DONE, ST_FAILED]
    df = catalog_frame(s)
    assert list(df["_row"]) == [7, 3, 5]                            # only DONE tasks' rows


def _task_fn(task):
    rows = task.payload
    return TaskResult(rows={"_row": rows, "flux": rows * 0.5, "stype": ["star"] * len(rows),
                            "ok": [True] * len(rows), "n": rows})


def test_serial_phase_then_resume_carries_rows(tmp_path):
    path, jpath = str(tmp_path / "r.h5"), str(tmp_path / "j.jsonl")
    plan = _plan()
    tasks = [Task(e.id, e.kind, e.cost, i, e.rows) for i, e in enumerate(plan.entries) if e.kind == "patch"]
    jr = journal.Journal(jpath, "H")
    st = ResultsStore.create(Comm(None), path, plan, COLS)
    rep = run_phase(Comm(None), "p", tasks, _task_fn, store=st, journal=jr, heartbeat_sec=0)
    st.close()
    jr.close()
    assert rep.done == 2
    first = read_store(path)
    # resume: both DONE -> nothing to run; rows carried into a fresh store
    jr = journal.Journal(jpath, "H", resume=True)
    to_run, carried = plan_resume(path, jr, tasks)
    assert to_run == [] and set(carried) == {"patch/p0", "patch/p1"}
    st = ResultsStore.create(Comm(None), path, plan, COLS)
    write_carried(st, carried, jr)
    st.close()
    again = read_store(path)
    for k in first["catalog"]:
        assert np.array_equal(first["catalog"][k], again["catalog"][k])
    assert list(again["status"][1:]) == [ST_DONE, ST_DONE]
    # unreadable store: the recover callback supplies p0, p1 must run again
    open(path, "wb").write(b"garbage")
    to_run, carried = plan_resume(path, jr, tasks,
                                  recover=lambda t: pd.DataFrame(_task_fn(t).rows) if t.id == "patch/p0" else None)
    assert [t.id for t in to_run] == ["patch/p1"] and list(carried) == ["patch/p0"]
    jr.close()


def test_scaling_main_on_store(tmp_path, capsys):
    path = str(tmp_path / "r.h5")
    plan = StorePlan([PlanEntry(f"patch/p{i}", "patch", cost=float(10 - i), rows=np.array([i]))
                      for i in range(10)])
    st = ResultsStore.create(Comm(None), path, plan, COLS)
    for i in range(10):
        st.set_status(f"patch/p{i}", ST_DONE, (0.0, 2.0, 100.0, 1, 1))
    st.close()
    write_run_attrs(path, {"serial_seconds": 5.0, "overhead_per_task": 0.0, "pipeline_seconds": 25.0,
                           "n_ranks": 1})
    assert scaling.main(["--store", path, "--ranks", "1,3,11"]) == 0
    out = capsys.readouterr().out
    rows = {int(ln.split()[0]): ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()}
    # the default MPI launch cost (1 s) is added for N > 1
    assert float(rows[1][1]) == pytest.approx(25.0)      # 5 s serial + 10 x 2 s
    assert float(rows[3][1]) == pytest.approx(14.0)      # 2 workers + working master: 4 rounds
    assert float(rows[11][1]) == pytest.approx(8.0)      # 10 workers (master dispatches): 1 round
    assert float(rows[11][3]) == pytest.approx(25.0 / (11 * 8.0), abs=6e-4)   # printed to 3 decimals
    assert "model 25.00s" in out
    with pytest.raises(InputError):
        scaling.main(["--store", str(tmp_path / "missing.h5")])
    with pytest.raises(InputError):
        scaling.main(["--store", path, "--ranks", "0,2"])


def test_scaling_counts_the_phases_outside_the_plan(tmp_path):
    """PSF-field and summary-figure tasks have no plan row; their (start, wall) in the run
    attribute ``extra_tasks`` are phases of the model too (they were missing from its total)."""
    path = str(tmp_path / "r.h5")
    plan = StorePlan([PlanEntry(f"patch/p{i}", "patch", cost=1.0, rows=np.array([i])) for i in range(4)])
    st = ResultsStore.create(Comm(None), path, plan, COLS)
    for i in range(4):
        st.set_status(f"patch/p{i}", ST_DONE, (10.0 * i, 2.0, 100.0, 0, 1))
    st.close()
    write_run_attrs(path, {"serial_seconds": 1.0, "overhead_per_task": 0.0, "pipeline_seconds": 21.0,
                           "n_ranks": 1, "extra_tasks": {"psf_field": [[100.0, 3.0], [110.0, 5.0]],
                                                         "summary_plot": [[200.0, 4.0]]}})
    m = scaling.load_measurements(path)
    assert m["phases"]["psf_field"] == [5.0, 3.0] and m["phases"]["summary_plot"] == [4.0]
    assert scaling.predict(m, 1)["makespan"] == pytest.approx(1.0 + 8.0 + 8.0 + 4.0)
    assert scaling.predict(m, 3)["phases"]["psf_field"] == pytest.approx(5.0)   # 2 workers + master


def test_store_attrs_json(tmp_path):
    path = str(tmp_path / "r.h5")
    ResultsStore.create(Comm(None), path, StorePlan([]), COLS, attrs={"bands": ["a", "b"]}).close()
    assert json.loads(read_store(path)["attrs"]["bands"]) == ["a", "b"]


@pytest.mark.parametrize("buffered", [True, False])
def test_round_trip_all_result_columns_40_bands(tmp_path, buffered):
    """Every fit column at 40 bands survives one record-block write per task, batched (serial
    rank-0 writer) or direct (the parallel-mode worker write), and reads back by name."""
    from tract7dt_mpi.stages.fit import result_columns
    cols = result_columns([f"m{400 + 10 * i}" for i in range(40)], True)
    assert len(cols) > 200
    rng = np.random.default_rng(1)
    plan = StorePlan([PlanEntry(f"patch/p{i}", "patch", rows=np.arange(3 * i, 3 * i + 3)) for i in range(4)])
    tables = {}
    for e in plan.entries:
        t = {}
        for name, dt in cols:
            dt = np.dtype(dt)
            t[name] = (rng.normal(size=3) if dt.kind == "f" else rng.integers(0, 9, 3) if dt.kind == "i"
                       else rng.integers(0, 2, 3).astype(bool) if dt.kind == "b"
                       else [f"v{k}"[:dt.itemsize] for k in rng.integers(0, 99, 3)])
        t["_row"] = e.rows[::-1]              # rows arrive in any order
        tables[e.id] = t
    path = str(tmp_path / "r.h5")
    st = ResultsStore.create(Comm(None), path, plan, cols)
    st.buffered = buffered
    for e in plan.entries[:3]:                # the last task never reports: fill values stay
        assert st.write_rows(e.id, st.encode_rows(e.id, tables[e.id])) == 3
    st.close()
    s = read_store(path)
    assert list(s["catalog"]) == sorted(n for n, _ in cols)
    for e in plan.entries[:3]:
        sl = slice(int(plan.row_offset[plan.index[e.id]]), int(plan.row_offset[plan.index[e.id]]) + 3)
        for name, _dt in cols:
            got, want = list(s["catalog"][name][sl]), list(tables[e.id][name])[::-1]
            assert got == want, name
    assert list(s["catalog"]["_row"][9:]) == [9, 10, 11]
    assert np.isnan(s["catalog"]["FLUX_m400_fit"][9:]).all()
    assert list(s["catalog"]["stype_fit"][9:]) == ["", "", ""]


def test_reads_per_column_layout_of_earlier_versions(tmp_path):
    path = str(tmp_path / "old.h5")
    with h5py.File(path, "w") as f:
        for k in ("id", "kind", "band", "tag"):
            f.create_dataset(f"plan/{k}", data=np.array([b"patch/p0"]))
        for k, v in (("bbox", np.zeros((1, 4), np.int64)), ("cost", [1.0]), ("row_offset", [0]), ("n_rows", [2])):
            f.create_dataset(f"plan/{k}", data=np.asarray(v))
        f.create_dataset("catalog/_row", data=np.array([4, 2]))
        f.create_dataset("catalog/stype", data=np.array([b"exp", b"star"]))
        f.create_dataset("tasks/status", data=np.array([ST_DONE], np.int8))
        f.create_dataset("tasks/timing", data=np.zeros((1, 5)))
        f.create_group("epsf")
    df = catalog_frame(read_store(path))
    assert list(df["_row"]) == [4, 2] and list(df["stype"]) == ["exp", "star"]


def test_int_column_given_as_float_with_nan_gets_the_fill_value(tmp_path):
    """Plan rows of p1 are [0, 9]; the values arrive for [9, 0]."""
    path = str(tmp_path / "r.h5")
    st = ResultsStore.create(Comm(None), path, _plan(), COLS)
    st.write_rows("patch/p1", {"_row": [9, 0], "n": [np.nan, 4.0], "ok": [1, 0], "stype": [None, "exp"]})
    st.close()
    s = read_store(path)
    assert list(s["catalog"]["n"][3:]) == [4, -1] and list(s["catalog"]["ok"][3:]) == [False, True]
    assert list(s["catalog"]["stype"][3:]) == ["exp", ""]


def test_hdf5_locking_default_respects_user(monkeypatch):
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "TRUE")
    set_hdf5_env()
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "TRUE"
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING")
    set_hdf5_env()
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "FALSE"
