"""Container self-test: every rank writes its own row of one HDF5 file through MPI-IO, then reads all back.

Run as ``mpiexec -n 2 python check_parallel_h5.py FILE``; exits non-zero (assertion) when h5py lacks MPI
or the read-back differs, which catches an h5py built against a different MPI than the launcher's.
"""
import sys

import h5py
import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
if not h5py.get_config().mpi:
    raise SystemExit("h5py was built without MPI (HDF5_MPI=ON missing at build time)")
path = sys.argv[1]
n = 1000
with h5py.File(path, "w", driver="mpio", comm=comm) as f:
    dset = f.create_dataset("rows", (comm.size, n), dtype="f8")   # collective: same call on every rank
    dset[comm.rank] = np.arange(n) + n * comm.rank                 # independent write of own row
comm.Barrier()
with h5py.File(path, "r", driver="mpio", comm=comm) as f:
    back = f["rows"][...]
ok = bool(np.array_equal(back, np.arange(comm.size * n, dtype="f8").reshape(comm.size, n)))
if not comm.allreduce(ok, op=MPI.LAND):
    raise SystemExit(f"rank {comm.rank}: parallel HDF5 read-back differs from what was written")
if comm.rank == 0:
    print(f"parallel HDF5 write/read-back OK on {comm.size} ranks ({MPI.Get_library_version().splitlines()[0]})")
