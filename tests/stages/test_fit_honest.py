"""patch_run.sky (fit | zero | prior) through the fit stage, and opt_converged of sources on a bound."""
import numpy as np
import pytest

from tract7dt_mpi.engine import ImageData, PixelizedPSF
from tract7dt_mpi.errors import InputError
from tract7dt_mpi.stages.fit_setup import apply_sky_choice
from tract7dt_mpi.stage_options import fit_options

from test_fit import _fit_cfg, make_galsim_patch  # tests/stages is on sys.path (no package)


def _images():
    iv = np.full((20, 20), 0.25)      # sigma 2 per pixel
    iv[:5] = 0.0                      # masked rows do not count
    iv[5:7] = 1.0 / 16.0              # a few noisier rows do not move the median much
    return [ImageData("g", np.zeros((20, 20)), iv, PixelizedPSF(np.ones((3, 3)) / 9.0), sky=3.0)]


def test_apply_sky_choice_sets_the_prior_in_sky_sigma_units():
    pr = _fit_cfg(sky="prior", sky_prior_sigma=0.05).patch_run
    ims = _images()
    assert apply_sky_choice(ims, pr) is True
    assert ims[0].sky == 0.0 and ims[0].sky_sigma == pytest.approx(0.05 * 2.0)
    ims = _images()
    assert apply_sky_choice(ims, _fit_cfg(sky="zero").patch_run) is False
    assert ims[0].sky == 0.0 and ims[0].sky_sigma is None
    assert apply_sky_choice(_images(), _fit_cfg().patch_run) is True     # default: fit
    with pytest.raises(Exception):
        _fit_cfg(sky="free")                                              # not a choice


def test_apply_sky_choice_rejects_an_unknown_mode_object():
    class PR:
        sky, sky_prior_sigma = "maybe", 1.0
    with pytest.raises(InputError, match="patch_run.sky"):
        apply_sky_choice(_images(), PR())


def test_fit_stage_holds_the_sky_at_zero_or_pulls_it_with_the_prior():
    galsim = pytest.importorskip("galsim")
    pin = make_galsim_patch(galsim)
    from tract7dt_mpi.stages.fit import fit_patch_input as fit
    free = fit(pin, fit_options(_fit_cfg())).meta
    zero = fit(pin, fit_options(_fit_cfg(sky="zero"))).meta
    tight = fit(pin, fit_options(_fit_cfg(sky="prior", sky_prior_sigma=1e-6))).meta
    assert zero["sky_mode"] == "zero" and free["sky_mode"] == "fit"
    assert all(v == 0.0 for v in zero["sky_fit"].values())
    assert all(v != 0.0 for v in free["sky_fit"].values())
    # a prior of 1e-6 sky sigma: the sky is ~0 (at most 1e-6 x (prior weight share))
    assert all(abs(v) < 1e-5 for v in tight["sky_fit"].values())


def test_sources_on_their_position_bound_are_not_opt_converged():
    galsim = pytest.importorskip("galsim")
    from tract7dt_mpi.stages.fit import fit_patch_input
    pin = make_galsim_patch(galsim)
    # every input position is off by more than 0.05 px: each source ends on its box
    t = fit_patch_input(pin, fit_options(_fit_cfg(pos_max_shift_pix=0.05))).table
    assert t["flag_bound_stalled"].all()
    assert not t["opt_converged"].any()
    t = fit_patch_input(pin, fit_options(_fit_cfg())).table                  # 3 px box: free, converged
    assert t["opt_converged"].all() and not t["flag_bound_stalled"].any()


def test_sources_below_pos_fit_min_snr_keep_their_catalog_position():
    galsim = pytest.importorskip("galsim")
    from tract7dt_mpi.stages.fit import fit_patch_input
    pin = make_galsim_patch(galsim)
    t = fit_patch_input(pin, fit_options(_fit_cfg(pos_fit_min_snr=1e9))).table      # every source is "faint"
    base = pin.cat[~pin.cat["_is_halo_source"]]
    assert t["fit_pos_held"].all()
    assert np.allclose(t["x_pix_patch_fit"], base["x_pix_patch"]) and np.allclose(t["y_pix_patch_fit"], base["y_pix_patch"])
    t = fit_patch_input(pin, fit_options(_fit_cfg())).table                          # default 3: bright ones move
    assert not t["fit_pos_held"].any()
    assert not np.allclose(t["x_pix_patch_fit"], base["x_pix_patch"])
