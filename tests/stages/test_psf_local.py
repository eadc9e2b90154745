"""Per-cell core corrections of a band's PSF field (stages.psf_local) on GalSim stars: a strip of
cells whose PSF is 33 % wider than the rest, which a degree-2 field cannot follow, and a PSF
that the field follows everywhere."""
import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from tract7dt_mpi.sample.psf import PsfParams, draw_psf_stamp  # noqa: E402
from tract7dt_mpi.stages.psf_local import fit_cell_cores  # noqa: E402
from tract7dt_mpi.stages.psf_poly import evaluate_field, fit_psf_field  # noqa: E402

SHAPE, N, SIZE = (1200, 1200), 4, 41
NOISE = 2e-5


def _psf(fwhm):
    return PsfParams(fwhm0=fwhm, fwhm_x=0, fwhm_y=0, fwhm_r=0, beta0=3.0, beta_x=0, g1_0=0, g1_x=0,
                     g2_0=0, g2_y=0, width=SHAPE[1], height=SHAPE[0])


def _fwhm(y):
    return 4.0 if 300 <= y < 600 else 3.0          # cell row 1 is the wide strip


def _stars(rng, per_cell=5):
    xy, vals = [], []
    step = SHAPE[0] / N
    for r in range(N):
        for c in range(N):
            for _ in range(per_cell):
                x, y = (c + rng.uniform(0.1, 0.9)) * step, (r + rng.uniform(0.1, 0.9)) * step
                xy.append((x, y))
                vals.append(draw_psf_stamp(_psf(_fwhm(y)), x, y, SIZE) + rng.normal(0, NOISE, (SIZE, SIZE)))
    vals = np.array(vals)
    return np.array(xy), vals, np.full(vals.shape, NOISE ** -2)


def _flux(field, x, y, fwhm=None):
    """Sky-limited PSF-fit flux of a unit-flux true star at (x, y) (of ``fwhm``; None: the strip
    tile's) with the field's stamp there."""
    m, ef = evaluate_field(field, x, y)
    m = np.asarray(m, float)
    star = draw_psf_stamp(_psf(_fwhm(y) if fwhm is None else fwhm), x, y, SIZE)
    return float((m * star).sum() / (m * m).sum())


def test_a_wide_strip_is_corrected_and_the_rest_left_alone():
    rng = np.random.default_rng(5)
    xy, vals, w = _stars(rng)
    field = fit_psf_field(xy, vals, w, 2, SHAPE, SIZE, 3.0, wing_tail=False)
    before = {p: _flux(field, *p) for p in [(450.0, 450.0), (450.0, 320.0), (750.0, 1050.0), (150.0, 150.0)]}
    cores = fit_cell_cores(field, vals, w, xy, SHAPE, N, 3.0)
    assert cores is not None and len(cores.factors) == N * N
    strip = [f for (r, c), f in cores.factors.items() if r == 1]
    assert all(f[0] > 0.9 and f[1] > 20 for f in strip), strip       # significant, barely shrunk
    field.cores = cores
    after = {p: _flux(field, *p) for p in before}
    # the strip: the field alone fits its stars several per cent off, corrected to < 1 %
    for p in [(450.0, 450.0), (450.0, 320.0)]:       # its middle and near its edge
        assert abs(before[p] - 1) > 0.1
        assert abs(after[p] - 1) < 0.01, after
    # far from the strip the field was right and stays so
    for p in [(750.0, 1050.0), (150.0, 150.0)]:
        assert abs(after[p] - 1) <= max(abs(before[p] - 1), 0.004) + 0.002, (p, before[p], after[p])


def test_cells_that_follow_the_field_get_almost_nothing():
    rng = np.random.default_rng(6)
    step = SHAPE[0] / N
    xy, vals = [], []
    for r in range(N):
        for c in range(N):
            for _ in range(4):
                x, y = (c + rng.uniform(0.1, 0.9)) * step, (r + rng.uniform(0.1, 0.9)) * step
                xy.append((x, y))
                vals.append(draw_psf_stamp(_psf(3.2), x, y, SIZE) + rng.normal(0, NOISE, (SIZE, SIZE)))
    vals = np.array(vals)
    w = np.full(vals.shape, NOISE ** -2)
    field = fit_psf_field(np.array(xy), vals, w, 2, SHAPE, SIZE, 3.2, wing_tail=False)
    cores = fit_cell_cores(field, vals, w, np.array(xy), SHAPE, N, 3.2)
    assert np.median([f[0] for f in cores.factors.values()]) < 0.3
    field.cores = cores
    for x, y in [(200.0, 200.0), (600.0, 650.0), (1000.0, 300.0)]:
        assert abs(_flux(field, x, y, 3.2) - 1) < 0.002
