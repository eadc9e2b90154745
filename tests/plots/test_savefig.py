"""Every figure is written through plots.common.savefig: temporary file next to the target, then a
rename, so a failed render leaves the previous PNG whole and no temporary file behind."""
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.artist import Artist

from tract7dt_mpi.plots import common, epsf_plots


class _Broken(Artist):
    def draw(self, renderer):
        raise RuntimeError("broken artist")


def _png(path):
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_savefig_writes_a_png_and_a_failed_render_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "a.png"
    fig = common.new_figure((2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    assert common.savefig(fig, str(path), dpi=50) == str(path) and _png(path)
    old = path.read_bytes()
    bad = common.new_figure((2, 2))
    bad.add_artist(_Broken())
    with pytest.raises(RuntimeError, match="broken artist"):
        common.savefig(bad, str(path), dpi=50)
    assert path.read_bytes() == old and os.listdir(path.parent) == ["a.png"]


def test_epsf_plots_write_through_the_atomic_saver(tmp_path, monkeypatch):
    seen = []
    real = common.savefig

    def spy(fig, path, dpi=150, **kw):
        seen.append(path)
        return real(fig, path, dpi, **kw)

    monkeypatch.setattr(epsf_plots, "savefig", spy)
    path = str(tmp_path / "psfstars.png")
    epsf_plots.plot_psfstars(np.random.default_rng(1).normal(size=(40, 40)), [10.0], [12.0], ["sep"],
                             path, "cell", dpi=40)
    assert seen == [path] and _png(path) and os.listdir(tmp_path) == ["psfstars.png"]
    assert not plt.get_fignums()
