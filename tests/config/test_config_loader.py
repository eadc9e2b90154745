"""Loader rules: unknown keys, types, nulls, paths, notices, enums."""
import dataclasses
import os

import pytest

from tract7dt_mpi.config import Config, config_from_dict, default_config, load_config
from tract7dt_mpi.errors import ConfigError, InputError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def err(d, base="/tmp"):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(d, base)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# -- defaults, empty files, structure ----------------------------------------------------------

def test_empty_and_comment_only_yaml_equal_defaults(tmp_path):
    ref = config_from_dict({}, tmp_path)
    assert load_config(write(tmp_path, "")) == ref
    assert load_config(write(tmp_path, "# nothing\n\n", "d.yaml")) == ref
    assert load_config(write(tmp_path, "crop:\n", "e.yaml")) == ref   # null section = defaults


def test_config_error_is_input_error_exit_2():
    assert issubclass(ConfigError, InputError)
    assert ConfigError.exit_code == 2


def test_sections_are_frozen_and_replaceable():
    cfg = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.patch_run.n_opt_iters = 3
    pr = dataclasses.replace(cfg.patch_run, n_opt_iters=3)
    assert pr.n_opt_iters == 3 and cfg.patch_run.n_opt_iters == 20
    assert cfg.checks.wcs_tolerance.crval == 1e-6
    assert isinstance(hash(cfg), int)


def test_missing_keys_take_defaults_and_set_keys_override():
    cfg = config_from_dict({"crop": {"margin": 10}, "checks": {"wcs_tolerance": {"cd": 1e-8}}}, "/tmp")
    assert cfg.crop.margin == 10 and cfg.crop.enabled is True
    assert cfg.checks.wcs_tolerance.cd == 1e-8 and cfg.checks.wcs_tolerance.crval == 1e-6


