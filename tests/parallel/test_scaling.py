"""Scaling model: analytic cases and Graham's LPT bound."""

import math

import numpy as np

from tract7dt_mpi.parallel.scaling import simulate_phase


def test_equal_tasks_analytic():
    # 12 tasks of 2 s on 3 workers (4 ranks), no overhead: 4 rounds -> 8 s, no idle tail
    r = simulate_phase([2.0] * 12, 4, 0.0)
    assert math.isclose(r["makespan"], 8.0) and math.isclose(r["idle_tail"], 0.0)
    # one rank: master runs everything, overhead per task added
    r1 = simulate_phase([2.0] * 12, 1, 0.01)
    assert math.isclose(r1["makespan"], 24.0 + 0.12)


def test_master_overhead_saturates():
    # 1000 tiny tasks, master needs 0.01 s per message: the master, not the workers, limits
    r = simulate_phase([0.001] * 1000, 257, 0.01)
    assert r["makespan"] >= 1000 * 0.01


def test_lpt_within_graham_bound():
    rng = np.random.default_rng(1)
    for m in (2, 7, 31):
        walls = sorted(rng.pareto(1.5, size=300) + 0.1, reverse=True)
        r = simulate_phase(walls, m + 1, 0.0)
        lower = max(sum(walls) / m, max(walls))            # optimum >= this
        # Graham's list-scheduling bound (a theorem for any greedy list order) and the lower bound
        assert r["makespan"] <= sum(walls) / m + (1 - 1 / m) * max(walls) + 1e-9
        assert r["makespan"] >= lower - 1e-9


def test_lpt_matches_bruteforce_within_4_3():
    import itertools
    walls = sorted([7, 5, 4, 4, 3, 3, 2, 1], reverse=True)
    m = 3
    best = min(max(sum(w for w, a in zip(walls, asg) if a == k) for k in range(m))
               for asg in itertools.product(range(m), repeat=len(walls)))
    r = simulate_phase(walls, m + 1, 0.0)
    assert best <= r["makespan"] <= (4 / 3 - 1 / (3 * m)) * best + 1e-9


def test_cpu_contention_processor_sharing():
    # 4 tasks of 1 s on 2 workers (master only dispatches, sleeps: not counted)
    assert math.isclose(simulate_phase([1.0] * 4, 3, 0.0)["makespan"], 2.0)
    assert math.isclose(simulate_phase([1.0] * 4, 3, 0.0, cores=2)["makespan"], 2.0)
    # one core shared by both workers: 4 s of work at 1 core
    assert math.isclose(simulate_phase([1.0] * 4, 3, 0.0, cores=1)["makespan"], 4.0)


def test_master_works_adds_a_rank():
    # N=2: the master and its worker split 10 equal tasks: 5 s (vs 10 s with one worker)
    r = simulate_phase([1.0] * 10, 2, 0.0, master_works=True)
    assert math.isclose(r["makespan"], 5.0) and r["workers"] == 2
    assert math.isclose(simulate_phase([1.0] * 10, 2, 0.0)["makespan"], 10.0)
    # 3 processes on 2 cores with the master working: 12 s of work at 2 cores -> 6 s
    r = simulate_phase([1.0] * 12, 3, 0.0, master_works=True, cores=2)
    assert math.isclose(r["makespan"], 6.0)


def test_master_busy_delays_only_unprefetched_workers():
    # the master's own tasks outlast the worker's: with prefetch 1 the worker waits for the
    # master after each task; with the default prefetch 2 it has its next task in hand
    walls = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
    slow = simulate_phase(walls, 2, 0.0, master_works=True, prefetch=1)["makespan"]
    fast = simulate_phase(walls, 2, 0.0, master_works=True, prefetch=2)["makespan"]
    assert fast < slow and fast >= sum(walls) / 2 - 1e-9


def test_intrinsic_work_undoes_contention():
    from tract7dt_mpi.parallel.scaling import _intrinsic
    # two tasks overlapping fully on one core took 2 s each: 1 s of CPU work each
    w = _intrinsic([0.0, 0.0, 10.0], [2.0, 2.0, 1.0], cores=1)
    assert np.allclose(w, [1.0, 1.0, 1.0])
    assert np.allclose(_intrinsic([0.0, 0.0], [2.0, 2.0], cores=None), [2.0, 2.0])


def test_less_than_one_free_core_slows_even_one_rank():
    # other programs leave half a core: one process needs twice its CPU time
    assert math.isclose(simulate_phase([1.0] * 4, 1, 0.0, cores=0.5)["makespan"], 8.0)
    assert math.isclose(simulate_phase([1.0] * 4, 3, 0.0, cores=0.5)["makespan"], 8.0)
