"""The pipeline layer's bright-star lists (band_psfs): each star once, no galaxy for a saturated star."""
import numpy as np
import pandas as pd

from tract7dt_mpi.band_psfs import distinct_positions, star_candidates


def test_a_star_listed_twice_is_kept_once():
    xy = np.array([[100.0, 100.0], [300.0, 50.0], [100.4, 99.8], [140.0, 100.0], [300.0, 55.0]])
    np.testing.assert_array_equal(distinct_positions(xy, 8.0), xy[[0, 1, 3]])
    assert distinct_positions(np.zeros((0, 2)), 8.0).shape == (0, 2)


class _Prepared:
    """A white stack with a peak under each listed position, brightest first."""

    shape = (200, 200)
    has_white = True

    def __init__(self, peaks):
        self.white = np.zeros(self.shape)
        for (x, y), f in peaks:
            self.white[int(y), int(x)] = f

    def read_white(self, y0, y1, x0, x1):
        return self.white[y0:y1, x0:x1], None


def test_a_galaxy_excluded_for_its_saturated_neighbour_is_no_star_candidate():
    cat = pd.DataFrame({"x_pix_white": [50.0, 120.0, 150.0], "y_pix_white": [50.0, 60.0, 150.0],
                        "TYPE": ["STAR", "EXP", "STAR"], "excluded_saturation": [False, True, False]})
    prep = _Prepared([((50, 50), 10.0), ((120, 60), 50.0), ((150, 150), 20.0)])
    np.testing.assert_array_equal(star_candidates(cat, prep, 4.0),
                                  [[120.0, 60.0], [150.0, 150.0], [50.0, 50.0]])
    np.testing.assert_array_equal(star_candidates(cat, prep, 4.0, saturated=False),
                                  [[150.0, 150.0], [50.0, 50.0]])
