"""The task queue, journal and results store under mpirun with dummy tasks (each run has a timeout)."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tract7dt_mpi.io import journal
from tract7dt_mpi.io.store import read_store

from .conftest import SCRIPTS, need_mpirun, popen, run

pytestmark = [pytest.mark.mpi, need_mpirun]
SCRIPT = str(SCRIPTS / "dummy_run.py")


def _summary(d):
    with open(os.path.join(d, "summary.json")) as fh:
        return json.load(fh)


def _contents(d):
    s = read_store(os.path.join(d, "results.h5"))
    return s["catalog"], s["status"], s["plan"]


def _assert_same(a, b):
    ca, sa, pa = _contents(a)
    cb, sb, pb = _contents(b)
    assert pa["id"] == pb["id"]
    assert np.array_equal(sa, sb)
    assert set(ca) == set(cb)
    for k in ca:
        x, y = ca[k], cb[k]
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), k
        else:
            assert list(x) == list(y), k


def test_identical_for_1_2_4_ranks_and_serial_h5(tmp_path):
    outs = {}
    for label, n, env in [("n1", None, None), ("n2", 2, None), ("n4", 4, None),
                          ("n4s", 4, {"TRACT7DT_FORCE_SERIAL_H5": "1"})]:
        d = str(tmp_path / label)
        r = run(n, [SCRIPT, d, "--sleep", "0.01"], env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[label] = d
    s2, s4, s4s = _summary(outs["n2"]), _summary(outs["n4"]), _summary(outs["n4s"])
    assert s4["parallel_h5"] != s4s["parallel_h5"] or not s4["parallel_h5"]
    assert s4["size"] == 4 and len(s4["ranks"]) >= 2 and 0 not in s4["ranks"]   # master only dispatches
    assert s2["ranks"] == [1]
    cat, status, plan = _contents(outs["n1"])
    assert (status == 2).all()
    # values depend on the task id only: check one row against an independent recomputation
    import hashlib
    seed = int(hashlib.sha256(b"t003").hexdigest()[:8], 16)
    first = int(np.nonzero(np.array(plan["id"]) == "t003")[0][0])
    off, n = int(plan["row_offset"][first]), int(plan["n_rows"][first])
    expect = np.random.default_rng(seed).normal(size=n)
    assert np.array_equal(cat["val"][off:off + n], expect)          # stored in plan row order
    assert list(cat["name"][off:off + n]) == [f"t003_{r}" for r in cat["_row"][off:off + n]]
    for other in ("n2", "n4", "n4s"):
        _assert_same(outs["n1"], outs[other])


def test_raising_task_is_isolated_exit4(tmp_path):
    d = str(tmp_path / "f")
    r = run(3, [SCRIPT, d, "--raise", "t005", "--sysexit", "t009"])
    assert r.returncode == 4, r.stderr[-3000:]
    s = _summary(d)
    assert sorted(s["failed"]) == ["t005", "t009"] and s["done"] == 22
    assert "injected failure in t005" in r.stderr + r.stdout          # traceback in the log
    recs = [x for x in journal.read_journal(os.path.join(d, "journal.jsonl")) if x.get("state") == "FAILED"]
    assert {x["task"] for x in recs} == {"t005", "t009"}
    assert all("Traceback" in x["error"] and x["host"] and x["wall"] >= 0 for x in recs)
    cat, status, plan = _contents(d)
    ids = plan["id"]
    assert status[ids.index("t005")] == 3 and status[ids.index("t004")] == 2
    i = ids.index("t005")
    off, n = int(plan["row_offset"][i]), int(plan["n_rows"][i])
    assert np.isnan(cat["val"][off:off + n]).all()                 # failed rows stay unfilled
    # clean rows equal a clean run's
    clean = str(tmp_path / "clean")
    assert run(None, [SCRIPT, clean]).returncode == 0
    cc, _, _ = _contents(clean)
    mask = np.ones(len(cc["val"]), bool)
    for t in ("t005", "t009"):
        j = ids.index(t)
        mask[int(plan["row_offset"][j]):int(plan["row_offset"][j] + plan["n_rows"][j])] = False
    assert np.array_equal(cat["val"][mask], cc["val"][mask])


def test_sigkill_worker_ends_job_then_resume_completes(tmp_path):
    d = str(tmp_path / "k")
    t0 = time.time()
    # flush status at every change so the killed run's store can be reused (not only rebuilt)
    r = run(3, [SCRIPT, d, "--kill", "t010", "--sleep", "0.05"], timeout=90,
            env={"TRACT7DT_STORE_FLUSH_SEC": "0"})
    assert r.returncode not in (0, 3, 4)
    assert time.time() - t0 < 90
    r2 = run(2, [SCRIPT, d, "--resume"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    s = _summary(d)
    assert "t010" in s["ran"] and len(s["skipped"]) > 0
    assert set(s["ran"]).isdisjoint(s["skipped"]) and len(s["ran"]) + len(s["skipped"]) == 24
    clean = str(tmp_path / "clean")
    assert run(None, [SCRIPT, clean]).returncode == 0
    _assert_same(d, clean)


def test_sigterm_drains_exit3_then_resume(tmp_path):
    d = str(tmp_path / "t")
    p = popen(3, [SCRIPT, d, "--sleep", "0.3"])
    jpath = os.path.join(d, "journal.jsonl")
    deadline = time.time() + 60
    while time.time() < deadline:        # wait until some tasks are done
        if os.path.exists(jpath) and open(jpath).read().count('"DONE"') >= 3:
            break
        time.sleep(0.1)
    # signal every rank the way srun --signal does (mpirun forwards SIGUSR1 the same way)
    pids = subprocess.run(["pgrep", "-f", f"dummy_run.py {d}"], capture_output=True, text=True).stdout.split()
    for pid in pids:
        if int(pid) != p.pid:
            os.kill(int(pid), signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3, err[-3000:]
    s = _summary(d)
    assert s["stopped"] and s["done"] < 24
    recs = journal.read_journal(jpath)
    started = {x["task"] for x in recs if x.get("state") == "STARTED"}
    finished = {x["task"] for x in recs if x.get("state") in ("DONE", "FAILED")}
    assert started == finished                     # drained: nothing left running
    r2 = run(2, [SCRIPT, d, "--resume"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    clean = str(tmp_path / "clean")
    assert run(None, [SCRIPT, clean]).returncode == 0
    _assert_same(d, clean)


def test_sigusr1_to_mpirun_is_forwarded(tmp_path):
    d = str(tmp_path / "u")
    p = popen(2, [SCRIPT, d, "--sleep", "0.3"])
    jpath = os.path.join(d, "journal.jsonl")
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.exists(jpath) and open(jpath).read().count('"DONE"') >= 2:
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3, err[-3000:]


def test_resume_refused_on_plan_change_and_forced(tmp_path):
    d = str(tmp_path / "h")
    assert run(2, [SCRIPT, d]).returncode == 0
    r = run(2, [SCRIPT, d, "--resume", "--hash", "H2"])
    assert r.returncode == 2
    assert r.stderr.count("refusing to resume") == 1
    r = run(2, [SCRIPT, d, "--resume", "--hash", "H2", "--force"])
    assert r.returncode == 0
    assert len(_summary(d)["ran"]) == 24
    r = run(2, [SCRIPT, d, "--resume", "--hash", "H2"])
    assert r.returncode == 0 and _summary(d)["ran"] == [] and len(_summary(d)["skipped"]) == 24


def test_corrupt_store_rebuilt_on_resume(tmp_path):
    d = str(tmp_path / "c")
    assert run(None, [SCRIPT, d, "--raise", "t002"]).returncode == 4
    with open(os.path.join(d, "results.h5"), "r+b") as fh:       # clobber the superblock
        fh.write(b"\0" * 512)
    r = run(2, [SCRIPT, d, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    s = _summary(d)
    assert len(s["ran"]) == 24 and "unreadable" in r.stderr + r.stdout   # nothing to carry, all re-run


def test_pkl5_large_result_message(tmp_path):
    d = str(tmp_path / "b")
    r = run(2, [SCRIPT, d, "--ntasks", "3", "--big-msg", "64"], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    got = _summary(d)["got"]
    assert all(v == 64 * 2**20 // 8 for v in got.values())


@pytest.mark.slow
def test_pkl5_result_over_2gib(tmp_path):
    """A task result larger than 2 GiB crosses the queue without OverflowError (needs ~5 GB RAM)."""
    d = str(tmp_path / "g")
    r = run(2, [SCRIPT, d, "--ntasks", "1", "--big-msg", "2100"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(_summary(d)["got"].values()) == [2100 * 2**20 // 8]


def test_exception_on_master_aborts_all_ranks(tmp_path):
    d = str(tmp_path / "m")
    t0 = time.time()
    r = run(3, [SCRIPT, d, "--master-raise", "3", "--sleep", "0.05"], timeout=60)
    assert r.returncode not in (0, 2, 3, 4)
    assert time.time() - t0 < 60
    assert "Unhandled exception on rank 0" in r.stderr and "master bug" in r.stderr


def test_master_works_identical_and_uses_rank0(tmp_path):
    ref = str(tmp_path / "ref")
    assert run(None, [SCRIPT, ref, "--sleep", "0.01"]).returncode == 0
    for label, n, extra, env in [("mw2", 2, [], None), ("mw3s", 3, ["--prefetch", "3"],
                                                        {"TRACT7DT_FORCE_SERIAL_H5": "1"})]:
        d = str(tmp_path / label)
        r = run(n, [SCRIPT, d, "--sleep", "0.05", "--master-works"] + extra, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        s = _summary(d)
        assert s["done"] == 24 and 0 in s["ranks"] and 1 in s["ranks"]     # master ran tasks too
        _assert_same(ref, d)


def test_master_works_failure_on_master_isolated(tmp_path):
    # LPT order is t003, t014 (the worker's two prefetched tasks), then t006 for the master
    d = str(tmp_path / "mf")
    r = run(2, [SCRIPT, d, "--master-works", "--raise", "t006", "--sleep", "0.02"])
    assert r.returncode == 4, r.stderr[-3000:]
    s = _summary(d)
    assert s["failed"] == ["t006"] and s["done"] == 23
    rec = [x for x in journal.read_journal(os.path.join(d, "journal.jsonl")) if x.get("state") == "FAILED"]
    assert rec[0]["rank"] == 0 and "injected failure in t006" in rec[0]["error"]


def test_master_works_halves_wall_and_idle_ranks_sleep(tmp_path):
    """Sleeping tasks (no CPU): with the master working, 2 ranks take about half of 1 rank's time,
    so the worker kept running while the master ran its own tasks; waiting ranks use little CPU."""
    d1, d2 = str(tmp_path / "w1"), str(tmp_path / "w2")
    args = ["--ntasks", "16", "--sleep", "0.25"]
    assert run(2, [SCRIPT, d1] + args).returncode == 0                  # master only dispatches
    assert run(2, [SCRIPT, d2, "--master-works"] + args).returncode == 0
    s1, s2 = _summary(d1), _summary(d2)
    assert s1["phase_wall"] >= 16 * 0.25 * 0.95
    assert s2["phase_wall"] < 0.7 * s1["phase_wall"], (s1["phase_wall"], s2["phase_wall"])
    assert min(s2["by_rank"].values()) >= 4          # both ranks worked (shares follow CPU load)
    # an idle master (dispatch only) and a worker that sleeps most of the time do not spin a core
    assert max(s1["cpu"]) < 0.35 * s1["phase_wall"], s1["cpu"]


# ---------------------------------------------------------------- frozen and late workers
def _last_states(d):
    last = {}
    for x in journal.read_journal(os.path.join(d, "journal.jsonl")):
        if "task" in x:
            last[x["task"]] = x["state"]
    return last


@pytest.mark.parametrize("n,at,extra", [(3, 2, []), (2, 2, ["--master-works"]), (3, 0, [])])
def test_frozen_worker_ends_job_exit3_then_resume(tmp_path, n, at, extra):
    """Rank 1 stops itself (SIGSTOP) at its 2nd task (or before the phase): its tasks are run by
    the other ranks, the job ends with exit 3 in bounded time instead of hanging, and --resume
    completes it."""
    d = str(tmp_path / "z")
    t0 = time.time()
    r = run(n, [SCRIPT, d, "--sleep", "0.05", "--freeze-rank", "1", "--freeze-at", str(at),
                "--task-timeout-min", "0.5"] + extra, timeout=90)
    took = time.time() - t0
    assert r.returncode == 3, r.stderr[-3000:]
    assert took < 60
    log = r.stdout + r.stderr
    if at:
        assert "(rank 1) is late" in log and "handing" in log
        assert "LATE: " in log and "rank 1" in log.split("LATE: ", 1)[1].splitlines()[0]  # heartbeat
        assert "rank 1 (" in log and "is silent" in log
    else:
        assert "rank(s) 1 not ready" in log and "rank 1 never announced itself" in log
    assert "--resume" in log
    last = _last_states(d)
    assert len(last) == 24 and set(last.values()) == {"DONE"}     # every task done by the others
    left = subprocess.run(["pgrep", "-f", f"dummy_run.py {d}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""                               # the stopped rank is gone too
    r2 = run(2, [SCRIPT, d, "--resume"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    clean = str(tmp_path / "clean")
    assert run(None, [SCRIPT, clean]).returncode == 0
    _assert_same(d, clean)


def test_frozen_worker_during_a_drain_still_ends_exit3(tmp_path):
    """A stop request (here: after 6 results) while rank 1 is frozen: its task is not re-run, and
    the drain does not wait forever for it."""
    d = str(tmp_path / "zd")
    r = run(3, [SCRIPT, d, "--sleep", "0.05", "--freeze-rank", "1", "--freeze-at", "2",
                "--task-timeout-min", "0.5", "--stop-after", "6"], timeout=90)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "not re-run (stopping)" in r.stderr and "is silent" in r.stderr
    last = _last_states(d)
    assert 6 <= sum(v == "DONE" for v in last.values()) < 24
    r2 = run(2, [SCRIPT, d, "--resume"])
    assert r2.returncode == 0, r2.stderr[-3000:]


def test_late_duplicate_result_ignored(tmp_path):
    """Rank 1's 2nd task overruns the 1.5 s limit (it answers after 2.5 s, before it would count
    as silent at 3 s): rank 2 re-runs it, rank 1's late result is ignored, rank 1 gets work again
    and the run ends normally."""
    d = str(tmp_path / "dup")
    r = run(3, [SCRIPT, d, "--ntasks", "40", "--sleep", "0.1", "--slow-rank", "1", "--slow-at", "2",
                "--slow-sec", "2.5", "--task-timeout-sec", "1.5"], timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    s = _summary(d)
    recs = journal.read_journal(os.path.join(d, "journal.jsonl"))
    late = [x for x in recs if x.get("state") == "STARTED" and x.get("attempt") == 2]
    assert len(late) == 1 and late[0]["rank"] == 2
    tid = late[0]["task"]
    done = [x for x in recs if x.get("state") == "DONE"]
    assert sorted(x["task"] for x in done) == sorted(s["ran"]) and len(done) == 40   # one DONE each
    assert [x["rank"] for x in done if x["task"] == tid] == [2] and s["rank_of"][tid] == 2
    assert s["done"] == 40 and len(s["results"]) == 40 and len(set(s["results"])) == 40
    assert f"late result of {tid} from" in r.stderr and "ignored" in r.stderr
    assert "answered again" in r.stderr
    assert s["by_rank"]["1"] >= 2       # its 1st task, then (2nd ignored) more after it answered
    clean = str(tmp_path / "clean")
    assert run(None, [SCRIPT, clean, "--ntasks", "40"]).returncode == 0
    _assert_same(d, clean)
