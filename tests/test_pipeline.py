"""End-to-end pipeline runs on a small synthetic tile, with and without mpirun (timeouts on all).

The reference is the one-process run; every MPI variant must give a byte-identical
``output_catalog.csv`` (floats are written with round-trip precision, so equal text = equal bits).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun")]

FAST = """\
inputs: {{tile_name: T, input_catalog: {d}/input_catalog.csv, image_list_file: {d}/image_list.txt,
  gaiaxp_synphot_csv: {d}/gaiaxp_synphot.csv}}
outputs: {{work_dir: {work}}}
crop: {{enabled: true, margin: 16, plot_pre_crop: false, plot_post_crop: false}}
overlay: {{enabled: false}}
plotting: {{dpi: 30}}
epsf: {{epsf_ngrid: 1, ngrid: 2, maxiters: 2, save_growth_curve: false, save_residual_diagnostics: false,
  save_patch_background_diagnostics: false, save_star_local_background_diagnostics: false,
  save_star_montage_max: 0}}
patch_run: {{n_opt_iters: {iters}, enable_staged_fit: false, no_cutouts: true, no_patch_overview: true{extra}}}
zp: {{enabled: true}}
mpi: {{heartbeat_sec: 2}}
"""


def _env(extra=None):
    env = dict(os.environ)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "MPLBACKEND": "Agg",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("TRACT7DT_FORCE_SERIAL_H5", None)
    env.update(extra or {})
    return env


def _cmd(n, args):
    py = [sys.executable, "-m", "tract7dt_mpi.cli"] + list(args)
    return py if n is None else ["mpirun", "-n", str(n), "--oversubscribe", "--bind-to", "none"] + py


def run_cli(n, args, env=None, timeout=240):
    return subprocess.run(_cmd(n, args), env=_env(env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    from tract7dt_mpi.sample import make_sample
    d = tmp_path_factory.mktemp("tile")
    make_sample(str(d / "s"), bands=2, size=256, verbose=False)
    return d


def make_cfg(tile, name, iters=3, extra=""):
    work = tile / name
    path = tile / "s" / f"{name}.yaml"      # image-list entries resolve against the YAML folder
    path.write_text(FAST.format(d=tile / "s", work=work, iters=iters, extra=extra))
    return str(path), work


def catalog_text(work):
    return pd.read_csv(work / "output_catalog.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def clean(tile):
    cfg, work = make_cfg(tile, "clean")
    r = run_cli(None, ["run", cfg])
    assert r.returncode == 0, r.stderr[-4000:]
    return work


def test_one_process_products(clean):
    cat = catalog_text(clean)
    src = pd.read_csv(clean.parent / "s" / "input_catalog.csv", dtype=str)
    assert len(cat) >= len(src)                      # every input row (+ injected Gaia rows)
    assert list(cat["ID"][:len(src)]) == list(src["ID"])
    fitted = cat["x_pix_white_fit"] != ""
    active = cat["excluded_any"] == "False"
    assert active.sum() > 5 and (fitted == active).all()        # every active row, and only those
    for f in ("run.log", "journal.jsonl", "results.h5", "prepared.h5", "working_catalog.csv",
              "EPSFs/epsf_summary.json", "patches/patches.csv", "outputs/run_summary.csv"):
        assert (clean / f).exists(), f
    log = (clean / "run.log").read_text(errors="replace")
    for line in ("Starting load_inputs", "Finished build_epsf in", "Finished run_patches in",
                 "Pipeline finished in", "busy fraction per rank"):
        assert line in log


def test_identical_catalog_for_2_and_4_ranks_and_serial_h5(tile, clean):
    ref = catalog_text(clean)
    for name, n, env in [("n2", 2, None), ("n4s", 4, {"TRACT7DT_FORCE_SERIAL_H5": "1"})]:
        cfg, work = make_cfg(tile, name)
        r = run_cli(n, ["run", cfg], env=env)
        assert r.returncode == 0, r.stderr[-4000:]
        pd.testing.assert_frame_equal(catalog_text(work), ref, obj=name)
    _check_master_worked_and_usage(tile / "n2", 2)
    # the band PSF fields ran on worker ranks; their lines are in the one run log all the same
    def field_lines(work):
        return sorted(ln.split(" | ")[-1] for ln in (work / "run.log").read_text(errors="replace").splitlines()
                      if ": PSF field of degree" in ln)
    assert field_lines(clean) and field_lines(tile / "n4s") == field_lines(clean)


def _check_master_worked_and_usage(work, n):
    """At N=2 rank 0 runs tasks too (mpi.master_works: auto); per-rank usage is in /run."""
    import h5py
    recs = [json.loads(x) for x in (work / "journal.jsonl").read_text().splitlines() if x.strip()]
    ranks = {x["rank"] for x in recs if x.get("state") == "DONE"}
    assert ranks == set(range(n)), ranks
    with h5py.File(work / "results.h5", "r") as f:
        run = {k: f["run"].attrs[k] for k in f["run"].attrs}
    usage = json.loads(run["rank_usage"])
    assert len(usage) == n and int(run["master_works"]) == 1
    for u in usage:
        assert u["rss_mb"] > 50 and u["cpu_s"] > 0 and u["rchar"] > 0
    assert usage[0]["wchar"] > 0 and float(run["background_cores"]) >= 0


def test_identical_catalog_for_4_ranks_parallel_h5(tile, clean):
    cfg, work = make_cfg(tile, "n4")
    r = run_cli(4, ["run", cfg])
    assert r.returncode == 0, r.stderr[-4000:]
    pd.testing.assert_frame_equal(catalog_text(work), catalog_text(clean))


def test_fault_injection_exit4_other_rows_identical(tile, clean):
    tag = "r00_c00_pr00_pc01"
    cfg, work = make_cfg(tile, "fault", extra=f", fault_inject: [{tag}]")
    r = run_cli(2, ["run", cfg])
    assert r.returncode == 4, r.stderr[-4000:]
    recs = [json.loads(x) for x in (work / "journal.jsonl").read_text().splitlines() if x.strip()]
    failed = [x for x in recs if x.get("state") == "FAILED"]
    assert [x["task"] for x in failed] == [f"patch/{tag}"]
    assert "fault injected" in failed[0]["error"] and "Traceback" in failed[0]["error"]
    assert "fault injected" in (work / "run.log").read_text(errors="replace")
    runner = (work / "outputs" / tag / f"{tag}.runner.log").read_text()
    assert "status: fail" in runner and "Traceback" in runner
    summ = pd.read_csv(work / "outputs" / "run_summary.csv")
    assert summ.set_index("patch").loc[tag, "status"] == "fail"
    cat, ref = catalog_text(work), catalog_text(clean)
    bad = cat["patch_tag"] == tag
    assert bad.sum() == 0                                   # failed patch rows: no fit values
    lost = ref["patch_tag"] == tag
    assert lost.sum() > 0
    assert cat.loc[lost, "fit_quality_issues"].str.contains("no_fit_result").all()
    same = ~lost
    # ZP uses every star, and the PSF term of FLUXERR is pooled over every fitted star
    keep = [c for c in ref.columns if not c.startswith(("MAG_", "MAGERR_"))
            and not (c.startswith("FLUXERR_") and not c.startswith("FLUXERR_STAT_"))]
    pd.testing.assert_frame_equal(cat.loc[same, keep].reset_index(drop=True),
                                  ref.loc[same, keep].reset_index(drop=True))


def test_resume_refused_after_config_edit(tile, clean):
    cfg, work = make_cfg(tile, "clean", iters=5)      # same work dir, edited n_opt_iters
    r = run_cli(None, ["run", cfg, "--resume"])
    assert r.returncode == 2
    assert "refusing to resume" in r.stderr and r.stderr.count("refusing to resume") == 1
    make_cfg(tile, "clean", iters=3)                   # restore for the other tests


def test_bad_input_reaches_user_once_at_4_ranks(tile):
    src = tile / "s" / "input_catalog.csv"
    bad = tile / "bad_catalog.csv"
    df = pd.read_csv(src, dtype=str)
    df.rename(columns={"RA": "XRA", "DEC": "XDEC"}).to_csv(bad, index=False)
    cfg, work = make_cfg(tile, "badin")
    text = open(cfg).read().replace(f"{tile}/s/input_catalog.csv", str(bad))
    open(cfg, "w").write(text)
    t0 = time.time()
    r = run_cli(4, ["run", cfg], timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert time.time() - t0 < 120
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("tract7dt-mpi: error:")]
    assert len(errs) == 1 and "RA" in errs[0]
    assert "Traceback" not in r.stderr


def _rank_pids(cfg):
    """{rank: pid} of the running ranks of a job started with config ``cfg``."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if b"tract7dt_mpi.cli" not in cmd or cfg.encode() not in cmd or cmd[0].endswith(b"mpirun"):
                continue
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for e in env:
            if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(e.split(b"=")[1])] = int(pid)
    return out


