"""ePSF stamp helpers against analytic truths: annulus background, growth metrics, native sampling."""
import numpy as np
import pytest

from tract7dt_mpi.stages.epsf import finish_stamp, native_stamp
from tract7dt_mpi.stages.epsf_qa import (annulus_radii, growth_metrics, nanmedian_axis0, residual_stats,
                                         star_local_background, star_local_backgrounds, symmetric_fluxes)


def gauss(n, sigma, step=1.0, x0=0.0, y0=0.0):
    """Gaussian sampled on an n x n grid of spacing ``step`` centred on the middle sample."""
    c = (n - 1) / 2
    yy, xx = (np.mgrid[0:n, 0:n] - c) * step
    return np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma ** 2))


def test_annulus_radii_are_clamped_into_the_stamp():
    assert annulus_radii((61, 61), 20.0, 30.0) == (20.0, 29.0)     # config doc: 30 -> 29 for 61 px
    assert annulus_radii((31, 31), 20.0, 30.0) == (13.0, 14.0)      # rin <= rout - 1
    assert annulus_radii((5, 5), 0.0, 1.0) == (0.0, 2.0)            # floor of 2 px


def test_local_background_is_the_annulus_level():
    rng = np.random.default_rng(0)
    stamp = 1000 * gauss(61, 2.0) + 7.5 + rng.normal(0, 1.0, (61, 61))
    stamp[5, 30] = 500.0                       # a hot pixel in the annulus is clipped away
    v, status, mask = star_local_background(stamp, np.ones_like(stamp), 20, 30, 3.0, 30)
    assert status == "ok" and abs(v - 7.5) < 0.1
    assert mask.sum() > 30
    v, status, _ = star_local_background(stamp, np.ones_like(stamp), 20, 30, 3.0, 100000)
    assert (v, status) == (0.0, "fallback_zero")
    w = np.zeros_like(stamp)                    # no usable (weight > 0) pixel
    assert star_local_background(stamp, w, 20, 30, 3.0, 30)[1] == "fallback_zero"


def test_growth_metrics_of_a_gaussian():
    sigma = 2.0
    stamp = gauss(55, sigma)
    stamp /= stamp.sum()
    q = growth_metrics(stamp)
    # continuous EE(r) = 1 - exp(-r^2 / 2 sigma^2): r50 = 2.35, r80 = 3.59, r90 = 4.29 px; the metric
    # is the first integer radius reaching the level (pixelisation moves it by < 1 px)
    assert q["ee_r50_pix"] == 3.0 and q["ee_r80_pix"] == 4.0 and q["ee_r90_pix"] == 5.0
    assert q["ee_edge"] == pytest.approx(1.0, abs=1e-9)
    assert q["epsf_max"] == pytest.approx(stamp.max()) and q["epsf_min"] >= 0
    assert q["epsf_edge_median"] < 1e-20


def test_native_sampling_of_an_oversampled_stamp():
    over = gauss(121, 2.0, step=0.5)           # 2x oversampled, centre sample = index 60
    native = gauss(61, 2.0, step=1.0)
    assert np.allclose(native_stamp(over, 2), native)
    out = finish_stamp(over, 2, 55)
    ref = native[3:58, 3:58]
    assert out.dtype == np.float32 and out.shape == (55, 55)
    assert np.allclose(out, ref / ref.sum(), atol=1e-7)


def test_finish_stamp_crops_centred_and_cleans():
    a = gauss(61, 3.0)
    a[0, 0] = np.nan
    out = finish_stamp(a, 1, 25)
    assert out.shape == (25, 25) and np.isfinite(out).all()
    assert np.unravel_index(np.argmax(out), out.shape) == (12, 12)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)


def test_residual_stats_of_a_perfect_model():
    rng = np.random.default_rng(1)
    model = gauss(21, 2.0)
    model /= model.sum()
    datas, models, weights, fluxes = [], [], [], []
    for _ in range(30):
        f = 1e4
        noise = rng.normal(0, 1.0, model.shape)            # sigma = 1 in image units
        datas.append(model + noise / f)
        models.append(model)
        weights.append(np.ones_like(model))
        fluxes.append(f)
    qa, stacks = residual_stats(datas, models, weights, fluxes)
    assert qa["resid_nstars"] == 30
    assert abs(qa["resid_norm_bias"]) < 0.05 and abs(qa["resid_norm_rms"] - 1.0) < 0.05
    assert abs(qa["resid_bias"]) < 0.01 and qa["resid_rms"] < 0.05
    assert stacks["resid"].shape == model.shape


def test_local_backgrounds_of_a_stack_are_each_stamps_annulus_level():
    """Stamps of one stack with different sky levels, a neighbour's light in one annulus, one fully
    masked stamp: each gets its own level (the neighbour clipped), the masked one falls back to 0."""
    rng = np.random.default_rng(1)
    sky = np.array([2.0, -3.0, 10.0, 0.0])
    stack = 1000 * gauss(61, 2.0)[None] + sky[:, None, None] + rng.normal(0, 1.0, (4, 61, 61))
    stack[1, 2:9, 20:40] += 80.0                  # a neighbour inside the annulus of stamp 1
    w = np.ones_like(stack)
    w[3] = 0.0
    vals, stats, masks = star_local_backgrounds(stack, w, 20, 30, 3.0, 30)
    assert stats == ["ok", "ok", "ok", "fallback_zero"]
    np.testing.assert_allclose(vals[:3], sky[:3], atol=0.12)
    assert vals[3] == 0.0 and not masks[3].any()


def test_symmetric_fluxes_fill_masked_halves_from_the_mirror():
    """A centred Gaussian of known flux with one side masked: the mirror fill gives its total."""
    sig, flux = 2.0, 500.0
    st = flux * gauss(41, sig) / (2 * np.pi * sig ** 2)
    valid = np.ones((2, 41, 41), bool)
    valid[0, :, :17] = False                      # a strip left of the centre
    valid[1, 22:, :] = False                      # the lower rows
    f = symmetric_fluxes(np.stack([st, st]), valid, [(20.0, 20.0), (20.0, 20.0)])
    np.testing.assert_allclose(f, st.sum(), rtol=1e-12)
    assert st.sum() == pytest.approx(flux, rel=1e-4)


def test_nanmedian_axis0_is_numpys_nanmedian():
    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 30):
        a = rng.normal(size=(n, 9, 8))
        a[rng.uniform(size=a.shape) < 0.3] = np.nan
        a[:, 0, 0] = np.nan                       # an empty column: NaN, as numpy gives
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            ref = np.nanmedian(a, axis=0)
        np.testing.assert_array_equal(nanmedian_axis0(a), ref)
