"""Bad-input battery: every kind of broken input ends with exit 2 and one error line naming it.

Each case copies one small generated tile (session fixture), breaks one thing, runs the CLI as a
user would (a subprocess) and checks: exit code 2, exactly one ``tract7dt-mpi: error:`` line on
stderr naming the key or file, no traceback, and nothing else on stderr but log records (the
console copy of the log, ``YYYY-MM-DD hh:mm:ss,mmm | logger | LEVEL | ...``).  A subset runs
again under ``mpirun -n 2``: the same single line (rank 0 reports it), exit 2 on every rank, no
hang (Open MPI adds its own "exited with non-zero status" box, which is not ours).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = [v for v in os.environ if v.startswith(("OMPI_", "PMI_", "PMIX_", "SLURM_", "MV2_"))]
LOG_RECORD = re.compile(r"^(\[rank \d+\] )?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \| ")
ERROR = "tract7dt-mpi: error: "


def _env():
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE")
    return env


@pytest.fixture(scope="session")
def tile(tmp_path_factory):
    """One 3-band 256 x 256 px synthetic tile, generated once."""
    from tract7dt_mpi.sample import make_sample
    out = tmp_path_factory.mktemp("bad_inputs") / "T"
    make_sample(str(out), bands=3, size=256, verbose=False)
    return out


@pytest.fixture(scope="session", autouse=True)
def _lock_holder():
    """A sleeping process whose command line names tract7dt-mpi: the owner of the fake lock."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "tract7dt-mpi"])
    _HOLDER["pid"] = p.pid
    yield
    p.kill()
    p.wait()


# ---------------------------------------------------------------------------------- breakers
def _config(t: Path, text: str) -> None:
    (t / "config.yaml").write_text(text)


def _append_config(t: Path, text: str) -> None:
    with open(t / "config.yaml", "a") as fh:
        fh.write("\n" + text + "\n")


def _edit_config(t: Path, old: str, new: str) -> None:
    p = t / "config.yaml"
    s = p.read_text()
    assert old in s, old
    p.write_text(s.replace(old, new))


def _images(t: Path) -> list[Path]:
    return sorted((t / "images").glob("*.fits"))


def _edit_header(t: Path, fn, which: int = 1) -> None:
    p = _images(t)[which]
    with fits.open(p, mode="update") as hdul:
        fn(hdul[0].header)


def _set_pixels(t: Path, value: float, which: int = 1) -> None:
    p = _images(t)[which]
    with fits.open(p, mode="update") as hdul:
        hdul[0].data[...] = value


def _catalog(t: Path, fn) -> None:
    import pandas as pd
    p = t / "input_catalog.csv"
    df = pd.read_csv(p, dtype={"ID": str})
    fn(df).to_csv(p, index=False)


def _gaia(t: Path, fn) -> None:
    import pandas as pd
    p = t / "gaiaxp_synphot.csv"
    fn(pd.read_csv(p, dtype=str)).to_csv(p, index=False)


def _no_wcs(h):
    for k in list(h.keys()):
        if k[:5] in ("CTYPE", "CRVAL", "CRPIX", "CDELT", "CUNIT") or k[:2] in ("CD", "PC") \
                and "_" in k:
            del h[k]


def _shift_ra(df):
    df["RA"] = df["RA"] + 5.0
    return df


def _resized(t: Path) -> None:
    p = _images(t)[2]
    with fits.open(p) as hdul:
        hdr, data = hdul[0].header.copy(), hdul[0].data[:200, :]
    fits.PrimaryHDU(data, hdr).writeto(p, overwrite=True)


_HOLDER = {}


def _lock(t: Path) -> None:
    """A lock held by a live process that looks like a tract7dt-mpi run (see the holder fixture)."""
    (t / "work").mkdir(exist_ok=True)
    (t / "work" / "tract7dt-mpi.lock").write_text(
        f'{{"host": "{socket.gethostname()}", "pid": {_HOLDER["pid"]}, '
        f'"started": "2026-01-01T00:00:00+00:00", "command": "tract7dt-mpi run config.yaml"}}\n')


def _journal_of_other_plan(t: Path) -> None:
    (t / "work").mkdir(exist_ok=True)
    (t / "work" / "journal.jsonl").write_text('{"type": "header", "plan_hash": "0123"}\n')


def _read_only_work_dir(t: Path) -> None:
    _edit_config(t, "work_dir: work", "work_dir: /proc/x/work")