def _wait_for(work, needle, count=1, timeout=180):
    j = work / "journal.jsonl"
    t_end = time.time() + timeout
    while time.time() < t_end:
        if j.exists() and j.read_text().count(needle) >= count:
            return True
        time.sleep(0.2)
    return False


def _interrupt_then_resume(tile, clean, name, sig, ranks):
    cfg, work = make_cfg(tile, name)
    p = subprocess.Popen(_cmd(3, ["run", cfg]), env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert _wait_for(work, '"task": "patch/', 2), "patch phase never started"
        pids = _rank_pids(cfg)
        for rk in ranks:
            os.kill(pids[rk], sig)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    r = run_cli(2, ["run", cfg, "--resume"])
    assert r.returncode == 0, r.stderr[-4000:]
    pd.testing.assert_frame_equal(catalog_text(work), catalog_text(clean))
    summ = pd.read_csv(work / "outputs" / "run_summary.csv")
    return p.returncode, err, summ


@pytest.mark.slow
def test_sigkill_worker_then_resume_matches_clean(tile, clean):
    rc, err, summ = _interrupt_then_resume(tile, clean, "killed", signal.SIGKILL, [1])
    assert rc not in (0, 3, 4)
    assert set(summ["status"]) <= {"ok", "skipped"}


@pytest.mark.slow
def test_sigterm_drains_exit3_then_resume_matches_clean(tile, clean):
    rc, err, summ = _interrupt_then_resume(tile, clean, "termed", signal.SIGTERM, [0, 1, 2])
    assert rc == 3, err[-3000:]
    assert "--resume" in err


@pytest.mark.slow
def test_force_resume_after_config_edit_reruns(tile):
    cfg, work = make_cfg(tile, "forced")
    assert run_cli(None, ["run", cfg]).returncode == 0
    make_cfg(tile, "forced", iters=4)
    assert run_cli(None, ["run", cfg, "--resume"]).returncode == 2
    r = run_cli(2, ["run", cfg, "--resume", "--force"])
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (work / "journal.jsonl").read_text().splitlines() if x.strip()]
    heads = [x["plan_hash"] for x in recs if x.get("type") == "header"]
    assert len(set(heads)) == 2
    last = heads[-1]
    after = recs[[i for i, x in enumerate(recs) if x.get("plan_hash") == last][0]:]
    assert sum(1 for x in after if x.get("state") == "DONE" and x["task"].startswith("patch/")) >= 1


