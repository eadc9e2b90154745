"""README entry points: run_sample.sh and run_tests.sh (with a fake setup_env.sh), and .ci/run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import JOBSCRIPTS, REPO

PY_WRAPPER = f'#!/bin/sh\nexec {sys.executable} "$@"\n'

FAKE_PROG = f'''#!{sys.executable}
import json, os, sys
open(os.environ["CALLS"], "a").write(json.dumps({{"cmd": "tract7dt-mpi", "argv": sys.argv[1:]}}) + "\\n")
if sys.argv[1] == "make-sample":
    d = sys.argv[2]
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "config.yaml"), "w").write("outputs:\\n  work_dir: work\\n")
    sys.exit(0)
sys.exit(int(os.environ.get("FAKE_RC", "0")))
'''

FAKE_MPIRUN = f'''#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("mpirun (Open MPI) 4.1.4"); sys.exit(0)
open(os.environ["CALLS"], "a").write(json.dumps({{"cmd": "mpirun", "argv": args,
    "root_ok": os.environ.get("OMPI_ALLOW_RUN_AS_ROOT")}}) + "\\n")
i = args.index("tract7dt-mpi")
os.execvp(args[i], args[i:])
'''


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of the entry scripts next to a fake setup_env.sh that 'builds' a venv of stubs."""
    repo = tmp_path / "repo"
    (repo / "jobscripts").mkdir(parents=True)
    for name in ("run_sample.sh", "run_tests.sh"):
        shutil.copy(JOBSCRIPTS / name, repo / "jobscripts" / name)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _exe(venv / "bin" / "python", PY_WRAPPER)
    _exe(venv / "bin" / "tract7dt-mpi", FAKE_PROG)
    _exe(venv / "bin" / "mpirun", FAKE_MPIRUN)
    _exe(repo / "jobscripts" / "setup_env.sh", f'#!/bin/bash\necho "[setup] fake" >&2\necho {venv}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PYTEST_"))}
    env.update(CALLS=str(tmp_path / "calls.jsonl"), HOME=str(tmp_path), PYTHONPATH=str(REPO))
    return repo, env


def _calls(env):
    p = Path(env["CALLS"])
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_run_sample_makes_once_and_runs_two_ranks(fake_repo, tmp_path):
    repo, env = fake_repo
    sample = tmp_path / "s"
    res = subprocess.run(["bash", "jobscripts/run_sample.sh", str(sample)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = _calls(env)
    assert calls[0] == {"cmd": "tract7dt-mpi", "argv": ["make-sample", str(sample)]}
    run = next(c for c in calls if c["cmd"] == "mpirun")
    assert run["argv"][:2] == ["-n", "2"] and "--oversubscribe" in run["argv"]
    assert run["argv"][-2:] == ["tract7dt-mpi", str(sample / "config.yaml")]
    if os.getuid() == 0:
        assert run["root_ok"] == "1"
    assert f"catalog  : {sample / 'work' / 'output_catalog.csv'}" in res.stderr
    # second run: the sample is reused, the exit code of the pipeline is passed on
    res = subprocess.run(["bash", "jobscripts/run_sample.sh", str(sample)], cwd=repo,
                         env=dict(env, FAKE_RC="3", NRANKS="3"), capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "--resume" in res.stderr
    calls = _calls(env)
    assert sum(c["argv"][0] == "make-sample" for c in calls if c["cmd"] == "tract7dt-mpi") == 1
    assert calls[-2]["cmd"] == "mpirun" and calls[-2]["argv"][:2] == ["-n", "3"]


def _test_tree(repo):
    (repo / "tests").mkdir()
    (repo / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    (repo / "tests" / "test_x.py").write_text(
        "import pytest\n\ndef test_fast():\n    pass\n\n@pytest.mark.slow\ndef test_slow():\n    assert False\n")


def test_run_tests_deselects_slow_and_passes_args(fake_repo):
    repo, env = fake_repo
    _test_tree(repo)
    res = subprocess.run(["bash", "jobscripts/run_tests.sh", "-p", "no:cacheprovider"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed, 1 deselected" in res.stdout
    res = subprocess.run(["bash", "jobscripts/run_tests.sh", "-m", "slow", "-p", "no:cacheprovider"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "1 failed" in res.stdout


def test_run_tests_no_tests_is_an_error(fake_repo):
    repo, env = fake_repo
    _test_tree(repo)
    res = subprocess.run(["bash", "jobscripts/run_tests.sh", "-k", "nothing_matches", "-p", "no:cacheprovider"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 5 and "collected no tests" in res.stderr


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert commands[-1] == "bash jobscripts/run_tests.sh"
    readme = (REPO / "README.md").read_text()
    assert "bash jobscripts/run_tests.sh " in readme and "bash jobscripts/run_sample.sh " in readme
    assert os.access(REPO / ".ci" / "run", os.X_OK)
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")]).returncode == 0
