"""make_sample output is bit-identical for a seed, different for another seed; bad arguments fail."""
import hashlib
from pathlib import Path

import pytest

from tract7dt_mpi.errors import InputError
from tract7dt_mpi.sample import make_sample


def _hashes(paths: dict) -> dict:
    files = list(paths["images"]) + [paths[k] for k in
                                     ("image_list", "input_catalog", "gaiaxp_synphot", "truth", "truth_meta", "config")]
    root = Path(paths["out_dir"])
    return {str(Path(f).relative_to(root)): hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}


def test_same_seed_bit_identical_other_seed_differs(tmp_path):
    kw = dict(bands=2, size=192, verbose=False)
    a = _hashes(make_sample(tmp_path / "a", seed=5, **kw))
    b = _hashes(make_sample(tmp_path / "b", seed=5, **kw))
    c = _hashes(make_sample(tmp_path / "c", seed=6, **kw))
    assert a == b
    assert len(a) == 8
    for name in a:
        if name.startswith("images/") or name in ("truth.csv", "input_catalog.csv"):
            assert a[name] != c[name], name


@pytest.mark.parametrize("kw, word", [
    (dict(bands=0), "--bands"), (dict(bands=41), "--bands"), (dict(bands=2.0), "--bands"),
    (dict(size="big"), "--size"), (dict(size=64), "--size"), (dict(seed=-1), "--seed"),
    (dict(n_sources=0), "n_sources"),
])
def test_bad_arguments_give_one_line_input_error(tmp_path, kw, word):
    with pytest.raises(InputError) as err:
        make_sample(tmp_path, verbose=False, **kw)
    assert word in str(err.value) and "\n" not in str(err.value)


def test_a_band_image_does_not_depend_on_how_many_bands_are_rendered(tmp_path):
    two = _hashes(make_sample(tmp_path / "two", bands=2, size=160, seed=9, verbose=False))
    three = _hashes(make_sample(tmp_path / "three", bands=3, size=160, seed=9, verbose=False))
    assert "images/SYN7DT_m650.fits" in three and "images/SYN7DT_m650.fits" not in two
    for name in ("images/SYN7DT_m400.fits", "images/SYN7DT_m887.fits"):
        assert two[name] == three[name]