def test_resume_refused_after_config_edit_at_2_ranks(tile, clean):
    """The journal check runs on rank 0 without holding the workers; its error still reaches the
    user once with exit code 2 on every rank."""
    path = tile / "s" / "clean_edited.yaml"
    path.write_text(FAST.format(d=tile / "s", work=clean, iters=4, extra=""))
    r = run_cli(2, ["run", str(path), "--resume"], timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("tract7dt-mpi: error:") == 1 and "resume" in r.stderr


def test_moved_tile_resumes_without_rerunning(tile, clean):
    """Inputs and work folder copied elsewhere (config edited to the new paths): the plan hash
    is the same, so --resume carries every task over and gives the same catalog."""
    new = tile / "moved"
    shutil.copytree(tile / "s", new / "s", ignore=shutil.ignore_patterns("*.yaml"))
    shutil.copytree(clean, new / "work", ignore=shutil.ignore_patterns("tract7dt-mpi.lock"))
    cfg = new / "s" / "moved.yaml"
    cfg.write_text(FAST.format(d=new / "s", work=new / "work", iters=3, extra=""))
    r = run_cli(None, ["run", str(cfg), "--resume"], timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resume: " in r.stderr and ", 0 to run" in r.stderr
    assert catalog_text(new / "work").equals(catalog_text(clean))
