"""Journal: append-only records, resume states, plan-hash refusal, damaged last line."""

import dataclasses
import os

import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.io import journal


def test_records_and_resume_states(tmp_path):
    p = tmp_path / "journal.jsonl"
    with journal.Journal(p, "A") as jr:
        jr.record_planned(["a", "b", "c"])
        jr.record("a", journal.STARTED, rank=1, host="h")
        jr.record("a", journal.DONE, rank=1, host="h", wall=1.5, rss_mb=10.0)
        jr.record("b", journal.STARTED, rank=2, host="h")
        jr.record("b", journal.FAILED, rank=2, host="h", error="Traceback...\nValueError: boom")
        jr.record("c", journal.STARTED, rank=1, host="h")
    with open(p, "a") as fh:          # a line cut by a kill
        fh.write('{"task": "c", "sta')
    jr = journal.Journal(p, "A", resume=True)
    assert jr.state("a") == journal.DONE and jr.state("b") == journal.FAILED and jr.state("c") == journal.STARTED
    assert jr.attempts("b") == 1
    jr.record("b", journal.STARTED, rank=3, host="h")
    assert jr.last["b"]["attempt"] == 2
    jr.close()
    recs = journal.read_journal(p)
    assert sum(1 for r in recs if r.get("type") == "header") == 2
    fail = [r for r in recs if r.get("state") == journal.FAILED][0]
    assert "ValueError: boom" in fail["error"]


def test_plan_hash_refusal_and_force(tmp_path):
    p = tmp_path / "j.jsonl"
    with journal.Journal(p, "A") as jr:
        jr.record("a", journal.STARTED)
        jr.record("a", journal.DONE)
    with pytest.raises(InputError, match="refusing to resume.*--force"):
        journal.Journal(p, "B", resume=True)
    jr = journal.Journal(p, "B", resume=True, force=True)
    assert jr.state("a") is None           # old results not reusable after a forced re-plan
    jr.close()
    jr = journal.Journal(p, "B", resume=True)   # and the new plan is now the reference
    assert jr.state("a") is None
    jr.close()


def test_fresh_run_truncates(tmp_path):
    p = tmp_path / "j.jsonl"
    with journal.Journal(p, "A") as jr:
        jr.record("a", journal.DONE)
    with journal.Journal(p, "A") as jr:
        assert jr.state("a") is None
    assert len(journal.read_journal(p)) == 1


@dataclasses.dataclass(frozen=True)
class _Sec:
    n_opt_iters: int = 20
    resume: bool = False
    fault_inject: tuple = ()


@dataclasses.dataclass(frozen=True)
class _Inputs:
    input_catalog: str = ""
    image_list_file: str = ""
    gaiaxp_synphot_csv: str = None


@dataclasses.dataclass(frozen=True)
class _Cfg:
    inputs: _Inputs
    patch_run: _Sec = _Sec()
    config_dir: str = ""


def test_plan_hash_tracks_config_and_inputs(tmp_path):
    cat = tmp_path / "cat.csv"
    img = tmp_path / "a.fits"
    lst = tmp_path / "list.txt"
    cat.write_text("RA,DEC\n1,2\n")
    img.write_bytes(b"x" * 5000)
    lst.write_text("# comment\n\na.fits\n")
    cfg = _Cfg(_Inputs(str(cat), str(lst)), config_dir=str(tmp_path))
    images = [str(img)]
    h0 = journal.plan_hash(cfg, images=images)
    assert str(img) in journal.input_paths(cfg, images)
    # result-irrelevant keys do not change it
    assert journal.plan_hash(dataclasses.replace(cfg, patch_run=_Sec(resume=True, fault_inject=("x",))),
                       images=images) == h0
    assert journal.plan_hash(dataclasses.replace(cfg, patch_run=_Sec(n_opt_iters=3)), images=images) != h0
    img.write_bytes(b"y" * 5000)           # same size, different content
    assert journal.plan_hash(cfg, images=images) != h0


# ---------------------------------------------------------------- unreadable lines, moved tiles

def test_non_utf8_line_is_skipped_with_a_warning(tmp_path, caplog):
    p = tmp_path / "j.jsonl"
    with journal.Journal(p, "A") as jr:
        jr.record("a", journal.STARTED)
        jr.record("a", journal.DONE)
    with open(p, "ab") as fh:                   # one damaged byte in an otherwise good record
        fh.write(b'{"task": "b", "state": "DONE", "note": "\xff"}\n')
        fh.write(b'{"task": "c", "state": "DONE"}\n')
    with caplog.at_level("WARNING", logger="tract7dt_mpi.io.journal"):
        jr = journal.Journal(p, "A", resume=True)
    assert jr.state("a") == journal.DONE and jr.state("b") is None and jr.state("c") == journal.DONE
    assert jr.skipped_lines == 1
    assert any("line 4 is not UTF-8" in r.getMessage() for r in caplog.records)
    jr.close()
    assert [r.get("task") for r in journal.read_journal(p) if r.get("task")] == ["a", "a", "c"]


def _tile(folder):
    folder.mkdir()
    (folder / "cat.csv").write_text("ID,RA,DEC\n1,150.0,2.0\n")
    (folder / "img").mkdir()
    (folder / "img" / "g.fits").write_bytes(b"SIMPLE  =" + b"x" * 5000)
    (folder / "list.txt").write_text("img/g.fits\n")
    (folder / "c.yaml").write_text("inputs:\n  input_catalog: cat.csv\n  image_list_file: list.txt\n"
                                   "  gaiaxp_synphot_csv: null\noutputs:\n  work_dir: work\n"
                                   "patch_run:\n  n_opt_iters: 5\n")
    return folder


def test_moved_tile_keeps_its_plan_hash(tmp_path):
    import shutil

    from tract7dt_mpi.config import load_config
    a = _tile(tmp_path / "a")
    shutil.copytree(a, tmp_path / "elsewhere" / "b")
    b = tmp_path / "elsewhere" / "b"
    ha = journal.plan_hash(load_config(a / "c.yaml"), images=[str(a / "img" / "g.fits")])
    hb = journal.plan_hash(load_config(b / "c.yaml"), images=[str(b / "img" / "g.fits")])
    assert ha == hb
    os.utime(a / "img" / "g.fits", (1.0, 1.0))          # a touched file is not a changed file
    assert journal.plan_hash(load_config(a / "c.yaml"), images=[str(a / "img" / "g.fits")]) == ha


def test_refusal_says_what_changed(tmp_path):
    from tract7dt_mpi.config import load_config
    a = _tile(tmp_path / "a")
    cfg = load_config(a / "c.yaml")
    images = [str(a / "img" / "g.fits")]
    plan = journal.plan_doc(cfg, images=images)
    journal.Journal(a / "j.jsonl", journal.hash_of(plan), plan=plan).close()
    edited = cfg.with_overrides({"patch_run": {"n_opt_iters": 7}})
    plan2 = journal.plan_doc(edited, images=images)
    with pytest.raises(InputError, match=r"config patch_run\.n_opt_iters: 5 -> 7"):
        journal.Journal(a / "j.jsonl", journal.hash_of(plan2), resume=True, plan=plan2)
    (a / "img" / "g.fits").write_bytes(b"SIMPLE  =" + b"y" * 5000)
    plan3 = journal.plan_doc(cfg, images=images)
    with pytest.raises(InputError, match=r"image g\.fits changed"):
        journal.Journal(a / "j.jsonl", journal.hash_of(plan3), resume=True, plan=plan3)
