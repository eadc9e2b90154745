"""Journal: append-only records, resume states, plan-hash refusal, damaged last line."""

import dataclasses

import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.parallel import journal as J


def test_records_and_resume_states(tmp_path):
    p = tmp_path / "journal.jsonl"
    with J.Journal(p, "A") as jr:
        jr.record_planned(["a", "b", "c"])
        jr.record("a", J.STARTED, rank=1, host="h")
        jr.record("a", J.DONE, rank=1, host="h", wall=1.5, rss_mb=10.0)
        jr.record("b", J.STARTED, rank=2, host="h")
        jr.record("b", J.FAILED, rank=2, host="h", error="Traceback...\nValueError: boom")
        jr.record("c", J.STARTED, rank=1, host="h")
    with open(p, "a") as fh:          # a line cut by a kill
        fh.write('{"task": "c", "sta')
    jr = J.Journal(p, "A", resume=True)
    assert jr.state("a") == J.DONE and jr.state("b") == J.FAILED and jr.state("c") == J.STARTED
    assert jr.attempts("b") == 1
    jr.record("b", J.STARTED, rank=3, host="h")
    assert jr.last["b"]["attempt"] == 2
    jr.close()
    recs = J.read_journal(p)
    assert sum(1 for r in recs if r.get("type") == "header") == 2
    fail = [r for r in recs if r.get("state") == J.FAILED][0]
    assert "ValueError: boom" in fail["error"]


def test_plan_hash_refusal_and_force(tmp_path):
    p = tmp_path / "j.jsonl"
    with J.Journal(p, "A") as jr:
        jr.record("a", J.STARTED)
        jr.record("a", J.DONE)
    with pytest.raises(InputError, match="refusing to resume.*--force"):
        J.Journal(p, "B", resume=True)
    jr = J.Journal(p, "B", resume=True, force=True)
    assert jr.state("a") is None           # old results not reusable after a forced re-plan
    jr.close()
    jr = J.Journal(p, "B", resume=True)   # and the new plan is now the reference
    assert jr.state("a") is None
    jr.close()


def test_fresh_run_truncates(tmp_path):
    p = tmp_path / "j.jsonl"
    with J.Journal(p, "A") as jr:
        jr.record("a", J.DONE)
    with J.Journal(p, "A") as jr:
        assert jr.state("a") is None
    assert len(J.read_journal(p)) == 1


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
    h0 = J.plan_hash(cfg)
    assert str(img) in J.input_paths(cfg)
    # result-irrelevant keys do not change it
    assert J.plan_hash(dataclasses.replace(cfg, patch_run=_Sec(resume=True, fault_inject=("x",)))) == h0
    assert J.plan_hash(dataclasses.replace(cfg, patch_run=_Sec(n_opt_iters=3))) != h0
    img.write_bytes(b"y" * 5000)           # same size, different content
    assert J.plan_hash(cfg) != h0
