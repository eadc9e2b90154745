"""Model choice (PSF, EXP, DEV, SERSIC) on GalSim scenes with known types (engine fits, truth known)."""
import sys
from pathlib import Path

import galsim
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _truth import draw, galaxy, moffat, psf_stamp  # noqa: E402

from tract7dt_mpi.engine import FitOptions, ImageData, PixelizedPSF, Source, fit_patch  # noqa: E402
from tract7dt_mpi.stages.flux_convention import profile_factors  # noqa: E402
from tract7dt_mpi.stages.model_select import CLOSE_DCHISQ, NPARAMS, choose, choose_models, untyped_rows  # noqa: E402
from tract7dt_mpi.stage_options import fit_options  # noqa: E402

SHAPE = (110, 110)
#: (kind, GalSim profile, x, y): a star, an EXP and a DEV galaxy, bright (S/N of several hundred)
TRUTH = [("star", galsim.DeltaFunction(flux=4e4), 25.3, 30.2),
         ("exp", galaxy("exp", 1e4, 3.0, 0.6, 30.0), 78.4, 32.7),
         ("dev", galaxy("dev", 1.5e4, 3.0, 0.7, 120.0), 50.6, 80.1)]


def _true_flux(prof):
    """Total flux of ``prof`` as drawn (truncated profiles included), PSF-convolved."""
    return float(draw([(prof, 100.0, 100.0)], (201, 201), psf=moffat()).sum())


def _images(rng):
    objs = [(p, x, y) for _, p, x, y in TRUTH]
    clean = draw(objs, SHAPE, psf=moffat())
    return [ImageData(b, clean * s + rng.normal(0, 2.0, SHAPE), np.full(SHAPE, 0.25),
                      PixelizedPSF(psf_stamp(15))) for b, s in (("g", 0.8), ("r", 1.0), ("i", 1.2))]


def _untyped_start():
    # every row untyped: started as EXP with the catalogue's guess, as the pipeline does
    return [Source("exp", x + 0.4, y - 0.3, [3e4] * 3, re=2.0, ab=0.8) for _, _, x, y in TRUTH]


@pytest.fixture(scope="module")
def chosen():
    ims = _images(np.random.default_rng(5))
    opts = FitOptions(n_opt_iters=30)
    srcs = _untyped_start()
    res = fit_patch(ims, srcs, opts)
    return choose_models(fit_patch, ims, srcs, res, opts, [0, 1, 2], 4.0, 9.0)


def test_types_are_recovered(chosen):
    _, res, ch = chosen
    assert [ch[i].kind for i in range(3)] == [k for k, *_ in TRUTH]
    assert [s.kind for s in res.sources] == [k for k, *_ in TRUTH]
    for c in ch.values():
        assert set(c.dchisq) == {"star", "exp", "dev", "sersic"}
        assert all(np.isfinite(v) and v > 1e3 for v in c.dchisq.values())   # all bright
    assert ch[0].dchisq["star"] - NPARAMS["star"] >= ch[0].dchisq["exp"] - NPARAMS["exp"] - 9.0
    assert ch[1].dchisq["exp"] - ch[1].dchisq["star"] > 100 and ch[1].dchisq["exp"] > ch[1].dchisq["dev"]
    assert ch[2].dchisq["dev"] > ch[2].dchisq["exp"]


def test_fluxes_of_retyped_sources_match_the_truth(chosen):
    _, res, _ = chosen
    for s, (kind, prof, x, y) in zip(res.sources, TRUTH):
        for f, scale in zip(s.fluxes, (0.8, 1.0, 1.2)):
            truth = _true_flux(prof) * scale
            assert abs(f / truth - 1) < (0.005 if kind == "star" else 0.02), (kind, f, truth)


def test_choice_rule():
    # a galaxy must pay for its three extra parameters plus the threshold
    assert choose({"star": 100.0, "exp": 110.0, "dev": 105.0, "sersic": 111.0}, 9.0).kind == "star"
    assert choose({"star": 100.0, "exp": 115.0, "dev": 105.0, "sersic": 116.0}, 9.0).kind == "exp"
    # ... and 1 % of the point source's own dchisq (PSF mismatch of a bright star)
    assert choose({"star": 1e5, "exp": 1e5 + 500, "dev": 1e5, "sersic": 1e5 + 500}, 9.0).kind == "star"
    assert choose({"star": 1e5, "exp": 1e5 + 5000, "dev": 1e5, "sersic": 1e5 + 5000}, 9.0).kind == "exp"
    # SERSIC only when it beats the better of EXP/DEV by a further threshold
    assert choose({"star": 0.0, "exp": 200.0, "dev": 190.0, "sersic": 205.0}, 9.0).kind == "exp"
    assert choose({"star": 0.0, "exp": 200.0, "dev": 190.0, "sersic": 240.0}, 9.0).kind == "sersic"
    # ... plus 0.1 % of that galaxy's dchisq
    assert choose({"star": 0.0, "exp": 1e5, "dev": 9e4, "sersic": 1e5 + 90}, 9.0).kind == "exp"
    assert choose({"star": 0.0, "exp": 1e5, "dev": 9e4, "sersic": 1e5 + 130}, 9.0).kind == "sersic"
    c = choose({"star": 0.0, "exp": 200.0, "dev": 198.0, "sersic": 201.0}, 9.0)
    assert c.kind == "exp" and c.close                       # EXP and DEV within 4 in chi^2
    assert not choose({"star": 0.0, "exp": 200.0, "dev": 195.0, "sersic": 201.0}, 9.0).close
    assert not choose({"star": 0.0, "exp": 200.0, "dev": 100.0, "sersic": 180.0}, 9.0).close
    # nothing computed: keep a point source, no flag
    c = choose({"star": np.nan, "exp": np.nan}, 9.0)
    assert c.kind == "star" and not c.close


