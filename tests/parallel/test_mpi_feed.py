"""Tasks fed while the queue runs, and exclusive serial steps, under mpirun (with a timeout)."""

import json

import pytest

from .conftest import SCRIPTS, need_mpirun, run

pytestmark = [pytest.mark.mpi, need_mpirun]


@pytest.mark.parametrize("master_works", [False, True])
def test_fed_chains_all_run_and_exclusive_steps_never_on_a_working_master(tmp_path, master_works):
    args = [str(SCRIPTS / "feed_run.py"), str(tmp_path)] + (["--master-works"] if master_works else [])
    r = run(3, args, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["total"] == s["done"] == 3 * 8
    ran = s["ran"]
    assert all(rank != 0 for _, rank, excl in ran if excl)
    if master_works:
        assert any(rank == 0 for _, rank, excl in ran if not excl)     # it ran cells meanwhile
    order = [tid for tid, _, _ in ran]
    for c in range(3):                     # each chain's steps in their order
        first, last = order.index(f"c{c}/s0"), order.index(f"c{c}/s2")
        cells = [order.index(f"c{c}/s1/{i}") for i in range(6)]
        assert first < min(cells) and max(cells) < last
