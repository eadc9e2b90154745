"""Process environment helpers (no MPI launcher needed)."""

import os

from tract7dt_mpi.parallel import mpienv


def test_set_thread_env(monkeypatch):
    for v in mpienv.THREAD_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    changed = mpienv.set_thread_env(3, override=False)
    assert os.environ["OMP_NUM_THREADS"] == "8" and os.environ["OPENBLAS_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in changed
    mpienv.set_thread_env(0)                       # clamped to 1, overriding
    assert all(os.environ[v] == "1" for v in mpienv.THREAD_VARS)


def test_launcher_detection(monkeypatch):
    for v in mpienv._LAUNCHER_VARS + ("TRACT7DT_MPI",):
        monkeypatch.delenv(v, raising=False)
    assert not mpienv.launched_by_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert mpienv.launched_by_mpi()
    monkeypatch.setenv("TRACT7DT_MPI", "0")
    assert not mpienv.launched_by_mpi()


def test_one_process_comm_facade():
    c = mpienv.Comm(None)
    assert (c.rank, c.size, c.is_master, c.parallel) == (0, 1, True, False)
    assert c.bcast({"a": 1}) == {"a": 1} and c.gather(5) == [5] and c.allreduce_max(2) == 2
    c.barrier()


def _clear(monkeypatch):
    for v in mpienv.THREAD_VARS + (mpienv.THREADS_ENV,):
        monkeypatch.delenv(v, raising=False)


def test_job_script_thread_variable_overrides_config(monkeypatch):
    _clear(monkeypatch)
    monkeypatch.setenv("TRACT7DT_THREADS_PER_RANK", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    mpienv.set_thread_env(1)                                 # config says 1: the job script wins
    assert all(os.environ[v] == "4" for v in mpienv.THREAD_VARS)
    monkeypatch.setenv("TRACT7DT_THREADS_PER_RANK", "zero")   # unusable: ignored, config applies
    assert mpienv.resolve_threads(2) == (2, "mpi.threads_per_rank")


def test_user_exports_kept_when_neither_is_given(monkeypatch):
    from tract7dt_mpi.config import config_from_dict
    _clear(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    cfg = config_from_dict({"mpi": {"heartbeat_sec": 5}}, "/tmp")
    assert mpienv.configured_threads(cfg) is None
    mpienv.set_thread_env(mpienv.configured_threads(cfg))
    assert os.environ["OMP_NUM_THREADS"] == "6" and os.environ["OPENBLAS_NUM_THREADS"] == "1"
    cfg = config_from_dict({"mpi": {"threads_per_rank": 1}}, "/tmp")    # written: it applies
    assert mpienv.configured_threads(cfg) == 1
    mpienv.set_thread_env(mpienv.configured_threads(cfg))
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert mpienv.configured_threads(config_from_dict({"patch_run": {"threads_per_process": 3}},
                                                      "/tmp")) == 3


def test_master_works_resolution(monkeypatch):
    from tract7dt_mpi.parallel.scheduler import resolve_master_works
    monkeypatch.delenv("TRACT7DT_MASTER_WORKS", raising=False)
    assert [resolve_master_works("auto", n) for n in (1, 2, 8, 9)] == [False, True, True, False]
    assert resolve_master_works("true", 64) and not resolve_master_works("false", 2)
    assert resolve_master_works(True, 300) and not resolve_master_works(False, 3)
    monkeypatch.setenv("TRACT7DT_MASTER_WORKS", "0")
    assert not resolve_master_works("true", 4)


def test_rank_and_size_read_from_every_listed_launcher_variable(monkeypatch):
    from tract7dt_mpi.logsetup import launcher_rank_size
    for v in mpienv.RANK_VARS + mpienv.SIZE_VARS:
        monkeypatch.delenv(v, raising=False)
    for rank_var, size_var in zip(mpienv.RANK_VARS, mpienv.SIZE_VARS + mpienv.SIZE_VARS[:1]):
        monkeypatch.setenv(rank_var, "3")
        monkeypatch.setenv(size_var, "5")
        assert launcher_rank_size() == (3, 5)
        monkeypatch.delenv(rank_var)
        monkeypatch.delenv(size_var)
