"""Pipeline stages: functions from data to data (no MPI, no config-file reading).

Each module holds one stage family; file output goes through :mod:`tract7dt_mpi.io` and
:mod:`tract7dt_mpi.plots`. See docs/dev/architecture.md for the contracts.
"""
