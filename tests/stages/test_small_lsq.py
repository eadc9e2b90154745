"""The bounded Marquardt fit against exact minima: a noiseless Moffat profile, a box-constrained
line whose constrained optimum is analytic, a start where the residuals are not finite."""
import numpy as np
import pytest

from tract7dt_mpi.stages.small_lsq import fit_bounded


def test_noiseless_moffat_profile_is_recovered():
    r = np.linspace(1.0, 25.0, 40)
    beta, alpha, amp = 2.7, 3.1, 0.02
    m = amp * (1 + (r / alpha) ** 2) ** -beta

    def resid(q):
        return q[2] * (1 + (r / q[1]) ** 2) ** -q[0] / m - 1.0

    def jac(q):
        u = 1 + (r / q[1]) ** 2
        f = q[2] * u ** -q[0]
        return np.column_stack([-f * np.log(u), f * q[0] * 2 * r ** 2 / q[1] ** 3 / u, f / q[2]]) / m[:, None]

    q = fit_bounded(resid, jac, [3.5, 2.0, 0.05], [1.0, 0.1, 0.0], [10.0, 100.0, np.inf])
    np.testing.assert_allclose(q, [beta, alpha, amp], rtol=1e-6)


def test_a_bound_holds_at_the_constrained_optimum():
    """y = 2 x + 1 fitted with the slope bounded to <= 1.5: the optimum has slope 1.5 and the
    intercept mean(y - 1.5 x)."""
    x = np.linspace(0.0, 4.0, 21)
    y = 2.0 * x + 1.0 + 0.1 * np.sin(7 * x)

    def resid(q):
        return q[0] * x + q[1] - y

    def jac(q):
        return np.column_stack([x, np.ones_like(x)])

    q = fit_bounded(resid, jac, [0.0, 0.0], [-np.inf, -np.inf], [1.5, np.inf])
    assert q[0] == 1.5
    assert q[1] == pytest.approx(np.mean(y - 1.5 * x), rel=1e-9)


def test_non_finite_start_is_a_value_error():
    with pytest.raises(ValueError):
        fit_bounded(lambda q: np.array([np.nan]), lambda q: np.ones((1, 1)), [0.0], [-1.0], [1.0])