def test_sersic_is_kept_when_its_total_flux_differs():
    """Below SERSIC_FRAC's relative gain, SERSIC still wins when the data prefer it by the
    threshold and its total flux differs from the EXP/DEV one by more than 2 %."""
    d = {"star": 0.0, "exp": 1e5, "dev": 9e4, "sersic": 1e5 + 50}      # gain 40 > 9, < 100
    assert choose(d, 9.0).kind == "exp"
    assert choose(d, 9.0, totals={"exp": 1000.0, "sersic": 1015.0}).kind == "exp"
    c = choose(d, 9.0, totals={"exp": 1000.0, "sersic": 1030.0})
    assert c.kind == "sersic" and not c.close
    # ... but never without the threshold's gain in chi^2
    assert choose({"star": 0.0, "exp": 1e5, "dev": 9e4, "sersic": 1e5 + 8}, 9.0,
                  totals={"exp": 1000.0, "sersic": 1100.0}).kind == "exp"


@pytest.mark.parametrize("n, flux, kind", [(2.5, 2e4, "sersic"), (4.6, 6e4, "sersic"), (1.0, 2e4, "exp"),
                                           (4.0, 2e4, "dev")])
def test_sersic_galaxies_get_sersic_and_their_total_flux(n, flux, kind):
    """GalSim Sersic galaxies (r_e 2.5-3 px, S/N 150-400 per band, untyped): n = 2.5 and 4.6
    fitted as DEV are 10 % too bright and 3 % too faint, and their chi^2 gain as SERSIC is below
    0.1 % of DEV's; the total-flux rule picks SERSIC, within 1.5 % of the truth. Exponential and
    de Vaucouleurs galaxies keep their simpler model."""
    shape = (160, 160)
    re = 2.5 if n == 4.6 else 3.0
    clean = draw([(galaxy("sersic", flux, re, 0.7, 30.0, n=n), 80.3, 79.6)], shape, psf=moffat())
    rng = np.random.default_rng(2)
    ims = [ImageData(b, clean * s + rng.normal(0, 10.0, shape), np.full(shape, 0.01),
                     PixelizedPSF(psf_stamp(15))) for b, s in (("g", 0.8), ("r", 1.0), ("i", 1.2))]
    opts = FitOptions(n_opt_iters=40, fit_sky=False)
    srcs = [Source("exp", 80.6, 79.3, [1e4] * 3, re=2.0, ab=0.8)]
    _, res, ch = choose_models(fit_patch, ims, srcs, opts=opts, res=fit_patch(ims, srcs, opts),
                               candidates=[0], fwhm_pix=4.0, threshold=9.0)
    s = res.sources[0]
    assert ch[0].kind == kind == s.kind
    fac = profile_factors([s.kind], [s.sersic_n], "total", [s.re * np.sqrt(s.ab) / 4.0])[0]
    assert np.sum(s.fluxes) * fac / (3.0 * flux) == pytest.approx(1.0, abs=0.015)


def test_close_marks_choices_a_small_chi2_change_flips():
    """model_close: a decision within CLOSE_DCHISQ (chi^2) of its boundary, not the raw ranking
    (a galaxy shrunk to a point source ties with it but loses by its penalty: not close)."""
    assert CLOSE_DCHISQ == 4.0
    # a faint point source whose galaxy fits reproduce it: the galaxy loses by 3 + 9, not close
    assert not choose({"star": 60.0, "exp": 60.0, "dev": 59.5, "sersic": 59.0}, 9.0).close
    # ... nor one whose galaxy gains what noise gives three more parameters (3.5 < 3 + 9 - 4)
    assert not choose({"star": 60.0, "exp": 63.5, "dev": 62.0, "sersic": 63.0}, 9.0).close
    # the galaxy misses the required gain (3 + 9) by 2, or passes it by 2: close either way
    assert choose({"star": 60.0, "exp": 70.0, "dev": 62.0, "sersic": 70.0}, 9.0).close
    c = choose({"star": 60.0, "exp": 74.0, "dev": 62.0, "sersic": 74.5}, 9.0)
    assert c.kind == "exp" and c.close
    # a SERSIC kept by a margin of 1 above EXP + 1 + 9 + 0.1 % of EXP's dchisq
    c = choose({"star": 0.0, "exp": 1000.0, "dev": 900.0, "sersic": 1012.0}, 9.0)
    assert c.kind == "sersic" and c.close
    assert not choose({"star": 0.0, "exp": 1000.0, "dev": 900.0, "sersic": 1030.0}, 9.0).close
    # a bright star and a bright galaxy
    assert not choose({"star": 1e5, "exp": 1e5 - 10, "dev": 1e5 - 200, "sersic": 1e5 - 20}, 9.0).close
    assert not choose({"star": 5e5, "exp": 6e5, "dev": 5.9e5, "sersic": 6e5}, 9.0).close


