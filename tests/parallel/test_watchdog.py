"""Late-task limits and silent-rank detection of the master's watchdog (no MPI, fake clock)."""

import math

import numpy as np
import pytest

from tract7dt_mpi.parallel.watchdog import TaskTimeout, TaskTimes, Watchdog


def test_no_limit_before_a_task_finished_then_factor_times_p90():
    t = TaskTimes(TaskTimeout(factor=10, min_sec=0.5))
    assert math.isinf(t.limit(1.0))
    walls = [0.1, 0.2, 0.3, 0.4, 2.0]
    for w in walls:
        t.add(w, 0.0)                                  # no cost estimate: plain wall times
    assert t.limit(0.0) == pytest.approx(10 * np.quantile(walls, 0.9))


def test_floor_and_fixed_limit():
    t = TaskTimes(TaskTimeout(factor=10, min_sec=60))
    t.add(0.01, 1.0)
    assert t.limit(1.0) == 60.0                         # 10 x 0.01 s is below the floor
    fixed = TaskTimes(TaskTimeout(factor=10, min_sec=60, limit_sec=7.5))
    assert fixed.limit(1.0) == 7.5                      # before any task finished, too
    off = TaskTimes(TaskTimeout(factor=0, min_sec=1))
    off.add(1.0, 1.0)
    assert math.isinf(off.limit(1.0))


def test_expensive_task_gets_a_cost_scaled_limit():
    t = TaskTimes(TaskTimeout(factor=10, min_sec=0))
    for cost, rate in ((1.0, 0.4), (2.0, 0.5), (3.0, 0.5), (4.0, 0.9)):
        t.add(rate * cost, cost)                        # seconds per unit of cost: median 0.5
    p90 = np.quantile([0.4, 1.0, 1.5, 3.6], 0.9)
    assert t.limit(1.0) == pytest.approx(10 * p90)      # small task: the phase's p90
    assert t.limit(40.0) == pytest.approx(10 * 40 * 0.5)


def test_watchdog_start_times_follow_the_workers_queue():
    dog = Watchdog(TaskTimeout(limit_sec=10), [1, 2], lambda tid: 1.0)
    dog.sent(1, "a", now=0.0)
    dog.sent(1, "b", now=1.0)                           # prefetched: starts when "a" is answered
    assert dog.running() == [(1, "a", 0.0)]
    dog.answered(1, "a", now=4.0)
    assert dog.running() == [(1, "b", 4.0)]
    assert dog.find_late(13.9) == []                    # b has run 9.9 s
    assert dog.find_late(14.1) == [1] and dog.late[1].task_id == "b"
    assert dog.find_late(20.0) == []                    # reported once
    assert dog.silent(23.9) == [] and dog.silent(24.1) == [1]    # twice the limit after start
    back = dog.answered(1, "b", now=25.0)
    assert back is not None and dog.late == {}          # it answered: in service again


def test_copies_are_capped_and_unfinished_work_is_seen():
    dog = Watchdog(TaskTimeout(limit_sec=1), [1, 2], lambda tid: 1.0)
    dog.sent(1, "a", 0.0)
    assert dog.can_copy("a")
    dog.sent(2, "a", 2.0)
    assert not dog.can_copy("a")
    assert dog.unfinished_on([2], done=set()) and not dog.unfinished_on([2], done={"a"})


def test_from_config_reads_the_mpi_section():
    from tract7dt_mpi.config.schema import Mpi
    p = TaskTimeout.from_config(Mpi())
    assert (p.factor, p.min_sec, p.limit_sec) == (Mpi().task_timeout_factor,
                                                  Mpi().task_timeout_min_sec, Mpi().task_timeout_sec)


def test_each_task_kind_has_its_own_expected_time():
    """In a queue mixing kinds (multi-tile runs) a long tile step is not judged by short cells."""
    kinds = {"cell1": "epsf", "cell2": "epsf", "load": "tile-prepare", "load2": "tile-prepare"}
    dog = Watchdog(TaskTimeout(factor=10, min_sec=1), [1, 2], lambda tid: 0.0, kinds.get)
    dog.finished(0.5, "cell1")
    dog.sent(1, "cell2", 0.0)
    dog.sent(2, "load", 0.0)
    assert dog.find_late(20.0) == [1]          # 20 s > 10 x 0.5 s for a cell; no load finished yet
    dog.finished(30.0, "load2")
    assert dog.times_of("load").limit(0.0) == pytest.approx(300.0)
