"""Patch plan geometry (S5) and source assignment (S7) against hand-computed boxes."""
import numpy as np
import pandas as pd
import pytest

from tract7dt_mpi.config import config_from_dict
from tract7dt_mpi.errors import InputError
from tract7dt_mpi.stages.patches import (RECORD_FIELDS, assign_sources, build_patch_plan,
                                         halo_pix, patches_frame)
from tract7dt_mpi.stage_options import plan_options


def _cfg(**epsf):
    e = {"epsf_ngrid": 2, "ngrid": 3, "final_psf_size": 11}
    e.update(epsf)
    return config_from_dict({"epsf": e, "patches": {"halo_pix_min": 5}})


def test_halo_formula():
    assert halo_pix(55, 20) == 29          # spec default
    assert halo_pix(11, 5) == 7
    assert halo_pix(11, 30) == 30


def test_plan_geometry_hand_computed():
    plan = build_patch_plan((100, 130), None, plan_options(_cfg()))
    assert len(plan) == 2 * 2 * 3 * 3
    # cell columns [0,65) [65,130); patch width 65//3 = 21, last ends at the cell edge
    xs = sorted({(p.x0_base, p.x1_base) for p in plan})
    assert xs == [(0, 21), (21, 42), (42, 65), (65, 86), (86, 107), (107, 130)]
    # cell rows [0,50) [50,100); patch height 50//3 = 16
    ys = sorted({(p.y0_base, p.y1_base) for p in plan})
    assert ys == [(0, 16), (16, 32), (32, 50), (50, 66), (66, 82), (82, 100)]
    p = next(q for q in plan if q.patch_tag == "r01_c00_pr02_pc01")
    assert (p.epsf_tag, p.x0_base, p.x1_base, p.y0_base, p.y1_base) == ("r01_c00", 21, 42, 82, 100)
    # ROI = base +- 7, clipped to [0, W] x [0, H]
    assert (p.x0_roi, p.x1_roi, p.y0_roi, p.y1_roi, p.halo_pix) == (14, 49, 75, 100, 7)
    first = plan[0]
    assert first.patch_tag == "r00_c00_pr00_pc00"
    assert (first.x0_roi, first.y0_roi) == (0, 0)
    # row-major order over (er, ec, pr, pc)
    keys = [(q.epsf_r, q.epsf_c, q.patch_r, q.patch_c) for q in plan]
    assert keys == sorted(keys)


def test_active_cells_and_errors():
    plan = build_patch_plan((100, 130), [(1, 1)], plan_options(_cfg()))
    assert len(plan) == 9 and all(p.epsf_tag == "r01_c01" for p in plan)
    with pytest.raises(InputError, match="ngrid"):
        build_patch_plan((100, 130), None, plan_options(_cfg(ngrid=60)))
    with pytest.raises(InputError):
        build_patch_plan((100, 130), [(2, 0)], plan_options(_cfg()))


def _catalog(n=400, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 135, n)
    y = rng.uniform(-5, 105, n)
    x[:6] = [0.0, 21.0, 20.999, 129.999, 65.0, np.nan]   # edges of half-open boxes, NaN
    y[:6] = [0.0, 16.0, 15.999, 99.999, 50.0, 10.0]
    excl = np.zeros(n, bool)
    excl[10:20] = True
    return pd.DataFrame({"_row": np.arange(n) + 1000, "x_pix_white": x, "y_pix_white": y,
                         "excluded_any": excl})


def test_every_active_source_base_in_exactly_one_patch():
    cat = _catalog()
    plan = assign_sources(build_patch_plan((100, 130), None, plan_options(_cfg())), cat, skip_empty=False,
                          n_bands=3)
    inside = (cat.x_pix_white >= 0) & (cat.x_pix_white < 130) & (cat.y_pix_white >= 0) & (
        cat.y_pix_white < 100) & ~cat.excluded_any
    expected = set(cat.loc[inside, "_row"])
    bases = np.concatenate([p.base_rows for p in plan])
    assert len(bases) == len(set(bases)) == len(expected)
    assert set(bases) == expected
    # hand-checked edges: (21, 16) is base in pc01 / pr01 of cell r00_c00
    p = next(q for q in plan if q.patch_tag == "r00_c00_pr01_pc01")
    assert 1001 in p.base_rows
    q = next(q for q in plan if q.patch_tag == "r00_c00_pr00_pc00")
    assert 1002 in q.base_rows and 1000 in q.base_rows
    # (21, 16) lies within 7 px of r00_c00_pr00_pc00's base box -> halo there
    assert 1001 in q.halo_rows
    for p in plan:
        x = cat.set_index("_row").loc[p.halo_rows, "x_pix_white"].to_numpy()
        y = cat.set_index("_row").loc[p.halo_rows, "y_pix_white"].to_numpy()
        assert np.all((x >= p.x0_roi) & (x < p.x1_roi) & (y >= p.y0_roi) & (y < p.y1_roi))
        assert not np.any((x >= p.x0_base) & (x < p.x1_base) & (y >= p.y0_base) & (y < p.y1_base))
        assert not set(p.halo_rows) & set(range(1010, 1020))      # excluded rows never assigned
        h, w = p.y1_roi - p.y0_roi, p.x1_roi - p.x0_roi
        assert p.cost == (len(p.base_rows) + len(p.halo_rows)) * 3 * h * w


