#!/usr/bin/env bash
# Set up the environment (once) and run the test suite. Safe to run again: the venv is reused.
#
# Usage:  bash jobscripts/run_tests.sh [PYTEST ARGS...]
#   With no arguments the fast suite runs: pytest -m "not slow".
#   Arguments are passed to pytest; give your own -m to change the selection, e.g.
#     bash jobscripts/run_tests.sh tests/docs -q          (fast tests of one folder)
#     bash jobscripts/run_tests.sh -m slow                (only the slow ones)
#     bash jobscripts/run_tests.sh -m ""                  (everything)
# Environment variables (all optional): TRACT7DT_VENV etc., passed on to jobscripts/setup_env.sh.
# Exit status: pytest's; "no tests collected" (pytest exit 5) is reported and counted as a failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
venv=$(bash "$here/setup_env.sh" | tail -n 1)
export PATH="$venv/bin:$PATH"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
# MPI tests launch mpirun themselves; under root Open MPI needs these (harmless otherwise).
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

args=("$@")
has_marker=0
for a in "${args[@]}"; do
    case $a in -m|-m*) has_marker=1 ;; esac
done
if [ "$has_marker" = 0 ]; then args=(-m "not slow" "${args[@]}"); fi

cd "$repo"
rc=0
python -m pytest "${args[@]}" || rc=$?
if [ "$rc" = 5 ]; then
    echo "[run_tests] ERROR: pytest collected no tests (selection: ${args[*]})" >&2
    exit 5
fi
exit "$rc"
