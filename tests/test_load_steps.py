"""The load stage as band tasks (tract7dt_mpi.load_steps), in this process and under mpirun -n 2,
against the same stage run in one process (stages.load.load_inputs): the same prepared store and
catalogue, and a corrupt image ends as the same InputError on both ranks. Every mpirun has a
timeout."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "tests" / "scripts" / "load_bands_run.py")

needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")


def _mpirun(n, cfg, timeout=120):
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", TRACT7DT_MASTER_WORKS="1")
    cmd = ["mpirun", "-n", str(n), "--oversubscribe", "--bind-to", "none", sys.executable, SCRIPT, str(cfg)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    from tract7dt_mpi.sample import make_sample
    out = tmp_path_factory.mktemp("load_steps") / "T"
    make_sample(str(out), bands=3, size=256, verbose=False)
    return out


def _copy(tile, tmp_path):
    t = tmp_path / "T"
    shutil.copytree(tile, t, ignore=shutil.ignore_patterns("work"))
    return t


def _outcomes(work_dir):
    """What each rank of the script ended with, by rank."""
    return [Path(p).read_text() for p in sorted(Path(work_dir).glob("outcome.rank*.txt"))]


def _fields(info):
    return {k: (repr(v) if isinstance(v, float) else v) for k, v in info.__dict__.items()}   # nan == nan


def _assert_same_store(got_path, want_path, ref):
    """The store at ``got_path`` holds what the one-process store (and LoadResult ``ref``) holds."""
    from tract7dt_mpi.io.prepared import PreparedImages
    with h5py.File(got_path, "r") as f:                  # the bands are links to band files
        links = {b: f["bands"].get(b, getlink=True) for b in f["bands"]}
    assert all(isinstance(v, h5py.ExternalLink) for v in links.values()) and len(links) == len(ref.bands)
    with PreparedImages(got_path) as got, PreparedImages(want_path) as want:
        assert got.bands == want.bands == ref.bands
        assert (got.shape, got.crop_x0, got.crop_y0, got.zp_ref, got.wcs_header) == \
            (want.shape, want.crop_x0, want.crop_y0, want.zp_ref, want.wcs_header)
        H, W = got.shape
        for b in got.bands:
            assert _fields(got.band_info(b)) == _fields(want.band_info(b)) == _fields(ref.band_infos[b])
            assert np.isfinite(got.band_info(b).star_fwhm_pix)     # the Moffat ran in the task
            g, w = got.read(b, 0, H, 0, W), want.read(b, 0, H, 0, W)
            assert np.array_equal(g.img, w.img, equal_nan=True)
            assert np.array_equal(got.read_mask_bits(b, 0, H, 0, W), want.read_mask_bits(b, 0, H, 0, W))
            assert np.array_equal(g.sigma_sky, w.sigma_sky) and np.array_equal(g.sigma_total, w.sigma_total)
        gw, gs = got.read_white()
        assert np.array_equal(gw, ref.white, equal_nan=True) and np.array_equal(gs, ref.sigma_white)
        assert np.array_equal(gw, want.read_white()[0], equal_nan=True)


def _one_process_load(cfg, path, plots=False):
    """The stage in this process (stages.load.load_inputs) into the store ``path``."""
    from tract7dt_mpi.io.prepared import PreparedWriter
    from tract7dt_mpi.stage_options import load_options
    from tract7dt_mpi.stages.load import load_inputs
    os.makedirs(cfg.outputs.work_dir, exist_ok=True)
    writer = PreparedWriter(path)
    res = load_inputs(load_options(cfg), writer=writer, plots=plots)
    writer.close()
    return res


def test_band_tasks_with_weight_maps_in_one_process(tile, tmp_path):
    """No launcher: the band tasks run in this process; per-pixel weight maps (one with a
    zero-weight column) give the one-process ivar, masks and white stack."""
    from astropy.io import fits
    from tract7dt_mpi.config import load_config
    from tract7dt_mpi.pipeline import _Run
    t = _copy(tile, tmp_path)
    lines = [ln for ln in (t / "image_list.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    out = []
    for k, ln in enumerate(lines):
        H, W = fits.getdata(t / ln).shape
        sig = 3.0 * (1.0 + np.arange(W) / W)[None, :] * np.ones((H, 1))
        w = (1.0 / sig ** 2).astype(np.float32)
        if k == 0:
            w[:, 40] = 0.0
        fits.PrimaryHDU(data=w).writeto(t / f"weight{k}.fits")
        out.append(f"{ln} weight=weight{k}.fits")
    (t / "image_list.txt").write_text("\n".join(out) + "\n")
    cfg = load_config(str(t / "config.yaml"))
    ref = _one_process_load(cfg, str(tmp_path / "one_process.h5"))
    assert ref.band_infos[ref.bands[0]].weight.endswith("weight0.fits")
    got = _Run("run", cfg, {}).load_bands(plots=False)
    _assert_same_store(cfg.mpi.prepared_store, str(tmp_path / "one_process.h5"), ref)
    assert {b: p.tolist() for b, p in got.satur_pixels.items()} == \
        {b: p.tolist() for b, p in ref.satur_pixels.items()}
    assert got.catalog.equals(ref.catalog)


@pytest.mark.mpi
@needs_mpirun
def test_white_strips_written_to_files_give_the_sent_white_stack(tile, tmp_path):
    """A multi-tile run's strips go through files beside the band files (written by any rank,
    read by the worker that writes the store): the same white stack as the strips sent back,
    and no strip file is left."""
    from tract7dt_mpi import load_steps
    from tract7dt_mpi.config import load_config
    from tract7dt_mpi.parallel.scheduler import TaskInfo
    t = _copy(tile, tmp_path)
    cfg = load_config(str(t / "config.yaml"))
    os.makedirs(cfg.outputs.work_dir, exist_ok=True)
    plan = load_steps.plan_step(cfg, plots=False)
    bands = {}
    for task in load_steps.band_tasks(cfg, plan):
        info = TaskInfo(task.id, ok=True, rank=0, host="here", wall=0.1, rss_mb=0.0)
        bands[task.id] = load_steps.band_done(plan, task, load_steps.run_band(cfg, task).data, info,
                                              len(bands) + 1)
    sent, filed = load_steps.WhiteRows(plan), load_steps.WhiteRows(plan)
    for task in load_steps.white_tasks(cfg, plan, bands):
        sent.add(task, load_steps.run_white_strip(task).data, None)
    answers = {task.id: load_steps.run_white_strip(task).data
               for task in load_steps.white_tasks(cfg, plan, bands, to_files=True)}
    files = [a["file"] for a in answers.values()]
    assert files and all(os.path.exists(f) and "white" not in a for f, a in zip(files, answers.values()))
    filed.add_files(answers)
    (w0, s0), (w1, s1) = sent.result(), filed.result()
    assert np.isfinite(w0).mean() > 0.9
    assert np.array_equal(w0, w1, equal_nan=True) and np.array_equal(s0, s1)
    assert not any(os.path.exists(f) for f in files)
    broken = load_steps.WhiteRows(plan)
    broken.add_files({next(iter(answers)): {"failed": "disk full"}})
    with pytest.raises(RuntimeError, match="disk full"):
        broken.result()


def test_band_tasks_give_the_one_process_store(tile, tmp_path):
    from tract7dt_mpi.config import load_config
    t = _copy(tile, tmp_path)
    cfg = load_config(str(t / "config.yaml"))
    ref_path = str(tmp_path / "one_process.h5")
    ref = _one_process_load(cfg, ref_path, plots=True)                 # the pre-crop white too
    r = _mpirun(2, t / "config.yaml")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert _outcomes(cfg.outputs.work_dir) == ["ok", "ok"], r.stdout + r.stderr[-3000:]
    _assert_same_store(cfg.mpi.prepared_store, ref_path, ref)
    before = np.load(Path(cfg.outputs.work_dir) / "white_before_crop.npy")
    assert before.shape == (128, 128) and np.array_equal(before, ref.white_before_crop, equal_nan=True)
    assert (Path(cfg.outputs.work_dir) / "cropped_images" / "white_before_crop.png").exists()
    cat = pd.read_csv(Path(cfg.outputs.work_dir) / "load_catalog.csv", dtype=str, keep_default_na=False)
    want_cat = pd.read_csv(StringIO(ref.catalog.to_csv(index=False)), dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(cat, want_cat)


@pytest.mark.mpi
@needs_mpirun
def test_corrupt_image_is_the_same_input_error_on_both_ranks(tile, tmp_path):
    from astropy.io import fits
    t = _copy(tile, tmp_path)
    bad = sorted((t / "images").glob("*.fits"))[1]
    with fits.open(bad) as hdul:
        data_at = hdul.fileinfo(0)["datLoc"]
    bad.write_bytes(bad.read_bytes()[:data_at + 1000])   # header intact: the band task finds it
    r = _mpirun(2, t / "config.yaml")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    got = _outcomes(t / "work")
    assert len(got) == 2, r.stdout + r.stderr[-3000:]
    for text in got:
        assert text.startswith(f"InputError: Cannot read image data of {bad}"), text
    assert "Traceback" not in r.stdout + r.stderr