def test_skip_empty_uses_base_rows_only():
    # one source in patch r00_c00_pr00_pc00, near its right edge -> halo of pr00_pc01
    cat = pd.DataFrame({"_row": [0], "x_pix_white": [19.0], "y_pix_white": [3.0]})
    plan = build_patch_plan((100, 130), None, plan_options(_cfg()))
    kept = assign_sources(plan, cat, skip_empty=True)
    assert [p.patch_tag for p in kept] == ["r00_c00_pr00_pc00"]
    allp = assign_sources(plan, cat, skip_empty=False)
    nb = next(p for p in allp if p.patch_tag == "r00_c00_pr00_pc01")
    assert nb.halo_rows.tolist() == [0] and nb.base_rows.tolist() == []


def test_patches_frame_columns():
    plan = build_patch_plan((100, 130), [(0, 0)], plan_options(_cfg()))
    df = patches_frame(plan)
    assert list(df.columns[:len(RECORD_FIELDS)]) == list(RECORD_FIELDS)
    assert len(df) == 9 and df["halo_pix"].eq(7).all()


def test_write_patch_plan(tmp_path):
    import json

    from tract7dt_mpi.stages.patches import write_patch_plan

    plan = build_patch_plan((100, 130), [(0, 1)], plan_options(_cfg()))
    csv, js = write_patch_plan(plan, str(tmp_path / "patches"))
    df = pd.read_csv(csv)
    recs = json.loads(open(js).read())
    assert len(df) == len(recs) == 9
    assert recs[0]["patch_tag"] == df["patch_tag"][0] == "r00_c01_pr00_pc00"
    assert recs[0]["x0_base"] == 65 and recs[0]["x0_roi"] == 58


def test_outer_halo_reaches_beyond_the_roi_by_the_given_margin():
    cat = _catalog()
    geom = build_patch_plan((100, 130), None, plan_options(_cfg()))
    inner = {p.patch_tag: p for p in assign_sources(geom, cat, skip_empty=False)}
    outer = {p.patch_tag: p for p in assign_sources(geom, cat, skip_empty=False, outer=5)}
    pos = cat.set_index("_row")
    grew = 0
    for tag, p in outer.items():
        assert np.array_equal(p.base_rows, inner[tag].base_rows)           # base rows never change
        assert set(inner[tag].halo_rows) <= set(p.halo_rows)
        extra = sorted(set(p.halo_rows) - set(inner[tag].halo_rows))
        grew += len(extra)
        x, y = pos.loc[extra, "x_pix_white"].to_numpy(), pos.loc[extra, "y_pix_white"].to_numpy()
        out_roi = (x < p.x0_roi) | (x >= p.x1_roi) | (y < p.y0_roi) | (y >= p.y1_roi)
        near = (x >= p.x0_roi - 5) & (x < p.x1_roi + 5) & (y >= p.y0_roi - 5) & (y < p.y1_roi + 5)
        assert np.all(out_roi & near)
    assert grew > 0


def _big_galaxy_catalog():
    """A galaxy of Re 30 px near a patch corner, a neighbour inside its extent, a star."""
    return pd.DataFrame({"_row": [0, 1, 2, 3], "x_pix_white": [300.0, 400.0, 200.0, 60.0],
                         "y_pix_white": [300.0, 420.0, 200.0, 60.0], "Re": [30.0, 3.0, 2.0, 50.0],
                         "TYPE": ["EXP", "EXP", "DEV", "STAR"]})