# (id, how to break the tile, extra CLI arguments, text the error line must contain)
CASES = [
    ("yaml_syntax", lambda t: _config(t, "inputs: [unclosed\n"), [], "config.yaml"),
    ("yaml_not_mapping", lambda t: _config(t, "- a\n- b\n"), [], "top level must be a mapping"),
    ("unknown_key", lambda t: _edit_config(t, "patch_run:\n", "patch_run:\n  n_opt_itres: 3\n"), [],
     "patch_run.n_opt_itres: unknown key"),
    ("unknown_section", lambda t: _append_config(t, "fitting:\n  x: 1"), [], "fitting"),
    ("wrong_type_int", lambda t: _edit_config(t, "margin: 16", "margin: ten"), [],
     "crop.margin: expected int"),
    ("wrong_type_bool", lambda t: _edit_config(t, "enabled: true\n  margin", "enabled: maybe\n  margin"),
     [], "crop.enabled"),
    ("bad_enum", lambda t: _edit_config(t, "patch_run:\n", "patch_run:\n  engine: magic\n"), [],
     "patch_run.engine"),
    ("bad_log_format", lambda t: _append_config(t, "logging:\n  format: '%(nope'"), [],
     "logging.format"),
    ("empty_config", lambda t: _config(t, ""), [], "the config has no inputs"),
    ("missing_config", lambda t: (t / "config.yaml").unlink(), [], "Config not found"),
    ("missing_catalog", lambda t: (t / "input_catalog.csv").unlink(), [], "inputs.input_catalog"),
    ("catalog_is_folder", lambda t: ((t / "input_catalog.csv").unlink(),
                                     (t / "input_catalog.csv").mkdir()), [], "inputs.input_catalog"),
    ("missing_image_list", lambda t: (t / "image_list.txt").unlink(), [], "inputs.image_list_file"),
    ("image_list_empty", lambda t: (t / "image_list.txt").write_text("# nothing\n\n"), [],
     "image_list.txt"),
    ("image_list_missing_fits", lambda t: (t / "image_list.txt").write_text("images/nope.fits\n"), [],
     "nope.fits"),
    ("image_list_folder_line", lambda t: (t / "image_list.txt").write_text("images\n"), [], "images"),
    ("catalog_no_ra", lambda t: _catalog(t, lambda d: d.drop(columns=["RA"])), [], "RA"),
    ("catalog_text_dec", lambda t: _catalog(t, lambda d: d.assign(DEC="north")), [], "DEC"),
    ("catalog_empty", lambda t: _catalog(t, lambda d: d.iloc[:0]), [], "input_catalog.csv"),
    ("catalog_binary", lambda t: (t / "input_catalog.csv").write_bytes(b"\x00\xff\x10" * 200), [],
     "input_catalog.csv"),
    ("catalog_duplicate_ids", lambda t: _catalog(t, lambda d: d.assign(ID="7")), [], "ID"),
    ("catalog_all_off_image", lambda t: _catalog(t, _shift_ra), [], "none of its"),
    ("catalog_all_nan_coords", lambda t: _catalog(t, lambda d: d.assign(RA=np.nan, DEC=np.nan)), [],
     "input_catalog.csv"),
    ("fits_not_fits", lambda t: _images(t)[1].write_text("SIMPLE? no, just text\n"), [], "SYN7DT_m650"),
    ("fits_truncated", lambda t: _images(t)[1].write_bytes(_images(t)[1].read_bytes()[:5000]), [],
     "SYN7DT_m650"),
    ("fits_no_wcs", lambda t: _edit_header(t, _no_wcs), [], "SYN7DT_m650"),
    ("fits_no_filter", lambda t: _edit_header(t, lambda h: h.remove("FILTER")), [], "FILTER"),
    ("fits_no_zp", lambda t: _edit_header(t, lambda h: h.remove("ZP_AUTO")), [], "ZP_AUTO"),
    ("fits_text_zp", lambda t: _edit_header(t, lambda h: h.set("ZP_AUTO", "bright")), [], "ZP_AUTO"),
    ("fits_bad_skysig", lambda t: _edit_header(t, lambda h: h.set("SKYSIG", -1.0)), [], "SKYSIG"),
    ("fits_no_egain", lambda t: _edit_header(t, lambda h: h.remove("EGAIN")), [], "EGAIN"),
    ("fits_duplicate_filter", lambda t: _edit_header(t, lambda h: h.set("FILTER", "m400")), [],
     "Duplicate FILTER"),
    ("fits_shape_mismatch", _resized, [], "shape mismatch"),
    ("fits_wcs_misaligned", lambda t: _edit_header(t, lambda h: h.set("CRVAL1", h["CRVAL1"] + 0.01)),
     [], "WCS mismatch"),
    ("fits_constant_zero", lambda t: _set_pixels(t, 0.0), [], "SYN7DT_m650.fits is constant"),
    ("gaia_empty", lambda t: (t / "gaiaxp_synphot.csv").write_text(""), [], "gaiaxp_synphot.csv"),
    ("gaia_text_magnitude", lambda t: _gaia(t, lambda d: d.assign(mag_m400="bright")), [],
     "'mag_m400' must be numeric"),
    ("crop_too_large", lambda t: _edit_config(t, "margin: 16", "margin: 5000"), [], "crop.margin"),
    ("work_dir_unwritable", _read_only_work_dir, [], "outputs.work_dir"),
    ("work_dir_is_file", lambda t: (t / "work").write_text("x"), [], "outputs.work_dir"),
    ("work_dir_locked", _lock, [], "in use by another run"),
    ("resume_other_plan", _journal_of_other_plan, ["--resume"], "refusing to resume"),
    ("bad_deadline", lambda t: None, ["--deadline", "soon"], "--deadline"),
    ("two_configs", lambda t: None, ["--config", "other.yaml"], "two different config files"),
]