def test_close_flags_a_faint_ambiguous_galaxy_only(chosen):
    """GalSim: the bright star, EXP and DEV of the fixture are clear choices; a faint small EXP
    galaxy (flux 200, r_e 1.5 px, S/N ~ 19), whose galaxy fit gains about the required chi^2
    over a point source, is flagged."""
    _, _, ch = chosen
    assert not any(c.close for c in ch.values())
    rng = np.random.default_rng(1)
    shape = (60, 60)
    clean = draw([(galaxy("exp", 200.0, 1.5, 0.7, 30.0), 30.2, 29.7)], shape, psf=moffat())
    ims = [ImageData(b, clean * s + rng.normal(0, 2.0, shape), np.full(shape, 0.25),
                     PixelizedPSF(psf_stamp(15))) for b, s in (("g", 0.8), ("r", 1.0), ("i", 1.2))]
    opts = FitOptions(n_opt_iters=30)
    srcs = [Source("exp", 30.6, 29.4, [1e3] * 3, re=2.0, ab=0.8)]
    res = fit_patch(ims, srcs, opts)
    c = choose_models(fit_patch, ims, srcs, res, opts, [0], 4.0, 9.0)[2][0]
    need = 3.0 + 9.0 + 0.01 * c.dchisq["star"]           # penalty + threshold + GALAXY_FRAC
    gain = max(c.dchisq["exp"], c.dchisq["dev"]) - c.dchisq["star"] - need
    assert abs(gain) < CLOSE_DCHISQ and c.close


def test_untyped_rows():
    import pandas as pd
    cat = pd.DataFrame({"TYPE": ["STAR", "", None, "exp", "QSO", np.nan]})
    assert untyped_rows(cat, "TYPE", {"STAR", "EXP", "DEV", "SERSIC"}).tolist() == [False, True, True, False, True, True]
    assert untyped_rows(cat, None, {"STAR"}).all()


# --------------------------------------------------------------- modes through fit_patch_input
def _patch_with_types(types):
    """tests/stages/test_fit.py's GalSim patch (stars 0, 1; EXP galaxies 2, 3) with ``types``."""
    import dataclasses

    galsim_mod = pytest.importorskip("galsim")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_fit import make_galsim_patch

    pin = make_galsim_patch(galsim_mod)
    cat = pin.cat.copy()
    cat["TYPE"] = list(types) + ["STAR"]          # the halo row keeps its type
    return dataclasses.replace(pin, cat=cat)


def _run(pin, mode):
    from tract7dt_mpi.config import config_from_dict
    from tract7dt_mpi.stages.fit import fit_patch_input

    cfg = config_from_dict({"patch_run": {"n_opt_iters": 50, "no_cutouts": True, "no_patch_overview": True,
                                          "model_selection": mode}, "plotting": {"level": "none"}})
    return fit_patch_input(pin, fit_options(cfg)).table


def test_untyped_rows_are_chosen_and_off_keeps_gal_model():
    pin = _patch_with_types(["", "", "", ""])
    t = _run(pin, "untyped")
    assert t["stype_fit"].tolist() == ["star", "star", "exp", "exp"]
    assert t[["dchisq_PSF", "dchisq_EXP", "dchisq_DEV", "dchisq_SER"]].notna().all().all()
    assert (t["dchisq_EXP"][2:] > t["dchisq_PSF"][2:] + 100).all()
    for i, fg in enumerate((20000.0, 8000.0, 25000.0, 15000.0)):
        assert t["FLUX_g_fit"][i] == pytest.approx(fg, rel=0.01 if i < 2 else 0.03)
    off = _run(pin, "off")
    assert off["stype_fit"].tolist() == ["exp"] * 4          # patch_run.gal_model
    assert off[["dchisq_PSF", "dchisq_SER"]].isna().all().all() and not off["flag_model_close"].any()


def test_all_ignores_the_catalogue_type():
    pin = _patch_with_types(["EXP", "DEV", "STAR", "STAR"])   # every TYPE wrong
    assert _run(pin, "untyped")["stype_fit"].tolist() == ["exp", "dev", "star", "star"]
    assert _run(pin, "all")["stype_fit"].tolist() == ["star", "star", "exp", "exp"]
