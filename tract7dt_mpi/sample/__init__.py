"""Synthetic 7DT tile generator (``tract7dt-mpi make-sample``), rendered with GalSim.

One call of :func:`make_sample` writes, into ``out_dir``::

    images/SYN7DT_<band>.fits   one aligned, sky-subtracted ADU image per band (TAN WCS, 0.505"/px)
    image_list.txt              the images (relative paths)
    input_catalog.csv           ID (text), RA, DEC, TYPE (~10 % blank), FLUX_<band>, ELL, THETA, Re
    gaiaxp_synphot.csv          source_id (19 digits), ra, dec, phot_g_mean_mag, mag_<band>
    truth.csv                   exact per-object truth (positions, AB mags, total fluxes in the scaled
                                system, drawn flux share, ideal S/N, shapes, blend hosts)
    truth_meta.json             per-band truth (zp_true vs ZP_AUTO, gain, sky, PSF field), options
    psf_truth.json              per-band PSF at the tile centre (kind, FWHM, shear, flux in boxes)
    config.yaml                 a config tuned to this tile

Scene options (PSF kind and shape, galaxy brightness, star counts, blends, pedestal, untruncated
galaxies, ...) are keyword arguments of :func:`make_sample` and flags of ``make-sample``
(:mod:`tract7dt_mpi.sample.options`); their defaults give the original tile.

Output is bit-identical for the same arguments on the same machine (no random numbers inside
GalSim, numpy Generators seeded from the seed, no time stamps).

Generation time (measured on the 2-core development VM; ``make_sample`` prints wall and CPU time):
the default tile (8 bands x 1024 x 1024 px, 274 objects) takes ~5 s; the full-size tile
(``full_size=True``: 9576 x 6388 px, 3000 catalogued + 12 uncatalogued objects) with 40 bands took
698 s wall / 376 s CPU on a busy machine (load ~6 on 2 cores), peak RSS 0.52 GB, 9.2 GB of FITS:
about 4-10 s rendering + 4-9 s Poisson noise per band. Only one band is ever held in memory.

Truth helpers for tests live in :mod:`tract7dt_mpi.sample.truth`.
"""
import importlib

_EXPORTS = {"ALL_BANDS": "bands", "pick_bands": "bands", "FULL_HEIGHT": "generate",
            "FULL_WIDTH": "generate", "make_sample": "generate", "load_truth": "truth",
            "true_psf_stamp": "truth"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """Import on first use, so that ``sample.options`` (used by the CLI parser) stays light."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
