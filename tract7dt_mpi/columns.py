"""The one registry of final-catalog columns: name, type, unit, meaning, and where it is kept.

The FITS writer takes its TUNIT cards from here, the merge drops the columns kept only in the
results store, and docs/outputs.md's column tables are generated from it
(``python docs/gen_catalog_columns.py``), so code and docs cannot disagree.

Names are templates: ``{band}`` stands for a band name (a FITS ``FILTER`` value). Units are FITS
unit strings: ``count`` (fluxes in counts scaled to ``image_scaling.zp_ref``), ``mag`` (AB),
``pixel``, ``deg``, ``""`` (dimensionless); text and bool columns have none (``None``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from . import flags


class Column(NamedTuple):
    name: str                 # template with {band}
    kind: str                 # float | int | bool | text
    unit: str | None          # FITS unit ("" dimensionless); None for text and bool
    doc: str
    section: str              # docs section key (SECTIONS)
    where: str = "catalog"    # catalog: in output_catalog.csv/.fits; store: results.h5 only
    mode: str = "both"        # multi | single | both (fitting mode that produces it)


#: docs section key -> heading (in docs order)
SECTIONS = {
    "input": "Input columns the pipeline reads (all other input columns are copied without a unit)",
    "state": "Pipeline state",
    "audit": "Patch and PSF audit (same value for all rows of a patch)",
    "multi": "Fit results, multi-band mode (default)",
    "single": "Fit results, single-band mode (`patch_run.enable_multi_band_simultaneous_fitting: false`)",
    "quality": "Reliability",
    "mag": "Calibrated magnitudes (`zp.enabled`, after the zero-point stage)",
}

_F, _I, _B, _T = "float", "int", "bool", "text"
_CNT = "count"
_CNT_NOTE = "counts scaled to `image_scaling.zp_ref`"


def _fit(stem, kind, unit, doc, where="catalog"):
    """The multi-band ``{stem}_fit`` and single-band ``{stem}_{band}_fit`` pair."""
    return [Column(f"{stem}_fit", kind, unit, doc, "multi", where, "multi"),
            Column(f"{stem}_{{band}}_fit", kind, unit, doc, "single", where, "single")]


def _opt(stem, kind, unit, doc):
    """The multi-band ``stem`` and single-band ``stem_{band}`` pair (optimizer columns)."""
    return [Column(stem, kind, unit, doc, "multi", mode="multi"),
            Column(f"{stem}_{{band}}", kind, unit, doc, "single", mode="single")]


COLUMNS: tuple[Column, ...] = tuple([
    # ---------------------------------------------------------------- input (matched any case)
    Column("ID", _T, None, "source identifier, kept as text", "input"),
    Column("RA", _F, "deg", "input right ascension (ICRS); the primary position of the row", "input"),
    Column("DEC", _F, "deg", "input declination (ICRS)", "input"),
    Column("TYPE", _T, None, "input model type (STAR, EXP, DEV, SERSIC; blank = `patch_run.gal_model`)", "input"),
    Column("FLUX_{band}", _F, _CNT, f"initial flux ({_CNT_NOTE})", "input"),
    Column("FLUX_{band}_ERR", _F, _CNT, "prior sigma of the flux", "input"),
    Column("ELL", _F, "", "initial ellipticity 1 - b/a", "input"),
    Column("THETA", _F, "deg", "initial position angle, SExtractor convention", "input"),
    Column("Re", _F, "pixel", "initial half-light radius", "input"),
    Column("SERSIC_n", _F, "", "initial Sersic index", "input"),
    Column("POS_ERR", _F, "pixel", "prior sigma of x and y", "input"),
    Column("Re_ERR", _F, "pixel", "prior sigma of Re", "input"),
    Column("ELL_ERR", _F, "", "prior sigma of ELL", "input"),
    Column("THETA_ERR", _F, "deg", "prior sigma of THETA", "input"),
    # ---------------------------------------------------------------- pipeline state
    Column("excluded_crop", _B, None, "outside the crop box (or non-finite RA/DEC while cropping)", "state"),
    Column("excluded_saturation", _B, None, "a saturated pixel within `source_saturation_cut.radius_pix`", "state"),
    Column("excluded_any", _B, None, "any of the above", "state"),
    Column("excluded_coords", _B, None, "blank or non-finite RA/DEC: the row cannot be placed on the image (a warning at load gives the count)", "state"),
    Column("excluded_reason", _T, None, "`crop`, `saturation`, `crop+saturation`, `coords`, `coords+saturation` or empty", "state"),
    Column("affected_by_bright_mask", _B, None, "inside a bright-source ellipse (still fitted; only when `bright_mask.enabled`)", "state"),
    Column("gaia_source_id", _T, None, "Gaia DR3 id of matched or injected rows (only when augmentation ran)", "state"),
    Column("x_pix_white", _F, "pixel", "input position in the working (cropped) frame, 0-based", "state"),
    Column("y_pix_white", _F, "pixel", "input position in the working (cropped) frame, 0-based", "state"),
    Column("x_pix_patch", _F, "pixel", "input position in the patch frame", "state", "store"),
    Column("y_pix_patch", _F, "pixel", "input position in the patch frame", "state", "store"),
    Column("_is_halo_source", _B, None, "row modelled as a neighbour from outside the patch (always false for stored rows)", "state", "store"),
    # ---------------------------------------------------------------- patch and PSF audit
    Column("patch_tag", _T, None, "`rRR_cCC_prPP_pcQQ`: ePSF cell and patch within it", "audit"),
    Column("epsf_tag", _T, None, "`rRR_cCC`: the ePSF cell", "audit"),
    Column("psf_min_epsf_nstars_for_use", _I, "", "star-count gate for using an ePSF", "audit"),
    Column("psf_used_epsf_band_count", _I, "", "bands fitted with a real ePSF", "audit"),
    Column("psf_fallback_band_count", _I, "", "bands fitted with the fallback PSF", "audit"),
    Column("psf_low_star_band_count", _I, "", "bands whose ePSF had too few stars", "audit"),
    Column("psf_fallback_bands", _T, None, "comma list of the bands fitted with the fallback PSF", "audit"),
    Column("psf_low_star_bands", _T, None, "comma list of the bands whose ePSF had too few stars", "audit"),
    Column("psf_frozen_bands_for_optimizer", _T, None, "bands with a frozen Gaussian-mixture PSF", "audit"),
    Column("psf_fallback_reasons_json", _T, None, "JSON: band -> reason for the fallback", "audit"),
    # ---------------------------------------------------------------- fit results
    Column("X_IMAGE", _F, "pixel", "fitted x in the input images' pixel frame, 1-based (FITS convention: the first pixel's centre is 1.0)", "multi", mode="multi"),
    Column("Y_IMAGE", _F, "pixel", "fitted y in the input images' pixel frame, 1-based", "multi", mode="multi"),
    Column("X_IMAGE_{band}", _F, "pixel", "fitted x in the input images' pixel frame, 1-based", "single", mode="single"),
    Column("Y_IMAGE_{band}", _F, "pixel", "fitted y in the input images' pixel frame, 1-based", "single", mode="single"),
    *_fit("x_pix_patch", _F, "pixel", "fitted x, patch frame", "store"),
    *_fit("y_pix_patch", _F, "pixel", "fitted y, patch frame", "store"),
    *_fit("x_pix_white", _F, "pixel", "fitted x, working (cropped) frame, 0-based"),
    *_fit("y_pix_white", _F, "pixel", "fitted y, working (cropped) frame, 0-based"),
    *_fit("RA", _F, "deg", "fitted right ascension"),
    *_fit("DEC", _F, "deg", "fitted declination"),
    Column("stype_fit", _T, None, "fitted model: `star`, `exp`, `dev` or `sersic` (the catalogue TYPE, or the model chosen by `patch_run.model_selection`)", "multi"),
    *_fit("sersic_n", _F, "", "Sersic index (Sersic model only)"),
    *_fit("re_pix", _F, "pixel", "half-light radius"),
    *_fit("ab", _F, "", "axis ratio b/a (a soft wall in the fit keeps it above ~0.1)"),
    *_fit("phi_deg", _F, "deg", "position angle, Tractor convention (mod 180)"),
    *_fit("ELL", _F, "", "1 - ab_fit (SExtractor-like, as the input ELL)"),
    *_fit("Re", _F, "pixel", "= re_pix_fit (duplicate)", "store"),
    *_fit("THETA", _F, "deg", "SExtractor-like angle, phi_deg_fit - 90, in [-90, 90) (as the input THETA)"),
    Column("FLUX_{band}_fit", _F, _CNT, f"fitted total flux ({_CNT_NOTE}; divided by the PSF's enclosed fraction in its stamp; galaxies: the profile integrated to infinity under `patch_run.galaxy_flux: total`)", "multi"),
    Column("FLUXERR_{band}_fit", _F, _CNT, "1 sigma flux error (see `patch_run.flux_error_model`)", "multi"),
    Column("FLUXERR_WING_{band}_fit", _F, _CNT, "part of FLUXERR from the neighbouring stars' PSF wings (and the bright stars' subtracted halos) under the source, at the band's wing error measured on its fitted stars (`psf_flux_errors.csv`; the halos', and a band with too few bright stars, at `patch_run.flux_error_psf_wing`), carried through the fit (the source's shape takes the light in too); in FLUXERR, not in FLUXERR_STAT", "multi"),
    Column("FLUXERR_STAT_{band}_fit", _F, _CNT, "statistical part of the 1 sigma error (sky, plus the source's Poisson noise under `flux_error_model: total`), without the band's PSF term: use it for S/N cuts", "multi"),
    Column("PSFCHK_{band}_fit", _F, "", "fitted stars: flux fraction the fit missed, from the local-background-subtracted residual of the patch model within 2 FWHM; pooled at merge into the band's PSF flux error", "multi", "store"),
    Column("PSFCHK_ERR_{band}_fit", _F, "", "1 sigma noise of PSFCHK", "multi", "store"),
    Column("WINGRESP_IN_{band}_fit", _F, _CNT, "signed flux response to a unit fractional error of the neighbouring stars' inner PSF wings (0.5-5 % of their peak); FLUXERR_WING at merge uses the band's measured inner-wing error", "multi", "store"),
    Column("WINGRESP_OUT_{band}_fit", _F, _CNT, "the same for their outer wings (below 0.5 % of the peak)", "multi", "store"),
    Column("WINGRESP_HALO_{band}_fit", _F, _CNT, "signed flux response to a unit fractional error of the subtracted bright-star halos", "multi", "store"),
    Column("WINGCHK_IN_{band}_fit", _F, "", "fitted stars: rms over 8 sectors of the inner wing's fractional error, from the patch model's residual; pooled at merge into the band's inner-wing error", "multi", "store"),
    Column("WINGCHK_IN_ERR_{band}_fit", _F, "", "rms of the sectors' 1 sigma noise of WINGCHK_IN", "multi", "store"),
    Column("WINGCHK_OUT_{band}_fit", _F, "", "the same for the outer wing", "multi", "store"),
    Column("WINGCHK_OUT_ERR_{band}_fit", _F, "", "rms of the sectors' 1 sigma noise of WINGCHK_OUT", "multi", "store"),
    *_opt("opt_converged", _B, None, "the optimizer reached `patch_run.dlnp_stop`, or this source's own share of the remaining gain is below 0.1 in ln p, or the last step gained less than 0.1; false whenever the source ended on a bound or its model ran away (see \"What `opt_converged` and `fit_is_reliable` promise\")"),
    *_opt("opt_hit_max_iters", _B, None, "stopped at the iteration limit without converging"),
    *_opt("opt_niters", _I, "", "iterations used"),
    *_opt("opt_last_dlnp", _F, "", "last improvement of the log-likelihood"),
    *_opt("flag_bound_stalled", _B, None, "a bounded parameter ended at its limit"),
    *_opt("flag_bound_stalled_which_parameter", _T, None, "which, e.g. `pos.x@upper,shape.logre@lower`"),
    Column("flag_core_masked", _B, None, "in some band no usable pixel lies within 2 px of the fitted position (core masked or off the image): that band's flux rests on the wings only", "multi"),
    Column("flag_dead_data", _B, None, "in some band every usable pixel within 3 px of the fitted position has one value: no light was recorded there (e.g. a zero-filled gap); never `fit_is_reliable`", "multi"),
    Column("flux_total_factor", _F, "", "the factor that made the fitted galaxy profile's flux a total flux (`patch_run.galaxy_flux: total`; the taper's, for EXP and DEV over its size bias; first band; 1 for point sources and under `truncated`); already applied to `FLUX_{band}_fit`", "multi"),
    *(Column(f"dchisq_{m}", _F, "", f"chi^2 improvement (all bands) over no source of the source fitted alone as {m} on its footprint, its neighbours' fitted models subtracted (`patch_run.model_selection`); empty where no choice was made", "multi")
      for m in ("PSF", "EXP", "DEV", "SER")),
    Column("flag_model_close", _B, None, "the model choice was close: a decision that led to it (galaxy over point source, EXP against DEV, SERSIC over EXP/DEV) lies within 4 in penalised chi^2 of its boundary (soft tag `model_close`)", "multi"),
    Column("fit_shape_fixed", _B, None, "the galaxy's shape was held at its catalog value (flux S/N below `patch_run.shape_fit_min_snr`, or a shape fallback; in single-band mode: in some band)", "multi"),
    Column("flag_shape_fallback", _B, None, "the galaxy's free shape ran away (Re > 5x catalog) or ended at the upper Re bound or a bound of ellipticity or Sersic n, and it was refitted with its catalog shape held, or (when only the Sersic n reached its upper bound) with n held at 4 and the rest of its shape free (soft tag `shape_fallback`)", "multi"),
    Column("fit_pos_held", _B, None, "the source's position was held at its catalog position because its flux S/N at the start of the fit was below `patch_run.pos_fit_min_snr`; only its fluxes were fitted (in single-band mode: in some band)", "multi"),
    # ---------------------------------------------------------------- reliability
    Column("fit_is_reliable", _B, None, "true when no hard tag applies", "quality"),
    Column("fit_quality_issues", _T, None, "comma list of tags, hard ones first", "quality"),
    Column("FIT_FLAGS", "int32", "", "the same tags as bits: the sum of 2**bit of every tag that applies (table below)", "quality"),
    # ---------------------------------------------------------------- magnitudes
    Column("MAG_{band}_fit", _F, "mag", "AB magnitude ZP - 2.5 log10(FLUX); empty if the flux is <= 0 or the band is uncalibrated", "mag"),
    Column("MAGERR_{band}_fit", _F, "mag", "sqrt((1.0857 FLUXERR/FLUX)^2 + ZP_err^2)", "mag"),
])


def _pattern(template: str, flags_=0) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{band}"), ".+"), flags_)


# longest template first, so FLUXERR_STAT_{band}_fit wins over FLUXERR_{band}_fit
_BY_LENGTH = sorted(COLUMNS, key=lambda c: -len(c.name))
_EXACT = {c.name: c for c in COLUMNS}
_CASED = [(_pattern(c.name), c) for c in _BY_LENGTH]
_ANY_CASE = [(_pattern(c.name, re.IGNORECASE), c) for c in _BY_LENGTH]


def lookup(name: str) -> Column | None:
    """The registry entry of an actual column name (input columns match in any case)."""
    if name in _EXACT:
        return _EXACT[name]
    for table in (_CASED, _ANY_CASE):
        for pat, col in table:
            if pat.fullmatch(name):
                return col
    return None


_INDEX = {c.name: i for i, c in enumerate(COLUMNS)}


def order_key(name: str) -> int:
    """Sort key of a product column: 0 for input and unregistered columns (a stable sort keeps
    their order), else 1 + the registry position."""
    c = lookup(name)
    return 0 if c is None or c.section == "input" else 1 + _INDEX[c.name]


def store_only(names) -> list[str]:
    """Those of ``names`` that belong to the results store only (dropped from the product)."""
    return [n for n in names if (c := lookup(n)) is not None and c.where == "store"]


def fits_unit(name: str) -> str | None:
    """FITS TUNIT of a catalog column (None: text, bool or unregistered)."""
    c = lookup(name)
    return None if c is None else c.unit


# ---------------------------------------------------------------------- docs

def _unit_text(c: Column) -> str:
    if c.unit is None:
        return "—"
    if c.unit == "":
        return "1"
    return {"count": "count (zp_ref)", "mag": "mag (AB)"}.get(c.unit, c.unit)


def markdown_tables() -> str:
    """The column tables of docs/outputs.md (one per section, then the tag table)."""
    lines = []
    for key, title in SECTIONS.items():
        lines += [f"### {title}", "", "| Column | Type | Unit | In | Meaning |", "|---|---|---|---|---|"]
        for c in COLUMNS:
            if c.section != key:
                continue
            where = "catalog" if c.where == "catalog" else "`results.h5` only"
            doc = c.doc.replace("|", "\\|")
            lines.append(f"| `{c.name}` | {c.kind} | {_unit_text(c)} | {where} | {doc} |")
        lines.append("")
        if key == "quality":
            lines += ["| Tag | Bit | `FIT_FLAGS` value | Kind | Meaning |", "|---|---|---|---|---|"]
            for t in flags.TAGS:
                lines.append(f"| `{t.name}` | {t.bit} | {1 << t.bit} | {'hard' if t.hard else 'soft'} "
                             f"| {t.doc} |")
            hard = sum(flags.TAG_BITS[t] for t in flags.HARD_TAGS)
            lines += ["", "A bit keeps its meaning in every version (new tags get new bits). "
                      f"`fit_is_reliable` is `(FIT_FLAGS & {hard}) == 0` (the hard bits).", ""]
    return "\n".join(lines)
