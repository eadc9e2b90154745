"""Band registration offsets (stages.band_offsets) against known offsets, and the PSF field shifted
by them (stages.psf_poly.evaluate_field) against a GalSim star drawn off its catalogue position."""
import numpy as np
import pytest

from tract7dt_mpi.stages.band_offsets import fit_band_offsets, match_across_bands

SHAPE = (1024, 1536)


def _true_offset(coef, x, y):
    u = (x - (SHAPE[1] - 1) / 2.0) / (SHAPE[1] / 2.0)
    v = (y - (SHAPE[0] - 1) / 2.0) / (SHAPE[0] / 2.0)
    cx, cy = coef
    return cx[0] + cx[1] * u + cx[2] * v * v, cy[0] + cy[1] * v + cy[2] * u * v


def _centres(rng, n_stars=90, bands="abcde", noise=0.03, seen=0.8):
    """Each band's star centres: true positions + the band's offset + centring noise; every band
    misses some stars. Returns (centres by band, true offsets by band)."""
    p = np.column_stack([rng.uniform(0, SHAPE[1] - 1, n_stars), rng.uniform(0, SHAPE[0] - 1, n_stars)])
    coefs = {b: (rng.uniform(-0.35, 0.35, 3), rng.uniform(-0.35, 0.35, 3)) for b in bands}
    xy = {}
    for b in bands:
        k = rng.random(n_stars) < seen
        dx, dy = _true_offset(coefs[b], p[k, 0], p[k, 1])
        xy[b] = np.column_stack([p[k, 0] + dx, p[k, 1] + dy]) + rng.normal(0, noise, (k.sum(), 2))
    return xy, coefs


def test_offsets_are_recovered_relative_to_the_bands_mean():
    rng = np.random.default_rng(3)
    xy, coefs = _centres(rng)
    off = fit_band_offsets(xy, SHAPE, degree=2)
    assert sorted(off) == list("abcde")
    gx, gy = np.meshgrid(np.linspace(100, SHAPE[1] - 100, 7), np.linspace(100, SHAPE[0] - 100, 7))
    gx, gy = gx.ravel(), gy.ravel()
    true = {b: np.array(_true_offset(c, gx, gy)) for b, c in coefs.items()}
    mean = sum(true.values()) / len(true)
    got_sum = 0.0
    for b, o in off.items():
        got = np.array(o.at(gx, gy))
        err = np.abs(got - (true[b] - mean))
        assert err.max() < 0.04, (b, err.max())
        assert 0.015 < o.scatter < 0.045, o.scatter
        got_sum = got_sum + got
    assert np.abs(got_sum).max() < 1e-9            # the mean over the bands is held at 0


def test_a_star_seen_in_one_band_only_and_a_band_with_few_stars_do_not_count():
    rng = np.random.default_rng(4)
    xy, _ = _centres(rng, bands="abc")
    xy["lonely"] = np.array([[5.0, 5.0], [SHAPE[1] - 5.0, 5.0]])     # no other band has them
    xy["few"] = xy["a"][:3] + 0.2
    off = fit_band_offsets(xy, SHAPE)
    assert sorted(off) == ["a", "b", "c"]
    bands, groups = match_across_bands({"a": [[10.0, 10.0], [40.0, 40.0]], "b": [[10.3, 9.8], [80.0, 80.0]]})
    assert bands == ["a", "b"] and groups.shape == (3, 2, 2)
    assert np.isfinite(groups[..., 0]).sum(axis=1).tolist() == [2, 1, 1]


def test_one_band_gives_no_offsets():
    assert fit_band_offsets({"a": np.ones((30, 2))}, SHAPE) == {}
    assert fit_band_offsets({}, SHAPE) == {}


def test_a_shifted_field_fits_a_star_drawn_off_the_catalogue_position():
    """A GalSim star drawn 0.4 px off its position: fitted at that position with the field
    shifted by the band's offset its flux is the truth's; unshifted it is ~1.5 % low."""
    pytest.importorskip("galsim")
    from tract7dt_mpi.sample.psf import PsfParams, draw_psf_stamp
    from tract7dt_mpi.stages.band_offsets import BandOffset
    from tract7dt_mpi.stages.psf_poly import fit_psf_field, evaluate_field

    psf = PsfParams(fwhm0=3.0, fwhm_x=0, fwhm_y=0, fwhm_r=0, beta0=3.0, beta_x=0, g1_0=0, g1_x=0,
                    g2_0=0, g2_y=0, width=512, height=512)
    stamp = draw_psf_stamp(psf, 256, 256, size=41)
    xy = np.array([[200.0, 200.0], [300.0, 300.0], [250.0, 320.0], [320.0, 210.0]])
    vals = np.repeat(stamp[None], len(xy), axis=0)
    w = np.full(vals.shape, 1e8)
    shift = BandOffset(cx=(0.3,), cy=(-0.25,), degree=0, x0=255.5, y0=255.5, scale=256.0, n_stars=4,
                       n_clipped=0, scatter=0.0)
    star = draw_psf_stamp(psf, 256, 256, size=41, offset=(0.3, -0.25))   # the star, 0.39 px off
    fluxes = {}
    for name, off in (("shifted", shift), ("plain", None)):
        field = fit_psf_field(xy, vals, w, 0, (512, 512), 41, 3.0, wing_tail=False)
        field.offset = off
        model, ef = evaluate_field(field, 256.0, 256.0)
        m = np.asarray(model, float)
        fluxes[name] = float((m * star).sum() / (m * m).sum()) / ef
    assert abs(fluxes["shifted"] - 1.0) < 1e-3, fluxes
    assert fluxes["plain"] < 0.99, fluxes
