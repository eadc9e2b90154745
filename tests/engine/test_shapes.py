import math

import numpy as np
import pytest

from tract7dt_mpi.engine import catalog_shape_to_params, params_to_catalog_shape
from tract7dt_mpi.engine.shapes import shape_prior_precision, unit_covariance, unit_covariance_derivs


@pytest.mark.parametrize("re,ab,phi", [(3.0, 0.5, 30.0), (1.2, 1.0, 0.0), (8.0, 0.3, 170.0), (2.0, 0.9, 95.0)])
def test_round_trip(re, ab, phi):
    r2, ab2, phi2 = params_to_catalog_shape(*catalog_shape_to_params(re, ab, phi))
    assert r2 == pytest.approx(re) and ab2 == pytest.approx(ab)
    if ab < 1:
        assert phi2 == pytest.approx(phi % 180.0)


def test_covariance_matches_engine_math_formulas():
    re, ab, phi = 3.0, 0.4, 25.0
    S = unit_covariance(*catalog_shape_to_params(re, ab, phi))
    th = -math.radians(phi)     # theta = -phi
    q = ab
    assert S[0, 0] == pytest.approx(re**2 * (q**2 * math.cos(th)**2 + math.sin(th)**2))
    assert S[1, 1] == pytest.approx(re**2 * (q**2 * math.sin(th)**2 + math.cos(th)**2))
    assert S[0, 1] == pytest.approx(re**2 * (1 - q**2) * math.sin(th) * math.cos(th))
    # the major axis (length re) points at phi + 90 deg from +x
    w, v = np.linalg.eigh(S)
    ang = math.degrees(math.atan2(v[1, 1], v[0, 1])) % 180.0
    assert math.sqrt(w[1]) == pytest.approx(re) and ang == pytest.approx((phi + 90) % 180, abs=1e-6)


def test_covariance_derivatives_smooth_through_round():
    for p in [(0.3, 0.0, 0.0), (1.0, 0.2, -0.4)]:
        d = unit_covariance_derivs(*p)
        for j in range(3):
            e = np.zeros(3)
            e[j] = 1e-5
            num = (unit_covariance(*(np.array(p) + e)) - unit_covariance(*(np.array(p) - e))) / 2e-5
            np.testing.assert_allclose(d[j], num, rtol=1e-4, atol=1e-6)


def test_shape_prior_needs_both_ell_and_theta():
    assert shape_prior_precision(3.0, 0.5, 10.0, None, 0.05, None) is None
    mu, prec = shape_prior_precision(3.0, 0.5, 10.0, 0.3, 0.05, 5.0)
    assert prec[0, 0] == pytest.approx((3.0 / 0.3) ** 2)
    assert np.all(np.linalg.eigvalsh(prec[1:, 1:]) > 0)


def test_ellipticity_wall_only_below_ab_min():
    from tract7dt_mpi.engine.shapes import AB_MIN, ellipticity_wall
    for ab in (1.0, 0.5, AB_MIN * 1.01):
        _, e1, e2 = catalog_shape_to_params(2.0, ab, 30.0)
        lnp, g, h = ellipticity_wall(e1, e2)
        assert lnp == 0.0 and not g.any() and not h.any()
    _, e1, e2 = catalog_shape_to_params(2.0, 0.08, 30.0)
    assert 10 < -2 * ellipticity_wall(e1, e2)[0] < 25          # b/a 0.08 costs ~17 in chi^2
    assert ellipticity_wall(*catalog_shape_to_params(2.0, 1e-4, 30.0)[1:])[0] < -1000


def test_ellipticity_wall_gradient_and_curvature():
    from tract7dt_mpi.engine.shapes import EE_WALL_SIGMA, ellipticity_wall
    e = np.array(catalog_shape_to_params(2.0, 0.05, 65.0)[1:])
    lnp, g, h = ellipticity_wall(*e)
    step = 1e-6
    num = [(ellipticity_wall(*(e + d))[0] - ellipticity_wall(*(e - d))[0]) / (2 * step)
           for d in (np.array([step, 0]), np.array([0, step]))]
    assert np.allclose(g, num, rtol=1e-5)
    # Gauss-Newton curvature: along the radial direction it is the wall's 1 / sigma^2, across it 0
    n = e / np.linalg.norm(e)
    assert n @ h @ n == pytest.approx(1 / EE_WALL_SIGMA ** 2, rel=1e-9)
    assert np.array([-n[1], n[0]]) @ h @ np.array([-n[1], n[0]]) == pytest.approx(0, abs=1e-9)
