"""dump-config template: every key documented, loads back to exactly the defaults."""
import dataclasses

import pytest
import yaml

from tract7dt_mpi.config import config_from_dict, iter_keys, load_config
from tract7dt_mpi.config.schema import SECTIONS
from tract7dt_mpi.config.template import render_template, write_template
from tract7dt_mpi.errors import ConfigError


def test_template_round_trip_equals_defaults_exactly(tmp_path):
    path = write_template(tmp_path / "deep" / "er" / "c.yaml")      # parents created
    cfg = load_config(path)
    ref = config_from_dict({}, tmp_path / "deep" / "er")
    assert cfg == ref
    assert cfg.ignored_key_notices() == []
    # field by field, with types (== alone would accept 1 == 1.0 == True)
    for name in SECTIONS:
        a, b = getattr(cfg, name), getattr(ref, name)
        for f in dataclasses.fields(a):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            assert va == vb and type(va) is type(vb), f"{name}.{f.name}"


def test_template_lists_every_key_with_its_doc_and_unit():
    text = render_template()
    data = yaml.safe_load(text)
    for key, typ, default, unit, doc in iter_keys():
        node = data
        for part in key.split("."):
            assert part in node, key
            node = node[part]
        assert doc in text, key
        if unit:
            assert f"unit: {unit}" in text
    assert text.count("\n# ") >= len(SECTIONS)


def test_write_template_refuses_to_overwrite_without_force(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mine\n")
    with pytest.raises(ConfigError, match="file exists; use --force to overwrite"):
        write_template(p)
    assert p.read_text() == "mine\n"
    write_template(p, force=True)
    assert p.read_text() == render_template()
    with pytest.raises(ConfigError, match="is a directory"):
        write_template(tmp_path)
