"""The SLURM, PBS and Apptainer job scripts launch the program with the right config, threads and resume."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from .conftest import JOBSCRIPTS

ALL_SCRIPTS = sorted(p for p in JOBSCRIPTS.iterdir() if p.suffix in (".sh", ".sbatch", ".pbs"))
THREAD_VARS = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "TRACT7DT_THREADS_PER_RANK"]


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_bash_n(script):
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_header_documents_every_env_default(script):
    """Each script starts with a comment block that lists its environment variables."""
    head = script.read_text().split("set -")[0]
    assert "Environment variables" in head or "Arguments and environment variables" in head


def run(stubs, script, *args, env=None, timeout=60):
    e = dict(stubs.env, **(env or {}))
    return subprocess.run(["bash", str(JOBSCRIPTS / script), *map(str, args)], env=e, cwd=stubs.root,
                          capture_output=True, text=True, timeout=timeout)


SLURM_ENV = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_CPUS_PER_TASK": "3"}


def test_slurm_passes_config_and_threads(stubs):
    cfg = stubs.tile("t1")
    res = run(stubs, "slurm_tile.sbatch", cfg, env=SLURM_ENV)
    assert res.returncode == 0, res.stderr
    (srun,) = stubs.calls("srun")
    assert "--mpi=pmix" in srun["argv"] and srun["argv"][-2:] == ["tract7dt-mpi", str(cfg)]
    (prog,) = stubs.calls("tract7dt-mpi")
    assert prog["argv"] == [str(cfg)]                     # fresh tile: no --resume
    for var in THREAD_VARS:
        assert prog["env"][var] == "3", var
    assert prog["env"]["SRUN_CPUS_PER_TASK"] == "3"
    assert prog["env"]["HDF5_USE_FILE_LOCKING"] == "FALSE"
    assert not stubs.calls("scontrol")


def test_slurm_threads_override_and_array_list(stubs):
    cfgs = [stubs.tile(f"t{i}") for i in range(3)]
    lst = stubs.root / "tiles.txt"
    lst.write_text("\n".join(map(str, cfgs)) + "\n")
    env = dict(SLURM_ENV, TILE_LIST=str(lst), SLURM_ARRAY_TASK_ID="1", THREADS_PER_RANK="2",
               SRUN_MPI="pmi2", EXTRA_ARGS="--deadline 3600")
    res = run(stubs, "slurm_tile.sbatch", env=env)
    assert res.returncode == 0, res.stderr
    (prog,) = stubs.calls("tract7dt-mpi")
    assert prog["argv"] == [str(cfgs[1]), "--deadline", "3600"]
    assert prog["env"]["OMP_NUM_THREADS"] == "2"
    assert "--mpi=pmi2" in stubs.calls("srun")[0]["argv"]


def test_slurm_exit3_requeues_and_resumes(stubs):
    cfg = stubs.tile("t1", exit_codes=[3])
    rc_dir = stubs.root / "rc"
    res = run(stubs, "slurm_tile.sbatch", cfg, env=dict(SLURM_ENV, RC_DIR=str(rc_dir)))
    assert res.returncode == 3
    assert stubs.calls("scontrol")[0]["argv"] == ["requeue", "77"]
    assert (rc_dir / "77.rc").read_text().strip() == "3"
    # the requeued run (restart count 1) resumes and, finishing, is not requeued again
    res = run(stubs, "slurm_tile.sbatch", cfg, env=dict(SLURM_ENV, SLURM_RESTART_COUNT="1"))
    assert res.returncode == 0
    assert stubs.calls("tract7dt-mpi")[-1]["argv"] == [str(cfg), "--resume"]
    assert len(stubs.calls("scontrol")) == 1


def test_slurm_requeue_stops_at_cap(stubs):
    cfg = stubs.tile("t1", exit_codes=[3])
    res = run(stubs, "slurm_tile.sbatch", cfg, env=dict(SLURM_ENV, SLURM_RESTART_COUNT="2", MAX_REQUEUE="2"))
    assert res.returncode == 3 and not stubs.calls("scontrol")
    assert "not requeued" in res.stderr


def test_slurm_resume_when_journal_exists_and_resume_0(stubs):
    cfg = stubs.tile("t1")
    (cfg.parent / "work").mkdir()
    (cfg.parent / "work" / "journal.jsonl").write_text('{"task": "a", "state": "DONE"}\n')
    assert run(stubs, "slurm_tile.sbatch", cfg, env=SLURM_ENV).returncode == 0
    assert stubs.calls("tract7dt-mpi")[-1]["argv"] == [str(cfg), "--resume"]
    assert run(stubs, "slurm_tile.sbatch", cfg, env=dict(SLURM_ENV, RESUME="0")).returncode == 0
    assert stubs.calls("tract7dt-mpi")[-1]["argv"] == [str(cfg)]


def test_slurm_missing_config_is_exit_2(stubs):
    res = run(stubs, "slurm_tile.sbatch", stubs.root / "nope.yaml", env=SLURM_ENV)
    assert res.returncode == 2 and "no tile config" in res.stderr
    assert not stubs.calls("srun")


@pytest.mark.parametrize("script", ["slurm_tile.sbatch", "pbs_tile.pbs"])
def test_usr1_to_batch_shell_is_forwarded(stubs, script):
    """The B:USR1 variant (and PBS): the signal reaches the shell, which forwards it to the ranks."""
    cfg = stubs.tile("t1")
    env = dict(stubs.env, FAKE_WAIT_SIGNAL="1", CONFIG=str(cfg), **SLURM_ENV)
    proc = subprocess.Popen(["bash", str(JOBSCRIPTS / script), str(cfg)], env=env, cwd=stubs.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (cfg.parent / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err


PBS_ENV = {"PBS_JOBID": "12.pbs", "OMP_NUM_THREADS": "2", "MPI_FLAVOR": "openmpi"}


def _nodefile(stubs, n):
    p = stubs.root / "nodefile"
    p.write_text("node1\n" * n)
    return str(p)


def test_pbs_openmpi_forwards_threads_with_x(stubs):
    cfg = stubs.tile("t1")
    res = run(stubs, "pbs_tile.pbs", env=dict(PBS_ENV, CONFIG=str(cfg), PBS_NODEFILE=_nodefile(stubs, 6)))
    assert res.returncode == 0, res.stderr
    (mpi,) = stubs.calls("mpiexec")
    a = mpi["argv"]
    assert a[:2] == ["-n", "6"]
    for var in THREAD_VARS:
        assert a[a.index(var) - 1] == "-x"
    assert a[-2:] == ["tract7dt-mpi", str(cfg)]
    assert stubs.calls("tract7dt-mpi")[0]["env"]["OMP_NUM_THREADS"] == "2"


def test_pbs_hydra_forwards_threads_with_genv(stubs):
    cfg = stubs.tile("t1")
    env = dict(PBS_ENV, CONFIG=str(cfg), NRANKS="3", MPI_FLAVOR="auto", STUB_MPI_VERSION="HYDRA build details:",
               THREADS_PER_RANK="4")
    res = run(stubs, "pbs_tile.pbs", env=env)
    assert res.returncode == 0, res.stderr
    a = [c for c in stubs.calls("mpiexec") if c["argv"] != ["--version"]][0]["argv"]
    i = a.index("OMP_NUM_THREADS")
    assert a[i - 1:i + 2] == ["-genv", "OMP_NUM_THREADS", "4"] and a[:2] == ["-n", "3"]


def test_pbs_exit3_resubmits_with_resume(stubs):
    cfg = stubs.tile("t1", exit_codes=[3])
    self_path = str(JOBSCRIPTS / "pbs_tile.pbs")
    res = run(stubs, "pbs_tile.pbs", env=dict(PBS_ENV, CONFIG=str(cfg), NRANKS="2", SELF=self_path))
    assert res.returncode == 3
    (q,) = stubs.calls("qsub")
    assert q["argv"][-1] == self_path
    assert f"CONFIG={cfg},RESUME=1,RESUBMITS=1" in q["argv"][1]
    res = run(stubs, "pbs_tile.pbs", env=dict(PBS_ENV, CONFIG=str(cfg), NRANKS="2", SELF=self_path,
                                               RESUBMITS="3", MAX_RESUBMIT="3", RESUME="1"))
    assert stubs.calls("tract7dt-mpi")[-1]["argv"] == [str(cfg), "--resume"]
    assert len(stubs.calls("qsub")) == 1


def test_pbs_walltime_timer_drains(stubs):
    """DRAIN_SEC before WALLTIME_SEC the script sends SIGUSR1; the program drains and exits 3."""
    cfg = stubs.tile("t1")
    env = dict(PBS_ENV, CONFIG=str(cfg), NRANKS="1", WALLTIME_SEC="3", DRAIN_SEC="2", FAKE_WAIT_SIGNAL="1",
               MAX_RESUBMIT="0")
    t0 = time.time()
    res = run(stubs, "pbs_tile.pbs", env=env)
    assert res.returncode == 3, res.stderr
    assert time.time() - t0 < 15


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")
def test_pbs_real_mpirun_every_rank_gets_threads(stubs):
    """A real 2-rank Open MPI launch through the script: both ranks see the config and thread settings."""
    if "open mpi" not in subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout.lower():
        pytest.skip("needs Open MPI's mpirun")
    cfg = stubs.tile("t1")
    env = dict(PBS_ENV, CONFIG=str(cfg), NRANKS="2", THREADS_PER_RANK="5", STUB_REAL_MPIEXEC=shutil.which("mpirun"),
               MPIEXEC_ARGS="--oversubscribe", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    res = run(stubs, "pbs_tile.pbs", env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    progs = stubs.calls("tract7dt-mpi")
    assert sorted(p["env"]["OMPI_COMM_WORLD_RANK"] for p in progs) == ["0", "1"]
    assert all(p["argv"] == [str(cfg)] and p["env"]["OMP_NUM_THREADS"] == "5" for p in progs)


def _image(stubs):
    img = stubs.root / "img.sif"
    img.write_text("")
    return str(img)


def test_apptainer_pmix_and_threads_into_container(stubs):
    cfg = stubs.tile("t1")
    res = run(stubs, "slurm_apptainer.sbatch", cfg, env=dict(SLURM_ENV, IMAGE=_image(stubs)))
    assert res.returncode == 0, res.stderr
    srun = [c for c in stubs.calls("srun") if c["argv"] != ["--mpi=list"]][0]["argv"]
    assert srun[0] == "--mpi=pmix"
    ap = srun[srun.index("apptainer"):]
    assert ap[:3] == ["apptainer", "exec", "--bind"] and str(cfg.parent) in ap[3].split(",")
    assert ap[-2:] == ["tract7dt-mpi", str(cfg)]
    prog = stubs.calls("tract7dt-mpi")[0]
    assert prog["env"]["APPTAINERENV_OMP_NUM_THREADS"] == "3" and prog["env"]["OMP_NUM_THREADS"] == "3"


def test_apptainer_pmi2_fallback(stubs):
    cfg = stubs.tile("t1")
    env = dict(SLURM_ENV, IMAGE=_image(stubs), STUB_MPI_LIST="MPI plugin types are...\n none\n pmi2")
    assert run(stubs, "slurm_apptainer.sbatch", cfg, env=env).returncode == 0
    srun = [c for c in stubs.calls("srun") if c["argv"] != ["--mpi=list"]][0]["argv"]
    assert srun[0] == "--mpi=pmi2"


def test_apptainer_missing_image_is_exit_2(stubs):
    cfg = stubs.tile("t1")
    res = run(stubs, "slurm_apptainer.sbatch", cfg, env=dict(SLURM_ENV, IMAGE=str(stubs.root / "none.sif")))
    assert res.returncode == 2 and "image" in res.stderr


def test_slurm_warns_when_config_threads_differ(stubs):
    cfg = stubs.tile("t1")
    cfg.write_text("outputs:\n  work_dir: work\nmpi:\n  threads_per_rank: 2\n")
    res = run(stubs, "slurm_tile.sbatch", cfg, env=SLURM_ENV)        # 3 CPUs per task
    assert res.returncode == 0 and "mpi.threads_per_rank=2" in res.stderr
    res = run(stubs, "slurm_tile.sbatch", cfg, env=dict(SLURM_ENV, SLURM_CPUS_PER_TASK="2"))
    assert "WARNING" not in res.stderr
