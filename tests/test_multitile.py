"""``run --tiles``: several tiles under one launch (tract7dt_mpi.multitile), with timeouts on all runs.

The reference of every tile is its own single-tile one-process run: the multi-tile run must give a
byte-identical ``output_catalog.csv`` (floats are written with round-trip precision).
"""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tract7dt_mpi.errors import EXIT_INPUT, EXIT_OK, EXIT_RESUMABLE, EXIT_TASK_FAILURES, InputError
from tract7dt_mpi.io.tiles import read_tile_list
from tract7dt_mpi.multitile import exit_code, order
from tract7dt_mpi.parallel.scheduler import Task

import test_pipeline as _pipeline_tests  # noqa: E402  (tests/ is on sys.path)

# the fast single-tile config of the pipeline tests (2 s heartbeat), named per tile
FAST = _pipeline_tests.FAST.replace("tile_name: T,", "tile_name: {name},")


def _env():
    env = dict(os.environ)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "MPLBACKEND": "Agg",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("TRACT7DT_FORCE_SERIAL_H5", None)
    return env


def catalog_text(work):
    return pd.read_csv(work / "output_catalog.csv", dtype=str, keep_default_na=False)


# ---------------------------------------------------------------------- tile list, exit code, order
def test_tile_list_comments_blank_lines_and_relative_paths(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/one.yaml", "two.yaml"):
        (tmp_path / name).write_text("{}\n")
    lst = tmp_path / "tiles.txt"
    lst.write_text("# my tiles\n\na/one.yaml   # first\n  two.yaml\n")
    assert read_tile_list(lst) == [str(tmp_path / "a" / "one.yaml"), str(tmp_path / "two.yaml")]


@pytest.mark.parametrize("text, needle", [("missing.yaml\n", "tiles.txt:1: tile config"),
                                          ("# nothing\n\n", "no tile configs listed"),
                                          ("x.yaml\nx.yaml\n", "tiles.txt:2: tile config")])
def test_tile_list_errors_name_the_file_and_line(tmp_path, text, needle):
    (tmp_path / "x.yaml").write_text("{}\n")
    lst = tmp_path / "tiles.txt"
    lst.write_text(text)
    with pytest.raises(InputError, match=needle):
        read_tile_list(lst)


def test_exit_code_of_the_tile_outcomes():
    assert exit_code(["done", "skipped"]) == EXIT_OK
    assert exit_code(["done", "failed"]) == EXIT_TASK_FAILURES
    assert exit_code(["done", "done_with_failures"]) == EXIT_TASK_FAILURES
    assert exit_code(["failed", "failed"]) == EXIT_INPUT
    assert exit_code(["done", "stopped", "failed"]) == EXIT_RESUMABLE


def test_order_serial_steps_first_then_step_then_cost_across_tiles():
    def t(k, cost, kind="patch", excl=False):
        return Task(f"{k}|{kind}|{cost}", kind, cost=cost, payload=(k, None), exclusive=excl)
    got = order([t(0, 5), t(1, 9), t(0, 7), t(2, 1, "tile-plan", True), t(1, 1, "tile-prepare", True),
                 t(3, 2, "epsf"), t(0, 3, "summary"), t(2, 4, "load"), t(1, 0.5, "psf_field")])
    # a later tile's larger patch goes before an earlier tile's smaller ones
    assert [x.id for x in got] == ["1|tile-prepare|1", "2|tile-plan|1", "2|load|4", "1|psf_field|0.5",
                                   "3|epsf|2", "1|patch|9", "0|patch|7", "0|patch|5", "0|summary|3"]


# ---------------------------------------------------------------------- end to end under mpirun
need_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")


def _run(n, args, timeout):
    py = [sys.executable, "-m", "tract7dt_mpi.cli"] + list(args)
    cmd = py if n is None else ["mpirun", "-n", str(n), "--oversubscribe", "--bind-to", "none"] + py
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _cfg(sample, work, name):
    text = FAST.format(d=sample, work=work, name=name, iters=3, extra="")
    path = sample / f"{work.name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """Four small tiles of different seeds, each with its single-tile one-process reference."""
    from tract7dt_mpi.sample import make_sample
    d = tmp_path_factory.mktemp("tiles")
    out = []
    for k in range(4):
        make_sample(str(d / f"s{k}"), bands=2, size=256, seed=11 + k, verbose=False)
        ref = _cfg(d / f"s{k}", d / f"ref{k}", f"T{k}")
        r = _run(None, ["run", str(ref)], timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        out.append((d / f"s{k}", catalog_text(d / f"ref{k}")))
    assert not out[0][1].equals(out[1][1])          # different seeds: different tiles
    return d, out


@pytest.mark.slow
@pytest.mark.mpi
@need_mpirun
def test_four_tiles_one_broken_then_resume(tiles):
    d, refs = tiles
    cfgs = [_cfg(s, d / f"multi{k}", f"T{k}") for k, (s, _) in enumerate(refs)]
    bad = d / "bad"
    shutil.copytree(refs[3][0], bad)
    image = bad / "images" / "SYN7DT_m887.fits"
    image.write_bytes(b"this is not a FITS file\n" * 100)
    bad_cfg = _cfg(bad, d / "multibad", "BROKEN")
    lst = d / "tiles.txt"
    lst.write_text("# three good tiles and a broken one\n" + "".join(f"{c}\n" for c in cfgs[:3]) + f"{bad_cfg}\n")

    r = _run(3, ["run", "--tiles", str(lst)], timeout=400)
    assert r.returncode == EXIT_TASK_FAILURES, r.stderr[-4000:]
    log = (d / "tiles.log").read_text(errors="replace")
    failed = [ln for ln in log.splitlines() if "[tile BROKEN] FAILED" in ln]
    assert failed and str(bad_cfg) in failed[0] and "SYN7DT_m887.fits" in failed[0], log[-3000:]
    assert "[tile T0] Loaded band m887 (" in log and "[tile T2] ePSF" in log, log[-3000:]
    fields = [ln.split(" | ")[-1] for ln in log.splitlines() if "PSF field of degree" in ln]
    assert len(fields) == 3 * 2 and all(ln.startswith("[tile T") for ln in fields), fields   # once each
    summary = pd.read_csv(d / "tiles.summary.csv", keep_default_na=False)
    assert list(summary["status"]) == ["done", "done", "done", "failed"]
    for k in range(3):
        pd.testing.assert_frame_equal(catalog_text(d / f"multi{k}"), refs[k][1], obj=f"tile {k}")

    # resume with the fourth good tile instead of the broken one: the finished tiles are skipped
    lst.write_text("".join(f"{c}\n" for c in cfgs))
    r = _run(3, ["run", "--tiles", str(lst), "--resume"], timeout=300)
    assert r.returncode == EXIT_OK, r.stderr[-4000:]
    summary = pd.read_csv(d / "tiles.summary.csv", keep_default_na=False)
    assert list(summary["status"]) == ["skipped", "skipped", "skipped", "done"]
    pd.testing.assert_frame_equal(catalog_text(d / "multi3"), refs[3][1], obj="tile 3")
    log = (d / "tiles.log").read_text(errors="replace")
    assert log.count("finished in an earlier run: skipped") == 3


@pytest.mark.slow
@pytest.mark.mpi
@need_mpirun
def test_sigterm_mid_tile_then_resume_gives_the_single_tile_catalogs(tiles):
    """A stop while the tiles are in their ePSF or patch steps: exit 3, every tile ``stopped``
    or ``done``; ``--resume`` finishes them with the catalogues of their single-tile runs."""
    import signal
    import time
    d, refs = tiles
    cfgs = [_cfg(s, d / f"termed{k}", f"T{k}") for k, (s, _) in enumerate(refs[:2])]
    lst = d / "termed.txt"
    lst.write_text("".join(f"{c}\n" for c in cfgs))
    cmd = ["mpirun", "-n", "3", "--oversubscribe", "--bind-to", "none", sys.executable, "-m",
           "tract7dt_mpi.cli", "run", "--tiles", str(lst)]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert _pipeline_tests._wait_for(d / "termed0", '"task": "epsf/', 2), "no ePSF cell started"
        time.sleep(0.5)
        for pid in _pipeline_tests._rank_pids(str(lst)).values():
            os.kill(pid, signal.SIGTERM)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == EXIT_RESUMABLE, err[-4000:]
    summary = pd.read_csv(d / "termed.summary.csv", keep_default_na=False)
    assert "stopped" in set(summary["status"]) and set(summary["status"]) <= {"stopped", "done"}
    r = _run(3, ["run", "--tiles", str(lst), "--resume"], timeout=300)
    assert r.returncode == EXIT_OK, r.stderr[-4000:]
    log = (d / "termed.log").read_text()
    assert any("[tile T0] ePSF: " in ln and "already done" in ln for ln in log.splitlines())  # reused
    for k in range(2):
        pd.testing.assert_frame_equal(catalog_text(d / f"termed{k}"), refs[k][1], obj=f"tile {k}")


def test_crashing_step_and_missing_input_fail_their_tiles_only(tmp_path, monkeypatch):
    """In one process: a tile whose prepare step raises is failed (exit code 1 in the summary,
    the error named), a tile whose input file is missing fails with the file named (2); the run
    exits 2 as no tile could run."""
    import tract7dt_mpi.tile_steps as mt
    from tract7dt_mpi.cli import main
    (tmp_path / "cat.csv").write_text("ID,RA,DEC\n")
    (tmp_path / "images.txt").write_text("img.fits\n")
    (tmp_path / "img.fits").write_bytes(b"never read: the prepare step fails first\n")
    for name, cat in (("crash", "cat.csv"), ("missing", "nope.csv")):
        (tmp_path / f"{name}.yaml").write_text(
            f"inputs: {{tile_name: {name.upper()}, input_catalog: {cat}, image_list_file: images.txt}}\n"
            f"outputs: {{work_dir: w_{name}}}\n")
    (tmp_path / "tiles.txt").write_text("crash.yaml\nmissing.yaml\n")

    def boom(cfg):
        raise RuntimeError("stage exploded")
    monkeypatch.setattr(mt, "prepare_step", boom)
    assert main(["run", "--tiles", str(tmp_path / "tiles.txt")]) == EXIT_INPUT
    summary = pd.read_csv(tmp_path / "tiles.summary.csv", keep_default_na=False)
    assert list(summary["status"]) == ["failed", "failed"]
    assert list(summary["exit_code"]) == [1, 2]
    assert "RuntimeError: stage exploded" in summary["error"][0]
    assert "inputs.input_catalog: file not found" in summary["error"][1] and "nope.csv" in summary["error"][1]
    assert not (tmp_path / "w_crash" / "tract7dt-mpi.lock").exists()      # the lock was released
