"""Shared small synthetic tiles for the sample-generator tests (generated once per session)."""
import pytest

pytest.importorskip("galsim")


@pytest.fixture(scope="session")
def tile512(tmp_path_factory):
    """2 bands, 512 x 512 px, default source density (~70 catalogued objects)."""
    from tract7dt_mpi.sample import make_sample
    out = tmp_path_factory.mktemp("tile512")
    paths = make_sample(out, bands=2, size=512, seed=11, verbose=False)
    return paths
