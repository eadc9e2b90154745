"""Stop requests: SIGUSR1/SIGTERM/SIGINT handlers and a wall-clock deadline that only set a flag.

Why: a signal handler must not do MPI or I/O (Open MPI forwards SIGUSR1 to every rank and sends
SIGTERM itself; the handler may run inside an MPI call).  The scheduler polls :func:`stop_requested`
between messages, stops dispatching, drains running tasks and exits with the resumable code.  A
SIGINT (Ctrl-C) after a stop was already requested raises ``KeyboardInterrupt`` as usual, so a
second Ctrl-C interrupts the running task at once.
"""

from __future__ import annotations

import signal
import time

_state = {"reason": None, "deadline": None, "installed": False}


def _handler(signum, frame):  # noqa: ARG001 - signal API
    if signum == signal.SIGINT and _state["reason"] is not None:
        raise KeyboardInterrupt
    if _state["reason"] is None:
        try:
            name = signal.Signals(signum).name
        except ValueError:  # pragma: no cover
            name = str(signum)
        _state["reason"] = name


def install(signums=None) -> None:
    """Install the flag-only handler for SIGUSR1, SIGTERM and SIGINT (idempotent, main thread only)."""
    if _state["installed"]:
        return
    for name in signums or ("SIGUSR1", "SIGTERM", "SIGINT"):
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                signal.signal(sig, _handler)
            except ValueError:   # not the main thread
                return
    _state["installed"] = True


def set_deadline(epoch_seconds: float | None) -> None:
    """Stop when ``time.time()`` passes ``epoch_seconds`` (None clears it)."""
    _state["deadline"] = None if epoch_seconds is None else float(epoch_seconds)


def request_stop(reason: str) -> None:
    """Ask for a drain-and-stop (e.g. a worker reported that it received a signal)."""
    if _state["reason"] is None:
        _state["reason"] = str(reason)


def stop_requested() -> bool:
    """True once a signal arrived or the deadline passed."""
    if _state["reason"] is None and _state["deadline"] is not None and time.time() >= _state["deadline"]:
        _state["reason"] = "deadline"
    return _state["reason"] is not None


def stop_reason() -> str | None:
    stop_requested()
    return _state["reason"]


def reset() -> None:
    """Clear the flag and the deadline (tests; a new command in the same process)."""
    _state["reason"] = None
    _state["deadline"] = None
