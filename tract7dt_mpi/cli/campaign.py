"""Campaigns of many tiles on SLURM: one job array, per-tile state, capped resubmission of resumable tiles.

Run as ``python -m tract7dt_mpi.campaign`` (or ``bash jobscripts/campaign.sh``)::

    submit TILES.txt   submit one job array (one element per tile config listed in TILES.txt)
    update             refresh every tile's state, resubmit resumable tiles (exit 3) below the cap, print the table
    status             print the table only
    watch              ``update`` every --interval seconds until no tile is pending or running
    where CONFIG       print where a tile's catalog, plots, journal and logs are
    get CONFIG KEY     print one config value (used by the job scripts to compare thread settings)

A tile's state comes from three defensive sources, best first: the exit-code file the job script
writes (``RC_DIR/<index>.rc``), the tile's journal (``outputs.journal``: JSON lines with a task id and a
state; unreadable lines are ignored) and ``sacct`` (for jobs that are pending, running or were killed
before writing an exit code). Nothing here imports MPI; campaign bookkeeping lives in one JSON file
(``<campaign dir>/campaign.json``) written atomically.

Defaults come from environment variables so that the shell wrapper stays trivial: CAMPAIGN_DIR
(./campaign), MAX_RESUBMITS (3), JOB_SCRIPT (jobscripts/slurm_tile.sbatch of this checkout),
SBATCH (sbatch), SACCT (sacct), SBATCH_ARGS (extra sbatch options, split like a shell would),
MAX_PARALLEL (array throttle ``%K``; 0 = none), TILES_PER_JOB (tiles packed into one array element,
run together by ``run --tiles``; fixed when the campaign is created; default 1).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import EXIT_INPUT, EXIT_OK, EXIT_RESUMABLE, EXIT_TASK_FAILURES, InputError

REPO_JOB_SCRIPT = Path(__file__).resolve().parents[2] / "jobscripts" / "slurm_tile.sbatch"
STATE_FILE = "campaign.json"

#: exit code of the tile's job -> tile state
RC_STATES = {EXIT_OK: "DONE", EXIT_TASK_FAILURES: "DONE_WITH_FAILURES", EXIT_INPUT: "BAD_INPUT",
             EXIT_RESUMABLE: "RESUMABLE"}
#: sacct states of a job that ended without writing an exit code, and what they mean for the tile
SACCT_ENDED = {"TIMEOUT": "RESUMABLE", "PREEMPTED": "RESUMABLE", "NODE_FAIL": "RESUMABLE",
               "REQUEUED": "PENDING", "OUT_OF_MEMORY": "OOM", "CANCELLED": "CANCELLED",
               "FAILED": "FAILED", "BOOT_FAIL": "RESUMABLE", "DEADLINE": "RESUMABLE",
               "COMPLETED": "FAILED"}   # completed without an exit-code file: the script did not finish
SACCT_ACTIVE = {"PENDING": "PENDING", "RUNNING": "RUNNING", "CONFIGURING": "RUNNING",
                "COMPLETING": "RUNNING", "RESIZING": "RUNNING", "SUSPENDED": "RUNNING",
                "REQUEUE_HOLD": "PENDING", "REQUEUE_FED": "PENDING"}
ACTIVE = {"PENDING", "RUNNING", "SUBMITTED"}


# ---------------------------------------------------------------- where a tile's products are

def tile_paths(config: str | os.PathLike) -> dict[str, Path]:
    """Paths of a tile's products, from its config (the typed loader when it accepts the file, else plain YAML).

    The plain-YAML fallback applies the documented resolution rules (``outputs.work_dir`` against
    the YAML file's folder, other ``outputs.*`` against work_dir) so that a campaign can still
    report on a tile whose inputs have moved.
    """
    cfg_path = Path(config).expanduser().resolve()
    if not cfg_path.is_file():
        raise InputError(f"{cfg_path}: tile config not found")
    out: dict = {}
    try:
        from ..config import load_config  # the typed config; optional for this tool
        o = load_config(str(cfg_path)).outputs
        out = {k: getattr(o, k, None) for k in ("work_dir", "journal", "final_catalog", "epsf_dir",
                                                "overlay_dir", "patch_results_dir", "results_h5")}
    except Exception:  # noqa: BLE001 - any loader problem: fall back to the plain reading
        out = {}
    if not out.get("work_dir"):
        out = _paths_from_yaml(cfg_path)
    paths = {k: Path(v) for k, v in out.items() if v}
    wd = paths["work_dir"]
    paths.setdefault("journal", wd / "journal.jsonl")
    paths.setdefault("final_catalog", wd / "output_catalog.csv")
    paths["zp_dir"] = wd / "ZP"
    paths["bright_mask_dir"] = wd / "bright_mask"
    paths["run_log"] = wd / "run.log"
    return paths


def _paths_from_yaml(cfg_path: Path) -> dict[str, str]:
    import yaml
    try:
        doc = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{cfg_path}: not a readable YAML config ({exc.__class__.__name__})") from None
    outs = doc.get("outputs") if isinstance(doc, dict) else None
    outs = outs if isinstance(outs, dict) else {}
    wd = Path(os.path.expanduser(str(outs.get("work_dir", "path/to/work_dir"))))
    wd = (cfg_path.parent / wd).resolve()
    defaults = {"journal": "journal.jsonl", "final_catalog": "output_catalog.csv", "epsf_dir": "EPSFs",
                "overlay_dir": "overlay", "patch_results_dir": "outputs", "results_h5": "results.h5"}
    res = {"work_dir": str(wd)}
    outs.setdefault("patch_results_dir", outs.get("tractor_out_dir"))     # its legacy name
    for key, default in defaults.items():
        res[key] = str((wd / os.path.expanduser(str(outs.get(key) or default))).resolve())
    return res


def config_value(config: str | os.PathLike, dotted: str):
    """One config value by dotted key (typed loader when it accepts the file, else the YAML text, else None)."""
    try:
        from ..config import load_config
        obj = load_config(str(config))
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj
    except Exception:  # noqa: BLE001 - fall back to the plain reading
        pass
    import yaml
    try:
        obj = yaml.safe_load(Path(config).read_text())
        for part in dotted.split("."):
            obj = obj[part]
        return obj
    except Exception:  # noqa: BLE001 - absent key or unreadable file: unknown
        return None


# ---------------------------------------------------------------- journal and exit codes

def read_journal(path: str | os.PathLike) -> Counter:
    """Count a tile's tasks by their latest state in its journal (read as ``--resume`` reads it).

    Returns a Counter over ``done``, ``failed``, ``open`` (planned or started, not finished) and
    ``total``; an absent or unreadable journal gives an empty Counter.
    """
    from ..io.journal import DONE, FAILED, replay
    try:
        last = replay(os.fspath(path)).last
    except OSError:
        return Counter()
    counts = Counter()
    for rec in last.values():
        state = rec.get("state")
        counts["done" if state == DONE else "failed" if state == FAILED else "open"] += 1
    counts["total"] = len(last)
    return counts


def read_rc(path: Path) -> int | None:
    """The integer in an exit-code file, or None when absent or unreadable."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- scheduler access

def _run(cmd: list[str], env: dict | None = None) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:
        raise InputError(f"{cmd[0]}: command not found (set SBATCH/SACCT or load the SLURM module)") from None
    if res.returncode != 0:
        raise InputError(f"{' '.join(cmd[:2])} failed (exit {res.returncode}): {res.stderr.strip()[:300]}")
    return res.stdout


def sacct_states(job_ids: list[str], sacct: str) -> dict[tuple[str, int], str]:
    """(job id, array index) -> first word of the SLURM state, for the given array jobs.

    Pending array ranges such as ``123_[4-6,9%2]`` are expanded. An unavailable sacct gives {}.
    """
    if not job_ids:
        return {}
    try:
        text = _run([sacct, "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)])
    except InputError:
        return {}
    states: dict[tuple[str, int], str] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or "_" not in parts[0]:
            continue
        base, idx = parts[0].split("_", 1)
        state = parts[1].split()[0].rstrip("+") if parts[1].strip() else "UNKNOWN"
        for i in _expand_indices(idx):
            states[(base, i)] = state
    return states


def _expand_indices(text: str) -> list[int]:
    text = text.strip("[]").split("%")[0]
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        try:
            out.extend(range(int(a), int(b or a) + 1))
        except ValueError:
            continue
    return out


def submit_array(indices: list[int], camp: "Campaign", resume: bool) -> str:
    """sbatch one job array over ``indices`` (tile list lines, or groups of ``camp.pack`` lines);
    returns the job id."""
    spec = ",".join(str(i) for i in indices)
    if camp.max_parallel > 0:
        spec += f"%{camp.max_parallel}"
    env = dict(os.environ, TILE_LIST=str(camp.tile_list), RC_DIR=str(camp.rc_dir),
               RESUME="1" if resume else "auto", MAX_REQUEUE="0", TILES_PER_JOB=str(camp.pack))
    cmd = [camp.sbatch, "--parsable", "--export=ALL", f"--array={spec}",
           f"--output={camp.dir / 'logs'}/tile-%a-%A.out", "--open-mode=append",
           *camp.sbatch_args, camp.job_script]
    job = _run(cmd, env=env).strip().split(";")[0]
    if not job.isdigit():
        raise InputError(f"sbatch printed no job id (got {job!r}); is --parsable supported?")
    return job


# ---------------------------------------------------------------- campaign bookkeeping

@dataclass
class Tile:
    """One row of the campaign table."""

    index: int
    config: str
    state: str
    attempts: int
    job: str
    rc: int | None
    tasks: Counter


class Campaign:
    """The state of one campaign folder: tile list, submissions, attempts per tile."""

    def __init__(self, directory: str | os.PathLike, cap: int | None = None):
        self.dir = Path(directory).expanduser().resolve()
        self.tile_list = self.dir / "tiles.txt"
        self.rc_dir = self.dir / "rc"
        self.sbatch = os.environ.get("SBATCH", "sbatch")
        self.sacct = os.environ.get("SACCT", "sacct")
        self.job_script = os.environ.get("JOB_SCRIPT", str(REPO_JOB_SCRIPT))
        self.sbatch_args = shlex.split(os.environ.get("SBATCH_ARGS", ""))
        self.max_parallel = int(os.environ.get("MAX_PARALLEL", "0") or 0)
        state_path = self.dir / STATE_FILE
        self.state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if cap is not None:
            self.state["cap"] = cap
        self.state.setdefault("cap", int(os.environ.get("MAX_RESUBMITS", "3")))
        self.state.setdefault("tiles", [])
        self.state.setdefault("submissions", [])
        self.state.setdefault("attempts", {})
        self.state.setdefault("last_job", {})
        self.state.setdefault("pack", max(1, int(os.environ.get("TILES_PER_JOB", "1") or 1)))

    @property
    def pack(self) -> int:
        """Tiles per array element (element g runs tiles g*pack ... g*pack + pack - 1)."""
        return int(self.state.get("pack", 1))

    @property
    def tiles(self) -> list[str]:
        return self.state["tiles"]

    def save(self) -> None:
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.dir / STATE_FILE)

    def create(self, list_file: str) -> None:
        """Read the user's list of tile configs (one per line, # comments) into the campaign folder."""
        src = Path(list_file).expanduser().resolve()
        try:
            lines = src.read_text().splitlines()
        except OSError:
            raise InputError(f"{src}: tile list not readable") from None
        tiles = []
        for n, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            path = (src.parent / os.path.expanduser(line)).resolve()
            if not path.is_file():
                raise InputError(f"{src}:{n}: tile config {path} not found")
            tiles.append(str(path))
        if not tiles:
            raise InputError(f"{src}: no tile configs listed (expected one config.yaml path per line)")
        if self.tiles and self.tiles != tiles:
            raise InputError(f"{self.dir}: already holds a different campaign; choose another CAMPAIGN_DIR")
        for sub in ("rc", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.tile_list.write_text("\n".join(tiles) + "\n")
        self.state["tiles"] = tiles

    def submit(self, indices: list[int], resume: bool) -> str:
        """Submit ``indices`` as one array; previous exit-code files of those tiles are set aside."""
        n = len(self.state["submissions"])
        p = self.pack
        groups = sorted({i // p for i in indices})          # array elements (= indices if p == 1)
        members = [i for g in groups for i in range(g * p, min(len(self.tiles), (g + 1) * p))]
        for i in members:
            rc_file = self.rc_dir / f"{i}.rc"
            if rc_file.exists():
                os.replace(rc_file, self.rc_dir / f"{i}.rc.{n}")
        job = submit_array(groups, self, resume)
        self.state["submissions"].append({"job": job, "indices": indices, "time": time.time()})
        for i in members:          # packed tiles done before are skipped by their --resume
            if i in indices:
                self.state["attempts"][str(i)] = self.state["attempts"].get(str(i), 0) + 1
            self.state["last_job"][str(i)] = job
        self.save()
        return job

    def tile_rows(self) -> list[Tile]:
        """Current state of every tile (queries sacct once for all jobs still without an exit code)."""
        rcs = {i: read_rc(self.rc_dir / f"{i}.rc") for i in range(len(self.tiles))}
        pending_jobs = sorted({self.state["last_job"][str(i)] for i, rc in rcs.items()
                               if rc is None and str(i) in self.state["last_job"]})
        sacct = sacct_states(pending_jobs, self.sacct)
        rows = []
        for i, cfg in enumerate(self.tiles):
            job = self.state["last_job"].get(str(i), "")
            attempts = self.state["attempts"].get(str(i), 0)
            try:
                tasks = read_journal(tile_paths(cfg)["journal"])
            except InputError:
                tasks = Counter()
            state = classify(rcs[i], sacct.get((job, i // self.pack)), bool(job), tasks)
            if state == "RESUMABLE" and attempts > self.state["cap"]:
                state = "GAVE_UP"
            rows.append(Tile(i, cfg, state, attempts, job, rcs[i], tasks))
        return rows

    def update(self) -> list[Tile]:
        """Refresh states and resubmit the resumable tiles that are still under the cap (one array)."""
        rows = self.tile_rows()
        again = [t.index for t in rows if t.state == "RESUMABLE"]
        if again:
            job = self.submit(again, resume=True)
            for t in rows:
                if t.index in again:
                    t.state, t.job, t.attempts, t.rc = "SUBMITTED", job, t.attempts + 1, None
        return rows


def classify(rc: int | None, sacct_state: str | None, submitted: bool, tasks: Counter) -> str:
    """One tile's state from its exit code, its SLURM state and its journal counts."""
    if rc is not None:
        state = RC_STATES.get(rc, "FAILED")
        if state == "DONE" and tasks.get("open", 0) > 0:
            return "RESUMABLE"                # exit 0 but the journal has unfinished tasks
        return state
    if not submitted:
        return "NOT_SUBMITTED"
    if sacct_state is None:
        return "SUBMITTED"                    # not (yet) visible in sacct
    return SACCT_ACTIVE.get(sacct_state) or SACCT_ENDED.get(sacct_state, "UNKNOWN")


def format_table(rows: list[Tile], cap: int) -> str:
    """A fixed-width table of tile states plus a one-line count per state."""
    head = f"{'#':>4}  {'state':<18} {'tries':>5} {'job':>10} {'rc':>3} {'tasks done/fail/total':>22}  config"
    lines = [head, "-" * len(head)]
    for t in rows:
        tasks = (f"{t.tasks.get('done', 0)}/{t.tasks.get('failed', 0)}/{t.tasks.get('total', 0)}"
                 if t.tasks else "-")
        lines.append(f"{t.index:>4}  {t.state:<18} {t.attempts:>5} {t.job or '-':>10} "
                     f"{'-' if t.rc is None else t.rc:>3} {tasks:>22}  {t.config}")
    counts = Counter(t.state for t in rows)
    lines.append(f"tiles: {len(rows)}  " + "  ".join(f"{k}={v}" for k, v in sorted(counts.items()))
                 + f"  (resubmit cap {cap})")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line

def _cmd_where(args) -> int:
    p = tile_paths(args.config)
    if args.field:
        print(p[args.field])
        return 0
    cat = p["final_catalog"]
    nrow = ""
    if cat.is_file():
        with open(cat, "rb") as fh:
            nrow = f" ({max(sum(1 for _ in fh) - 1, 0)} rows)"
    print(f"work dir : {p['work_dir']}")
    print(f"catalog  : {cat}{nrow if cat.is_file() else ' (not written yet)'}")
    print(f"plots    : {p['work_dir']}/summary; with plotting.level full also {p.get('overlay_dir', '')},")
    print(f"           {p['bright_mask_dir']}, {p.get('epsf_dir', '')}/<band>/<cell>/,")
    print(f"           {p.get('patch_results_dir', '')}/<patch>/, {p['zp_dir']}")
    print(f"journal  : {p['journal']}")
    print(f"log      : {p['run_log']}")
    return 0


def _cmd_get(args) -> int:
    value = config_value(args.config, args.key)
    if value is None:
        return 1
    print(value)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tract7dt-mpi-campaign", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = os.environ.get("CAMPAIGN_DIR", "campaign")
    s = sub.add_parser("submit", help="submit one job array for a list of tile configs")
    s.add_argument("tile_list")
    for p in (s, sub.add_parser("update", help="refresh, resubmit resumable tiles, print the table"),
              sub.add_parser("status", help="print the table"),
              sub.add_parser("watch", help="update until no tile is pending or running")):
        p.add_argument("--dir", default=d, help="campaign folder (env CAMPAIGN_DIR; default ./campaign)")
        p.add_argument("--cap", type=int, default=None,
                       help="resubmissions allowed per tile (env MAX_RESUBMITS; default 3)")
        if p.prog.endswith("watch"):
            p.add_argument("--interval", type=float, default=float(os.environ.get("POLL_SEC", "300")))
    w = sub.add_parser("where", help="print where a tile's catalog, plots, journal and log are")
    w.add_argument("config")
    w.add_argument("--field", default=None, help="print only this path (e.g. journal, work_dir)")
    g = sub.add_parser("get", help="print one config value by dotted key (e.g. mpi.threads_per_rank)")
    g.add_argument("config")
    g.add_argument("key")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "where":
            return _cmd_where(args)
        if args.cmd == "get":
            return _cmd_get(args)
        camp = Campaign(args.dir, cap=args.cap)
        if args.cmd == "submit":
            camp.dir.mkdir(parents=True, exist_ok=True)
            camp.create(args.tile_list)
            todo = [i for i in range(len(camp.tiles)) if str(i) not in camp.state["last_job"]]
            if todo:
                print(f"submitted job array {camp.submit(todo, resume=False)} ({len(todo)} tiles)")
            rows = camp.tile_rows()
        elif not camp.tiles:
            raise InputError(f"{camp.dir}: no campaign here (run `submit TILES.txt` first)")
        elif args.cmd == "status":
            rows = camp.tile_rows()
        elif args.cmd == "update":
            rows = camp.update()
        else:
            while True:
                rows = camp.update()
                print(format_table(rows, camp.state["cap"]), flush=True)
                if not any(t.state in ACTIVE for t in rows):
                    return 0 if all(t.state == "DONE" for t in rows) else 1
                time.sleep(args.interval)
    except InputError as exc:
        print(f"campaign: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(format_table(rows, camp.state["cap"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
