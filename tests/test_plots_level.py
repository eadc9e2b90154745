"""plotting.level end to end on a small 3-band tile (one process): which PNGs each level writes,
and `merge` rebuilding the same catalog with the input images gone (it must not read them)."""

import os
import shutil
import subprocess
import sys

import pytest

CFG = """\
inputs: {{tile_name: T, input_catalog: {d}/input_catalog.csv, image_list_file: {d}/image_list.txt,
  gaiaxp_synphot_csv: {d}/gaiaxp_synphot.csv}}
outputs: {{work_dir: {work}}}
crop: {{enabled: true, margin: 16}}
plotting: {{dpi: 30, level: {level}}}
epsf: {{epsf_ngrid: 1, ngrid: 2, maxiters: 2, save_star_local_background_diagnostics: false,
  save_star_montage_max: 4}}
patch_run: {{n_opt_iters: 2, enable_staged_fit: false, cutout_max_sources: 1}}
zp: {{enabled: true}}
"""

PER_CELL_OR_PATCH = ("EPSFs/m", "outputs/r")       # PNGs inside ePSF cell and patch folders


def _run(args):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "tract7dt_mpi.cli"] + args, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    from tract7dt_mpi.sample import make_sample
    d = tmp_path_factory.mktemp("lvl")
    make_sample(str(d / "s"), bands=3, size=256, verbose=False)
    return d


def _run_level(tile, level):
    work = tile / level
    cfg = tile / "s" / f"{level}.yaml"
    cfg.write_text(CFG.format(d=tile / "s", work=work, level=level))
    r = _run(["run", str(cfg)])
    assert r.returncode == 0, r.stderr[-3000:]
    pngs = sorted(os.path.relpath(os.path.join(dp, f), work) for dp, _dn, fs in os.walk(work)
                  for f in fs if f.endswith(".png"))
    return cfg, work, pngs


def test_none_writes_no_png(tile):
    _cfg, work, pngs = _run_level(tile, "none")
    assert pngs == []
    assert (work / "output_catalog.csv").exists()
    assert not list(work.glob("outputs/*/residual_part.npy"))


def test_summary_set_then_merge_without_images(tile):
    cfg, work, pngs = _run_level(tile, "summary")
    assert [p for p in pngs if p.startswith("summary/")] == [
        "summary/epsf_m400.png", "summary/epsf_m650.png", "summary/epsf_m887.png", "summary/residuals.png"]
    assert not [p for p in pngs if p.startswith(PER_CELL_OR_PATCH)], pngs
    assert len(pngs) == 4        # the rank-0 tile plots (crop, overlay, bright mask, Gaia, ZP) are full only
    # the images are not needed after the fit: `merge` reads the prepared store and the working catalog
    ref = (work / "output_catalog.csv").read_text()
    os.remove(work / "output_catalog.csv")
    shutil.move(tile / "s" / "images", tile / "images_away")
    try:
        r = _run(["merge", str(cfg)])
    finally:
        shutil.move(tile / "images_away", tile / "s" / "images")
    assert r.returncode == 0, r.stderr[-3000:]
    merged = (work / "output_catalog.csv").read_text().splitlines()
    # the run's catalog also has the ZP columns (MAG_*), added after the merge
    import io

    import pandas as pd
    a = pd.read_csv(io.StringIO(ref), dtype=str, keep_default_na=False)
    b = pd.read_csv(io.StringIO("\n".join(merged)), dtype=str, keep_default_na=False)
    assert list(b.columns) == [c for c in a.columns if not c.startswith(("MAG_", "MAGERR_"))]
    pd.testing.assert_frame_equal(a[b.columns], b)


@pytest.mark.slow
def test_full_writes_per_cell_and_per_patch_pngs(tile):
    _cfg, _work, pngs = _run_level(tile, "full")
    assert "EPSFs/m400/r00_c00/epsf.png" in pngs and "EPSFs/m887/r00_c00/used_stars.png" in pngs
    assert any(p.startswith("outputs/r") and p.endswith("patch_overview.png") for p in pngs)
    assert any("/cutouts/" in p for p in pngs)
    assert "summary/residuals.png" in pngs
    assert "ZP/zp_vs_mag__m400.png" in pngs and "bright_mask/white_bright_mask_overlay.png" in pngs
