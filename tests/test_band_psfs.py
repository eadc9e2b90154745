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



def test_a_wing_star_cut_out_loses_its_catalogue_neighbours_not_itself():
    from tract7dt_mpi.band_psfs import NEIGHBOUR_FWHM, NEIGHBOUR_RE, _mask_neighbours, neighbour_disks

    cat = pd.DataFrame({"x_pix_white": [100.0, 130.0, 100.0, np.nan], "y_pix_white": [100.0, 100.0, 60.0, 5.0],
                        "Re": [np.nan, 8.0, 1.0, 3.0]})
    disks = neighbour_disks(cat, 4.0)
    np.testing.assert_allclose(disks, [[100, 100, NEIGHBOUR_FWHM * 4], [130, 100, NEIGHBOUR_RE * 8],
                                       [100, 60, NEIGHBOUR_FWHM * 4]])
    good = np.ones((81, 81), bool)                 # the star (frame 100, 100) at (40, 40)
    _mask_neighbours(good, 100.0, 100.0, 40.0, 40.0, disks)
    assert good[40, 40] and good[40, 45]           # its own row is not masked
    assert not good[40, 70] and not good[40, 70 - int(NEIGHBOUR_RE * 8) + 1]   # the galaxy's disk
    assert good[40, 70 - int(NEIGHBOUR_RE * 8) - 1]
    assert not good[0, 40] and good[40, 0]         # the star at (100, 60) reaches the top edge


def test_the_wing_stars_start_with_the_saturated_stars_the_catalogue_lacks(tmp_path):
    """The brightest stars of a field are often not catalogued; their far wings are the best measured
    (SEP's unmatched saturated detections, brightest first, before the catalogue's candidates)."""
    from types import SimpleNamespace

    from tract7dt_mpi.band_psfs import bright_stars, saturated_detections
    from tract7dt_mpi.stages.bright_mask import SATURATED_CSV

    (tmp_path / "bright_mask").mkdir()
    pd.DataFrame({"x": [20.0, 180.0, 50.5], "y": [20.0, 20.0, 50.0], "flux": [1e5, 9e5, 3e5]}).to_csv(
        tmp_path / "bright_mask" / SATURATED_CSV, index=False)
    cfg = SimpleNamespace(outputs=SimpleNamespace(work_dir=str(tmp_path)))
    sat = saturated_detections(cfg)
    np.testing.assert_array_equal(sat, [[180.0, 20.0], [50.5, 50.0], [20.0, 20.0]])
    cat = pd.DataFrame({"x_pix_white": [50.0, 150.0], "y_pix_white": [50.0, 150.0], "TYPE": ["STAR", "STAR"]})
    prep = _Prepared([((50, 50), 10.0), ((150, 150), 20.0)])
    # the catalogue star at (50, 50) is the saturated detection at (50.5, 50): listed once
    np.testing.assert_array_equal(bright_stars(sat, cat, prep, 4.0),
                                  [[180.0, 20.0], [50.5, 50.0], [20.0, 20.0], [150.0, 150.0]])
    empty = SimpleNamespace(outputs=SimpleNamespace(work_dir=str(tmp_path / "none")))
    assert saturated_detections(empty).shape == (0, 2)
