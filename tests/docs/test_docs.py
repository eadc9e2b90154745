"""The user manual: builds strictly, documents every config key and catalog column, names only real keys."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
MANUAL = sorted(p for p in DOCS.glob("*.md") if p.name != "config-reference.md")
DELIBERATE_TYPOS = {"patch_run.n_opt_itres"}     # the troubleshooting page shows the typo error message
FILE_EXT = {"csv", "json", "fits", "png", "npy", "h5", "log", "yaml", "txt", "py", "sif", "def", "md", "lock"}


def _gen():
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def keys():
    from tract7dt_mpi.config import iter_keys
    return list(iter_keys())


def test_every_config_key_is_documented(keys):
    text = (DOCS / "config-reference.md").read_text()
    missing = [k[0] for k in keys if f"| `{k[0]}` |" not in text]
    assert not missing, f"not in docs/config-reference.md (run python docs/gen_config_reference.py): {missing}"


def test_config_reference_is_current():
    assert (DOCS / "config-reference.md").read_text() == _gen().generate(), \
        "docs/config-reference.md is stale: run python docs/gen_config_reference.py"


def test_render_escapes_table_pipes():
    text = _gen().render([("a.b", "one of x|y", "p|q", "", "doc with |x|")])
    assert "| `a.b` | one of x\\|y | `\"p|q\"` | — | doc with \\|x\\| |" in text


def test_manual_names_only_existing_keys(keys):
    """Every `section.key` the manual mentions exists in the typed config (no stale key names)."""
    known = {k[0] for k in keys}
    prefixes = {".".join(k.split(".")[:i]) for k in known for i in range(1, k.count(".") + 1)}
    sections = {k.split(".")[0] for k in known}
    pat = re.compile(r"`(?:[^`]*?\b)?((?:%s)\.[A-Za-z_][A-Za-z0-9_.]*)" % "|".join(sorted(sections)))
    bad = []
    for page in MANUAL + [REPO / "README.md"]:
        for m in pat.finditer(page.read_text()):
            name = m.group(1).rstrip(".")
            if name.rsplit(".", 1)[-1] in FILE_EXT:
                continue
            if name not in known and name not in prefixes and name not in DELIBERATE_TYPOS:
                bad.append(f"{page.name}: {name}")
    assert not bad, bad


def test_outputs_page_lists_every_catalog_column():
    from tract7dt_mpi.flags import TAG_ORDER
    from tract7dt_mpi.stages.fit import result_columns
    text = (DOCS / "outputs.md").read_text()
    missing = []
    for multi, sub in ((True, "{band}"), (False, "{band}")):
        for name, _ in result_columns(["m400"], multi):
            if name == "_row":
                continue           # internal key, dropped from the catalog
            doc_name = name.replace("m400", sub)
            if f"`{doc_name}`" not in text:
                missing.append(doc_name)
    for name in ["excluded_crop", "excluded_saturation", "excluded_any", "excluded_reason",
                 "affected_by_bright_mask", "gaia_source_id", "fit_is_reliable", "fit_quality_issues",
                 "MAG_{band}_fit", "MAGERR_{band}_fit", "FIT_FLAGS", "X_IMAGE", "Y_IMAGE",
                 *TAG_ORDER]:
        if f"`{name}`" not in text:
            missing.append(name)
    assert not missing, missing


def test_catalog_column_tables_are_current():
    page = DOCS / "outputs.md"
    spec = importlib.util.spec_from_file_location("gen_catalog_columns", DOCS / "gen_catalog_columns.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.generate(page.read_text()) == page.read_text(), \
        "docs/outputs.md column tables are stale: run python docs/gen_catalog_columns.py"


def test_every_result_column_is_registered():
    """Each column the fit stage produces has a unit and a place (catalog or results store)."""
    from tract7dt_mpi.columns import lookup
    from tract7dt_mpi.stages.fit import result_columns
    missing = [name for multi in (True, False) for name, _ in result_columns(["m400"], multi)
               if name != "_row" and lookup(name) is None]
    assert not missing, f"add to tract7dt_mpi/columns.py: {missing}"


def test_nav_lists_every_page():
    import yaml
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    pages = {next(iter(item.values())) for item in nav}
    assert pages == {p.name for p in DOCS.glob("*.md")}


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "WARNING" not in res.stderr, res.stderr[-3000:]
    assert (tmp_path / "site" / "config-reference" / "index.html").is_file()
