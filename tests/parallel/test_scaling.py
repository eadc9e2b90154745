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
