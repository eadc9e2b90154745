"""The campaign tool: one job array, states from exit codes/journal/sacct, capped resubmission."""
from __future__ import annotations

import subprocess
from collections import Counter

import pytest

from tract7dt_mpi.cli import campaign

from .conftest import JOBSCRIPTS


def camp(stubs, *args, env=None):
    e = dict(stubs.env, CAMPAIGN_DIR=str(stubs.root / "camp"), **(env or {}))
    return subprocess.run(["bash", str(JOBSCRIPTS / "campaign.sh"), *args], env=e, cwd=stubs.root,
                          capture_output=True, text=True, timeout=120)


def states(text):
    """tile index -> (state, tries) from the printed table."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit() and len(parts) >= 7:
            rows[int(parts[0])] = (parts[1], int(parts[2]))
    return rows


def test_resubmits_exit3_tile_until_cap(stubs):
    ok = stubs.tile("ok")                       # exits 0
    stuck = stubs.tile("stuck", [3, 3, 3, 3])   # always resumable
    late = stubs.tile("late", [3, 0])           # resumable once, then done
    bad = stubs.tile("bad", [2])                # bad input: never resubmitted
    lst = stubs.root / "tiles.txt"
    lst.write_text(f"# my tiles\n{ok}\n{stuck}\n\n{late}  # comment\n{bad}\n")
    res = camp(stubs, "submit", str(lst), env={"MAX_RESUBMITS": "2", "SBATCH_ARGS": "--ntasks=2 -A proj"})
    assert res.returncode == 0, res.stderr
    assert states(res.stdout) == {0: ("DONE", 1), 1: ("RESUMABLE", 1), 2: ("RESUMABLE", 1), 3: ("BAD_INPUT", 1)}
    (sb,) = stubs.calls("sbatch")
    assert "--array=0,1,2,3" in sb["argv"] and "-A" in sb["argv"] and "--ntasks=2" in sb["argv"]
    assert sb["env"]["MAX_REQUEUE"] == "0" and sb["env"]["RESUME"] == "auto"
    # each array element ran the real job script with its own config
    progs = stubs.calls("tract7dt-mpi")
    assert sorted(p["argv"][0] for p in progs) == sorted(map(str, [ok, stuck, late, bad]))

    res = camp(stubs, "update")                  # resubmits tiles 1 and 2 with --resume
    assert states(res.stdout)[1][0] == "SUBMITTED"
    sb = stubs.calls("sbatch")[-1]
    assert "--array=1,2" in sb["argv"] and sb["env"]["RESUME"] == "1"
    assert stubs.calls("tract7dt-mpi")[-1]["argv"][1:] == ["--resume"]

    res = camp(stubs, "status")
    assert states(res.stdout) == {0: ("DONE", 1), 1: ("RESUMABLE", 2), 2: ("DONE", 2), 3: ("BAD_INPUT", 1)}
    camp(stubs, "update")                        # second (last allowed) resubmission of tile 1
    res = camp(stubs, "update")                  # cap reached: no new job
    assert states(res.stdout)[1] == ("GAVE_UP", 3)
    assert len(stubs.calls("sbatch")) == 3
    assert "--array=1" in stubs.calls("sbatch")[-1]["argv"]
    assert "GAVE_UP=1" in res.stdout and "(resubmit cap 2)" in res.stdout


def test_watch_stops_when_nothing_runs(stubs):
    t = stubs.tile("a", [3, 3])
    lst = stubs.root / "tiles.txt"
    lst.write_text(f"{t}\n")
    assert camp(stubs, "submit", str(lst), env={"MAX_RESUBMITS": "1"}).returncode == 0
    res = camp(stubs, "watch", "--interval", "0")
    assert res.returncode == 1 and states(res.stdout)[0] == ("GAVE_UP", 2)


def test_sacct_states_for_tiles_without_exit_code(stubs):
    tiles = [stubs.tile(f"t{i}") for i in range(4)]
    lst = stubs.root / "tiles.txt"
    lst.write_text("\n".join(map(str, tiles)))
    sacct = stubs.root / "sacct.txt"
    sacct.write_text("1000_0|RUNNING\n1000_1|TIMEOUT\n1000_2|OUT_OF_MEMORY\n1000_[3]|PENDING\n")
    env = {"STUB_SBATCH_RUN": "0", "STUB_SACCT_FILE": str(sacct)}
    res = camp(stubs, "submit", str(lst), env=env)
    assert states(res.stdout) == {0: ("RUNNING", 1), 1: ("RESUMABLE", 1), 2: ("OOM", 1), 3: ("PENDING", 1)}
    res = camp(stubs, "update", env=env)         # the TIMEOUT tile is resubmitted alone
    assert "--array=1" in stubs.calls("sbatch")[-1]["argv"]


def test_submit_errors_are_one_line(stubs):
    lst = stubs.root / "tiles.txt"
    lst.write_text(f"{stubs.root / 'missing.yaml'}\n")
    res = camp(stubs, "submit", str(lst))
    assert res.returncode == 2 and "missing.yaml not found" in res.stderr and "Traceback" not in res.stderr
    res = camp(stubs, "status")
    assert res.returncode == 2 and "no campaign here" in res.stderr


def test_read_journal_counts_what_the_program_wrote(tmp_path):
    from tract7dt_mpi.io.journal import DONE, FAILED, STARTED, Journal
    j = tmp_path / "journal.jsonl"
    with Journal(str(j), "aaa") as jr:
        jr.record_planned(["a", "b", "c", "d"])
        for tid, state in (("a", STARTED), ("a", DONE), ("b", STARTED), ("b", FAILED), ("c", STARTED)):
            jr.record(tid, state)
    with open(j, "a") as fh:
        fh.write('{"task": "d", "sta')                       # a line cut by a kill
    c = campaign.read_journal(j)
    assert (c["done"], c["failed"], c["open"], c["total"]) == (1, 1, 2, 4)
    assert campaign.read_journal(tmp_path / "absent.jsonl") == Counter()
    # a forced re-plan (new plan hash in a header) starts the counts afresh
    with Journal(str(j), "bbb", resume=True, force=True) as jr:
        jr.record("c", DONE)
    c = campaign.read_journal(j)
    assert (c["done"], c["open"], c["total"]) == (1, 0, 1)


@pytest.mark.parametrize("rc,sacct,tasks,expected", [
    (0, None, Counter(done=3, total=3), "DONE"),
    (0, None, Counter(done=2, open=1, total=3), "RESUMABLE"),    # exit 0 but unfinished tasks (e.g. OOM)
    (4, None, Counter(), "DONE_WITH_FAILURES"),
    (1, None, Counter(), "FAILED"),
    (None, "COMPLETED", Counter(), "FAILED"),                   # ended without writing its exit code
    (None, "PREEMPTED", Counter(), "RESUMABLE"),
    (None, None, Counter(), "SUBMITTED"),
])
def test_classify(rc, sacct, tasks, expected):
    assert campaign.classify(rc, sacct, True, tasks) == expected


def test_expand_pending_array_ranges():
    assert campaign._expand_indices("[0-2,5,7-8%2]") == [0, 1, 2, 5, 7, 8]


def test_where_uses_config_resolution(tmp_path, capsys):
    cfg = tmp_path / "t" / "config.yaml"
    cfg.parent.mkdir()
    cfg.write_text("outputs:\n  work_dir: ../run\n  journal: logs/j.jsonl\n")
    p = campaign.tile_paths(cfg)
    assert p["work_dir"] == (tmp_path / "run").resolve()
    assert p["journal"] == (tmp_path / "run" / "logs" / "j.jsonl").resolve()
    assert campaign.main(["where", str(cfg), "--field", "final_catalog"]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "run" / "output_catalog.csv").resolve())


def test_packed_campaign_runs_tiles_together_and_resubmits_their_group(stubs):
    t = [stubs.tile("a"), stubs.tile("b", [3, 0]), stubs.tile("c", [2]), stubs.tile("d"), stubs.tile("e")]
    lst = stubs.root / "tiles.txt"
    lst.write_text("".join(f"{p}\n" for p in t))
    res = camp(stubs, "submit", str(lst), env={"TILES_PER_JOB": "2"})
    assert res.returncode == 0, res.stderr
    (sb,) = stubs.calls("sbatch")
    assert "--array=0,1,2" in sb["argv"] and sb["env"]["TILES_PER_JOB"] == "2"
    progs = stubs.calls("tract7dt-mpi")
    assert [p["argv"][:2] for p in progs] == [["run", "--tiles"]] * 3
    groups = [open(p["argv"][2]).read().split() for p in progs]
    assert sorted(groups) == sorted([[str(t[0]), str(t[1])], [str(t[2]), str(t[3])], [str(t[4])]])
    # each tile's state comes from its own exit code in the element's summary
    assert {i: s for i, (s, _) in states(res.stdout).items()} == {
        0: "DONE", 1: "RESUMABLE", 2: "BAD_INPUT", 3: "DONE", 4: "DONE"}
    res = camp(stubs, "update")                  # tile 1 resumable: its whole group again
    sb = stubs.calls("sbatch")[-1]
    assert "--array=0" in sb["argv"] and sb["env"]["RESUME"] == "1"
    assert stubs.calls("tract7dt-mpi")[-1]["argv"][3:] == ["--resume"]
    res = camp(stubs, "status")
    assert states(res.stdout) == {0: ("DONE", 1), 1: ("DONE", 2), 2: ("BAD_INPUT", 1), 3: ("DONE", 1),
                                  4: ("DONE", 1)}
