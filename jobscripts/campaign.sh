#!/usr/bin/env bash
# Many tiles on SLURM: submit one job array, follow each tile, resubmit resumable ones (capped).
#
#   bash jobscripts/campaign.sh submit tiles.txt     # tiles.txt: one config.yaml path per line
#   bash jobscripts/campaign.sh status               # table of tile states
#   bash jobscripts/campaign.sh update               # + resubmit tiles that stopped with exit 3
#   bash jobscripts/campaign.sh watch --interval 600 # update until nothing is pending or running
#
# Tile states: NOT_SUBMITTED SUBMITTED PENDING RUNNING DONE DONE_WITH_FAILURES (exit 4) BAD_INPUT (2)
# RESUMABLE (3, or killed by TIMEOUT/PREEMPTED/NODE_FAIL) GAVE_UP (resumable, cap reached) OOM
# CANCELLED FAILED. Each array element runs jobscripts/slurm_tile.sbatch, which writes its exit code to
# CAMPAIGN_DIR/rc/<index>.rc; the tile's journal gives the task counts.
#
# Environment variables (all optional):
#   CAMPAIGN_DIR   campaign folder (default ./campaign)
#   MAX_RESUBMITS  resubmissions per tile (default 3)
#   JOB_SCRIPT     job script of each array element (default jobscripts/slurm_tile.sbatch)
#   SBATCH_ARGS    extra sbatch options, e.g. "--ntasks=128 --time=08:00:00 -A myproj" (default none)
#   MAX_PARALLEL   at most this many tiles at once (array throttle %K; default 0 = no limit)
#   POLL_SEC       watch interval in seconds (default 300)
#   SBATCH, SACCT  scheduler commands (default sbatch, sacct)
#   PYTHON         interpreter with tract7dt_mpi (default: the cached venv's, else python3)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    for v in "$HOME"/.cache/tract7dt-mpi/venv-py3.*; do [ -x "$v/bin/python" ] && PYTHON=$v/bin/python; done
fi
export JOB_SCRIPT=${JOB_SCRIPT:-$here/slurm_tile.sbatch}
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m tract7dt_mpi.campaign "$@"
