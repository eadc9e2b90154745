"""The Apptainer definition files are well formed: header, sections, shell syntax, required settings."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFS = sorted((REPO / "containers").glob("*.def"))
SECTION = re.compile(r"^%(\w+)\s*$")


def parse_def(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, section name -> body) of an Apptainer definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        m = SECTION.match(line)
        if m:
            current = m.group(1)
            assert current not in sections, f"{path.name}: section %{current} twice"
            sections[current] = []
        elif current is None:
            if line.strip() and not line.lstrip().startswith("#"):
                key, sep, value = line.partition(":")
                assert sep, f"{path.name}: header line without 'Key: value': {line!r}"
                header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    return header, {k: "\n".join(v) + "\n" for k, v in sections.items()}


def test_both_flavours_present():
    assert {p.name for p in DEFS} == {"tract7dt-mpi-mpich.def", "tract7dt-mpi-openmpi.def"}


@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_header_and_sections(path):
    header, sections = parse_def(path)
    assert header["Bootstrap"] == "docker" and header["From"].startswith("debian:")
    assert {"files", "environment", "post", "test", "runscript", "help", "labels"} <= set(sections)
    assert "/opt/src/tract7dt-mpi" in sections["files"]


@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
@pytest.mark.parametrize("section", ["post", "environment", "test", "runscript"])
@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_section_shell_syntax(path, section, shell):
    """Apptainer runs these sections with /bin/sh: they must parse with bash and with POSIX sh."""
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    body = parse_def(path)[1][section]
    res = subprocess.run([shell, "-n"], input=body, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_required_settings(path):
    flavour = "mpich" if "mpich" in path.name else "openmpi"
    _, s = parse_def(path)
    post, env, test = s["post"], s["environment"], s["test"]
    assert f"libhdf5-{flavour}-dev" in post and "HDF5_MPI=ON" in post and "CC=mpicc" in post
    assert "--no-binary=mpi4py" in post and "--no-binary=h5py" in post
    assert "/opt/src/tract7dt-mpi" in post
    for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]:
        assert re.search(rf'export {var}="\$\{{{var}:-1\}}"', env), var
    for setting in ["MPLBACKEND=Agg", "HDF5_USE_FILE_LOCKING=FALSE", "MPLCONFIGDIR=", "XDG_CACHE_HOME="]:
        assert setting in env
    assert "get_config().mpi" in test and "mpi4py.bench helloworld" in test
    assert "check_parallel_h5.py" in test and "make-sample" in test
    if flavour == "openmpi":
        assert "btl_vader_single_copy_mechanism=none" in env and "PMIX_MCA_gds" in env


def test_environment_sets_threads_to_one_when_unset(tmp_path):
    """Sourcing %environment with no thread variables gives 1; a value passed in is kept."""
    _, s = parse_def(DEFS[0])
    script = s["environment"] + 'echo "$OMP_NUM_THREADS $MKL_NUM_THREADS"\n'
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True).stdout.split()
    assert out == ["1", "1"]
    out = subprocess.run(["sh", "-c", script], env=dict(env, OMP_NUM_THREADS="4"),
                         capture_output=True, text=True).stdout.split()
    assert out == ["4", "1"]


@pytest.mark.mpi
def test_check_parallel_h5_on_host(tmp_path):
    """The container's parallel-HDF5 self-test passes with this environment's MPI h5py (2 ranks)."""
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("mpi4py")
    if not h5py.get_config().mpi or shutil.which("mpirun") is None:
        pytest.skip("needs h5py built with MPI and mpirun")
    import os
    import sys
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               HDF5_USE_FILE_LOCKING="FALSE")
    res = subprocess.run(["mpirun", "-n", "2", "--oversubscribe", sys.executable,
                          str(REPO / "containers" / "check_parallel_h5.py"), str(tmp_path / "x.h5")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "write/read-back OK on 2 ranks" in res.stdout


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(shutil.which("apptainer") is None, reason="apptainer not installed (not packaged for Debian 12)")
@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_build_and_selftest(path, tmp_path):
    """Build the image (its %test runs at the end of the build) and run %test once more."""
    sif = tmp_path / (path.stem + ".sif")
    build = subprocess.run(["apptainer", "build", "--fakeroot", str(sif), str(path)], cwd=REPO,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    res = subprocess.run(["apptainer", "test", str(sif)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_images_pin_every_dependency(path):
    """Every pip install of an image takes containers/constraints.txt, which pins (==) each
    dependency of pyproject.toml (and the sample extra) to a version its bounds allow."""
    import tomllib

    from packaging.requirements import Requirement

    post = parse_def(path)[1]["post"]
    assert "pins=/opt/src/tract7dt-mpi/containers/constraints.txt" in post
    installs = [ln for ln in post.replace("\\\n", " ").splitlines() if "$pip install" in ln]
    assert len(installs) >= 4 and all('-c "$pins"' in ln for ln in installs), installs
    pins = {}
    for line in (REPO / "containers" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), line
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["sample"]:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in containers/constraints.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {req.specifier}"