def test_roi_grows_to_hold_a_big_galaxy_and_its_neighbours():
    from tract7dt_mpi.stages.patches import grow_for_big_sources, source_extents
    cfg = config_from_dict({"epsf": {"epsf_ngrid": 4, "ngrid": 2, "final_psf_size": 55}})
    shape = (1024, 1024)
    cat = _big_galaxy_catalog()
    plan = assign_sources(build_patch_plan(shape, None, plan_options(cfg)), cat, True, outer=27)
    ext = source_extents(cat, 4.0)
    assert set(ext) == {0, 1, 2}                 # the star has no extent
    grown, n = grow_for_big_sources(plan, ext, shape, 1536)
    assert n == 1
    home = next(p for p in assign_sources(grown, cat, True, outer=27) if 0 in p.base_rows)
    # 4 Re + halo around (300, 300): [300 - 149, 300 + 149]
    assert home.x0_roi <= 151 and home.x1_roi >= 450 and home.y0_roi <= 151 and home.y1_roi >= 450
    assert 1 in home.halo_rows                   # the neighbour is fitted with it
    before = next(p for p in plan if 0 in p.base_rows)
    assert 1 not in before.halo_rows or before.x1_roi < 450
    # the other patches keep their ROI
    same = [p for p in grown if 0 not in p.base_rows]
    assert all((q.x0_roi, q.x1_roi) == (p.x0_roi, p.x1_roi) for q, p in zip(same, [
        p for p in plan if 0 not in p.base_rows]))


def test_grown_roi_is_capped_and_keeps_its_base():
    from tract7dt_mpi.stages.patches import grow_for_big_sources, source_extents
    cfg = config_from_dict({"epsf": {"epsf_ngrid": 4, "ngrid": 2, "final_psf_size": 55}})
    cat = _big_galaxy_catalog().assign(Re=[400.0, 3.0, 2.0, 50.0])
    plan = assign_sources(build_patch_plan((2048, 2048), None, plan_options(cfg)), cat, True, outer=27)
    grown, n = grow_for_big_sources(plan, source_extents(cat, 4.0), (2048, 2048), 512)
    home = next(p for p in grown if 0 in p.base_rows)
    assert n >= 1 and home.x1_roi - home.x0_roi <= 512 + 256 and home.y1_roi - home.y0_roi <= 512 + 256
    assert home.x0_roi <= home.x0_base and home.x1_roi >= home.x1_base


def test_light_radii_match_galsim_half_light_radii():
    """Half-light radius on the image of GalSim galaxies (PSF-convolved, measured the same way
    on the noiseless rendering) within 5 %, with sky noise and a pedestal; NaN on empty sky."""
    import galsim

    from tract7dt_mpi.stages.patches import light_radii
    img = galsim.ImageD(600, 600, scale=1.0)
    psf = galsim.Moffat(beta=3.0, fwhm=4.0)
    pos = [(150.0, 150.0, 3.0), (420.0, 160.0, 12.0), (300.0, 420.0, 25.0)]
    truth = []
    for x, y, hlr in pos:
        g = galsim.Convolve(galsim.Exponential(half_light_radius=hlr, flux=2e5), psf)
        g.drawImage(image=img, center=galsim.PositionD(x + 1, y + 1), add_to_image=True)
        # truth: the radius holding half of the flux inside the measuring radius (100 px)
        big = g.drawImage(nx=241, ny=241, scale=1.0).array
        yy, xx = np.indices(big.shape)
        r = np.hypot(xx - 120, yy - 120)
        rs = np.linspace(0.5, 100, 800)
        cum = np.array([big[r <= q].sum() for q in rs])
        truth.append(float(np.interp(0.5 * cum[-1], cum, rs)))
    data = img.array + 5.0 + np.random.default_rng(3).normal(0, 1.0, img.array.shape)
    got = light_radii(data, [p[0] for p in pos] + [80.0], [p[1] for p in pos] + [500.0],
                      np.ones(data.shape))
    assert np.allclose(got[:3], truth, rtol=0.05), (got, truth)
    assert np.isnan(got[3])                      # empty sky: no size


def test_a_catalogue_without_sizes_grows_from_the_light():
    from tract7dt_mpi.stages.patches import grow_for_big_sources, source_extents
    cfg = config_from_dict({"epsf": {"epsf_ngrid": 4, "ngrid": 2, "final_psf_size": 55}})
    cat = _big_galaxy_catalog().drop(columns=["Re"])
    plan = assign_sources(build_patch_plan((1024, 1024), None, plan_options(cfg)), cat, True, outer=27)
    assert source_extents(cat, 4.0) == {}
    ext = source_extents(cat, 4.0, light_r50={0: 30.0, 1: 3.0, 3: 50.0})
    assert set(ext) == {0, 1}                    # the star (row 3) never grows a patch
    grown, n = grow_for_big_sources(plan, ext, (1024, 1024), 1536)
    assert n == 1
