"""The multi-tile scaling prediction (parallel/scaling_tiles.py) against hand-computed schedules."""

import pytest

from tract7dt_mpi.parallel.scaling_tiles import TileModel, simulate_tiles


def _tile():
    # prepare 10 s, 40 ePSF cells of 1 s, plan 2 s, 20 patches of 2 s, finish 3 s, 3 plots of 1 s
    return TileModel(10.0, [1.0] * 40, 2.0, [2.0] * 20, 3.0, [1.0] * 3)


def test_one_process_runs_all_work_in_a_row():
    r = simulate_tiles([_tile()] * 3, 1)
    assert r["makespan"] == pytest.approx(3 * 98.0) and r["efficiency"] == pytest.approx(1.0)


def test_two_ranks_with_a_working_master_by_hand():
    # the worker loads (10 s; the master never runs a serial step), cells split 20/20 (30 s),
    # plan on the worker (32 s), patches 10/10 (52 s), finish (55 s), plots 2 + 1 (57 s)
    r = simulate_tiles([_tile()], 2, master_works=True)
    assert r["makespan"] == pytest.approx(57.0)


def test_serial_chains_of_several_tiles_overlap():
    # tiles of serial steps only: one chain each, run side by side on as many workers
    chain = TileModel(5.0, [], 2.0, [], 3.0)
    r = simulate_tiles([chain] * 4, 5)
    assert r["makespan"] == pytest.approx(10.0)
    assert r["efficiency"] == pytest.approx(40.0 / (5 * 10.0))
    assert simulate_tiles([chain] * 4, 3)["makespan"] == pytest.approx(20.0)    # two waves


def test_more_tiles_hide_the_serial_steps():
    one = simulate_tiles([_tile()], 17)["efficiency"]
    many = simulate_tiles([_tile()] * 16, 17)["efficiency"]
    assert one < 0.3 and many > 0.75


def test_message_overhead_lengthens_the_run():
    base = simulate_tiles([_tile()] * 2, 4)["makespan"]
    assert simulate_tiles([_tile()] * 2, 4, overhead=0.05)["makespan"] > base


def test_a_tiles_band_steps_chain_by_hand():
    # 2 workers, master only dispatches: prepare 1, two bands of 2 s side by side (3), one strip
    # (4), inputs (5), two loci (5.5), cells 2 + 2 (7.5), fields (8.5), PSF fields (9), plan (10),
    # finish (11)
    t = TileModel(1.0, [1.0] * 4, 1.0, [], 1.0, load=[2.0, 2.0], white=[1.0], inputs=1.0,
                  locus=[0.5, 0.5], fields=1.0, psf_field=[0.5])
    r = simulate_tiles([t], 3)
    assert r["makespan"] == pytest.approx(11.0)
    assert r["work"] == pytest.approx(t.work) == pytest.approx(15.5)


def test_largest_patch_first_across_tiles():
    # tile 0: four 1 s patches, tile 1: one 4 s patch; on 2 workers the 4 s patch starts at once
    # (4 s) instead of after tile 0's patches (6 s in tile order)
    small, big = TileModel(0.0, [], 0.0, [1.0] * 4, 0.0), TileModel(0.0, [], 0.0, [4.0], 0.0)
    assert simulate_tiles([small, big], 3)["makespan"] == pytest.approx(4.0)
    assert simulate_tiles([small, big], 3, tile_major=True)["makespan"] == pytest.approx(6.0)
