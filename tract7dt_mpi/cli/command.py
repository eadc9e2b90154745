"""Command-line front end ``tract7dt-mpi``: parse arguments, load the config, map errors to exit codes.

No pipeline logic lives here. Every rank loads and validates the config before any MPI work, so
a bad config fails identically everywhere (exit 2, one line printed by rank 0) without a hang.
Pipeline commands are handed to ``tract7dt_mpi.pipeline.run_command(command, cfg, options)``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import sys
import time
import traceback

from .._version import __version__
from ..errors import (EXIT_ABORT, EXIT_INPUT, EXIT_OK, EXIT_RESUMABLE, InputError, disk_full_error,
                     is_disk_full)

PROG = "tract7dt-mpi"
PIPELINE_COMMANDS = {
    "run": "full pipeline: load, ePSF, patches, fit, merge, zero points",
    "run-epsf": "load inputs and build the ePSFs",
    "build-patches": "load inputs and build the patch plan",
    "build-patch-inputs": "load inputs, plan patches and build the per-patch inputs",
    "run-patches": "fit the planned patches",
    "merge": "merge per-patch results into the final catalog",
    "compute-zp": "compute zero points from the merged catalog",
}
OTHER_COMMANDS = ("dump-config", "make-sample", "simulate-scaling")
#: commands that read the input catalog and image list (checked on every rank before any work)
_NEEDS_INPUTS = ("run", "run-epsf", "build-patches", "build-patch-inputs")
_VALUE_OPTIONS = {"--config", "-c", "--deadline", "--log-level", "--out", "--bands", "--size", "--seed",
                  "--sources", "--store", "--ranks", "--tiles"}


def _rank_size():
    from ..logsetup import launcher_rank_size
    return launcher_rank_size()


class _Parser(argparse.ArgumentParser):
    """argparse that prints usage errors once (rank 0) and exits with EXIT_INPUT."""

    def error(self, message):
        if _rank_size()[0] == 0:
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(EXIT_INPUT)


def parse_deadline(text: str, now: float | None = None) -> float:
    """``--deadline``: seconds from now (``3600``, ``90m``, ``2h``) or an ISO time; return epoch seconds."""
    now = time.time() if now is None else now
    s = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([smh]?)", s)
    if m:
        return now + float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    try:
        when = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--deadline {text!r}: expected seconds from now (e.g. 3600, 90m, 2h) "
                         f"or an ISO time (e.g. 2025-06-01T18:30)") from None
    epoch = when.timestamp()  # naive times are local time
    if epoch <= now:
        raise InputError(f"--deadline {text!r}: that time is already past")
    return epoch


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="MPI-parallel forced multi-band model-fitting photometry for 7DT "
                "images. `tract7dt-mpi config.yaml` is the same as `tract7dt-mpi run config.yaml`.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, helptext in PIPELINE_COMMANDS.items():
        sp = sub.add_parser(name, help=helptext, description=helptext)
        sp.add_argument("config_pos", nargs="?", metavar="CONFIG", help="YAML config file")
        sp.add_argument("--config", "-c", metavar="CONFIG", help="YAML config file")
        sp.add_argument("--resume", action="store_true", help="continue an interrupted run from its journal")
        sp.add_argument("--force", action="store_true",
                        help="with --resume: accept a changed config/inputs (restart the plan)")
        sp.add_argument("--deadline", metavar="WHEN",
                        help="stop cleanly (exit 3) at this ISO time or after this many seconds (90m, 2h)")
        sp.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
                        help="override logging.level")
        sp.add_argument("--force-unlock", action="store_true",
                        help="take the work folder's lock even if another run seems to hold it")
        if name == "run":
            sp.add_argument("--tiles", metavar="LIST",
                            help="run every tile config listed in LIST (one YAML path per line) "
                                 "under this one launch, all tiles' tasks on one queue")
    sp = sub.add_parser("dump-config", help="write a commented template of every config key")
    sp.add_argument("--out", default="sample_config.yaml", help="output file ('-' = stdout); default %(default)s")
    sp.add_argument("--force", action="store_true", help="overwrite an existing file")
    sp = sub.add_parser("make-sample", help="render a synthetic 7DT tile with GalSim (for tests and demos)")
    sp.add_argument("out_dir", metavar="DIR")
    sp.add_argument("--bands", type=int, help="number of bands (1-40; default 8)")
    sp.add_argument("--size", type=int, help="image side in pixels (default 1024)")
    sp.add_argument("--seed", type=int, help="random seed (default 7)")
    sp.add_argument("--sources", type=int, help="number of catalogued sources")
    sp.add_argument("--full-size", action="store_true", help="full 7DT tile size (slow)")
    from ..sample.options import add_option_arguments
    add_option_arguments(sp)          # scene options: --psf, --psf-beta, --blends, ... (sample/options.py)
    sp = sub.add_parser("simulate-scaling", help="predict wall time at other rank counts from a results store")
    sp.add_argument("--store", required=True, help="results.h5 of a finished run")
    sp.add_argument("--ranks", default="1,2,4,16,64,256,1024", help="comma-separated rank counts")
    sp.add_argument("--cores", type=float, default=None,
                    help="CPU cores the ranks share (default: one core per rank)")
    sp.add_argument("--speed", default=None,
                    help="speed of each process when 1,2,3,... run at once, e.g. 1,0.6,0.4")
    sp.add_argument("--launch", type=float, default=None,
                    help="seconds an MPI launch adds to a plain process")
    sp.add_argument("--tiles", type=int, default=1,
                    help="predict a multi-tile run (run --tiles) of this many copies of the tile")
    return p


def _normalise_argv(argv: list[str]) -> list[str]:
    """Insert ``run`` when the first positional word is not a command (``tract7dt-mpi c.yaml``)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help", "--version"):
            return argv
        if a.startswith("-"):
            i += 2 if (a in _VALUE_OPTIONS and "=" not in a) else 1
            continue
        if a in PIPELINE_COMMANDS or a in OTHER_COMMANDS:
            return argv
        return ["run"] + argv
    return argv


