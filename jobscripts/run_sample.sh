#!/usr/bin/env bash
# Set up the environment (once), make the synthetic sample tile (once) and run the full pipeline on it
# with 2 MPI ranks; print where the catalog and the plots are. Safe to run again: the venv and the
# sample are reused, the pipeline run is repeated.
#
# Usage:  bash jobscripts/run_sample.sh [DIR]
#
# Arguments and environment variables (all optional):
#   DIR                  sample folder                           (default $HOME/tract7dt-sample)
#   NRANKS               number of MPI ranks                     (default 2)
#   MPIRUN               MPI launcher                            (default mpirun)
#   SAMPLE_ARGS          extra make-sample options, e.g. "--bands 4 --size 512" (default none)
#   RUN_ARGS             extra tract7dt-mpi options, e.g. "--resume"           (default none)
#   TRACT7DT_VENV etc.   passed on to jobscripts/setup_env.sh (see its header)
# Exit status: the pipeline's (0 ok, 2 bad input, 3 stopped/resumable, 4 some tasks failed, 1 abort).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${1:-$HOME/tract7dt-sample}
NRANKS=${NRANKS:-2}
MPIRUN=${MPIRUN:-mpirun}
SAMPLE_ARGS=${SAMPLE_ARGS:-}
RUN_ARGS=${RUN_ARGS:-}
say() { echo "[run_sample] $*" >&2; }

venv=$(bash "$here/setup_env.sh" | tail -n 1)
export PATH="$venv/bin:$PATH"
export MPLBACKEND=${MPLBACKEND:-Agg} PYTHONUNBUFFERED=1
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

if [ -f "$DIR/config.yaml" ]; then
    say "reusing the sample tile in $DIR"
else
    say "making the synthetic sample tile in $DIR (GalSim; about a minute)"
    # shellcheck disable=SC2086  # SAMPLE_ARGS is a list of options on purpose
    tract7dt-mpi make-sample "$DIR" $SAMPLE_ARGS
fi

# Open MPI refuses root and more ranks than cores unless told; other MPIs ignore these variables.
launch_opts=()
if "$MPIRUN" --version 2>&1 | grep -qi "open mpi"; then
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    launch_opts+=(--oversubscribe)
fi

say "running: $MPIRUN -n $NRANKS ${launch_opts[*]} tract7dt-mpi $DIR/config.yaml $RUN_ARGS"
rc=0
# through the launch wrapper, so that Ctrl-C drains the ranks and exits 3 (docs/faults.md)
# shellcheck disable=SC2086
python -m tract7dt_mpi.parallel.launch "$MPIRUN" -n "$NRANKS" "${launch_opts[@]}" \
    tract7dt-mpi "$DIR/config.yaml" $RUN_ARGS || rc=$?

python -m tract7dt_mpi.campaign where "$DIR/config.yaml" >&2 || true
case $rc in
    0) say "finished OK" ;;
    2) say "bad input or configuration (the message above names the key or file)" ;;
    3) say "stopped early; resume with: RUN_ARGS=--resume bash $0 $DIR" ;;
    4) say "finished, but some tasks failed: see the journal and the run log" ;;
    *) say "the run aborted with exit code $rc: see the run log" ;;
esac
exit "$rc"
