"""The schema covers every key of the config reference with the documented defaults."""
import math
import re
from pathlib import Path

import pytest
import yaml

from tract7dt_mpi.config import default_config, iter_keys

SPEC = Path("/work/shared/spec/config-reference.md")

# Named leaf keys per section, from the tally of config-reference §22 (151 in total), plus the
# MPI-era keys documented in docs/dev/architecture.md.
SPEC_TALLY = {"inputs": 4, "outputs": 8, "image_scaling": 1, "crop": 6, "overlay": 4, "checks": 6,
              "source_saturation_cut": 4, "bright_mask": 5, "logging": 4, "plotting": 1,
              "performance": 2, "epsf": 47, "patches": 1, "patch_inputs": 6, "patch_run": 33,
              "moffat_psf": 4, "merge": 1, "zp": 14}
MPI_ERA = {"outputs.results_h5", "outputs.journal", "mpi.threads_per_rank", "mpi.heartbeat_sec",
           "mpi.per_rank_logs", "mpi.prepared_store", "patch_run.engine", "patch_run.flux_error_model",
           "patch_run.fault_inject", "bright_mask.thresh_sigma", "bright_mask.minarea",
           "bright_mask.deblend_nthresh", "bright_mask.deblend_cont", "mpi.master_works",
           "epsf.combine", "patch_run.epsf_interpolation", "patch_run.shape_fit_min_snr",
           "patch_run.re_max_factor", "epsf.wing_tail", "patch_run.galaxy_flux", "patch_run.psf_source",
           "patch_run.sky", "patch_run.sky_prior_sigma", "patch_run.pos_fit_min_snr"}
MPI_ERA |= {"mpi.task_timeout_factor", "mpi.task_timeout_min_sec", "mpi.task_timeout_sec",
            "epsf.field_degree", "plotting.level", "patch_run.model_selection",
            "patch_run.model_selection_dchisq", "patch_run.flux_error_marginal",
            "patches.big_source_re_factor", "patches.max_roi_pix"}


def keys():
    return [k for k, *_ in iter_keys()]


def test_key_count_matches_spec_tally_plus_mpi_keys():
    ks = keys()
    assert len(ks) == len(set(ks))
    assert MPI_ERA <= set(ks)
    legacy = [k for k in ks if k not in MPI_ERA]
    assert len(legacy) == sum(SPEC_TALLY.values()) == 151
    for section, n in SPEC_TALLY.items():
        assert sum(k.split(".")[0] == section for k in legacy) == n, section


def test_every_key_has_type_default_and_doc():
    for key, typ, default, unit, doc in iter_keys():
        assert typ and len(doc) > 5 and "\n" not in doc, key
        assert isinstance(unit, str), key


def _spec_rows():
    """(dotted key, default text) for every table row of the spec that names a key."""
    section = None
    for line in SPEC.read_text().splitlines():
        if line.startswith("## "):
            m = re.match(r"^## \d+\. `(\w+)`", line)
            section = m.group(1) if m else None
            continue
        m = re.match(r"^\| `([\w.]+)` \|([^|]*)\|\s*(.*?)\s*\|", line)
        if m and section:
            yield f"{section}.{m.group(1)}", m.group(3)


#: defaults deliberately changed from the serial pipeline's (documented in the key's doc)
DECIDED_DEFAULTS = {"crop.margin": 32}      # 500 dropped ~25 % of a tile; 32 = ePSF stamp half + 2


@pytest.mark.skipif(not SPEC.exists(), reason="spec folder not present")
def test_every_spec_key_exists_with_the_spec_default():
    cfg = default_config(base_dir="/")
    ours = {k: d for k, _, d, _, _ in iter_keys()}
    rows = list(_spec_rows())
    assert len(rows) >= 140
    checked = 0
    for key, default_text in rows:
        assert key in ours, f"{key} from the spec is missing in the schema"
        m = re.fullmatch(r"`([^`]*)`", default_text)
        if not m or "//" in m.group(1):
            continue                   # "default unspecified" or derived defaults
        spec_value = yaml.load(m.group(1), Loader=__import__(
            "tract7dt_mpi.config.loader", fromlist=["_SafeLoader"])._SafeLoader)
        ours_value = ours[key]
        if key in DECIDED_DEFAULTS:
            assert ours_value == DECIDED_DEFAULTS[key], key
            continue
        if isinstance(spec_value, float) or isinstance(ours_value, float):
            assert math.isclose(float(ours_value), float(spec_value)), key
        else:
            assert ours_value == spec_value, key
        checked += 1
        assert cfg.get(key) is not None or spec_value is None
    assert checked >= 130
