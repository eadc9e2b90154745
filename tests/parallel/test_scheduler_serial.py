"""Task queue with one process (no MPI): LPT order, fault isolation, stop flag."""

import pytest

from tract7dt_mpi.parallel import signals
from tract7dt_mpi.parallel.mpienv import Comm
from tract7dt_mpi.parallel.scheduler import Task, order_tasks, run_tasks


@pytest.fixture(autouse=True)
def _reset_signals():
    import signal
    signals.reset()
    yield
    signals.reset()
    signal.signal(signal.SIGINT, signal.default_int_handler)      # pytest's Ctrl-C works again
    signals._state["installed"] = False


def test_lpt_order_deterministic():
    tasks = [Task(f"t{i}", "x", cost=c, index=i) for i, c in enumerate([1, 5, 3, 5, 0])]
    assert [t.id for t in order_tasks(tasks)] == ["t1", "t3", "t2", "t0", "t4"]


def test_serial_runs_all_and_isolates_failures():
    ran = []

    def fn(task):
        ran.append(task.id)
        if task.id == "bad":
            raise ValueError("boom")
        if task.id == "exit":
            raise SystemExit(3)
        return task.cost * 2

    done = {}
    tasks = [Task("a", "x", 1), Task("bad", "x", 3), Task("exit", "x", 2), Task("b", "x", 0.5)]
    rep = run_tasks(Comm(None), tasks, fn, on_done=lambda t, r, i: done.__setitem__(t.id, r),
                    heartbeat_sec=0)
    assert ran == ["bad", "exit", "a", "b"]
    assert done == {"a": 2, "b": 1.0}
    assert rep.done == 2 and sorted(f.task_id for f in rep.failed) == ["bad", "exit"]
    err = {f.task_id: f.error for f in rep.failed}
    assert "ValueError: boom" in err["bad"] and "Traceback" in err["bad"]
    assert {f.task_id: f.error_line for f in rep.failed}["bad"] == "ValueError: boom"
    assert "SystemExit" in err["exit"]
    assert all(f.host and f.wall >= 0 and f.rss_mb > 0 for f in rep.failed)


def test_serial_stop_flag_leaves_rest_undispatched():
    def fn(task):
        if task.id == "t1":
            signals.request_stop("SIGTERM")
        return 1

    tasks = [Task(f"t{i}", "x", cost=10 - i, index=i) for i in range(5)]
    rep = run_tasks(Comm(None), tasks, fn, heartbeat_sec=0)
    assert rep.stopped and rep.stop_reason == "SIGTERM"
    assert rep.done == 2 and rep.undispatched == ["t2", "t3", "t4"]


def test_signal_handler_sets_flag_only():
    import os
    import signal
    signals.install()
    assert not signals.stop_requested()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert signals.stop_requested() and signals.stop_reason() == "SIGUSR1"


def test_deadline():
    import time
    signals.set_deadline(time.time() - 1)
    assert signals.stop_requested() and signals.stop_reason() == "deadline"


def test_first_ctrl_c_requests_a_stop_second_interrupts():
    import os
    import signal
    import time
    signals.install()
    os.kill(os.getpid(), signal.SIGINT)
    assert signals.stop_requested() and signals.stop_reason() == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_feed_adds_tasks_while_the_run_goes_on_in_the_given_order():
    """A task's result can make new tasks ready (``feed``); ``order`` is applied to the queue."""
    ready, ran = [], []

    def on_done(task, res, info):
        if task.id == "first":
            ready.extend([Task("small", "y", 1), Task("big", "y", 9), Task("mid", "y", 5)])

    def feed():
        new = list(ready)
        ready.clear()
        return new

    rep = run_tasks(Comm(None), [Task("first", "x", 1)], lambda t: ran.append(t.id), on_done=on_done,
                    feed=feed, order=lambda ts: sorted(ts, key=lambda t: t.cost), heartbeat_sec=0)
    assert ran == ["first", "small", "mid", "big"] and rep.total == 4 and rep.done == 4


def test_feed_after_a_stop_is_left_undispatched():
    ready = []

    def on_done(task, res, info):
        signals.request_stop("test")
        ready.append(Task("later", "y", 1))

    rep = run_tasks(Comm(None), [Task("first", "x", 1)], lambda t: None, on_done=on_done,
                    feed=lambda: [ready.pop()] if ready else [], heartbeat_sec=0)
    assert rep.stopped and rep.undispatched == ["later"] and rep.done == 1
