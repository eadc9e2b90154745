"""Synthetic 7DT tile generator (``tract7dt-mpi make-sample``), rendered with GalSim.

One call of :func:`make_sample` writes, into ``out_dir``::

    images/SYN7DT_<band>.fits   one aligned, sky-subtracted ADU image per band (TAN WCS, 0.505"/px)
    image_list.txt              the images (relative paths)
    input_catalog.csv           ID (text), RA, DEC, TYPE (~10 % blank), FLUX_<band>, ELL, THETA, Re
    gaiaxp_synphot.csv          source_id (19 digits), ra, dec, phot_g_mean_mag, mag_<band>
    truth.csv                   exact per-object truth (positions, AB mags, scaled fluxes, shapes)
    truth_meta.json             per-band truth (zp_true vs ZP_AUTO, gain, sky, PSF field)
    config.yaml                 a config tuned to this tile

Output is bit-identical for the same arguments on the same machine (no random numbers inside
GalSim, numpy Generators seeded from the seed, no time stamps).

Generation time (measured on the 2-core development VM; ``make_sample`` prints wall and CPU time):
the default tile (8 bands x 1024 x 1024 px, 274 objects) takes ~5 s; the full-size tile
(``full_size=True``: 9576 x 6388 px, 3000 catalogued + 12 uncatalogued objects) with 40 bands took
698 s wall / 376 s CPU on a busy machine (load ~6 on 2 cores), peak RSS 0.52 GB, 9.2 GB of FITS:
about 4-10 s rendering + 4-9 s Poisson noise per band. Only one band is ever held in memory.

Truth helpers for tests live in :mod:`tract7dt_mpi.sample.truth`.
"""
from .bands import ALL_BANDS, pick_bands
from .generate import FULL_HEIGHT, FULL_WIDTH, make_sample
from .truth import load_truth, true_psf_stamp

__all__ = ["ALL_BANDS", "FULL_HEIGHT", "FULL_WIDTH", "load_truth", "make_sample", "pick_bands",
           "true_psf_stamp"]