def _say(msg: str, rank: int = 0, size: int = 1, all_ranks: bool = False) -> None:
    if rank == 0 or all_ranks:
        prefix = f"[rank {rank}] " if (all_ranks and size > 1) else ""
        sys.stderr.write(f"{prefix}{PROG}: {msg}\n")
        sys.stderr.flush()


def _abort_if_mpi(code: int) -> None:
    """If MPI is initialised with more than one rank, abort the job so no rank waits forever."""
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        if mpi and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            mpi.COMM_WORLD.Abort(code)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def _init_runtime(cfg):
    """Thread variables and MPI (when launched by an MPI launcher); return (rank, size)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from ..parallel import mpienv
    mpienv.set_thread_env(mpienv.configured_threads(cfg))   # job scripts' variable wins
    mpi = mpienv.get_mpi(cfg.mpi.threads_per_rank)
    if mpi is None:
        return 0, 1
    return mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()


def _check_inputs(cfg, command: str) -> None:
    if command not in _NEEDS_INPUTS:
        return
    if cfg.config_path and not (cfg._raw or {}).get("inputs"):
        raise InputError(f"{cfg.config_path}: the config has no inputs (no 'inputs:' section with "
                         f"input_catalog and image_list_file); write a template with "
                         f"`{PROG} dump-config`")
    for key in ("input_catalog", "image_list_file"):
        path = getattr(cfg.inputs, key)
        if not os.path.isfile(path):
            what = "is a directory, not a file" if os.path.isdir(path) else "file not found"
            raise InputError(f"inputs.{key}: {what}: {path}")


def _lazy(module: str, attr: str, command: str):
    """Import ``module.attr`` on demand (keeps ``--help`` and ``dump-config`` light).

    A missing third-party package (e.g. galsim) becomes a one-line InputError naming it.
    """
    import importlib
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith("tract7dt_mpi"):
            raise InputError(f"'{command}' needs the Python package '{exc.name}', which is not "
                             f"installed (pip install {exc.name.split('.')[0]})") from None
        raise
    return getattr(mod, attr)


def _pipeline_entry(command: str):
    return _lazy("tract7dt_mpi.pipeline", "run_command", command)


def _run_pipeline(args, argv, state) -> int:
    from ..config import load_config

    if getattr(args, "tiles", None):
        return _run_tiles(args, argv, state)
    cfg_path = args.config or args.config_pos
    if args.config and args.config_pos and os.path.abspath(args.config) != os.path.abspath(args.config_pos):
        raise InputError(f"two different config files given: {args.config_pos} and --config {args.config}")
    if not cfg_path:
        raise InputError(f"a config file is required: {PROG} {args.command} config.yaml "
                         f"(write a template with `{PROG} dump-config`)")
    cfg = load_config(cfg_path)
    if args.log_level:
        cfg = cfg.with_overrides({"logging": {"level": args.log_level}})
    state["cfg"] = cfg
    deadline = parse_deadline(args.deadline) if args.deadline else None
    _check_inputs(cfg, args.command)
    run_command = _pipeline_entry(args.command)

    rank, size = _init_runtime(cfg)
    state.update(rank=rank, size=size)
    from ..parallel.workdir import claim_work_dir
    lock = claim_work_dir(cfg, " ".join([PROG] + list(argv)), bool(args.force_unlock))
    try:
        return _run_locked(args, argv, state, cfg, deadline, run_command, lock)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(args, argv, state, cfg, deadline, run_command, lock) -> int:
    from ..logsetup import log_config, log_header, setup_logging, snapshot_config
    rank, size = state["rank"], state["size"]
    logger, logfile = setup_logging(cfg, args.command, rank, size)
    state.update(logger=logger, logfile=logfile)
    if rank == 0:
        log_header(logger, [PROG] + list(argv), size)
        if lock is not None and lock.notice:
            logger.warning("Run lock: %s", lock.notice)
        snapshot_config(cfg, logger=logger)
        log_config(logger, cfg)
    options = {"resume": bool(args.resume or cfg.patch_run.resume), "force": bool(args.force),
               "deadline": deadline, "log_file": logfile, "argv": [PROG] + list(argv),
               "rank": rank, "size": size}
    rc = run_command(args.command, cfg, options)
    return EXIT_OK if rc is None else int(rc)


def _run_tiles(args, argv, state) -> int:
    """``run --tiles LIST``: every listed tile under this launch (:mod:`tract7dt_mpi.multitile`).

    A tile whose config or inputs are bad fails alone (named in the log and the summary); the
    run's log is ``LIST`` with the suffix ``.log``, its per-tile summary ``LIST`` + ``.summary.csv``.
    """
    from ..config import load_config
    from ..io.tiles import read_tile_list
    from ..logsetup import log_header, setup_logging
    if args.config or args.config_pos:
        raise InputError("give either a config file or --tiles LIST, not both")
    mt = _lazy("tract7dt_mpi.multitile", "load_tiles", "run")
    over = {"logging": {"level": args.log_level}} if args.log_level else None

    def load(path):
        cfg = load_config(path)
        return cfg.with_overrides(over) if over else cfg

    tiles = mt(read_tile_list(args.tiles), load, lambda cfg: _check_inputs(cfg, "run"))
    good = [t for t in tiles if t.cfg is not None]
    if not good:
        raise InputError(f"--tiles {args.tiles}: no tile config is usable (first: {tiles[0].config}: "
                         f"{tiles[0].error})")
    stem = os.path.splitext(os.path.abspath(args.tiles))[0]
    cfg = good[0].cfg.with_overrides({"logging": {"file": stem + ".log"}})
    state["cfg"] = cfg
    deadline = parse_deadline(args.deadline) if args.deadline else None
    rank, size = _init_runtime(cfg)
    state.update(rank=rank, size=size)
    logger, logfile = setup_logging(cfg, "run", rank, size)
    state.update(logger=logger, logfile=logfile)
    if rank == 0:
        log_header(logger, [PROG] + list(argv), size)
    options = {"resume": bool(args.resume), "force": bool(args.force), "deadline": deadline,
               "force_unlock": bool(args.force_unlock), "argv": [PROG] + list(argv)}
    run_tiles = _lazy("tract7dt_mpi.multitile", "run_tiles", "run")
    return int(run_tiles(tiles, options, summary_path=stem + ".summary.csv" if rank == 0 else None))


def _dump_config(args) -> int:
    from ..config.template import render_template, write_template
    if args.out == "-":
        sys.stdout.write(render_template())
        return EXIT_OK
    path = write_template(args.out, force=args.force)
    print(f"Wrote config template: {path}")
    return EXIT_OK


def _make_sample(args, rank: int) -> int:
    if rank != 0:
        return EXIT_OK
    make_sample = _lazy("tract7dt_mpi.sample", "make_sample", "make-sample")
    kw = {k: getattr(args, a) for k, a in (("bands", "bands"), ("size", "size"), ("seed", "seed"),
                                           ("n_sources", "sources")) if getattr(args, a) is not None}
    if args.full_size:
        kw["full_size"] = True
    from ..sample.options import options_from_namespace
    out = make_sample(args.out_dir, **kw, **options_from_namespace(args))
    cfg = out.get("config") if isinstance(out, dict) else None
    print(f"Sample tile written to {os.path.abspath(args.out_dir)}"
          + (f"\nRun it with: {PROG} {cfg}   (or: mpirun -n 2 {PROG} {cfg})" if cfg else ""))
    return EXIT_OK


def _simulate_scaling(args) -> int:
    scaling_main = _lazy("tract7dt_mpi.parallel.scaling", "main", "simulate-scaling")
    ns = argparse.Namespace(store=args.store, ranks=args.ranks, cores=args.cores, speed=args.speed,
                            tiles=args.tiles)
    if args.launch is not None:
        ns.launch = args.launch
    rc = scaling_main(ns)
    return EXIT_OK if rc is None else int(rc)


def _disk_full_exit(exc: OSError, state) -> int:
    """A full disk after the start: one line; exit 3 once a journal exists (resume after freeing
    space), else 2."""
    cfg = state.get("cfg")
    folder = cfg.outputs.work_dir if cfg is not None else os.getcwd()
    err = disk_full_error(exc, folder)
    journal = cfg.outputs.journal if cfg is not None else None
    code = EXIT_RESUMABLE if journal and os.path.exists(journal) else EXIT_INPUT
    msg = str(err) + (" with --resume" if code == EXIT_RESUMABLE else "")
    _say(f"error: {msg}", state["rank"], state["size"], all_ranks=True)
    if state["logger"] is not None:
        from ..logsetup import log_to_files
        log_to_files(state["logger"], 40, f"Disk full: {msg}", exc_info=sys.exc_info())
    _abort_if_mpi(code)
    return code


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(argv))
    state = {"rank": _rank_size()[0], "size": _rank_size()[1], "logger": None, "logfile": None}
    try:
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_INPUT
        if args.command in PIPELINE_COMMANDS:
            return _run_pipeline(args, argv, state)
        if args.command == "dump-config":
            return _dump_config(args) if state["rank"] == 0 else EXIT_OK
        if args.command == "make-sample":
            return _make_sample(args, state["rank"])
        return _simulate_scaling(args) if state["rank"] == 0 else EXIT_OK
    except InputError as exc:
        _say(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", state["rank"])
        if state["logger"] is not None:
            from ..logsetup import log_to_files
            log_to_files(state["logger"], 40, f"Input error: {exc}")
        if not getattr(exc, "collective", False):    # else every rank stops by itself
            _abort_if_mpi(EXIT_INPUT)
        return EXIT_INPUT
    except KeyboardInterrupt:
        _say("interrupted", state["rank"])
        _abort_if_mpi(130)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI is the last line of defence
        if is_disk_full(exc):
            return _disk_full_exit(exc, state)
        logfile = state["logfile"]
        first = (str(exc).splitlines() or [""])[0]
        where = f" (full traceback in {logfile})" if logfile else ""
        _say(f"internal error: {type(exc).__name__}: {first}{where}", state["rank"], state["size"], all_ranks=True)
        if state["logger"] is not None and logfile:
            from ..logsetup import log_to_files
            log_to_files(state["logger"], 50, f"Unhandled exception: {type(exc).__name__}: {exc}",
                         exc_info=sys.exc_info())
        else:
            traceback.print_exc(file=sys.stderr)
        code = getattr(exc, "exit_code", EXIT_ABORT)
        _abort_if_mpi(code)
        return code


if __name__ == "__main__":
    sys.exit(main())
