"""Input and result containers of the engine API (docs/dev/engine-api.md)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


KINDS = ("star", "exp", "dev", "sersic")
FLUX_ERROR_MODELS = ("total", "sky")


@dataclass
class ImageData:
    """One band: image, inverse variance (0 = masked), PSF, optional gain (e-/data unit), sky start.

    ``sky_sigma``: width (data units) of a Gaussian prior centred on 0 on the band's fitted
    constant sky (None: flat prior); used only when ``FitOptions.fit_sky`` is true.
    """

    band: str
    data: np.ndarray
    invvar: np.ndarray
    psf: object
    gain: float | None = None
    sky: float = 0.0
    sky_sigma: float | None = None
    #: light already subtracted from ``data`` as PSF wings of stars not fitted here (halos of
    #: bright stars beyond the PSF stamp); its error enters ``SourceResult.wing_errs``
    wing_light: np.ndarray | None = None

    def __post_init__(self):
        self.data = np.asarray(self.data, dtype=float)
        self.invvar = np.asarray(self.invvar, dtype=float)
        if self.data.ndim != 2:
            raise ValueError(f"band {self.band}: image must be 2-D, got shape {self.data.shape}")
        if self.invvar.shape != self.data.shape:
            raise ValueError(f"band {self.band}: invvar shape {self.invvar.shape} != image shape {self.data.shape}")
        bad = ~np.isfinite(self.data) | ~np.isfinite(self.invvar) | (self.invvar < 0)
        if bad.any():
            self.invvar = np.where(bad, 0.0, self.invvar)
            self.data = np.where(np.isfinite(self.data), self.data, 0.0)
        if self.gain is not None and not (np.isfinite(self.gain) and self.gain > 0):
            self.gain = None
        self.sky = float(self.sky) if np.isfinite(self.sky) else 0.0
        if self.sky_sigma is not None and not (np.isfinite(self.sky_sigma) and self.sky_sigma > 0):
            self.sky_sigma = None


@dataclass
class Source:
    """One source: kind, position (patch px), per-band fluxes, shape and optional priors/bounds."""

    kind: str
    x: float
    y: float
    fluxes: np.ndarray
    re: float = np.nan
    ab: float = np.nan
    phi_deg: float = np.nan
    sersic_n: float = np.nan
    pos_sigma: float | None = None
    flux_sigma: np.ndarray | None = None
    re_sigma: float | None = None
    ell_sigma: float | None = None
    theta_sigma_deg: float | None = None
    max_shift: float | None = None
    #: keep the initial shape and Sersic n (e.g. a halo source centred outside the image)
    hold_shape: bool = False
    #: keep re within [re / re_factor, re * re_factor] of its start (None: the global bounds only)
    re_factor: float | None = None

    def __post_init__(self):
        self.kind = str(self.kind).lower()
        if self.kind not in KINDS:
            raise ValueError(f"Source kind must be one of {KINDS}, got {self.kind!r}")
        if not (np.isfinite(self.x) and np.isfinite(self.y)):
            raise ValueError(f"Source position must be finite, got ({self.x}, {self.y})")
        self.fluxes = np.atleast_1d(np.asarray(self.fluxes, dtype=float))
        self.fluxes = np.where(np.isfinite(self.fluxes), self.fluxes, 0.0)
        if self.kind != "star":
            self.re = float(self.re) if np.isfinite(self.re) and self.re > 0 else 3.0
            self.ab = float(np.clip(self.ab, 1e-3, 1.0)) if np.isfinite(self.ab) else 0.8
            self.phi_deg = float(self.phi_deg) if np.isfinite(self.phi_deg) else 0.0
            if self.kind == "sersic":
                self.sersic_n = float(self.sersic_n) if np.isfinite(self.sersic_n) else 3.0


@dataclass
class FitOptions:
    n_opt_iters: int = 20
    dlnp_stop: float = 1e-6
    staged: bool = True
    multi_band: bool = True
    fit_sky: bool = True
    flag_maxiter_margin: int = 0
    flux_error_model: str = "total"
    #: flux errors marginalised over the free position, shape and Sersic index (a galaxy's flux
    #: trades against its radius); False = errors at the fitted shape, as the Tractor reports
    marginal_flux_errors: bool = True
    #: stage 2 (positions only) keeps fluxes and sky frozen (as the serial pipeline); False re-solves them
    stage2_freeze_fluxes: bool = True
    #: galaxies whose flux S/N (all bands combined, sky-only errors, at the start) is below this
    #: keep their initial shape and Sersic index: such a shape is unmeasurable and a free one can
    #: grow into a sky-like sheet that takes light from its neighbours (0 disables)
    shape_min_snr: float = 0.0
    #: sources (stars and galaxies) whose start S/N (as for ``shape_min_snr``) is below this keep
    #: their start position: a faint source's flux may go negative, but its position must not
    #: wander onto noise or a neighbour's residual (0 disables)
    pos_min_snr: float = 0.0
    #: a galaxy whose free shape ran away (Re beyond RUNAWAY_RE x its start) or ended at a bound
    #: of Re or n is fitted once more with its start (catalog) shape held: forced photometry with
    #: the catalog's shape is a measurement, a runaway is not (``SourceResult.shape_fallback``);
    #: repeated (up to engine.fit.FALLBACK_ROUNDS refits) for neighbours that run away in a refit
    shape_fallback: bool = True
    #: a galaxy's flux errors times sqrt(reduced chi^2) of the residual under its own profile,
    #: when that is significantly above 1 (the model does not describe it)
    residual_error_scale: bool = True
    #: fractional error of the PSF model's wing (where it is below flux_errors.WING_LEVEL of its peak): each
    #: source's ``wing_errs`` is the flux error its neighbouring stars' wing light under it
    #: brings with that error (0: none)
    psf_wing_error: float = 0.0

    def __post_init__(self):
        if self.flux_error_model not in FLUX_ERROR_MODELS:
            raise ValueError(f"flux_error_model must be one of {FLUX_ERROR_MODELS}, got {self.flux_error_model!r}")
        if int(self.n_opt_iters) < 1:
            raise ValueError(f"n_opt_iters must be >= 1, got {self.n_opt_iters}")


@dataclass
class SourceResult:
    kind: str
    x: float
    y: float
    fluxes: np.ndarray
    flux_errs: np.ndarray
    re: float = np.nan
    ab: float = np.nan
    phi_deg: float = np.nan
    sersic_n: float = np.nan
    #: per band, the flux error from the PSF-wing error of the neighbouring stars
    #: (FitOptions.psf_wing_error); not in ``flux_errs`` (a systematic, like the PSF term)
    wing_errs: np.ndarray | None = None
    #: (nb, 3) signed flux responses to a unit fractional error of the neighbouring stars' inner
    #: and outer wings and of the subtracted halos (flux_errors.neighbour_wing_responses);
    #: ``wing_errs`` is flux_errors.wing_errors of them at psf_wing_error
    wing_resp: np.ndarray | None = None
    #: a Sersic source with a free index: per band (cov(flux, ln n), var(ln n)), both inflated
    #: as the flux errors are (None otherwise)
    lnn_cov: np.ndarray | None = None
    stalled: list = field(default_factory=list)
    #: shape (and Sersic n) held at the start: flux S/N below FitOptions.shape_min_snr, or a
    #: shape fallback
    shape_fixed: bool = False
    #: bands (names) in which the source has no unmasked pixel (flux kept at its start, error nan)
    no_data_bands: list = field(default_factory=list)
    #: per-source convergence of the final stage: True when the patch converged, or when this
    #: source's share of the remaining Gauss-Newton gain is below max(dlnp_stop, ln p noise floor);
    #: None = not assessed (e.g. the Tractor backend): use the patch's ``converged``
    converged: bool | None = None
    #: that share (ln p units; 0 when the patch converged; nan when not assessed)
    remaining_dlnp: float = np.nan
    #: why the final model is not trusted although the optimizer stopped (each makes
    #: ``converged`` False): "re>5xstart", "flux<-5sigma:{band}", "flux>3xaperture:{band}"
    runaway: list = field(default_factory=list)
    #: position held at the start: start S/N below FitOptions.pos_min_snr
    pos_held: bool = False
    #: the free shape ran away or ended at a bound of Re or n; the source was refitted with its
    #: start shape held (``shape_fixed`` is then True too; FitOptions.shape_fallback), or, when
    #: only its Sersic index reached the upper bound, with the index held (``index_held``)
    shape_fallback: bool = False
    #: Sersic index held at engine.fit.FALLBACK_INDEX by a shape fallback, the shape free
    index_held: bool = False


@dataclass
class FitResult:
    sources: list
    niters: int = 0
    converged: bool = False
    hit_max_iters: bool = False
    last_dlnp: float = np.nan
    stages: list = field(default_factory=list)
    sky: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chi2: float = np.nan
    lnp: float = np.nan
    bands: list = field(default_factory=list)
    per_band: dict = field(default_factory=dict)
    #: pixel count with invvar > 0 (chi2 / npix_used = chi2 per pixel)
    npix_used: int = 0
    _models: list | None = None

    def model_images(self) -> list:
        """Model + sky per band at the final parameters."""
        if self.per_band:
            return [m for r in self.per_band.values() for m in r.model_images()]
        return list(self._models or [])
