"""A full disk (ENOSPC, simulated): one error line naming the folder and its free space, exit 2
before any task (3 once the journal exists: resumable), no temporary files left behind."""
import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tract7dt_mpi.errors import DiskFullError, disk_full_error, is_disk_full
from tract7dt_mpi.io.prepared import PreparedWriter

REPO = Path(__file__).resolve().parents[1]
ERROR = "tract7dt-mpi: error: "


def _enospc(path=None):
    return OSError(errno.ENOSPC, "No space left on device", path)


def test_is_disk_full_recognises_errno_and_h5py_text():
    assert is_disk_full(_enospc())
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(OSError("Can't write data (file write failed: errno = 28, error message = "
                                "'No space left on device')"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("No space left on device"))


def test_disk_full_error_names_folder_and_free_space(tmp_path):
    err = disk_full_error(_enospc(str(tmp_path / "x.h5")), "/elsewhere")
    assert isinstance(err, DiskFullError) and err.exit_code == 2
    assert f"no space left on device writing in {tmp_path} (" in str(err) and " free)" in str(err)


def test_prepared_store_temporary_removed_when_close_fails(tmp_path):
    path = tmp_path / "prepared.h5"
    w = PreparedWriter(str(path), shape=(8, 8))
    w.write_white(np.zeros((8, 8)), np.ones((8, 8)))
    real = w._f

    class FullOnClose:                  # the final flush of HDF5 hits the full disk
        def __getattr__(self, name):
            return getattr(real, name)

        def close(self):
            real.close()
            raise _enospc()

    w._f = FullOnClose()
    with pytest.raises(OSError):
        w.close()
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    from tract7dt_mpi.sample import make_sample
    d = tmp_path_factory.mktemp("diskfull") / "T"
    make_sample(str(d), bands=2, size=256, verbose=False)
    return d


def _run_with_fault(tile, patch: str, tmp_path):
    """Run the CLI in a subprocess after ``patch`` (Python code) installed the simulated fault."""
    import shutil
    t = tmp_path / "T"
    shutil.copytree(tile, t, ignore=shutil.ignore_patterns("work"))
    code = textwrap.dedent(patch) + "\nimport sys\nfrom tract7dt_mpi import cli\nsys.exit(cli.main(['run', 'config.yaml']))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "PMIX_", "SLURM_"))}
    env.update(PYTHONPATH=str(REPO), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=t, env=env, capture_output=True, text=True,
                          timeout=180)
    return t, proc


def _one_error_line(proc):
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(ERROR)]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_full_disk_while_loading_exit_2_and_no_temporary_left(tile, tmp_path):
    t, proc = _run_with_fault(tile, """
        import errno
        from tract7dt_mpi.io import prepared
        def full(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        prepared.PreparedWriter.write_white = full
    """, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc)
    assert f"no space left on device writing in {os.path.realpath(t / 'work')} (" in line
    assert " free)" in line
    left = [p.name for p in (t / "work").iterdir() if "tmp" in p.name]
    assert left == [], left
    assert not (t / "work" / "tract7dt-mpi.lock").exists()     # released on the error path


def test_full_disk_while_a_band_task_writes_exit_2(tile, tmp_path):
    t, proc = _run_with_fault(tile, """
        import errno
        from tract7dt_mpi.io import prepared_bands
        def full(path, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        prepared_bands.write_band_file = full
    """, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc)
    assert f"no space left on device writing in {os.path.realpath(t / 'work' / 'prepared_bands')} (" in line


def test_full_disk_once_the_journal_exists_exit_3(tile, tmp_path):
    t, proc = _run_with_fault(tile, """
        import errno
        from tract7dt_mpi.io import journal
        real = journal.Journal.record
        def record(self, task, state, **kw):
            if state == journal.DONE:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, task, state, **kw)
        journal.Journal.record = record
    """, tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = _one_error_line(proc)
    assert "no space left on device" in line and line.endswith("run again with --resume")
