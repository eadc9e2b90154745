"""Native multi-band forward-modelling fitting engine (numpy/scipy only; no I/O, MPI or config).

API contract: docs/dev/engine-api.md; design notes: docs/dev/engine.md.
"""
from .fit import fit_patch
from .profiles import SERSIC_N_BOUNDS, Mixture, half_light_radius, mixture_for, sersic_mixture
from .psf import GaussianMixturePSF, HybridPSF, MoffatPSF, NCircularGaussianPSF, PixelizedPSF, em_fit_stamp
from .shapes import catalog_shape_to_params, params_to_catalog_shape
from .types import FitOptions, FitResult, ImageData, Source, SourceResult

__all__ = [
    "fit_patch", "FitOptions", "FitResult", "ImageData", "Source", "SourceResult",
    "PixelizedPSF", "HybridPSF", "GaussianMixturePSF", "NCircularGaussianPSF", "MoffatPSF", "em_fit_stamp",
    "Mixture", "mixture_for", "sersic_mixture", "half_light_radius", "SERSIC_N_BOUNDS",
    "catalog_shape_to_params", "params_to_catalog_shape",
]
