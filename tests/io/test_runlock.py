"""Run lock of a work folder: exclusive creation, refusal naming the owner, stale-lock rules."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io import runlock
from tract7dt_mpi.io.runlock import LOCK_NAME, RunLock


def _write_lock(folder, **owner):
    rec = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00",
           "command": "tract7dt-mpi run other.yaml", **owner}
    folder.mkdir(exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(rec) + "\n")
    return folder / LOCK_NAME


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_holds_identity_and_is_released(tmp_path):
    wd = tmp_path / "work"
    lock = RunLock.acquire(str(wd), command="tract7dt-mpi run c.yaml", heartbeat=False)
    rec = json.loads((wd / LOCK_NAME).read_text())
    assert rec["host"] == socket.gethostname() and rec["pid"] == os.getpid()
    assert rec["command"] == "tract7dt-mpi run c.yaml" and rec["started"]
    lock.release()
    assert not (wd / LOCK_NAME).exists()
    lock.release()                                  # idempotent


def test_second_run_refused_naming_the_first(tmp_path):
    wd = tmp_path / "work"
    with RunLock.acquire(str(wd), command="first", heartbeat=False):
        with pytest.raises(InputError) as ei:
            RunLock.acquire(str(wd), command="second", heartbeat=False)
    msg = str(ei.value)
    assert "in use by another run" in msg and f"pid {os.getpid()}" in msg
    assert socket.gethostname() in msg and "command: first" in msg and "\n" not in msg
    assert not (wd / LOCK_NAME).exists()            # released by the with-block


def test_stale_lock_of_dead_pid_on_this_host_is_taken_over(tmp_path):
    wd = tmp_path / "work"
    _write_lock(wd, pid=_dead_pid())
    lock = RunLock.acquire(str(wd), heartbeat=False)
    assert "no longer running" in lock.notice
    assert json.loads((wd / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_other_host_refused_until_stale(tmp_path):
    wd = tmp_path / "work"
    path = _write_lock(wd, host="node-elsewhere", pid=1)
    with pytest.raises(InputError, match="node-elsewhere"):
        RunLock.acquire(str(wd), heartbeat=False)
    old = time.time() - runlock.STALE_SEC - 5
    os.utime(path, (old, old))
    lock = RunLock.acquire(str(wd), heartbeat=False)
    assert "not refreshed" in lock.notice
    lock.release()


def test_force_unlock_takes_a_live_lock(tmp_path):
    wd = tmp_path / "work"
    _write_lock(wd)                                  # our own, alive pid
    lock = RunLock.acquire(str(wd), force=True, heartbeat=False)
    assert "--force-unlock" in lock.notice
    lock.release()


def test_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_SEC", 0.05)
    wd = tmp_path / "work"
    lock = RunLock.acquire(str(wd))
    path = wd / LOCK_NAME
    os.utime(path, (1.0, 1.0))
    time.sleep(0.3)
    assert os.stat(path).st_mtime > 1e9
    lock.release()


def test_unwritable_or_impossible_work_dir(tmp_path):
    with pytest.raises(InputError, match=r"outputs.work_dir: cannot write to /proc/x"):
        RunLock.acquire("/proc/x", heartbeat=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="outputs.work_dir"):
        RunLock.acquire(str(tmp_path / "f"), heartbeat=False)


def test_reused_pid_and_requeued_job_are_stale(tmp_path, monkeypatch):
    wd = tmp_path / "work"
    sleeper = subprocess.Popen(["sleep", "30"])         # alive, but not a tract7dt-mpi run
    try:
        _write_lock(wd, pid=sleeper.pid)
        lock = RunLock.acquire(str(wd), heartbeat=False)
        assert "another program" in lock.notice
        lock.release()
    finally:
        sleeper.kill()
        sleeper.wait()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _write_lock(wd, host="node-elsewhere", pid=1, job="4242")
    lock = RunLock.acquire(str(wd), heartbeat=False)
    assert "batch job 4242" in lock.notice
    lock.release()
    _write_lock(wd, host="node-elsewhere", pid=1, job="4141")   # another job: still refused
    with pytest.raises(InputError, match="in use"):
        RunLock.acquire(str(wd), heartbeat=False)
