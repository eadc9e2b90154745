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


def test_hdf5_locking_default_respects_user(monkeypatch):
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "TRUE")
    mpienv.set_hdf5_env()
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "TRUE"
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING")
    mpienv.set_hdf5_env()
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "FALSE"
