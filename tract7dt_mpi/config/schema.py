"""Every configuration key of tract7dt-mpi: type, default, unit and a one-line meaning.

This module is the single source of defaults. Each section is a frozen
dataclass whose attribute names are the YAML key names; each field's ``metadata`` carries the
value kind used by the loader (``kind``), the unit, the doc line, and optional value rules
(``null``, ``choices``, ``ge``/``gt``/``le``, ``length``, ``legacy`` notice text).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Value kinds understood by the loader (see loader._check_value):
#   bool, int, float, str, path, workers ("auto" or int), enum, floats / ints / strs (lists)
KIND_TEXT = {
    "bool": "bool", "int": "int", "float": "float", "str": "str", "path": "path",
    "workers": 'int or "auto"', "enum": "str", "floats": "list of float",
    "ints": "list of int", "strs": "list of str",
}


def K(default, kind, unit, doc, *, null=False, choices=None, ge=None, gt=None, le=None,
      length=None, legacy=None, fallback=None):
    """Declare one config key (a dataclass field carrying its loader metadata)."""
    meta = dict(kind=kind, unit=unit, doc=doc, null=null, choices=choices, ge=ge, gt=gt, le=le,
                length=length, legacy=legacy, fallback=fallback)
    return field(default=default, metadata=meta)


def type_text(meta) -> str:
    """Human-readable type of a key, e.g. ``float or null`` or ``one of dev|exp``."""
    if meta["kind"] == "enum":
        text = "one of " + "|".join(meta["choices"])
    else:
        text = KIND_TEXT[meta["kind"]]
    if meta["length"]:
        text += f" (length {meta['length']})"
    return text + (" or null" if meta["null"] else "")


_PX, _NONE = "px", ""
_NOT_MPI = "has no effect under MPI"


@dataclass(frozen=True)
class Inputs:
    tile_name: str = K("your_tile_name", "str", _NONE, "Free label for the field; no effect on processing.")
    input_catalog: str = K("path/to/input_catalog.csv", "path", _NONE,
                           "Source list CSV to fit (relative to the YAML file's folder).")
    image_list_file: str = K("path/to/image_list.txt", "path", _NONE,
                             "Text file naming one FITS image per line (optionally path[HDU], then weight=/rms=/psf= fields for "
                             "its weight map and PSFEx model; see the Inputs page); entries resolve against the YAML folder.")
    gaiaxp_synphot_csv: str | None = K("path/to/gaiaxp_synphot.csv", "path", _NONE,
                                       "GaiaXP synthetic photometry CSV (ePSF seeds, augmentation, ZP); "
                                       "null or missing file = skip those uses.", null=True)


@dataclass(frozen=True)
class Outputs:
    work_dir: str = K("path/to/work_dir", "path", _NONE,
                      "Root of all products (relative to the YAML folder); created if absent.")
    epsf_dir: str = K("EPSFs", "path", _NONE, "ePSF tree {band}/{rNN_cNN}/ and epsf_summary.json (under work_dir).")
    patches_dir: str = K("patches", "path", _NONE, "patches.csv and patches.json (under work_dir).")
    patch_inputs_dir: str = K("patch_payloads", "path", _NONE, "Per-patch input products (under work_dir).")
    patch_results_dir: str = K("outputs", "path", _NONE, "Per-patch result folders and run_summary.csv (under work_dir).")
    tractor_out_dir: str = K("outputs", "path", _NONE, "Legacy name of outputs.patch_results_dir; used as it when that is not set.")
    final_catalog: str = K("output_catalog.csv", "path", _NONE, "Merged catalog; rewritten in place by the ZP stage.")
    cropped_images_dir: str = K("cropped_images", "path", _NONE, "White-stack crop plots (under work_dir).")
    overlay_dir: str = K("overlay", "path", _NONE, "White-stack overlay plots (under work_dir).")
    results_h5: str = K("results.h5", "path", _NONE, "MPI-era: HDF5 results store written by all ranks (under work_dir).")
    journal: str = K("journal.jsonl", "path", _NONE, "MPI-era: append-only task journal used by --resume (under work_dir).")


@dataclass(frozen=True)
class ImageScaling:
    zp_ref: float = K(25.0, "float", "AB mag", "Common zero point; images are scaled by 10^(-0.4 (ZP_AUTO - zp_ref)).")


@dataclass(frozen=True)
class Crop:
    enabled: bool = K(True, "bool", _NONE, "Trim a border from every frame; outside sources get excluded_crop.")
    margin: int = K(32, "int", _PX, "Border width on every side; kept box [margin, W-margin) x [margin, H-margin). MPI-era default 32 = half the ePSF star stamp (epsf.cutout_size // 2) + 2: sources closer to the edge than a PSF stamp are excluded, the rest are fitted (the serial pipeline's 500 dropped ~25 % of a 9576 x 6388 tile). Raise it when the frame edges are bad (e.g. low-coverage stack borders).", ge=0)
    plot_pre_crop: bool = K(True, "bool", _NONE, "Write white_before_crop.png with the kept box drawn.")
    plot_post_crop: bool = K(True, "bool", _NONE, "Write white_after_crop.png.")
    display_downsample: int = K(4, "int", "factor", "Pixel stride of the pre-crop plot.", ge=1)
    post_crop_display_downsample: int = K(4, "int", "factor", "Pixel stride of the post-crop plot.", ge=1)


@dataclass(frozen=True)
class Overlay:
    enabled: bool = K(True, "bool", _NONE, "Write white_overlay.png of the catalog on the white stack.")
    downsample_full: int = K(4, "int", "factor", "Pixel stride of the full overlay.", ge=1)
    zoom_enabled: bool = K(True, "bool", _NONE, "Also write white_overlay_zoom.png (failures only warn).")
    zoom_box: tuple = K((4000, 5000, 4000, 5000), "ints", "px [x0, x1, y0, y1]",
                        "Zoom region in the working (post-crop) frame.", length=4)


@dataclass(frozen=True)
class WcsTolerance:
    crval: float = K(1e-6, "float", "deg", "Absolute tolerance on CRVAL.", ge=0)
    crpix: float = K(1e-6, "float", _PX, "Absolute tolerance on CRPIX.", ge=0)
    cd: float = K(1e-9, "float", "deg/px", "Absolute tolerance on CD (or PC) elements.", ge=0)
    cdelt: float = K(1e-9, "float", "deg/px", "Absolute tolerance on CDELT (when neither WCS has CD).", ge=0)


@dataclass(frozen=True)
class Checks:
    require_wcs_alignment: bool = K(True, "bool", _NONE, "Every image's WCS must match the first image's.")
    wcs_tolerance: WcsTolerance = field(default_factory=WcsTolerance, metadata=dict(kind="section"))
    require_same_shape: bool = K(True, "bool", _NONE, "All images must share one (NAXIS2, NAXIS1).")


@dataclass(frozen=True)
class SourceSaturationCut:
    enabled: bool = K(True, "bool", _NONE, "Flag sources with a saturated pixel within radius_pix (excluded_saturation).")
    radius_pix: float = K(20.0, "float", _PX, "Disk radius around the rounded source pixel.", ge=0)
    require_all_bands: bool = K(False, "bool", _NONE, "false: any band saturated flags; true: every band must be.")
    saturation_divisor: float = K(1.3, "float", _NONE, "Pixel is saturated when raw >= SATURATE / saturation_divisor.", gt=0)


@dataclass(frozen=True)
class BrightMask:
    enabled: bool = K(True, "bool", _NONE, "Mask bright white-stack detections that have no catalog counterpart.")
    match_radius_pix: float = K(3.0, "float", _PX, "A detection this close to an active source is matched (not masked).", ge=0)
    ellipse_scale: float = K(3.0, "float", _NONE, "Multiplier on SEP a, b for each unmatched detection's ellipse.", gt=0)
    min_radius_pix: float = K(6.0, "float", _PX, "Floor on the mask ellipse radii.", ge=0)
    dilate_pix: int = K(1, "int", _PX, "Binary dilation applied to the final ellipse mask.", ge=0)
    thresh_sigma: float = K(5.0, "float", "sigma", "MPI-era: SEP detection threshold relative to the white-stack sigma.", gt=0)
    minarea: int = K(25, "int", _PX, "MPI-era: SEP minimum connected area of a detection.", ge=1)
    deblend_nthresh: int = K(32, "int", _NONE, "MPI-era: SEP number of deblending thresholds.", ge=1)
    deblend_cont: float = K(0.005, "float", _NONE, "MPI-era: SEP minimum contrast ratio for deblending.", ge=0, le=1)


@dataclass(frozen=True)
class Logging:
    ignore_warnings: bool = K(True, "bool", _NONE, "Silence Python warnings output (all commands).")
    level: str = K("INFO", "enum", _NONE, "Log level; an unknown name falls back to INFO.",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), fallback="INFO")
    file: str | None = K("auto", "path", _NONE,
                         '"auto" = {work_dir}/{command}.log; a path is relative to work_dir; null = console only.',
                         null=True)
    format: str = K("%(asctime)s | %(name)s | %(levelname)s | %(message)s", "str", _NONE,
                    "Log line layout (Python logging syntax).")


@dataclass(frozen=True)
class Plotting:
    dpi: int = K(300, "int", "dpi", "Resolution of every PNG.", ge=1)
    level: str = K("summary", "enum", _NONE,
                   "MPI-era: which diagnostic PNGs are written. none = no PNG at all; summary = only "
                   "summary/ (per band: ePSF FWHM and ellipticity maps over the cells with example ePSF "
                   "stars; per tile: data/model/residual images), drawn as tasks by all ranks after the "
                   "merge, a few % of a run; full = summary/ plus every diagnostic PNG of the serial "
                   "pipeline (crop, overlay, bright mask, Gaia and ZP plots on rank 0, per-cell ePSF and "
                   "per-patch PNGs; several times the cost of the fits on small tiles). The finer "
                   "switches (the epsf save_* switches, patch_run.no_cutouts and no_patch_overview, the crop "
                   "plot switches, overlay) only turn plots off within the chosen level, never on beyond it.",
                   choices=("none", "summary", "full"))


@dataclass(frozen=True)
class Performance:
    frame_prep_workers: object = K("auto", "workers", "threads", "Legacy thread count for reading frames.",
                                   legacy=f"{_NOT_MPI}; frames are prepared by the MPI ranks")
    white_stack_workers: object = K("auto", "workers", "threads", "Legacy thread count for white-stack chunks.",
                                    legacy=f"{_NOT_MPI}; the white stack is built by the MPI ranks")


@dataclass(frozen=True)
class Epsf:
    use_gaiaxp: bool = K(True, "bool", _NONE, "Seed PSF stars from the GaiaXP CSV.")
    epsf_ngrid: int = K(7, "int", _NONE, "Working frame split into epsf_ngrid x epsf_ngrid ePSF cells per band.", ge=1)
    ngrid: int = K(6, "int", _NONE, "Each ePSF cell split into ngrid x ngrid fitting patches.", ge=1)
    skip_empty_epsf_patches: bool = K(True, "bool", _NONE, "Only cells with an active in-frame source get ePSFs and patches.")
    thresh_sigma: float = K(10.0, "float", "sigma", "SEP detection threshold for PSF candidates.", gt=0)
    minarea: int = K(25, "int", _PX, "SEP minimum connected area for PSF candidates.", ge=1)
    cutout_size: int = K(61, "int", _PX, "Star stamp side for the ePSF builder.", ge=3)
    edge_pad: int = K(10, "int", _PX, "Extra clearance from the frame edge beyond cutout_size//2 for a PSF star; a cell also reads this margin (cutout_size//2 + edge_pad) of the frame around itself, so that its stars near its own edges have whole stamps.", ge=0)
    min_sep: float = K(30.0, "float", _PX, "Minimum distance between selected stars.", ge=0)
    max_stars: int = K(30, "int", _NONE, "Cap on selected stars per cell.", ge=1)
    q_range: tuple = K((0.7, 1.3), "floats", _NONE, "Accepted SEP a/b range [lo, hi].", length=2)
    psfstar_mode: str = K("sep+gaia", "enum", _NONE, "Star selection: sep, gaia or sep+gaia (Gaia seeds first).",
                          choices=("sep", "gaia", "sep+gaia"), fallback="sep+gaia")
    gaia_mag_min: float = K(10.0, "float", "AB mag", "Brightest mag_{band} accepted for Gaia seeds.")
    gaia_mag_max: float = K(30.0, "float", "AB mag", "Faintest mag_{band} accepted for Gaia seeds.")
    gaia_snap_to_sep: bool = K(True, "bool", _NONE, "Move a Gaia seed to the nearest unused SEP candidate within gaia_match_r_pix.")
    gaia_forced_k_fwhm: float = K(1.5, "float", _NONE, "Forced-aperture radius = k x FWHM (pix).", gt=0)
    gaia_forced_rmin_pix: float = K(3.0, "float", _PX, "Lower clamp on the forced-aperture radius.", ge=0)
    gaia_forced_rmax_pix: float = K(15.0, "float", _PX, "Upper clamp on the forced-aperture radius (also <= cutout_size//2 - 2).", ge=0)
    gaia_snr_min: float = K(20.0, "float", _NONE, "Minimum forced-aperture S/N for a Gaia seed.")
    gaia_match_r_pix: float = K(5.0, "float", _PX, "Snap / seen-by-SEP radius for Gaia seeds.", ge=0)
    gaia_seed_sat_r: int = K(5, "int", _PX, "Half-size of the box that must stay below saturation for a Gaia seed.", ge=0)
    gaia_seed_sat_div: float = K(1.3, "float", _NONE, "Seed/peak saturation threshold = SATURATE*scale / gaia_seed_sat_div.", gt=0)
    star_sat_check_r: int | None = K(None, "int", _PX, "Half-size of the stamp box checked for saturated pixels; null = cutout_size // 2.",
                                     null=True, ge=0)
    oversamp: int = K(1, "int", "factor", "ePSF builder oversampling.", ge=1)
    maxiters: int = K(30, "int", _NONE, "ePSF builder iterations.", ge=1)
    do_clip: bool = K(True, "bool", _NONE, "Sigma-clip (5 sigma) in the ePSF builder.")
    combine: str = K("weighted_mean", "enum", _NONE,
                     "How the ePSF stack reduces the registered star stamps each pass: weighted_mean (inverse "
                     "variance from the sky sigma plus the Poisson noise of the current model, so faint "
                     "stars add little noise; sigma-clipped) or median (unweighted, like the serial pipeline's "
                     "photutils stack).",
                     choices=("weighted_mean", "median"))
    wing_tail: bool = K(True, "bool", _NONE,
                        "MPI-era: beyond the first ring (outside 1.5 FWHM) whose pixels are below 3x their "
                        "scatter, replace the saved ePSF by a circular Moffat fitted to its ring means (meta "
                        "'wings'). The stacked wing pixels are noise (~1e-4 of the flux); times a bright "
                        "star's flux that noise is a residual pattern neighbours absorb. false = the "
                        "builder's stamp as is.")
    recenter_boxsize: int = K(9, "int", _PX, "ePSF builder recentering box.", ge=1)
    bright_wing: bool = K(True, "bool", _NONE,
                          "MPI-era: measure each band's outer PSF wing (a power law beyond the field's wing "
                          "radius) and its light beyond the stamp on the band's brightest stars: the "
                          "saturated detections no catalogue row matches, then the catalogue's stars, "
                          "saturated ones included (stages.psf_wing), instead of extrapolating the field's "
                          "Moffat tail; the field keeps its own tail when fewer than 3 stars show a wing. "
                          "patch_run.epsf_interpolation: field only.")
    bright_wing_radius_fwhm: float = K(25.0, "float", "FWHM",
                                       "MPI-era: outer radius of the rings measured around each bright star "
                                       "for epsf.bright_wing (a candidate with a brighter one inside it is "
                                       "skipped).", gt=3.0)
    star_halos: bool = K(True, "bool", _NONE,
                         "MPI-era: subtract the halos of bright stars beyond the PSF stamp from the patch "
                         "images before the fit (stages.star_halos): each bright catalogue star or unmatched "
                         "saturated detection whose halo at the stamp's edge exceeds 1 % of the sky sigma gets "
                         "its total flux from its own far rings and the band's bright-star wing, and its "
                         "light beyond its stamp square, which no model holds, is taken off every patch it "
                         "reaches (out to 0.2 % of the sky sigma). Needs epsf.bright_wing.")
    field_degree: int = K(2, "int", _NONE, "MPI-era: highest total degree in (x, y) of the band's polynomial PSF field (patch_run.epsf_interpolation: field); lowered while the band has fewer than 3 ePSF stars per polynomial term (degree 2: 18 stars, 1: 9).", ge=0, le=4)
    cell_cores: bool = K(True, "bool", _NONE,
                         "MPI-era: correct the band's PSF field's core (within 2.5-3.5 FWHM) cell by cell "
                         "where the ePSF cell's stars (>= 3) show it does not follow the PSF: the mean "
                         "residual of the cell's stars, shrunk by its significance (James-Stein), over "
                         "the whole cell (stages.psf_local). A co-add's PSF can "
                         "change abruptly (a strip from other exposures), which a polynomial cannot "
                         "follow. patch_run.epsf_interpolation: field only.")
    band_offsets: bool = K(True, "bool", _NONE,
                           "MPI-era: measure each band's registration offset from the other bands (a "
                           "polynomial of position of degree <= epsf.field_degree, 4 stars per term) on the ePSF stars' "
                           "centres and shift the band's PSF field by it, so that a source's one fitted "
                           "position fits every band (stages.band_offsets). Bands resampled onto one grid "
                           "from separately calibrated exposures are off by 0.1-0.5 px; a point source's "
                           "flux in a band off by d px comes out low by about d^2 / (4 sigma^2) "
                           "(sigma = FWHM / 2.355). patch_run.epsf_interpolation: field only.")
    final_psf_size: int = K(55, "int", _PX, "Centre-crop size of the saved ePSF; also sets the patch halo.", ge=1)
    save_star_montage_max: int = K(100, "int", _NONE, "Stars shown in used_stars.png / extracted_stars.png.", ge=0)
    background_subtract_patch: bool = K(True, "bool", _NONE, "Fit and remove a SEP background map per cell.")
    background_boxsize: int = K(96, "int", _PX, "SEP background mesh size (floor 8).", ge=1)
    background_filtersize: int = K(9, "int", _NONE, "SEP background filter size (floor 1).", ge=1)
    background_source_mask_sigma: float = K(3.0, "float", "sigma", "Pixels above median + N*sigma are masked for the background fit.")
    background_mask_dilate: int = K(1, "int", "iterations", "8-connected dilation steps of that source mask.", ge=0)
    star_local_bkg_subtract: bool = K(True, "bool", _NONE, "Subtract a per-star annulus median from each stamp.")
    star_local_bkg_annulus_rin_pix: float = K(20.0, "float", _PX, "Local-background annulus inner radius.", ge=0)
    star_local_bkg_annulus_rout_pix: float = K(30.0, "float", _PX, "Local-background annulus outer radius.", ge=0)
    star_local_bkg_sigma: float = K(3.0, "float", "sigma", "Sigma-clip level for annulus values.", gt=0)
    star_local_bkg_minpix: int = K(30, "int", _PX, "Minimum usable annulus pixels, else local background = 0.", ge=0)
    save_patch_background_diagnostics: bool = K(True, "bool", _NONE, "Write background_diagnostics.png.")
    save_star_local_background_diagnostics: bool = K(True, "bool", _NONE, "Write star_local_background_diagnostics.png (costly).")
    diagnostics_show_colorbar: bool = K(True, "bool", _NONE, "Colorbars on the background diagnostics.")
    save_growth_curve: bool = K(True, "bool", _NONE, "Write epsf_growth_curve.png.")
    save_residual_diagnostics: bool = K(True, "bool", _NONE, "Write epsf_residual_diagnostics.png and residual QA in meta.")
    residual_diag_max_stars: int = K(100, "int", _NONE, "Stars used for residual stacks.", ge=0)
    parallel_bands: bool = K(True, "bool", _NONE, "Legacy switch for building bands concurrently.",
                             legacy=f"{_NOT_MPI}; ePSF (band, cell) tasks are always spread over the MPI ranks")
    max_workers: object = K("auto", "workers", "processes", "Legacy band-pool size.",
                            legacy=f"{_NOT_MPI}; ePSF tasks are spread over the MPI ranks")


@dataclass(frozen=True)
class Patches:
    halo_pix_min: int = K(20, "int", _PX, "Halo = max((final_psf_size - 1)//2 + 2, halo_pix_min).", ge=0)
    big_source_re_factor: float = K(4.0, "float", "Re", "MPI-era: a galaxy's extent is this many half-light radii (the catalogue's Re; with patches.big_source_from_light also the half-light radius of its light on the white stack; 4 Re holds 99 % of an exponential's light): a patch whose ROI does not hold the extent of one of its own (base) galaxies, plus the halo, is grown to hold it, and the sources inside are fitted with it, so a galaxy larger than a patch is fitted whole. 0 disables.", ge=0)
    big_source_from_light: bool = K(False, "bool", _NONE, "MPI-era: rows without a catalogue Re (not typed STAR) take their extent from the half-light radius of the light around them on the white stack. That radius includes the neighbours' light: on a crowded real field (KiDS, no Re column) it grew 432 of 859 ROIs, the largest to 797 px, and the fit time with them; so it is off unless asked for.")
    max_roi_pix: int = K(1536, "int", _PX, "MPI-era: largest side of a grown ROI (memory and time of one patch fit grow with its area); a galaxy larger than that is fitted in a ROI of this side centred on it.", ge=64)


@dataclass(frozen=True)
class PatchInputs:
    save_patch_inputs: bool = K(True, "bool", _NONE, "Legacy (serial tract7dt), ignored: `run` fits every patch from the prepared store and `build-patch-inputs` writes the per-patch payloads.",
                                legacy="is ignored: `run` fits every patch from the prepared store; "
                                       "the per-patch payloads are written by `build-patch-inputs`")
    skip_empty_patch: bool = K(True, "bool", _NONE, "Patches without base sources are neither built nor fitted.")
    include_wcs_in_payload: bool = K(False, "bool", _NONE, "Legacy: store full and ROI WCS per band.",
                                     legacy="is ignored; no WCS is stored in the patch inputs")
    max_workers: int = K(16, "int", "threads", "Legacy writer thread count.", ge=1,
                         legacy=f"{_NOT_MPI}; each rank writes the patches it owns")
    gzip_compresslevel: int = K(1, "int", _NONE, "Legacy compression level 1-9 for patch input products.", ge=1, le=9,
                                legacy="is ignored; patch inputs are written as uncompressed .npz")
    keep_payloads_in_memory: bool = K(False, "bool", _NONE, "Legacy: keep built patch inputs in RAM.",
                                      legacy=f"{_NOT_MPI}; each rank builds the inputs of the patches it fits")


@dataclass(frozen=True)
class PatchRun:
    enable_multi_band_simultaneous_fitting: bool = K(True, "bool", _NONE,
                                                     "true: one fit over all bands; false: independent fit per band.")
    enable_staged_fit: bool = K(True, "bool", _NONE, "Three stages: positions frozen, positions only, all.")
    pos_max_shift_pix: float | None = K(3.0, "float", _PX, "Box bound on each position around its catalog position; null = off. "
                                        "MPI-era default 3 (the original left it unset): forced photometry keeps a source at its catalog "
                                        "position, and an unbounded faint galaxy can walk onto a bright neighbour and turn into a "
                                        "negative correction of that star's PSF residual (it is then flagged bound_stalled).",
                                        null=True, gt=0)
    python_exe: str = K("python", "str", _NONE, "Legacy interpreter for patch subprocesses.",
                        legacy=f"{_NOT_MPI}; patches are fitted inside the MPI ranks")
    resume: bool = K(False, "bool", _NONE, "Skip patches already done (same as the --resume option).")
    max_workers: int = K(32, "int", "processes", "Legacy subprocess pool size.", ge=1,
                         legacy=f"{_NOT_MPI}; the number of fitting ranks is the MPI world size")
    threads_per_process: int = K(1, "int", "threads", "Legacy thread count per fitter; used as mpi.threads_per_rank when that is not set.",
                                 ge=1)
    gal_model: str = K("exp", "enum", _NONE, "Model for TYPE missing/unknown/GAL.", choices=("dev", "exp", "sersic", "star"))
    n_opt_iters: int = K(20, "int", _NONE, "Max optimizer steps (per patch, per band in single-band mode, per stage).", ge=1)
    dlnp_stop: float = K(1e-6, "float", _NONE, "Converged when a step's delta ln p is below this.", ge=0)
    r_ap: float = K(5.0, "float", _PX, "Aperture radius for initial fluxes.", gt=0)
    eps_flux: float = K(1e-4, "float", "scaled counts", "Floor on every initial flux.")
    sersic_n_init: float = K(3.0, "float", _NONE, "Initial Sersic index when SERSIC_n is missing.", gt=0)
    re_fallback_pix: float = K(3.0, "float", _PX, "Initial Re when Re is missing or NaN.", gt=0)
    psf_model: str = K("pixelized", "enum", _NONE, "PSF form when a usable ePSF exists.",
                       choices=("pixelized", "hybrid", "gaussian_mixture_from_stamp"))
    psf_fallback_model: str = K("moffat", "enum", _NONE, "PSF form when the ePSF is missing or has too few stars.",
                                choices=("moffat", "ncircular_gaussian", "gaussian_mixture"))
    min_epsf_nstars_for_use: int = K(2, "int", _NONE, "Reject an ePSF built from fewer stars (0 disables).", ge=0)
    psf_source: str = K("epsf", "enum", _NONE,
                        "MPI-era: where a patch's PSF stamp comes from: epsf (built from the image's own stars) "
                        "or psfex (the image's PSFEx model evaluated at the patch centre; one .psf file per image, "
                        "from the image-list field psf=FILE or the header key PSFFILE). The stamp is then used "
                        "as psf_model says, like an ePSF.", choices=("epsf", "psfex"))
    epsf_interpolation: str = K("field", "enum", _NONE,
                                "ePSF of a patch: field (the band's polynomial PSF field, fitted like "
                                "PSFEx to the registered stamps of all the band's ePSF stars, degree "
                                "epsf.field_degree, evaluated at the patch centre; follows a PSF that "
                                "changes non-linearly over the frame and serves cells without stars), "
                                "bilinear (interpolated at the patch centre between the "
                                "ePSFs of the up to 4 cells whose centres surround it, following PSF "
                                "changes across the field; extrapolated linearly beyond the outermost cell "
                                "centres) or cell (its own cell's ePSF, as the serial pipeline). Under "
                                "bilinear and cell a patch whose cell has no usable ePSF takes the "
                                "nearest cells that have one.",
                                choices=("field", "bilinear", "cell"))
    ncircular_gaussian_n: int = K(3, "int", _NONE, "Components of the ncircular_gaussian fallback (1, 2 or 3).", ge=1, le=3)
    hybrid_psf_n: int = K(9, "int", _NONE, "Gaussians in the hybrid PSF's mixture approximation.", ge=1)
    gaussian_mixture_n: int = K(4, "int", _NONE, "Components of the Gaussian mixture fitted to a stamp.", ge=1)
    fallback_default_fwhm_pix: float = K(4.0, "float", _PX, "FWHM when header PEEING/SEEING is unusable (floored at 1 px).", gt=0)
    fallback_stamp_radius_pix: float = K(25.0, "float", _PX, "Half-size of the synthetic stamp for the gaussian_mixture fallback.", gt=0)
    cutout_size: int = K(100, "int", _PX, "Side of per-source montage cutouts.", ge=1)
    cutout_max_sources: int | None = K(None, "int", _NONE, "Max montages per patch; null = all.", null=True, ge=0)
    cutout_start: int = K(0, "int", _NONE, "Skip montages for in-patch index below this.", ge=0)
    cutout_data_p_lo: float = K(1.0, "float", "percentile", "Display stretch low, data panel.", ge=0, le=100)
    cutout_data_p_hi: float = K(99.0, "float", "percentile", "Display stretch high, data panel.", ge=0, le=100)
    cutout_model_p_lo: float = K(1.0, "float", "percentile", "Display stretch low, model panel.", ge=0, le=100)
    cutout_model_p_hi: float = K(99.0, "float", "percentile", "Display stretch high, model panel.", ge=0, le=100)
    cutout_resid_p_abs: float = K(99.0, "float", "percentile", "Residual panel limits from this percentile of |residual|.", ge=0, le=100)
    no_cutouts: bool = K(False, "bool", _NONE, "Disable per-source montages.")
    no_patch_overview: bool = K(False, "bool", _NONE, "Disable patch_overview.png.")
    flag_maxiter_margin: int = K(0, "int", _NONE, "opt_hit_max_iters when not converged and niters >= max(1, n_opt_iters - margin).", ge=0)
    engine: str = K("native", "enum", _NONE, "MPI-era: fitting engine, native (numpy/scipy) or tractor (if installed).",
                    choices=("native", "tractor"))
    re_max_factor: float = K(0.0, "float", "factor", "MPI-era: when > 1, a galaxy with a catalog Re keeps its fitted Re within [Re / f, Re x f] (forced photometry with trusted catalog shapes): stops a galaxy next to a bright star from growing to absorb the star's wings, but biases galaxies whose catalog Re is off by more than f. 0 (default) = the global bounds [0.1, 1000] px only.", ge=0)
    shape_fit_min_snr: float = K(10.0, "float", "S/N", "MPI-era: a galaxy whose flux S/N (all bands combined, at the start of the fit) is below this keeps its catalog shape and Sersic n (only position and fluxes are fitted; column fit_shape_fixed); a free shape at low S/N is unmeasured and can grow into a sky-like sheet. 0 fits every shape.", ge=0)
    flux_error_model: str = K("total", "enum", _NONE, "MPI-era: model of the reported FLUXERR (the fit always weights by the sky sigma): total = sky + the source's own Poisson noise from the fitted model and EGAIN + the band's PSF-model error (the fraction of flux the ePSF misses on its own stars beyond their noise, added in quadrature; bands fitted with an ePSF); sky = sky only, as the original.",
                              choices=("total", "sky"))
    flux_error_marginal: bool = K(True, "bool", _NONE, "MPI-era: FLUXERR (and FLUXERR_STAT) marginalised over the source's free position, shape and Sersic index (the fluxes' covariance from the full Gauss-Newton matrix, not at fixed shape): a galaxy's flux trades against its radius and index, and on GalSim noise draws errors at fixed shape were 0.56 (EXP) to 0.29 (DEV, SERSIC) of the fluxes' scatter, the marginal ones 0.83-0.91. false = errors at the fitted shape, as the Tractor reports them.")
    flux_error_residual_scale: bool = K(True, "bool", _NONE, "MPI-era: a galaxy's FLUXERR (and FLUXERR_STAT) in a band is multiplied by sqrt(reduced chi^2) of the residual under its own fitted profile when that is more than 3 sigma above 1: a profile that does not describe the galaxy (a Sersic index or a bulge the model lacks, a neighbour's misfit on it) leaves a residual the statistical errors do not include. Stars keep the band's PSF term instead. false = statistical errors only.")
    flux_error_psf_wing: float = K(0.05, "float", "fraction", "MPI-era: fractional error of a star's PSF wing (its model where below 5 % of its peak) and of the bright stars' subtracted halos, carried into the FLUXERR (not FLUXERR_STAT) of every source on that light (column FLUXERR_WING): a galaxy or star beside a bright star fits part of the wing's error, which its statistical error does not hold. Each source's response to that error (the patch's Gauss-Newton solve: fluxes, sky and the free shapes, which take such light in too) is added in quadrature. The stars' inner (0.5-5 % of the peak) and outer wing errors of a band fitted with an ePSF are measured at merge on its bright fitted stars (the residual in 8 sectors of each ring of their own wings; psf_flux_errors.csv) and replace this value there; it stays for the halos and for bands with fewer than 5 usable bright stars. 0 = off.", ge=0, le=1)
    model_selection: str = K("untyped", "enum", _NONE, "MPI-era: which rows get a fitted model choice among PSF, EXP, DEV and SERSIC: after the patch's first fit each such source is fitted alone as each model on its footprint (neighbours' models subtracted), the simplest model is kept unless a richer one improves chi^2 (all bands, penalised by its parameter count) by more than model_selection_dchisq (and, galaxy over point source, 1 % of the point source's improvement; SERSIC over EXP/DEV, 0.1 % of the EXP/DEV improvement, or a total flux more than 2 % different from the EXP/DEV one), and the patch is refitted with the choices (columns stype_fit, dchisq_PSF/EXP/DEV/SER, flag_model_close). untyped = rows without a usable TYPE (first fitted as gal_model); all = every row, ignoring TYPE; off = no choice: untyped rows stay gal_model, as the serial pipeline.",
                             choices=("untyped", "all", "off"))
    model_selection_dchisq: float = K(9.0, "float", "chi^2", "MPI-era: chi^2 improvement (all bands, after a penalty of one per non-flux parameter) a galaxy must bring over a point source, and SERSIC over the better of EXP and DEV, to be chosen by model_selection; a choice with a decision within 4 in chi^2 of its boundary is tagged model_close.", ge=0)
    galaxy_flux: str = K("total", "enum", _NONE, "MPI-era: what FLUX_{band}_fit of an EXP, DEV or SERSIC source is: total = the total flux of the fitted profile integrated to infinity (the engine's mixtures are tapered at 4 or 8 re, as the Tractor's; their flux times 1.015 (exp), 1.062 (dev), 1.01-1.11 (Sersic n = 0.5-6), for exp and dev divided by that factor's bias at the galaxy's size over the PSF FWHM (1.2-1.8 % for barely resolved galaxies, whose tail the fit takes in); column flux_total_factor); truncated = the tapered mixture's flux, the Tractor convention, for comparisons with Tractor catalogues. Point-source and galaxy fluxes are in either case divided by the fraction of the PSF's total flux inside its stamp (column-free: ePSF meta psf_flux_in_stamp).",
                      choices=("total", "truncated"))
    sky: str = K("fit", "enum", _NONE, "MPI-era: the constant sky of each band and patch: fit = fitted freely (for images with a residual background); zero = held at 0 (sky-subtracted images: a fitted sky trades off against the extended light of big galaxies); prior = fitted with a Gaussian prior centred on 0 of width patch_run.sky_prior_sigma.",
                 choices=("fit", "zero", "prior"))
    sky_prior_sigma: float = K(0.01, "float", "sky sigma per pixel", "MPI-era: width of the sky prior of patch_run.sky = prior, in units of the band's sky noise per pixel (the median 1/sqrt(inverse variance) of the patch's unmasked pixels). The data measure the sky of N free pixels to about 1/sqrt(N) of that, so the prior matters when it is below ~1/sqrt(N) (0.01 for 10^4 pixels).", gt=0)
    pos_fit_min_snr: float = K(3.0, "float", "S/N", "MPI-era: a source (star or galaxy) whose flux S/N (all bands combined, at the start of the fit) is below this keeps its catalog position (only its fluxes are fitted): its flux may go negative, but it cannot walk onto a neighbour's residual or to the edge of its position box. Galaxies between this and shape_fit_min_snr keep a 0.5 px Gaussian prior on their position. 0 = off.", ge=0)
    fault_inject: tuple = K((), "strs", _NONE, "MPI-era, tests only: patch tags whose fit raises on purpose.")


@dataclass(frozen=True)
class MoffatPsf:
    fwhm_default_pix: float = K(4.0, "float", _PX, "Legacy; ignored.", gt=0,
                                legacy="is ignored; use patch_run.fallback_default_fwhm_pix")
    beta: float = K(3.5, "float", _NONE, "Moffat power index (> 1) of the fallback PSF of a band whose stars give none (each band's own beta, fitted to its stars at load, comes first).", gt=1)
    radius_pix: float = K(25.0, "float", _PX, "Moffat stamp half-size (side 2*ceil(r)+1).", gt=0)
    module_path: str | None = K(None, "path", _NONE, "Legacy; ignored.", null=True,
                                legacy="is ignored; the Moffat PSF is built in")


@dataclass(frozen=True)
class Merge:
    pattern: str = K("*_cat_fit.csv", "str", _NONE, "Glob of per-patch result tables (legacy file layout).")


@dataclass(frozen=True)
class Zp:
    enabled: bool = K(True, "bool", _NONE, "Run Gaia augmentation (after load) and zero points (after merge).")
    inject_gaia_sources: bool = K(True, "bool", _NONE, "Add unmatched Gaia stars as new STAR rows.")
    gaia_mag_min: float = K(8.0, "float", "mag (G)", "Bright cut on phot_g_mean_mag (inclusive).")
    gaia_mag_max: float = K(18.0, "float", "mag (G)", "Faint cut on phot_g_mean_mag (inclusive).")
    match_radius_arcsec: float = K(3.0, "float", "arcsec", "Sky match radius catalog <-> Gaia.", ge=0)
    min_box_size_pix: int = K(3000, "int", _PX, "Minimum side of the square Gaia selection box.", ge=0)
    clip_sigma: float = K(3.0, "float", "sigma", "MAD-based clip threshold.", gt=0)
    clip_max_iters: int = K(10, "int", _NONE, "Max clip iterations.", ge=0)
    zp_err_method: str = K("all_mad", "enum", _NONE, "ZP error propagated: all_mad (zp_err_mad) or bright_std (zp_err_std).",
                           choices=("all_mad", "bright_std"))
    zp_err_snr_min: float = K(100.0, "float", _NONE, "S/N cut for zp_err_std (halved, then quartered if < 10 stars).", ge=0)
    gaia_pos_err_pix: float | None = K(0.1, "float", _PX, "POS_ERR written on injected Gaia rows; null = not written.",
                                       null=True, ge=0)
    plot_mag_lo: float = K(12.0, "float", "mag", "x-axis lower limit of the constrained ZP plot.")
    plot_mag_hi: float = K(18.0, "float", "mag", "x-axis upper limit of the constrained ZP plot.")
    plot_zp_offset: float = K(0.5, "float", "mag", "y-range half-width around the median ZP.", gt=0)


@dataclass(frozen=True)
class Mpi:
    threads_per_rank: int = K(1, "int", "threads", "MPI-era: OMP/BLAS threads per rank (set before numpy is imported).", ge=1)
    heartbeat_sec: float = K(30.0, "float", "s", "MPI-era: interval of rank-0 progress lines.", gt=0)
    per_rank_logs: bool = K(False, "bool", _NONE, "MPI-era: ranks > 0 also log to work_dir/logs/{command}.rankNNNN.log.")
    prepared_store: str = K("prepared.h5", "path", _NONE, "MPI-era: HDF5 store of prepared working-frame images (under work_dir).")
    master_works: str = K("auto", "enum", _NONE, "MPI-era: rank 0 also runs tasks between dispatching (auto = when the world size is <= 8; true, false or auto).",
                          choices=("auto", "true", "false"))
    task_timeout_factor: float = K(10.0, "float", "x", "MPI-era: a task running longer than this many times its expected time (the 90th percentile of the wall times of the phase's finished tasks, or the task's estimated cost x the median wall time per unit of cost, if larger) is late: its rank gets no new tasks and the task is handed to another rank (first result wins); a rank still silent at twice the limit ends the job with exit 3 (resumable) once the others have nothing left to do. 0 = only mpi.task_timeout_sec.", ge=0)
    task_timeout_min_sec: float = K(60.0, "float", "s", "MPI-era: floor of the automatic late-task limit (mpi.task_timeout_factor x expected time).", ge=0)
    task_timeout_sec: float = K(0.0, "float", "s", "MPI-era: fixed late-task limit for every task; replaces the automatic one when > 0. 0 = automatic.", ge=0)


#: YAML section name -> section class, in template order.
SECTIONS = {
    "inputs": Inputs, "outputs": Outputs, "image_scaling": ImageScaling, "crop": Crop,
    "overlay": Overlay, "checks": Checks, "source_saturation_cut": SourceSaturationCut,
    "bright_mask": BrightMask, "logging": Logging, "plotting": Plotting,
    "performance": Performance, "epsf": Epsf, "patches": Patches, "patch_inputs": PatchInputs,
    "patch_run": PatchRun, "moffat_psf": MoffatPsf, "merge": Merge, "zp": Zp, "mpi": Mpi,
}

#: one-line description of each section (template and docs).
SECTION_DOCS = {
    "inputs": "Input files (relative paths resolve against this YAML file's folder).",
    "outputs": "Products (work_dir relative to the YAML folder; the rest relative to work_dir).",
    "image_scaling": "Photometric scaling of every image to a common zero point.",
    "crop": "Border trimming of the working frame.",
    "overlay": "Catalog overlay plots on the white stack.",
    "checks": "Consistency checks between the input images.",
    "source_saturation_cut": "Flagging of catalog sources near saturated pixels.",
    "bright_mask": "Mask of bright uncatalogued sources detected on the white stack.",
    "logging": "Logging.",
    "plotting": "Plots.",
    "performance": "Legacy thread counts (no effect under MPI).",
    "epsf": "Empirical PSF per band and grid cell.",
    "patches": "Patch geometry.",
    "patch_inputs": "Per-patch inputs.",
    "patch_run": "Model fitting of each patch.",
    "moffat_psf": "Moffat fallback PSF.",
    "merge": "Merging of per-patch results.",
    "zp": "Gaia augmentation and photometric zero points.",
    "mpi": "MPI-era execution settings.",
}
