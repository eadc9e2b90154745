"""Run an MPI launcher so that the stop signals of schedulers and people give the documented codes.

usage: python -m tract7dt_mpi.parallel.launch [--] LAUNCHER ARGS...
  e.g. python -m tract7dt_mpi.parallel.launch mpirun -n 64 tract7dt-mpi config.yaml

Why: Open MPI's ``mpirun`` (checked with 4.1) treats SIGTERM, SIGINT and SIGHUP as "kill the job":
it sends SIGTERM to the ranks, SIGKILL one second later (``odls_base_sigkill_timeout``) and exits 1
whatever the ranks return, and it refuses to forward these signals (``ess_base_forward_signals``).
It does forward SIGUSR1 and SIGUSR2, and on SIGUSR1 the program drains and exits 3.  So this
wrapper starts the launcher in its own process group (a Ctrl-C typed at the terminal, or a signal to
the job script's process group, reaches only the wrapper), with stdin from /dev/null (a background
process group must not read the terminal), and turns the first SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2
into SIGUSR1 for the launcher (``srun`` and MPICH's ``mpiexec`` forward it too); a second
SIGTERM/SIGINT/SIGHUP stops at once (SIGTERM to the launcher).  Its exit status is the launcher's,
except that after a stop signal any status other than 0, 2, 3 or 4 (the launcher itself was
signalled or killed the ranks) becomes 3: the journal holds every finished task, ``--resume`` goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ..errors import EXIT_INPUT, EXIT_OK, EXIT_RESUMABLE, EXIT_TASK_FAILURES

PROG = "tract7dt-launch"
#: signals that ask for a clean stop; a second one of the first three stops at once
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2")
_HARD = ("SIGTERM", "SIGINT", "SIGHUP")
#: exit codes of the program itself, passed on unchanged
PROGRAM_CODES = (EXIT_OK, EXIT_INPUT, EXIT_RESUMABLE, EXIT_TASK_FAILURES)


def _say(msg: str) -> None:
    sys.stderr.write(f"[{PROG}] {msg}\n")
    sys.stderr.flush()


def exit_status(returncode: int, stop_signal: str | None) -> int:
    """Shell-style status of the launcher (128+N when killed by signal N), mapped after a stop."""
    rc = 128 - returncode if returncode < 0 else returncode
    if stop_signal is not None and rc not in PROGRAM_CODES:
        return EXIT_RESUMABLE
    return rc


def run(argv: list[str]) -> int:
    """Run ``argv`` (the launcher command line) and return the exit status described above."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _say("usage: python -m tract7dt_mpi.parallel.launch [--] LAUNCHER ARGS...")
        return EXIT_INPUT
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=os.setpgrp)  # noqa: PLW1509
    except OSError as exc:
        _say(f"cannot start {argv[0]}: {exc}")
        return EXIT_INPUT
    state = {"first": None, "hard": False}

    def handler(signum, frame):  # noqa: ARG001 - signal API
        name = signal.Signals(signum).name
        try:
            if state["first"] is None:
                state["first"] = name
                os.kill(child.pid, signal.SIGUSR1)
                _say(f"{name}: asked the ranks to stop cleanly (SIGUSR1 to {argv[0]}, pid "
                     f"{child.pid}); the job ends with exit code 3 once the running tasks are done "
                     f"(send {name} again to stop at once)")
            elif name in _HARD and not state["hard"]:
                state["hard"] = True
                os.kill(child.pid, signal.SIGTERM)
                _say(f"{name} again: stopping at once (SIGTERM to {argv[0]}); finished tasks are "
                     "kept, run again with --resume")
            else:
                os.kill(child.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), handler)
    returncode = child.wait()
    rc = exit_status(returncode, state["first"])
    if state["first"] is not None and rc != (128 - returncode if returncode < 0 else returncode):
        _say(f"{argv[0]} exited with status {128 - returncode if returncode < 0 else returncode} "
             f"after {state['first']}: exit code {rc} (resumable: run the same command with --resume)")
    return rc


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
