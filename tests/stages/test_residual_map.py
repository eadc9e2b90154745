"""Tile residual image from per-patch block sums: the sum of the parts is the whole frame."""
import numpy as np
import pytest

from tract7dt_mpi.stages.residual_map import (ResidualPart, assemble, coarse_factor, colour_bands,
                                              patch_residual_part)


def test_coarse_factor_and_colour_bands():
    assert coarse_factor((480, 480)) == 1 and coarse_factor((6388, 9576)) == 10
    assert coarse_factor((2048, 1000), max_side=1024) == 2
    assert colour_bands(["m650", "m400", "m887", "m500"]) == ["m887", "m650", "m400"]
    assert colour_bands(["g", "r", "i"]) == ["i", "r", "g"] and colour_bands(["a", "b"]) == []


def test_parts_of_a_partition_give_the_block_means_of_the_frame():
    """Four patches whose base boxes split a 37 x 50 frame at points that are not multiples of
    the block size; their ROIs extend beyond the boxes (halo) with garbage that must not count."""
    rng = np.random.default_rng(3)
    h, w, f = 37, 50, 4
    bands = ["m400", "m650", "m887"]
    data = {b: rng.normal(10, 3, (h, w)) for b in bands}
    model = {b: rng.normal(10, 1, (h, w)) for b in bands}
    sigma = {b: np.full((h, w), 1.0 + k) for k, b in enumerate(bands)}
    good = {b: rng.random((h, w)) > 0.1 for b in bands}
    parts = []
    for x0, x1, y0, y1 in [(0, 23, 0, 17), (23, 50, 0, 17), (0, 23, 17, 37), (23, 50, 17, 37)]:
        rx0, ry0 = max(0, x0 - 5), max(0, y0 - 5)
        rx1, ry1 = min(w, x1 + 5), min(h, y1 + 5)
        roi = (slice(ry0, ry1), slice(rx0, rx1))
        cut = {b: {"d": data[b][roi].copy(), "m": model[b][roi].copy()} for b in bands}
        parts.append(patch_residual_part({b: cut[b]["d"] for b in bands}, {b: cut[b]["m"] for b in bands},
                                         {b: sigma[b][roi] for b in bands}, {b: good[b][roi] for b in bands},
                                         (x0, x1, y0, y1, x0 - rx0, y0 - ry0), bands, f))
    chans, d, m = assemble(parts, (h, w), f)
    assert chans == ["white", "m887", "m650", "m400"] and d.shape == (4, 10, 13)

    def bsum(x):
        pad = np.zeros((40, 52))
        pad[:h, :w] = x
        return pad.reshape(10, f, 13, f).sum((1, 3))
    wt = {b: good[b] / sigma[b] ** 2 for b in bands}
    white = bsum(sum(data[b] * wt[b] for b in bands)) / bsum(sum(wt[b] for b in bands))
    assert d[0] == pytest.approx(white, rel=1e-12)
    assert m[3] == pytest.approx(bsum(model["m400"] * good["m400"]) / bsum(good["m400"]), rel=1e-12)


def test_assemble_skips_foreign_parts_and_reports_empty():
    p = ResidualPart(2, 0, 0, ["white"], np.ones((1, 1, 1)), np.ones((1, 1, 1)), np.zeros((1, 1, 1)))
    chans, d, m = assemble([p], (4, 4), 2)
    assert chans == ["white"] and np.isnan(d).all()
    assert assemble([p], (4, 4), 1) == ([], None, None)
