"""Total-flux factors per row: the profile's taper and the size bias (truth: engine/test_total_flux)."""
import numpy as np

from tract7dt_mpi.engine.profiles import size_bias, total_flux_factor
from tract7dt_mpi.stages.flux_convention import profile_factors


def test_factor_of_a_barely_resolved_galaxy_counts_its_tail_once():
    kinds, n = ["star", "exp", "exp", "dev", "sersic"], [np.nan, np.nan, np.nan, np.nan, 2.0]
    sizes = [np.nan, 0.25, 3.0, 0.3, 0.3]
    f = profile_factors(kinds, n, "total", sizes)
    assert f[0] == 1.0
    assert f[1] == total_flux_factor("exp") / size_bias("exp", 0.25) < f[2] <= total_flux_factor("exp")
    assert f[3] < total_flux_factor("dev")
    assert f[4] == total_flux_factor("sersic", 2.0) / size_bias("sersic", 0.3, 2.0) < total_flux_factor("sersic", 2.0)
    np.testing.assert_array_equal(profile_factors(kinds, n, "total"),
                                  [1.0] + [total_flux_factor(k, v) for k, v in zip(kinds[1:], n[1:])])
    np.testing.assert_array_equal(profile_factors(kinds, n, "truncated", sizes), np.ones(5))
