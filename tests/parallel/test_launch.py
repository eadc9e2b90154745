"""Stop signals from schedulers and people give exit code 3 and a resumable journal (dummy tasks).

Open MPI's mpirun exits 1 on SIGTERM/SIGINT whatever the ranks return; the launch wrapper
(``python -m tract7dt_mpi.parallel.launch``) and the PBS job script built on it turn those signals
into a clean drain.  Every run has a timeout.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tract7dt_mpi.io import journal
from tract7dt_mpi.parallel.launch import exit_status

from .conftest import SCRIPTS, mpi_env, mpirun_cmd, need_mpirun, run
from .test_mpi_dummy import _assert_same

SCRIPT = str(SCRIPTS / "dummy_run.py")
REPO = Path(__file__).resolve().parents[2]
WRAP = [sys.executable, "-m", "tract7dt_mpi.parallel.launch"]


def test_exit_status_mapping():
    assert exit_status(0, None) == 0 and exit_status(1, None) == 1 and exit_status(-9, None) == 137
    for code in (0, 2, 3, 4):
        assert exit_status(code, "SIGTERM") == code              # the program's own codes
    assert exit_status(1, "SIGTERM") == 3                        # mpirun killed the ranks
    assert exit_status(-15, "SIGINT") == 3 and exit_status(143, "SIGHUP") == 3


def _start(cmd, d):
    return subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=str(d))


def _wait_done(d, n=3, timeout=60):
    jpath = os.path.join(d, "journal.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(jpath) and open(jpath).read().count('"DONE"') >= n:
            return
        time.sleep(0.1)
    raise AssertionError("no progress")


def _finish(p, timeout=60):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    return p.returncode, out + err


def _session_pids(sid):
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(a) for a, b in (line.split() for line in out.splitlines()) if int(b) == sid]


def _resume_matches_clean(tmp_path, d):
    r2 = run(2, [SCRIPT, d, "--resume"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    clean = str(tmp_path / "clean")
    assert run(None, [SCRIPT, clean]).returncode == 0
    _assert_same(d, clean)


def _drained(d):
    recs = journal.read_journal(os.path.join(d, "journal.jsonl"))
    started = {x["task"] for x in recs if x.get("state") == "STARTED"}
    finished = {x["task"] for x in recs if x.get("state") in ("DONE", "FAILED")}
    return started == finished and 0 < len(finished) < 24


@need_mpirun
@pytest.mark.mpi
def test_bare_mpirun_turns_sigterm_into_exit_1(tmp_path):
    """The Open MPI behaviour docs/faults.md describes (and the reason for the wrapper)."""
    d = str(tmp_path / "bare")
    p = _start(mpirun_cmd(2, [SCRIPT, d, "--sleep", "0.3"]), tmp_path)
    _wait_done(d, 2)
    p.send_signal(signal.SIGTERM)
    rc, log = _finish(p)
    assert rc == 1, log[-3000:]


@need_mpirun
@pytest.mark.mpi
def test_wrapper_sigterm_drains_exit3_then_resume(tmp_path):
    d = str(tmp_path / "w")
    p = _start(WRAP + mpirun_cmd(3, [SCRIPT, d, "--sleep", "0.3"]), tmp_path)
    _wait_done(d)
    p.send_signal(signal.SIGTERM)
    rc, log = _finish(p)
    assert rc == 3, log[-3000:]
    assert "SIGTERM: asked the ranks to stop cleanly" in log
    assert _drained(d)                           # a clean drain, nothing left running
    _resume_matches_clean(tmp_path, d)


@need_mpirun
@pytest.mark.mpi
def test_wrapper_ctrl_c_to_the_foreground_group_exit3(tmp_path):
    """Ctrl-C at a terminal: SIGINT to the foreground process group (here: the wrapper's)."""
    d = str(tmp_path / "c")
    p = _start(WRAP + mpirun_cmd(3, [SCRIPT, d, "--sleep", "0.3"]), tmp_path)
    _wait_done(d)
    os.killpg(p.pid, signal.SIGINT)
    rc, log = _finish(p)
    assert rc == 3, log[-3000:]
    assert _drained(d)


def _job(tmp_path, d, script, extra=None):
    """Run a job script outside its scheduler: ``tract7dt-mpi`` is the dummy run; ``qsub`` and
    ``scontrol`` only record their arguments; ``srun`` is stood in for by ``mpirun -n 3``, which
    like srun forwards SIGUSR1 to the ranks and kills them on SIGTERM."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    dummy = f'"{sys.executable}" "{SCRIPT}" "{d}" --sleep 0.3'
    fakes = {"python": f'exec "{sys.executable}" "$@"', "tract7dt-mpi": f"exec {dummy}",
             "qsub": f'echo "qsub $*" >> "{calls}"', "scontrol": f'echo "scontrol $*" >> "{calls}"',
             "srun": "exec " + " ".join(mpirun_cmd(3, [SCRIPT, d, "--sleep", "0.3"]))}
    for name, body in fakes.items():
        (venv / name).write_text(f"#!/bin/sh\n{body}\n")
        (venv / name).chmod(0o755)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("{}\n")
    env = mpi_env({"CONFIG": str(cfg), "TRACT7DT_VENV": str(venv.parent), "RESUME": "0",
                   "RC_DIR": str(tmp_path / "rc"), **(extra or {})})
    p = subprocess.Popen(["bash", str(REPO / "jobscripts" / script), str(cfg)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, cwd=str(tmp_path))
    return p, calls


def _pbs_job(tmp_path, d):
    return _job(tmp_path, d, "pbs_tile.pbs", {
        "NRANKS": "3", "MPIEXEC": "mpirun", "MPI_FLAVOR": "openmpi", "WALLTIME_SEC": "0",
        "MPIEXEC_ARGS": "--oversubscribe --bind-to none", "PBS_O_WORKDIR": str(tmp_path),
        "SELF": str(REPO / "jobscripts" / "pbs_tile.pbs"), "PBS_JOBID": "42.test"})


def _slurm_job(tmp_path, d):
    return _job(tmp_path, d, "slurm_tile.sbatch", {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"})


def _calls(path):
    return path.read_text() if path.exists() else ""


@need_mpirun
@pytest.mark.mpi
def test_pbs_script_qsig_sigterm_to_the_shell_exit3_no_resubmit(tmp_path):
    """``qsig`` signals the job's session leader (the script) only."""
    d = str(tmp_path / "q")
    p, calls = _pbs_job(tmp_path, d)
    _wait_done(d)
    p.send_signal(signal.SIGTERM)
    rc, log = _finish(p)
    assert rc == 3, log[-3000:]
    assert (tmp_path / "rc" / "42.test.rc").read_text().strip() == "3"
    assert _drained(d)
    assert "qsub" not in _calls(calls) and "not resubmitted" in log


@need_mpirun
@pytest.mark.mpi
def test_pbs_script_sigusr1_drains_and_resubmits(tmp_path):
    """SIGUSR1 (the script's wall-time timer, or by hand): drain, exit 3, resubmission."""
    d = str(tmp_path / "u")
    p, calls = _pbs_job(tmp_path, d)
    _wait_done(d)
    p.send_signal(signal.SIGUSR1)
    rc, log = _finish(p)
    assert rc == 3, log[-3000:]
    assert _drained(d)
    assert "RESUME=1" in _calls(calls)


@need_mpirun
@pytest.mark.mpi
def test_pbs_script_qdel_sigterm_to_every_process_exit3_then_resume(tmp_path):
    """``qdel``/``scancel``: SIGTERM to every process of the job at once (mpirun too, which then
    kills the ranks and returns 1): the job still exits 3, is not resubmitted, and resumes."""
    d = str(tmp_path / "a")
    p, calls = _pbs_job(tmp_path, d)
    _wait_done(d)
    pids = _session_pids(p.pid)
    assert len(pids) >= 5                       # shell, wrapper, mpirun, 3 ranks
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    rc, log = _finish(p)
    assert rc == 3, log[-3000:]
    assert (tmp_path / "rc" / "42.test.rc").read_text().strip() == "3"
    assert "qsub" not in _calls(calls)
    _resume_matches_clean(tmp_path, d)


@need_mpirun
@pytest.mark.mpi
def test_slurm_script_sigterm_to_the_shell_drains_exit3_no_requeue(tmp_path):
    """``scancel --batch --signal=TERM``: the script passes SIGUSR1 (not SIGTERM, which srun
    would turn into SIGKILL) to srun; the ranks drain; no requeue."""
    d = str(tmp_path / "s")
    p, calls = _slurm_job(tmp_path, d)
    _wait_done(d)
    p.send_signal(signal.SIGTERM)
    rc, log = _finish(p)
    assert rc == 3, log[-3000:]
    assert _drained(d)
    assert (tmp_path / "rc" / "77.rc").read_text().strip() == "3"
    assert "requeue" not in _calls(calls) and "not requeued" in log


@need_mpirun
@pytest.mark.mpi
def test_slurm_script_sigusr1_drains_and_requeues(tmp_path):
    """``--signal=B:USR1@300``: drain, exit 3, ``scontrol requeue``."""
    d = str(tmp_path / "r")
    p, calls = _slurm_job(tmp_path, d)
    _wait_done(d)
    p.send_signal(signal.SIGUSR1)
    rc, log = _finish(p)
    assert rc == 3, log[-3000:]
    assert _drained(d)
    assert "scontrol requeue 77" in _calls(calls)


@need_mpirun
@pytest.mark.mpi
def test_slurm_script_scancel_every_process_exit3_no_requeue(tmp_path):
    d = str(tmp_path / "x")
    p, calls = _slurm_job(tmp_path, d)
    _wait_done(d)
    for pid in _session_pids(p.pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    rc, log = _finish(p)
    assert rc == 3, log[-3000:]
    assert "requeue" not in _calls(calls)
    assert _last_resumable(d)


def _last_resumable(d):
    recs = journal.read_journal(os.path.join(d, "journal.jsonl"))
    return recs and recs[0].get("type") == "header" and any(x.get("state") == "DONE" for x in recs)
