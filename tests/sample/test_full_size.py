"""The full-size 7DT tile option (one band, few sources: checks geometry, config and memory)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from astropy.io import fits

from tract7dt_mpi.sample import FULL_HEIGHT, FULL_WIDTH

_SCRIPT = """
import json, resource, sys
from tract7dt_mpi.sample import make_sample
paths = make_sample(sys.argv[1], bands=1, full_size=True, n_sources=60, verbose=False)
paths["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(paths))
"""


@pytest.mark.slow
def test_full_size_tile_geometry_config_and_memory(tmp_path):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         check=True)
    paths = json.loads(out.stdout.strip().splitlines()[-1])
    with fits.open(paths["images"][0], memmap=True) as h:
        assert (h[0].header["NAXIS1"], h[0].header["NAXIS2"]) == (FULL_WIDTH, FULL_HEIGHT) == (9576, 6388)
        assert h[0].header["PSFNX"] == 9576 and h[0].header["FILTER"] == "m625"
        assert np.isfinite(h[0].data[::97, ::97]).all()
    cfg = yaml.safe_load(open(paths["config"]))
    assert cfg["epsf"]["epsf_ngrid"] == 7 and cfg["epsf"]["ngrid"] == 6
    # one band in memory at a time: a 0.25 GB float32 image plus small row-chunk buffers
    assert paths["maxrss_kb"] < 1.0 * 1024 ** 2
