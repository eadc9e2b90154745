import numpy as np
import pytest

from tract7dt_mpi.engine import half_light_radius, mixture_for, sersic_mixture
from tract7dt_mpi.engine.profiles import enclosed_fraction


def test_exp_dev_half_light_radii_and_unit_integral():
    # the Tractor tables are truncated: that moves flux inward -> 0.986 re (exp), 0.900 re (dev)
    assert half_light_radius(mixture_for("exp")) == pytest.approx(0.986, abs=0.001)
    assert half_light_radius(mixture_for("dev")) == pytest.approx(0.900, abs=0.001)
    for kind in ("exp", "dev"):
        assert mixture_for(kind).amp.sum() == pytest.approx(1.0, abs=1e-12)
        assert enclosed_fraction(mixture_for(kind), 1e3) == pytest.approx(1.0, abs=1e-12)
    assert mixture_for("dev").var[0] == 0.0 and mixture_for("dev").amp[0] == pytest.approx(0.010233)


@pytest.mark.parametrize("n", [0.29, 0.6, 1.0, 2.37, 4.0, 6.3])
def test_sersic_family_unit_sum_and_hlr(n):
    m = sersic_mixture(n)
    assert m.amp.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(m.amp >= 0)
    # independent truth: the half-light radius of the pure Sersic law is 1 re; truncation
    # (4 re at n=1 .. 8 re at n>=4) moves it inward by at most ~20% at n = 6.3
    hlr = half_light_radius(m)
    assert 0.75 < hlr < 1.02


def test_sersic_matches_exp_dev_tables_where_they_overlap():
    assert half_light_radius(sersic_mixture(1.0)) == pytest.approx(0.986, abs=0.01)
    assert half_light_radius(sersic_mixture(4.0)) == pytest.approx(0.900, abs=0.01)


def test_sersic_n_derivative_and_clamping():
    n, h = 2.33, 1e-6
    m = sersic_mixture(n)
    up, dn = sersic_mixture(n + h), sersic_mixture(n - h)
    np.testing.assert_allclose(m.damp_dn, (up.amp - dn.amp) / (2 * h), atol=1e-6)
    np.testing.assert_allclose(sersic_mixture(10.0).amp, sersic_mixture(6.3).amp)
    np.testing.assert_allclose(sersic_mixture(0.1).amp, sersic_mixture(0.29).amp)
