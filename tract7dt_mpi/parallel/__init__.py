"""All MPI code of tract7dt-mpi: process environment, task queue, results store, journal, signals.

Nothing else in the package imports ``mpi4py``; with one process none of this needs an MPI launcher.
See ``docs/dev/parallel.md``.
"""

from .mpienv import Comm, get_comm, install_excepthook, set_thread_env
from .scheduler import RunReport, Task, TaskInfo, order_tasks, run_tasks

__all__ = ["Comm", "get_comm", "install_excepthook", "set_thread_env", "RunReport", "Task",
           "TaskInfo", "order_tasks", "run_tasks"]