def test_non_mapping_root_and_section(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    assert err({"crop": 5}) == "crop: expected a mapping of keys, got int 5"
    assert "checks.wcs_tolerance: expected a mapping" in err({"checks": {"wcs_tolerance": [1]}})


# -- unknown keys ------------------------------------------------------------------------------

def test_unknown_key_names_dotted_path_with_suggestion():
    assert err({"patch_run": {"n_opt_itres": 3}}) == \
        "patch_run.n_opt_itres: unknown key; did you mean n_opt_iters?"
    assert err({"checks": {"wcs_tolerance": {"crvall": 1.0}}}) == \
        "checks.wcs_tolerance.crvall: unknown key; did you mean crval?"
    assert err({"patch-run": {}}) == "patch-run: unknown section; did you mean patch_run?"
    assert err({"zp": {"dpi": 100}}) == "zp.dpi: unknown key; did you mean plotting.dpi?"
    assert err({"crop": {"zzzz": 1}}) == "crop.zzzz: unknown key"


# -- type rules --------------------------------------------------------------------------------

@pytest.mark.parametrize("d, expected", [
    ({"crop": {"enabled": 1}}, "crop.enabled: expected bool (true/false), got int 1"),
    ({"crop": {"enabled": "yes please"}}, "crop.enabled: expected bool (true/false), got str 'yes please'"),
    ({"crop": {"margin": True}}, "crop.margin: expected int, got bool True"),
    ({"crop": {"margin": 10.0}}, "crop.margin: expected int, got float 10.0"),
    ({"crop": {"margin": "10"}}, "crop.margin: expected int, got str '10'"),
    ({"image_scaling": {"zp_ref": "25"}}, "image_scaling.zp_ref: expected float, got str '25'"),
    ({"image_scaling": {"zp_ref": False}}, "image_scaling.zp_ref: expected float, got bool False"),
    ({"inputs": {"tile_name": 7}}, "inputs.tile_name: expected str, got int 7"),
    ({"overlay": {"zoom_box": 5}}, "overlay.zoom_box: expected list of int (length 4), got int 5"),
    ({"overlay": {"zoom_box": [1, 2, 3]}}, "overlay.zoom_box: expected 4 values, got 3"),
    ({"epsf": {"q_range": [0.7, "x"]}}, "epsf.q_range[1]: expected float, got str 'x'"),
    ({"crop": {"margin": None}}, "crop.margin: expected int, got null"),
    ({"outputs": {"work_dir": None}}, "outputs.work_dir: expected path, got null"),
])
def test_type_errors_name_key_and_expected_type(d, expected):
    assert err(d) == expected


def test_float_accepts_int_and_stores_float():
    cfg = config_from_dict({"image_scaling": {"zp_ref": 23}, "epsf": {"q_range": [1, 2]}}, "/tmp")
    assert cfg.image_scaling.zp_ref == 23.0 and isinstance(cfg.image_scaling.zp_ref, float)
    assert cfg.epsf.q_range == (1.0, 2.0) and all(isinstance(v, float) for v in cfg.epsf.q_range)


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    cfg = load_config(write(tmp_path, "patch_run:\n  dlnp_stop: 1e-7\n  eps_flux: 2E-5\n"))
    assert cfg.patch_run.dlnp_stop == 1e-7 and cfg.patch_run.eps_flux == 2e-5


def test_nan_float_rejected():
    assert err({"zp": {"clip_sigma": float("nan")}}) == "zp.clip_sigma: expected a number, got NaN"


# -- nullable keys -----------------------------------------------------------------------------

@pytest.mark.parametrize("section, key, value, expect", [
    ("patch_run", "pos_max_shift_pix", None, None),
    ("patch_run", "pos_max_shift_pix", 2, 2.0),
    ("zp", "gaia_pos_err_pix", None, None),
    ("zp", "gaia_pos_err_pix", 0.25, 0.25),
    ("epsf", "star_sat_check_r", None, None),
    ("epsf", "star_sat_check_r", 12, 12),
    ("patch_run", "cutout_max_sources", None, None),
    ("patch_run", "cutout_max_sources", 10, 10),
    ("moffat_psf", "module_path", None, None),
    ("logging", "file", None, None),
    ("inputs", "gaiaxp_synphot_csv", None, None),
])
def test_nullable_keys(section, key, value, expect):
    cfg = config_from_dict({section: {key: value}}, "/tmp")
    assert getattr(getattr(cfg, section), key) == expect


def test_nullable_keys_still_type_checked():
    assert err({"patch_run": {"pos_max_shift_pix": "big"}}) == \
        "patch_run.pos_max_shift_pix: expected float or null, got str 'big'"
    assert err({"patch_run": {"cutout_max_sources": 2.5}}) == \
        "patch_run.cutout_max_sources: expected int or null, got float 2.5"


def test_newer_null_defaults():
    cfg = default_config()
    assert cfg.patch_run.pos_max_shift_pix == 3.0   # MPI-era default (the original left it unset)
    assert cfg.epsf.star_sat_check_r is None
    assert cfg.zp.gaia_pos_err_pix == 0.1


# -- worker strings ----------------------------------------------------------------------------

def test_worker_values():
    cfg = config_from_dict({"performance": {"frame_prep_workers": "AUTO", "white_stack_workers": " 4 "},
                            "epsf": {"max_workers": 0}}, "/tmp")
    assert cfg.performance.frame_prep_workers == "auto"
    assert cfg.performance.white_stack_workers == 4
    assert cfg.epsf.max_workers == 1            # clamped to >= 1
    assert err({"epsf": {"max_workers": "four"}}) == 'epsf.max_workers: expected int or "auto", got str \'four\''
    assert err({"epsf": {"max_workers": True}}) == 'epsf.max_workers: expected int or "auto", got bool True'


# -- value checks and enums --------------------------------------------------------------------

def test_enums_case_insensitive_and_errors():
    cfg = config_from_dict({"patch_run": {"psf_model": "Hybrid", "gal_model": "SERSIC", "engine": "Native"}},
                           "/tmp")
    assert (cfg.patch_run.psf_model, cfg.patch_run.gal_model, cfg.patch_run.engine) == ("hybrid", "sersic", "native")
    assert err({"patch_run": {"psf_model": "pixel"}}) == \
        "patch_run.psf_model: expected one of pixelized|hybrid|gaussian_mixture_from_stamp, got str 'pixel'"
    assert "patch_run.psf_fallback_model: expected one of moffat|" in err({"patch_run": {"psf_fallback_model": "x"}})
    assert "patch_run.gal_model: expected one of dev|exp|sersic|star" in err({"patch_run": {"gal_model": "gal"}})
    assert "zp.zp_err_method: expected one of all_mad|bright_std" in err({"zp": {"zp_err_method": "mad"}})
    assert "patch_run.engine: expected one of native|tractor" in err({"patch_run": {"engine": "x"}})
    assert "patch_run.flux_error_model: expected one of total|sky" in err({"patch_run": {"flux_error_model": 1}})


def test_psfstar_mode_and_log_level_fall_back_with_notice():
    cfg = config_from_dict({"epsf": {"psfstar_mode": "gaia+sep"}, "logging": {"level": "verbose"}}, "/tmp")
    assert cfg.epsf.psfstar_mode == "sep+gaia"
    assert cfg.logging.level == "INFO"
    notes = cfg.ignored_key_notices()
    assert any(n.startswith("epsf.psfstar_mode: invalid value 'gaia+sep'") for n in notes)
    assert any(n.startswith("logging.level: invalid value 'verbose'") for n in notes)
    assert config_from_dict({"logging": {"level": "debug"}}, "/tmp").logging.level == "DEBUG"


@pytest.mark.parametrize("d, expected", [
    ({"crop": {"margin": -1}}, "crop.margin: must be >= 0, got -1"),
    ({"patch_run": {"ncircular_gaussian_n": 4}}, "patch_run.ncircular_gaussian_n: must be <= 3, got 4"),
    ({"moffat_psf": {"beta": 1}}, "moffat_psf.beta: must be > 1, got 1.0"),
    ({"patch_inputs": {"gzip_compresslevel": 0}}, "patch_inputs.gzip_compresslevel: must be >= 1, got 0"),
    ({"epsf": {"q_range": [1.3, 0.7]}}, "epsf.q_range: lower value 1.3 is above upper value 0.7"),
    ({"zp": {"plot_mag_lo": 20}}, "zp.plot_mag_lo/plot_mag_hi: lower value 20.0 is above upper value 18.0"),
])
def test_value_ranges(d, expected):
    assert err(d) == expected


# -- legacy / MPI-meaningless keys -------------------------------------------------------------

def test_legacy_keys_accepted_with_one_notice_each():
    cfg = config_from_dict({"patch_run": {"python_exe": "/usr/bin/python3", "max_workers": 8},
                            "patch_inputs": {"max_workers": 4, "gzip_compresslevel": 6,
                                             "include_wcs_in_payload": True, "keep_payloads_in_memory": True},
                            "performance": {"frame_prep_workers": 2, "white_stack_workers": "8"},
                            "moffat_psf": {"fwhm_default_pix": 3.0}}, "/tmp")
    notes = cfg.ignored_key_notices()
    for key in ("patch_run.python_exe", "patch_run.max_workers", "patch_inputs.max_workers",
                "patch_inputs.gzip_compresslevel", "patch_inputs.include_wcs_in_payload",
                "patch_inputs.keep_payloads_in_memory", "performance.frame_prep_workers", "performance.white_stack_workers",
                "moffat_psf.fwhm_default_pix"):
        assert sum(n.startswith(key + ":") for n in notes) == 1, key
    assert all("\n" not in n for n in notes)
    assert "MPI" in next(n for n in notes if n.startswith("patch_run.max_workers"))


def test_defaults_and_default_valued_legacy_keys_give_no_notice():
    assert default_config().ignored_key_notices() == []
    cfg = config_from_dict({"patch_run": {"python_exe": "python"}}, "/tmp")
    assert cfg.ignored_key_notices() == []


def test_threads_per_process_feeds_threads_per_rank():
    cfg = config_from_dict({"patch_run": {"threads_per_process": 4}}, "/tmp")
    assert cfg.mpi.threads_per_rank == 4
    assert any("mpi.threads_per_rank" in n for n in cfg.ignored_key_notices())
    cfg = config_from_dict({"patch_run": {"threads_per_process": 4}, "mpi": {"threads_per_rank": 2}}, "/tmp")
    assert cfg.mpi.threads_per_rank == 2


def test_tractor_out_dir_is_the_legacy_name_of_patch_results_dir():
    cfg = config_from_dict({"outputs": {"work_dir": "w", "tractor_out_dir": "fits"}}, "/tmp")
    assert cfg.outputs.patch_results_dir == "/tmp/w/fits"
    assert any(n.startswith("outputs.tractor_out_dir:") for n in cfg.ignored_key_notices())
    cfg = config_from_dict({"outputs": {"work_dir": "w", "tractor_out_dir": "a", "patch_results_dir": "b"}},
                           "/tmp")
    assert cfg.outputs.patch_results_dir == "/tmp/w/b"
    assert config_from_dict({"outputs": {"work_dir": "w"}}, "/tmp").outputs.patch_results_dir == "/tmp/w/outputs"


# -- YAML safety and syntax --------------------------------------------------------------------

def test_yaml_safe_loader_rejects_python_tags(tmp_path):
    p = write(tmp_path, "inputs:\n  tile_name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "invalid YAML" in str(exc.value) and "\n" not in str(exc.value)


def test_yaml_syntax_error_and_duplicate_key_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: invalid YAML at line 3, column 1: expected .,. or .\]."):
        load_config(write(tmp_path, "crop:\n  margin: [1, 2\n"))
    with pytest.raises(ConfigError, match=r"d\.yaml: line 3: duplicate key 'margin'"):
        load_config(write(tmp_path, "crop:\n  margin: 1\n  margin: 2\n", "d.yaml"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="^Config not found: .*nope.yaml$"):
        load_config(tmp_path / "nope.yaml")


# -- path resolution ---------------------------------------------------------------------------

def test_paths_resolve_against_yaml_dir_and_work_dir(tmp_path, monkeypatch):
    sub = tmp_path / "cfgdir"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)         # resolution must not depend on the current folder
    p = write(sub, "inputs:\n  input_catalog: cat.csv\n  image_list_file: ../lists/images.txt\n"
                   "  gaiaxp_synphot_csv: /abs/gaia.csv\n"
                   "outputs:\n  work_dir: run1\n  epsf_dir: E\n  final_catalog: /abs/final.csv\n"
                   "logging:\n  file: logs/x.log\nmpi:\n  prepared_store: p.h5\n")
    cfg = load_config(p)
    base = os.path.realpath(sub)
    assert cfg.config_path == os.path.realpath(p) and cfg.config_dir == base
    assert cfg.inputs.input_catalog == os.path.join(base, "cat.csv")
    assert cfg.inputs.image_list_file == os.path.realpath(tmp_path / "lists" / "images.txt")
    assert cfg.inputs.gaiaxp_synphot_csv == "/abs/gaia.csv"
    wd = os.path.join(base, "run1")
    assert cfg.outputs.work_dir == wd
    assert cfg.outputs.epsf_dir == os.path.join(wd, "E")
    assert cfg.outputs.patches_dir == os.path.join(wd, "patches")
    assert cfg.outputs.results_h5 == os.path.join(wd, "results.h5")
    assert cfg.outputs.journal == os.path.join(wd, "journal.jsonl")
    assert cfg.outputs.final_catalog == "/abs/final.csv"
    assert cfg.mpi.prepared_store == os.path.join(wd, "p.h5")
    assert cfg.logging.file == os.path.join(wd, "logs", "x.log")
    assert cfg.log_file("run") == os.path.join(wd, "logs", "x.log")
    # image-list entries resolve against the YAML folder, not the list's folder
    assert cfg.resolve_input_path("img/a.fits") == os.path.join(base, "img", "a.fits")
    assert cfg.resolve_input_path("/data/a.fits") == "/data/a.fits"


def test_logging_file_auto_and_null():
    cfg = config_from_dict({"outputs": {"work_dir": "/w"}}, "/tmp")
    assert cfg.logging.file == "auto"
    assert cfg.log_file("run-epsf") == "/w/run-epsf.log"
    cfg = config_from_dict({"outputs": {"work_dir": "/w"}, "logging": {"file": "AUTO"}}, "/tmp")
    assert cfg.log_file("merge") == "/w/merge.log"
    assert config_from_dict({"logging": {"file": None}}, "/tmp").log_file("run") is None


def test_tilde_expansion_and_symlinks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    cfg = config_from_dict({"inputs": {"input_catalog": "~/cat.csv"},
                            "outputs": {"work_dir": "~/link/wd"}}, "/elsewhere")
    assert cfg.inputs.input_catalog == os.path.join(os.path.realpath(tmp_path), "cat.csv")
    assert cfg.outputs.work_dir == os.path.join(os.path.realpath(real), "wd")
    assert cfg.outputs.epsf_dir == os.path.join(os.path.realpath(real), "wd", "EPSFs")


def test_module_path_resolved_only_when_set():
    assert default_config().moffat_psf.module_path is None
    cfg = config_from_dict({"moffat_psf": {"module_path": "m.py"}}, "/base")
    assert cfg.moffat_psf.module_path == "/base/m.py"


def test_empty_path_rejected():
    assert err({"inputs": {"input_catalog": "  "}}) == \
        "inputs.input_catalog: expected a non-empty path string, got str '  '"


# -- overrides ---------------------------------------------------------------------------------

def test_with_overrides_nested_and_dotted(tmp_path):
    cfg = load_config(write(tmp_path, "crop:\n  margin: 7\noutputs:\n  work_dir: wd\n"))
    new = cfg.with_overrides({"patch_run": {"n_opt_iters": 3}, "crop.enabled": False})
    assert isinstance(new, Config)
    assert new.patch_run.n_opt_iters == 3 and new.crop.enabled is False and new.crop.margin == 7
    assert new.outputs.work_dir == cfg.outputs.work_dir          # paths still relative to the YAML
    assert new.config_path == cfg.config_path
    assert cfg.patch_run.n_opt_iters == 20                       # original untouched
    with pytest.raises(ConfigError, match="patch_run.n_opt_iters: expected int"):
        cfg.with_overrides({"patch_run": {"n_opt_iters": "3"}})


def test_get_and_to_dict():
    cfg = default_config()
    assert cfg.get("checks.wcs_tolerance.crval") == 1e-6
    d = cfg.to_dict()
    assert d["overlay"]["zoom_box"] == [4000, 5000, 4000, 5000]
    assert d["checks"]["wcs_tolerance"]["cdelt"] == 1e-9
    assert set(d) >= {"inputs", "outputs", "mpi", "patch_run"}


def test_master_works_accepts_unquoted_yaml_booleans(tmp_path):
    from tract7dt_mpi.config import load_config
    for text, want in (("true", "true"), ("false", "false"), ("auto", "auto"), ('"TRUE"', "true")):
        p = tmp_path / "c.yaml"
        p.write_text(f"mpi:\n  master_works: {text}\n")
        assert load_config(str(p)).mpi.master_works == want
