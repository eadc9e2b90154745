"""CLI: exit codes, one-line error messages (also under mpirun), dump-config, dispatch to the pipeline."""
import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from tract7dt_mpi import __version__
from tract7dt_mpi.cli import command as cli
from tract7dt_mpi.config import config_from_dict, load_config
from tract7dt_mpi.errors import InputError
from tract7dt_mpi.logsetup import reset_logging

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = [v for v in os.environ if v.startswith(("OMPI_", "PMI_", "PMIX_", "SLURM_", "MV2_"))]


def clean_env():
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return env


def run_cli(args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "tract7dt_mpi.cli", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc, text):
    assert proc.stderr == f"tract7dt-mpi: error: {text}\n", proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.fixture
def bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("patch_run:\n  n_opt_itres: 3\n")
    return p


# -- subprocess: what a user sees --------------------------------------------------------------

def test_version(tmp_path):
    proc = run_cli(["--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"tract7dt-mpi {__version__}"


def test_typo_key_positional_and_every_command(tmp_path, bad_yaml):
    msg = "patch_run.n_opt_itres: unknown key; did you mean n_opt_iters?"
    proc = run_cli(["bad.yaml"], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc, msg)
    for command in cli.PIPELINE_COMMANDS:
        proc = run_cli([command, "--config", "bad.yaml"], tmp_path)
        assert proc.returncode == 2, command
        one_error_line(proc, msg)
    proc = run_cli(["run-patches", "bad.yaml", "--resume"], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc, msg)


def test_wrong_type_and_missing_config_exit_2(tmp_path):
    (tmp_path / "t.yaml").write_text("crop:\n  margin: ten\n")
    proc = run_cli(["run", "t.yaml"], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc, "crop.margin: expected int, got str 'ten'")
    proc = run_cli(["merge", "--config", "nope.yaml"], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc, "Config not found: nope.yaml")


def test_missing_input_file_exit_2(tmp_path):
    (tmp_path / "c.yaml").write_text("inputs:\n  input_catalog: cat.csv\noutputs:\n  work_dir: wd\n")
    proc = run_cli(["c.yaml"], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc, f"inputs.input_catalog: file not found: {os.path.realpath(tmp_path)}/cat.csv")
    assert not (tmp_path / "wd").exists()          # nothing created before validation passes


def test_usage_errors_exit_2(tmp_path):
    proc = run_cli(["run"], tmp_path)
    assert proc.returncode == 2 and "a config file is required" in proc.stderr
    proc = run_cli(["run", "c.yaml", "--deadline", "soon"], tmp_path)
    assert proc.returncode == 2
    proc = run_cli(["run", "--bogus-option", "c.yaml"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_dump_config_default_refuse_force_and_stdout(tmp_path):
    proc = run_cli(["dump-config"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "sample_config.yaml"
    assert load_config(out) == config_from_dict({}, tmp_path)
    out.write_text("# edited\n")
    proc = run_cli(["dump-config"], tmp_path)
    assert proc.returncode == 2
    one_error_line(proc, f"{out}: file exists; use --force to overwrite")
    assert out.read_text() == "# edited\n"
    proc = run_cli(["dump-config", "--out", "sub/dir/c.yaml"], tmp_path)
    assert proc.returncode == 0 and (tmp_path / "sub/dir/c.yaml").exists()
    proc = run_cli(["dump-config", "--force"], tmp_path)
    assert proc.returncode == 0 and out.read_text() != "# edited\n"
    proc = run_cli(["dump-config", "--out", "-"], tmp_path)
    assert proc.returncode == 0 and "n_opt_iters: 20" in proc.stdout


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
def test_bad_config_under_mpirun_two_ranks(tmp_path, bad_yaml):
    env = clean_env()
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    t0 = time.time()
    proc = subprocess.run(["mpirun", "-n", "2", sys.executable, "-m", "tract7dt_mpi.cli", "bad.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert time.time() - t0 < 120
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "tract7dt-mpi: error:" in ln]
    assert lines == ["tract7dt-mpi: error: patch_run.n_opt_itres: unknown key; did you mean n_opt_iters?"]
    assert "Traceback" not in proc.stdout + proc.stderr
    (tmp_path / "m.yaml").write_text("inputs:\n  input_catalog: cat.csv\noutputs:\n  work_dir: wd\n")
    proc = subprocess.run(["mpirun", "-n", "2", sys.executable, "-m", "tract7dt_mpi.cli", "run", "m.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "tract7dt-mpi: error:" in ln]
    assert lines == [f"tract7dt-mpi: error: inputs.input_catalog: file not found: {os.path.realpath(tmp_path)}/cat.csv"]


# -- in process: argument handling and dispatch ------------------------------------------------

def test_normalise_argv_inserts_run():
    n = cli._normalise_argv
    assert n(["c.yaml"]) == ["run", "c.yaml"]
    assert n(["--log-level", "DEBUG", "c.yaml", "--resume"]) == ["run", "--log-level", "DEBUG", "c.yaml", "--resume"]
    assert n(["merge", "c.yaml"]) == ["merge", "c.yaml"]
    assert n(["--version"]) == ["--version"]
    assert n(["dump-config", "--out", "x.yaml"]) == ["dump-config", "--out", "x.yaml"]


def test_parse_deadline():
    now = 1_000_000.0
    assert cli.parse_deadline("3600", now) == now + 3600
    assert cli.parse_deadline("90m", now) == now + 5400
    assert cli.parse_deadline("2h", now) == now + 7200
    assert cli.parse_deadline("2030-01-01T00:00:00+00:00", now) == 1893456000.0
    with pytest.raises(InputError, match="already past"):
        cli.parse_deadline("2001-01-01T00:00", time.time())
    with pytest.raises(InputError, match="expected seconds from now"):
        cli.parse_deadline("tomorrow", now)


@pytest.fixture
def sample_cfg(tmp_path, monkeypatch):
    """A valid config with existing (empty) inputs; the thread variables are restored afterwards."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "MPLBACKEND"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "cat.csv").write_text("ID,RA,DEC\n")
    (tmp_path / "images.txt").write_text("")
    p = tmp_path / "c.yaml"
    p.write_text("inputs:\n  input_catalog: cat.csv\n  image_list_file: images.txt\n"
                 "outputs:\n  work_dir: wd\npatch_run:\n  python_exe: /opt/py\n")
    yield p
    reset_logging()


def fake_pipeline(monkeypatch, fn=None):
    mod = types.ModuleType("tract7dt_mpi.pipeline")
    if fn is not None:
        mod.run_command = fn
    monkeypatch.setitem(sys.modules, "tract7dt_mpi.pipeline", mod)


def test_dispatch_to_run_command_with_log_snapshot_and_header(sample_cfg, monkeypatch, capsys):
    calls = []

    def run_command(command, cfg, options):
        calls.append((command, cfg, options))
        return 4

    fake_pipeline(monkeypatch, run_command)
    rc = cli.main(["run-epsf", str(sample_cfg), "--resume", "--deadline", "1h", "--log-level", "debug"])
    assert rc == 4
    (command, cfg, options), = calls
    assert command == "run-epsf" and cfg.logging.level == "DEBUG"
    assert options["resume"] is True and options["force"] is False
    assert abs(options["deadline"] - (time.time() + 3600)) < 60
    wd = Path(cfg.outputs.work_dir)
    assert options["log_file"] == str(wd / "run-epsf.log") and (options["rank"], options["size"]) == (0, 1)
    log = (wd / "run-epsf.log").read_text()
    assert f"tract7dt-mpi {__version__}" in log and "MPI world size: 1" in log
    assert "Command line: tract7dt-mpi run-epsf" in log and "numpy " in log and "MPI=" in log
    assert "patch_run.python_exe:" in log                            # legacy-key notice
    snaps = list(wd.glob("config_used_*.yaml"))
    assert len(snaps) == 1 and re.fullmatch(r"config_used_\d{8}_\d{6}\.yaml", snaps[0].name)
    assert snaps[0].read_bytes() == sample_cfg.read_bytes()
    assert f"Config snapshot saved: {snaps[0]}" in log


def test_input_error_from_pipeline_exit_2(sample_cfg, monkeypatch, capsys):
    def run_command(command, cfg, options):
        raise InputError("images.txt line 3: file not found: /x/y.fits")

    fake_pipeline(monkeypatch, run_command)
    assert cli.main([str(sample_cfg)]) == 2
    assert capsys.readouterr().err.endswith("tract7dt-mpi: error: images.txt line 3: file not found: /x/y.fits\n")


def test_unexpected_error_one_line_and_traceback_in_log(sample_cfg, monkeypatch, capsys):
    def run_command(command, cfg, options):
        raise ZeroDivisionError("division by zero\nsecond line")

    fake_pipeline(monkeypatch, run_command)
    assert cli.main(["run", "-c", str(sample_cfg)]) == 1
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]
    log = Path(load_config(sample_cfg).outputs.work_dir) / "run.log"
    assert last == f"tract7dt-mpi: internal error: ZeroDivisionError: division by zero (full traceback in {log})"
    assert "Traceback" not in err
    assert "Traceback (most recent call last)" in log.read_text()
