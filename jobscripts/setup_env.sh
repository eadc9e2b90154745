#!/usr/bin/env bash
# Set up (or reuse) the tract7dt-mpi software environment on a Debian/Ubuntu machine.
#
# What it does, idempotently:
#   1. as root: apt-get installs Debian's OpenMPI and parallel HDF5 (openmpi-bin libopenmpi-dev
#      libhdf5-openmpi-dev pkg-config) if mpicc or the HDF5 headers are missing;
#   2. creates a cached virtual environment (default ~/.cache/tract7dt-mpi/venv-py<X.Y>) with mpi4py and
#      h5py built from source against that MPI (HDF5_MPI=ON) and every other dependency;
#   3. installs this checkout into it in editable mode (a few seconds; always redone so a new clone
#      is the one that runs).
# The venv is rebuilt only when pyproject.toml's dependencies or this script change (stamp file).
#
# Environment variables (all optional):
#   TRACT7DT_VENV   path of the venv                     (default ~/.cache/tract7dt-mpi/venv-py<X.Y>)
#   PYTHON          interpreter used to create the venv   (default python3)
#   TRACT7DT_EXTRAS pip extras installed with the project (default "test,docs")
#   HDF5_DIR        parallel HDF5 prefix (default: Debian's openmpi flavour)
# On a cluster without root: load your MPI and parallel-HDF5 modules first (so mpicc and
# HDF5_DIR point at them); step 1 is then skipped.
# Prints the venv path as its last line: `source "$(bash jobscripts/setup_env.sh | tail -1)/bin/activate"`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
PYTHON=${PYTHON:-python3}
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV=${TRACT7DT_VENV:-$HOME/.cache/tract7dt-mpi/venv-py$pyver}
EXTRAS=${TRACT7DT_EXTRAS:-test,docs}
log() { echo "[setup] $*" >&2; }

# -- 1. system MPI + parallel HDF5 ------------------------------------------------------------
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
deb_hdf5=/usr/lib/$multiarch/hdf5/openmpi
need_apt=0
command -v mpicc >/dev/null 2>&1 || need_apt=1
command -v mpirun >/dev/null 2>&1 || need_apt=1
if [ -z "${HDF5_DIR:-}" ] && [ ! -f "$deb_hdf5/include/hdf5.h" ] && [ ! -f /usr/include/hdf5/openmpi/hdf5.h ]; then
    need_apt=1
fi
if [ "$need_apt" = 1 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing OpenMPI and parallel HDF5 with apt-get (first run only)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config >&2
    else
        log "ERROR: mpicc/mpirun or parallel HDF5 not found and cannot apt-get (not root)."
        log "       Load your site's MPI and parallel HDF5 modules (or set HDF5_DIR) and re-run."
        exit 1
    fi
fi
if [ -z "${HDF5_DIR:-}" ]; then
    if [ -f "$deb_hdf5/include/hdf5.h" ]; then HDF5_DIR=$deb_hdf5; fi
fi

# -- 2. cached venv with MPI-built mpi4py and h5py --------------------------------------------
stamp_src=$( { sed -n '/^dependencies/,/^\]/p;/^\[project.optional-dependencies\]/,/^\[project.scripts\]/p' "$repo/pyproject.toml"; cat "${BASH_SOURCE[0]}"; echo "$EXTRAS" "${HDF5_DIR:-}"; } | sha256sum | cut -c1-16)
stamp="$VENV/.tract7dt-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_src" ] && [ -x "$VENV/bin/python" ]; then
    log "reusing environment $VENV"
else
    log "building environment $VENV (mpi4py and h5py from source: a few minutes)"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel >&2
    "$VENV/bin/pip" install -q "numpy>=1.26" "cython>=3" pkgconfig >&2
    MPICC=mpicc "$VENV/bin/pip" install -q --no-binary=mpi4py --no-build-isolation "mpi4py>=3.1" >&2
    if [ -n "${HDF5_DIR:-}" ]; then export HDF5_DIR; fi
    CC=mpicc HDF5_MPI=ON "$VENV/bin/pip" install -q --no-binary=h5py --no-build-isolation "h5py>=3.10" >&2
    # the remaining dependencies (mpi4py and h5py are already satisfied and are left alone)
    "$VENV/bin/pip" install -q "$repo[$EXTRAS]" >&2
    "$VENV/bin/pip" uninstall -q -y tract7dt-mpi >&2 || true
    echo "$stamp_src" > "$stamp"
fi

# -- 3. this checkout, editable ----------------------------------------------------------------
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$repo" >&2
"$VENV/bin/python" - >&2 <<'PY'
import h5py, mpi4py
print("[setup] h5py %s (MPI: %s), mpi4py %s" % (h5py.__version__, h5py.get_config().mpi, mpi4py.__version__))
PY
echo "$VENV"
