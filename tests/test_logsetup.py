"""Logging set-up: per-command log file (append), rank handling, header, config snapshot."""
import logging
import re

import pytest

from tract7dt_mpi import __version__
from tract7dt_mpi.config import config_from_dict, load_config
from tract7dt_mpi.errors import ConfigError
from tract7dt_mpi.logsetup import (LOGGER_NAME, header_lines, launcher_rank_size,
                                   log_config, reset_logging, setup_logging, snapshot_config)


@pytest.fixture(autouse=True)
def _reset_logger():
    yield
    reset_logging()
    assert logging.getLogger(LOGGER_NAME).propagate


def cfg_for(tmp_path, **sections):
    return config_from_dict({"outputs": {"work_dir": str(tmp_path / "wd")}, **sections}, tmp_path)


def test_auto_log_file_appends(tmp_path, capsys):
    cfg = cfg_for(tmp_path)
    logger, path = setup_logging(cfg, "run-epsf")
    assert path == str(tmp_path / "wd" / "run-epsf.log")
    logger.info("first message")
    logger, _ = setup_logging(cfg, "run-epsf")           # second command invocation
    logging.getLogger(LOGGER_NAME + ".stages.x").info("second message")
    text = (tmp_path / "wd" / "run-epsf.log").read_text()
    assert "first message" in text and "| tract7dt_mpi.stages.x | INFO | second message" in text
    assert text.count("first message") == 1                # old handler removed, no duplicates
    assert "second message" in capsys.readouterr().err


def test_null_file_console_only_and_level(tmp_path, capsys):
    cfg = cfg_for(tmp_path, logging={"file": None, "level": "WARNING", "format": "%(levelname)s:%(message)s"})
    logger, path = setup_logging(cfg, "run")
    assert path is None
    logger.info("hidden")
    logger.warning("shown")
    assert capsys.readouterr().err == "WARNING:shown\n"
    assert not (tmp_path / "wd").exists()


def test_other_ranks_warn_on_stderr_only(tmp_path, capsys):
    cfg = cfg_for(tmp_path, logging={"format": "%(message)s"})
    logger, path = setup_logging(cfg, "run", rank=3, size=4)
    assert path is None
    logger.info("info")
    logger.warning("careful")
    assert capsys.readouterr().err == "[rank 3] careful\n"
    assert not (tmp_path / "wd" / "run.log").exists()


def test_per_rank_log_files(tmp_path):
    cfg = cfg_for(tmp_path, mpi={"per_rank_logs": True})
    logger, path = setup_logging(cfg, "run", rank=2, size=4)
    assert path == str(tmp_path / "wd" / "logs" / "run.rank0002.log")
    logger.info("detail")
    assert "detail" in (tmp_path / "wd" / "logs" / "run.rank0002.log").read_text()


def test_bad_format_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="^logging.format: invalid log format"):
        setup_logging(cfg_for(tmp_path, logging={"format": "%(nonsense"}), "run")


def test_header_lines():
    lines = header_lines(["tract7dt-mpi", "run", "my config.yaml"], 16)
    text = "\n".join(lines)
    assert lines[0].startswith(f"tract7dt-mpi {__version__}")
    assert "Command line: tract7dt-mpi run 'my config.yaml'" in text
    for lib in ("numpy", "scipy", "astropy", "photutils", "sep", "h5py", "mpi4py"):
        assert re.search(rf"\b{lib} \S+", text), lib
    assert re.search(r"h5py \S+ \(HDF5 \S+, MPI=(True|False)\)", text)
    assert "MPI library:" in text and "MPI world size: 16" in text


def test_snapshot_is_byte_for_byte_and_unique(tmp_path):
    p = tmp_path / "c.yaml"
    raw = b"# my settings \xc3\xa9\ncrop:\n  margin: 3   # trailing comment\n"
    p.write_bytes(raw)
    cfg = load_config(p)
    a = snapshot_config(cfg, str(tmp_path / "wd"))
    b = snapshot_config(cfg, str(tmp_path / "wd"))
    assert a != b
    assert re.fullmatch(r"config_used_\d{8}_\d{6}(_\d+)?\.yaml", a.rsplit("/", 1)[1])
    assert open(a, "rb").read() == raw == open(b, "rb").read()


def test_log_config_notices_and_full_dump_to_file_only(tmp_path, capsys):
    cfg = cfg_for(tmp_path, patch_run={"max_workers": 8}, logging={"format": "%(message)s"})
    logger, path = setup_logging(cfg, "run")
    log_config(logger, cfg)
    err = capsys.readouterr().err
    assert "Config notice: patch_run.max_workers:" in err
    assert "Resolved config" not in err
    text = open(path).read()
    assert "Resolved config:" in text and "n_opt_iters: 20" in text


def test_launcher_rank_size(monkeypatch):
    for v in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "PMIX_RANK",
              "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(v, raising=False)
    assert launcher_rank_size() == (0, 1)
    monkeypatch.setenv("PMIX_RANK", "5")
    assert launcher_rank_size() == (5, 6)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "8")
    assert launcher_rank_size() == (1, 8)


def test_header_and_config_reach_the_file_even_at_warning_level(tmp_path, capsys):
    from tract7dt_mpi.logsetup import log_header
    cfg = cfg_for(tmp_path, logging={"level": "WARNING"})
    logger, path = setup_logging(cfg, "merge")
    log_header(logger, ["tract7dt-mpi", "merge", "c.yaml"], 2)
    log_config(logger, cfg)
    logger.info("routine detail")
    text = open(path).read()
    assert "MPI world size: 2" in text and "Resolved config:" in text
    assert "routine detail" not in text
    assert capsys.readouterr().err == ""


def test_mpi_version_string_without_nul_bytes(monkeypatch):
    import sys
    import types
    fake = types.SimpleNamespace(Get_library_version=lambda: "Open MPI v4.1.4, ident: 4.1.4\x00\x00\n")
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", fake)
    line = [ln for ln in header_lines(["tract7dt-mpi"], 2) if ln.startswith("MPI library:")][0]
    assert line == "MPI library: Open MPI v4.1.4, ident: 4.1.4"


def test_full_disk_log_file_is_silent(tmp_path, capsys):
    import errno
    cfg = config_from_dict({"outputs": {"work_dir": str(tmp_path)}})
    logger, logfile = setup_logging(cfg, "run")

    class Full:
        def write(self, _text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    fh = [h for h in logger.handlers if isinstance(h, logging.FileHandler)][0]
    fh.stream = Full()
    logger.error("one record")
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    reset_logging()
