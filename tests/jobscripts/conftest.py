"""Stub scheduler commands and a fake ``tract7dt-mpi`` for testing the job scripts without a cluster.

Every stub appends one JSON line (its argv and the environment variables the scripts are supposed
to set) to ``<tmp>/calls.jsonl`` and then does the minimum its real counterpart would: ``srun`` and
``mpiexec`` run the program, ``apptainer exec`` runs the command after the image, ``sbatch`` runs the
job script once per array index (synchronously) and prints a job id, ``sacct`` prints a canned table.
The fake program exits with the next code of ``<config dir>/exit_codes`` (one per line; default 0),
writes a small journal, and on SIGUSR1 exits 3 as the real program drains.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBSCRIPTS = REPO / "jobscripts"
RECORD_ENV = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "TRACT7DT_THREADS_PER_RANK", "SRUN_CPUS_PER_TASK",
              "APPTAINERENV_OMP_NUM_THREADS", "HDF5_USE_FILE_LOCKING", "TILE_LIST", "RC_DIR", "RESUME",
              "MAX_REQUEUE", "SLURM_ARRAY_TASK_ID", "TILES_PER_JOB", "OMPI_COMM_WORLD_RANK", "PMI_RANK"]

RECORDER = r'''#!{py}
import json, os, sys
rec = {{"cmd": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
       "env": {{k: os.environ[k] for k in {keys!r} if k in os.environ}}}}
with open({log!r}, "a") as fh:
    fh.write(json.dumps(rec) + "\n")
'''

STUBS = {
    # srun: `srun --mpi=list` prints the plugin list; otherwise drop srun's options and run the program
    "srun": '''
if sys.argv[1:2] == ["--mpi=list"]:
    print(os.environ.get("STUB_MPI_LIST", "MPI plugin types are...\\n  none\\n  pmi2\\n  pmix"))
    sys.exit(0)
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
os.execvp(args[0], args)
''',
    # mpiexec: either a recorder in front of a real launcher (STUB_REAL_MPIEXEC) or drop options and run
    "mpiexec": '''
args = sys.argv[1:]
real = os.environ.get("STUB_REAL_MPIEXEC")
if real:
    os.execvp(real, [real] + args)
if args[:1] == ["--version"]:
    print(os.environ.get("STUB_MPI_VERSION", "mpiexec (OpenRTE) 4.1.4")); sys.exit(0)
i = next(k for k, a in enumerate(args) if a == "tract7dt-mpi")
os.execvp(args[i], args[i:])
''',
    "apptainer": '''
args = sys.argv[2:]
i = next(k for k, a in enumerate(args) if a.endswith(".sif"))
os.execvp(args[i + 1], args[i + 1:])
''',
    "scontrol": "",
    "qsub": "print('4242.pbs')",
    "sacct": '''
p = os.environ.get("STUB_SACCT_FILE")
if p and os.path.exists(p):
    sys.stdout.write(open(p).read())
''',
    # sbatch: run the job script once per array index, synchronously, like a very fast cluster
    "sbatch": '''
import subprocess
counter = os.path.join(os.path.dirname({log!r}), "jobid")
job = int(open(counter).read()) + 1 if os.path.exists(counter) else 1000
open(counter, "w").write(str(job))
args = sys.argv[1:]
spec = next(a.split("=", 1)[1] for a in args if a.startswith("--array="))
script = [a for a in args if not a.startswith("-")][-1]
if os.environ.get("STUB_SBATCH_RUN", "1") == "1":
    for idx in spec.split("%")[0].split(","):
        env = dict(os.environ, SLURM_ARRAY_TASK_ID=idx, SLURM_JOB_ID=str(job * 100 + int(idx)),
                   SLURM_ARRAY_JOB_ID=str(job), SLURM_NTASKS="2")
        subprocess.run(["bash", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(job)
''',
}

FAKE = r'''#!{py}
"""Fake tract7dt-mpi: record argv/env, write a journal, exit with the next scripted code."""
import json, os, signal, sys, time
rec = {{"cmd": "tract7dt-mpi", "argv": sys.argv[1:],
       "env": {{k: os.environ[k] for k in {keys!r} if k in os.environ}}}}
with open({log!r}, "a") as fh:
    fh.write(json.dumps(rec) + "\n")
def one_tile(cfg):
    d = os.path.dirname(os.path.abspath(cfg))
    codes_file = os.path.join(d, "exit_codes")
    codes = open(codes_file).read().split() if os.path.exists(codes_file) else []
    rc = int(codes[0]) if codes else 0
    if codes:
        open(codes_file, "w").write("\n".join(codes[1:]))
    os.makedirs(os.path.join(d, "work"), exist_ok=True)
    with open(os.path.join(d, "work", "journal.jsonl"), "a") as fh:
        fh.write(json.dumps({{"task": "p1", "kind": "patch", "state": "DONE" if rc == 0 else "STARTED"}}) + "\n")
        fh.write('{{"task": "p2", "state": ')       # a torn line, as after a kill
        fh.write("\n")
    return rc
if sys.argv[1:3] == ["run", "--tiles"]:       # several tiles: per-tile codes in the summary CSV
    lst = sys.argv[3]
    cfgs = [ln.strip() for ln in open(lst) if ln.strip()]
    rcs = [one_tile(c) for c in cfgs]
    with open(os.path.splitext(lst)[0] + ".summary.csv", "w") as fh:
        fh.write("tile,config,status,exit_code\n")
        fh.writelines(f"t{{i}},{{c}},x,{{r}}\n" for i, (c, r) in enumerate(zip(cfgs, rcs)))
    rc = 3 if 3 in rcs else 0 if not any(rcs) else 4
else:
    rc = one_tile(sys.argv[1])
if os.environ.get("FAKE_WAIT_SIGNAL"):
    signal.signal(signal.SIGUSR1, lambda *a: sys.exit(3))
    open(os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "started"), "w").close()
    time.sleep(30)
    sys.exit(9)
sys.exit(rc)
'''


class Stubs:
    """Paths and helpers of one stubbed environment."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls.jsonl"
        py = sys.executable
        for name, body in STUBS.items():
            text = RECORDER.format(py=py, keys=RECORD_ENV, log=str(self.log)) + body.format(log=str(self.log))
            self._write(name, text)
        self._write("tract7dt-mpi", FAKE.format(py=py, keys=RECORD_ENV, log=str(self.log)))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "PBS_", "OMP_", "TRACT7DT_", "CAMPAIGN_", "APPTAINERENV_"))}
        self.env.update(PATH=f"{self.bin}:{Path(py).parent}:/usr/bin:/bin", HOME=str(root),
                        PYTHONPATH=str(REPO), TRACT7DT_VENV=str(root / "no-venv"))

    def _write(self, name: str, text: str) -> None:
        p = self.bin / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def calls(self, cmd: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        recs = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in recs if cmd is None or r["cmd"] == cmd]

    def tile(self, name: str, exit_codes: list[int] | None = None) -> Path:
        """A tile folder with a minimal config (work_dir ``work``) and scripted exit codes."""
        d = self.root / name
        d.mkdir()
        (d / "config.yaml").write_text("outputs:\n  work_dir: work\n")
        if exit_codes:
            (d / "exit_codes").write_text("\n".join(map(str, exit_codes)))
        return d / "config.yaml"


@pytest.fixture
def stubs(tmp_path) -> Stubs:
    return Stubs(tmp_path)
