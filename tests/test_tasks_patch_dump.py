"""`build-patch-inputs` end to end (one process): one dump pair per planned patch, each holding
exactly its ROI of the prepared store and the plan's base + halo rows."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

CFG = """\
inputs: {{tile_name: T, input_catalog: {d}/input_catalog.csv, image_list_file: {d}/image_list.txt}}
outputs: {{work_dir: {work}}}
crop: {{enabled: true, margin: 16}}
plotting: {{level: none}}
epsf: {{epsf_ngrid: 1, ngrid: 2}}
zp: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    from tract7dt_mpi.sample import make_sample
    d = tmp_path_factory.mktemp("dump")
    make_sample(str(d / "s"), bands=2, size=256, verbose=False)
    cfg = d / "s" / "dump.yaml"                              # the image list is relative to it
    cfg.write_text(CFG.format(d=d / "s", work=d / "w"))
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "tract7dt_mpi.cli", "build-patch-inputs", str(cfg)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "w"


def test_one_dump_pair_per_planned_patch(dumped):
    with open(dumped / "patches" / "patches.csv", newline="") as fh:
        tags = sorted(row["patch_tag"] for row in csv.DictReader(fh))
    assert len(tags) == 4                                   # 1 cell x 2 x 2 patches
    assert sorted(os.listdir(dumped / "patch_payloads")) == sorted(
        f"{t}.{ext}" for t in tags for ext in ("json", "npz"))


def test_dump_holds_the_roi_of_the_prepared_store(dumped):
    from tract7dt_mpi.io.patch_dumps import read_patch_dump
    from tract7dt_mpi.io.prepared import PreparedImages
    from tract7dt_mpi.stages.patch_inputs import patch_input_from_record
    first = sorted(os.listdir(dumped / "patch_payloads"))[0]
    pin = patch_input_from_record(*read_patch_dump(str(dumped / "patch_payloads" / first)))
    s = pin.spec
    with PreparedImages(str(dumped / "prepared.h5")) as p:
        assert pin.bands == list(p.bands) and len(pin.bands) == 2
        for b in pin.bands:
            c = p.read(b, s.y0_roi, s.y1_roi, s.x0_roi, s.x1_roi, with_bright=True)
            np.testing.assert_array_equal(pin.images[b].img, c.img)
            np.testing.assert_array_equal(pin.images[b].bad_final, c.bad_final)
    rows = pin.cat["_row"].astype(int).tolist()
    assert rows[:len(s.base_rows)] == s.base_rows.tolist() and len(rows) >= len(s.base_rows) > 0
    assert pin.cat["_is_halo_source"].tolist() == [False] * len(s.base_rows) + [True] * (len(rows) - len(s.base_rows))