#: run again under mpirun -n 2
MPI_CASES = ("wrong_type_int", "missing_catalog", "catalog_empty", "catalog_all_off_image",
             "fits_not_fits", "fits_no_wcs", "fits_shape_mismatch", "fits_constant_zero",
             "work_dir_unwritable", "work_dir_locked", "resume_other_plan")


def _prepared(tile: Path, tmp_path: Path, case) -> Path:
    t = tmp_path / "T"
    shutil.copytree(tile, t, ignore=shutil.ignore_patterns("work"))
    case[1](t)
    return t


def _check(proc, expect: str):
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == 2, out
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(ERROR)]
    assert len(errors) == 1, proc.stderr
    assert expect in errors[0], errors[0]
    return errors[0]


def _args(case):
    return ["run", "config.yaml", *case[2]]


def test_battery_has_enough_kinds():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
    assert set(MPI_CASES) <= {c[0] for c in CASES} and len(MPI_CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_process(case, tile, tmp_path):
    t = _prepared(tile, tmp_path, case)
    proc = subprocess.run([sys.executable, "-m", "tract7dt_mpi.cli", *_args(case)], cwd=t, env=_env(),
                          capture_output=True, text=True, timeout=120)
    _check(proc, case[3])
    others = [ln for ln in proc.stderr.splitlines() if not ln.startswith(ERROR)]
    stray = [ln for ln in others if ln.strip() and not LOG_RECORD.match(ln)]
    assert not stray, proc.stderr           # nothing but log records besides the error line


@pytest.mark.mpi
@pytest.mark.slow          # 11 x mpirun: ~2 s each on an idle machine, 10+ s on a busy one
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
@pytest.mark.parametrize("name", MPI_CASES)
def test_bad_input_two_ranks(name, tile, tmp_path):
    case = next(c for c in CASES if c[0] == name)
    t = _prepared(tile, tmp_path, case)
    env = _env()
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    proc = subprocess.run(["mpirun", "-n", "2", "--oversubscribe", "--bind-to", "none", sys.executable,
                           "-m", "tract7dt_mpi.cli", *_args(case)], cwd=t, env=env,
                          capture_output=True, text=True, timeout=120)
    _check(proc, case[3])
    assert "internal error" not in proc.stdout + proc.stderr


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
def test_second_run_on_a_busy_work_dir_is_refused_then_stale_lock_taken_over(tile, tmp_path):
    import signal
    import time
    t = tmp_path / "T"
    shutil.copytree(tile, t, ignore=shutil.ignore_patterns("work"))
    first = subprocess.Popen([sys.executable, "-m", "tract7dt_mpi.cli", "run", "config.yaml"], cwd=t,
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    lock = t / "work" / "tract7dt-mpi.lock"
    try:
        deadline = time.time() + 60
        while not lock.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert lock.exists() and first.poll() is None
        os.killpg(first.pid, signal.SIGSTOP)    # alive but paused: it cannot finish before the second run
        env = _env()
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        proc = subprocess.run(["mpirun", "-n", "2", "--oversubscribe", "--bind-to", "none",
                               sys.executable, "-m", "tract7dt_mpi.cli", "run", "config.yaml"],
                              cwd=t, env=env, capture_output=True, text=True, timeout=120)
        line = _check(proc, "in use by another run")
        assert f"pid {first.pid}," in line and "command: tract7dt-mpi run config.yaml" in line
        assert first.poll() is None                      # the first run was not disturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)            # a dead run leaves its lock behind
        first.wait(timeout=30)
    assert lock.exists()
    proc = subprocess.run([sys.executable, "-m", "tract7dt_mpi.cli", "compute-zp", "config.yaml"],
                          cwd=t, env=_env(), capture_output=True, text=True, timeout=120)
    assert "in use by another run" not in proc.stderr
    assert "Run lock: took over the lock" in proc.stderr and f"pid {first.pid} is no longer" in proc.stderr
    assert not lock.exists()
