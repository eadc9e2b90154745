"""The package's layers import only what docs/dev/architecture.md allows.

Every module of tract7dt_mpi is parsed (not imported), and each of its
package-internal imports -- absolute ``tract7dt_mpi.x`` and relative ``.x`` /
``..x``, at module level or inside functions -- is checked against the rules
below. A failure names the file, the line and the forbidden import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "tract7dt_mpi"
ROOT = Path(__file__).resolve().parents[1] / PKG

# (layer, layers it must not import, why). A layer is the first package
# component below tract7dt_mpi ("engine", "stages", ...); None means "anything
# of the package outside the layer itself".
RULES = [
    ("engine", None, "the engine knows nothing of files, MPI, config or the application"),
    ("stages", {"plots"}, "stages return data; the pipeline decides what to draw"),
    ("stages", {"config"}, "stages take their own options; tract7dt_mpi/stage_options.py builds them"),
    ("plots", {"stages"}, "plots draw plain data; they do not call stages"),
    ("io", {"stages", "plots", "parallel"}, "file formats do not depend on stages, plots or MPI"),
    ("parallel", {"stages", "plots"}, "parallel/ keeps only MPI; stage glue lives in the pipeline"),
]


# Layers whose functions never read the config object: no parameter named like it and
# no attribute read on such a name (``cfg.patch_run``); the options come from stage_options.py.
NO_CONFIG_READS = ("stages",)
CONFIG_NAMES = {"cfg", "config"}


def config_reads(path: Path):
    """Yield (line, what) for every parameter named cfg/config and every ``cfg.x`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
                if arg is not None and arg.arg in CONFIG_NAMES:
                    yield node.lineno, f"takes a parameter {arg.arg!r}"
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in CONFIG_NAMES):
            yield node.lineno, f"reads {node.value.id}.{node.attr}"


def _module_name(path: Path, root: Path = ROOT) -> list[str]:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return parts


def internal_imports(path: Path, root: Path = ROOT):
    """Yield (line, dotted target) for every package-internal import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    mod = _module_name(path, root)
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PKG or alias.name.startswith(PKG + "."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
                if not (base == PKG or base.startswith(PKG + ".")):
                    continue
            else:
                # The package the relative import is resolved against.
                anchor = mod if is_pkg else mod[:-1]
                up = node.level - 1
                if up > len(anchor) - 1:
                    yield node.lineno, "." * node.level + (node.module or "")
                    continue
                anchor = anchor[: len(anchor) - up]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if node.module is None or base == PKG:
                # ``from . import x`` / ``from tract7dt_mpi import x``: x is the target.
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"
            else:
                yield node.lineno, base


def _layer(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PKG else None


def violations(root: Path = ROOT):
    out = []
    for path in sorted(root.rglob("*.py")):
        layer = _layer(".".join(_module_name(path, root)))
        for name, banned, why in RULES:
            if layer != name:
                continue
            for line, target in internal_imports(path, root):
                tl = _layer(target) if target.startswith(PKG) else "?"
                bad = (tl != name) if banned is None else (tl in banned)
                if bad:
                    rel = path.relative_to(root.parent)
                    out.append(f"{rel}:{line}: imports {target} ({name}/: {why})")
        if layer in NO_CONFIG_READS:
            for line, what in config_reads(path):
                rel = path.relative_to(root.parent)
                out.append(f"{rel}:{line}: {what} ({layer}/: stages take their own options, "
                           "built by tract7dt_mpi/stage_options.py)")
    return out


def test_every_module_parses_and_is_seen():
    files = list(ROOT.rglob("*.py"))
    assert len(files) > 50
    for name, _, _ in RULES:
        assert (ROOT / name).is_dir(), name


def test_layer_rules_hold():
    bad = violations()
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "layer, source, forbidden",
    [
        ("engine", "from ..errors import InputError\n", True),
        ("engine", "def f():\n    from tract7dt_mpi.config import schema\n", True),
        ("engine", "from .psf import PSF\nfrom . import lm\n", False),
        ("stages", "def f():\n    from ..plots import epsf_plots\n", True),
        ("stages", "from ..engine import fit\n", False),
        ("stages", "from ..config.schema import Epsf\n", True),
        ("stages", "def f():\n    import tract7dt_mpi.config\n", True),
        ("plots", "from ..stages.fit import FitResult\n", True),
        ("plots", "from tract7dt_mpi import stages\n", True),
        ("io", "from ..stages.masks import BIT\n", True),
        ("io", "import tract7dt_mpi.parallel.store\n", True),
        ("parallel", "from ..stages import fit\n", True),
        ("parallel", "from ..io import atomic\n", False),
    ],
)
def test_checker_catches_forbidden_imports(tmp_path, layer, source, forbidden):
    """The checker itself: a planted import in a throw-away package tree."""
    root = tmp_path / PKG
    for sub in (root, root / layer):
        sub.mkdir(exist_ok=True)
        (sub / "__init__.py").write_text("")
    (root / layer / "probe.py").write_text(source)
    bad = violations(root)
    assert bool(bad) is forbidden, bad
    if forbidden:
        assert "probe.py:" in bad[0] and "imports tract7dt_mpi." in bad[0]


@pytest.mark.parametrize(
    "source, forbidden",
    [
        ("def f(cfg):\n    return 1\n", True),
        ("def f(x, *, config=None):\n    return x\n", True),
        ("g = lambda cfg: 0\n", True),
        ("def f(opts):\n    return opts.patch_run.n_opt_iters\n", False),
        ("def f(s):\n    cfg = s\n    return cfg.epsf\n", True),
        ("def f(crop):\n    return crop.margin, 'cfg.x'\n", False),
    ],
)
def test_checker_catches_config_reads_in_stages(tmp_path, source, forbidden):
    """The checker itself: a planted config read in stages/ (elsewhere it is allowed)."""
    root = tmp_path / PKG
    for sub in (root, root / "stages", root / "parallel"):
        sub.mkdir(exist_ok=True)
        (sub / "__init__.py").write_text("")
    (root / "stages" / "probe.py").write_text(source)
    (root / "parallel" / "other.py").write_text(source)
    bad = violations(root)
    assert bool(bad) is forbidden, bad
    assert all("stages/probe.py:" in b and "stage_options.py" in b for b in bad), bad
