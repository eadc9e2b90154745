"""Scene and instrument options of the synthetic tile (``make-sample`` flags, ``make_sample`` kwargs).

Every default reproduces the original tile exactly (same images and catalogues for a seed), so
the options only add harder test fields: other PSF shapes (Moffat of any beta, Kolmogorov (x)
Airy), PSF ellipticity, a per-band FWHM trend, galaxy brightness, star counts, blends of bright
galaxies with stars, a sky pedestal, untruncated galaxy profiles and stamps that hold all the
light of every object.

This module imports only the standard library, so the command-line parser can use it cheaply.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

PSF_KINDS = ("moffat", "kolmogorov")


def _opt(default, flag: str, typ, doc: str, unit: str = ""):
    """A field with its command-line flag, value type and help text in the dataclass metadata."""
    from dataclasses import field
    return field(default=default, metadata={"flag": flag, "type": typ, "doc": doc, "unit": unit})


@dataclass(frozen=True)
class SampleOptions:
    """Options of the synthetic scene (see the module docstring); defaults = the original tile."""

    psf_kind: str = _opt("moffat", "--psf", str,
                         "PSF family: moffat, or kolmogorov (Kolmogorov (x) Airy with the band's "
                         "lambda/D for a 0.5 m aperture; the total FWHM is the band's FWHM)")
    #: GalSim evaluates the Moffat Fourier transform fastest for half-integer beta (3.5: 0.6 ms per
    #: faint star; 3: 2 ms; 2: 5 ms), so the default PSF varies in FWHM and shear but not in beta.
    psf_beta: float = _opt(3.5, "--psf-beta", float, "Moffat beta of every band (moffat only)")
    psf_fwhm_blue: float = _opt(4.6, "--psf-fwhm-blue", float,
                                "FWHM at 400 nm before the per-band jitter", "px")
    psf_fwhm_red: float = _opt(3.6, "--psf-fwhm-red", float,
                               "FWHM at 887.5 nm (linear in wavelength between)", "px")
    psf_fwhm_jitter: float = _opt(0.04, "--psf-fwhm-jitter", float,
                                  "rms of a random per-band FWHM offset", "px")
    psf_field_variation: float = _opt(1.0, "--psf-field-variation", float,
                                      "scale of the smooth FWHM change over the field "
                                      "(1: a few per cent from centre to corner; 0: constant)")
    psf_g1: float = _opt(0.0, "--psf-g1", float, "constant PSF shear g1 added in every band")
    psf_g2: float = _opt(0.0, "--psf-g2", float, "constant PSF shear g2 added in every band")
    psf_shear_range: float = _opt(0.02, "--psf-shear-range", float,
                                  "half-width of the random per-band PSF shear and its gradient")
    band_shift: float = _opt(0.0, "--band-shift", float,
                             "scale of each band's registration offset from the catalogue frame: a "
                             "random constant and a gradient over the field, each uniform within "
                             "+-band_shift per axis (real bands on one grid: 0.1-0.5 px)", "px")
    galaxy_mag_min: float = _opt(15.5, "--galaxy-mag-min", float,
                                 "brightest galaxy (AB mag at 625 nm)", "mag")
    galaxy_mag_max: float | None = _opt(None, "--galaxy-mag-max", float,
                                        "faintest galaxy (default 21.5; 20.5 full-size)", "mag")
    galaxy_truncation: bool = _opt(False, "--galaxy-truncation", bool,
                                   "truncate Sersic profiles with n > 1.2 at 8 re (the original "
                                   "sample); by default galaxies are untruncated GalSim profiles, "
                                   "whose truth is the flux integrated to infinity, the catalogue's "
                                   "convention (patch_run.galaxy_flux: total)")
    n_stars: int | None = _opt(None, "--stars", int,
                               "catalogued stars (default 55 %% of the catalogued sources)")
    n_saturated: int | None = _opt(None, "--saturated", int,
                                   "catalogued saturated stars (default 3 %% of the stars, >= 1)")
    n_blends: int = _opt(0, "--blends", int,
                         "extra bright galaxies placed 2-4 FWHM from bright unsaturated stars")
    blank_type_frac: float = _opt(0.10, "--blank-type-frac", float,
                                  "fraction of catalogue rows with an empty TYPE")
    catalog_pos_sigma: float = _opt(0.21, "--catalog-pos-sigma", float,
                                    "per-axis rms of the catalogue position errors", "px")
    catalog_shape_noise: float = _opt(1.0, "--catalog-shape-noise", float,
                                      "scale of the catalogue ELL/THETA/Re errors (1: 0.05, 8 deg, 15 %%)")
    sky_pedestal: float = _opt(0.0, "--sky-pedestal", float,
                               "constant added to every image after sky subtraction", "ADU")
    stamp_flux_tol: float | None = _opt(None, "--stamp-flux-tol", float,
                                        "render every object on a stamp that holds all but this "
                                        "fraction of its flux (default: stamps to 1 %% of SKYSIG)")

    def __post_init__(self):
        from ..errors import InputError

        def bad(name, want):
            flag = next(f.metadata["flag"] for f in fields(self) if f.name == name)
            return InputError(f"make-sample {flag}: expected {want}, got {getattr(self, name)!r}")

        if self.psf_kind not in PSF_KINDS:
            raise bad("psf_kind", "one of " + ", ".join(PSF_KINDS))
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            typ = f.metadata["type"]
            if typ is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise bad(f.name, "an integer >= 0")
            if typ is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise bad(f.name, "a finite number")
            if typ is bool and not isinstance(v, bool):
                raise bad(f.name, "true or false")
        if not self.psf_beta > 1.1:
            raise bad("psf_beta", "a number > 1.1")
        for name in ("psf_fwhm_blue", "psf_fwhm_red"):
            if not 0.5 <= getattr(self, name) <= 50:
                raise bad(name, "a FWHM in 0.5..50 px")
        for name in ("psf_fwhm_jitter", "psf_field_variation", "psf_shear_range", "band_shift",
                     "catalog_pos_sigma", "catalog_shape_noise"):
            if getattr(self, name) < 0:
                raise bad(name, "a number >= 0")
        if math.hypot(self.psf_g1, self.psf_g2) + 2 * self.psf_shear_range >= 0.5:
            raise bad("psf_g1", "|g| + 2 * shear range < 0.5")
        if self.galaxy_mag_max is not None and not self.galaxy_mag_max > self.galaxy_mag_min:
            raise bad("galaxy_mag_max", f"a magnitude fainter than --galaxy-mag-min {self.galaxy_mag_min}")
        if not 0 <= self.blank_type_frac <= 1:
            raise bad("blank_type_frac", "a fraction in 0..1")
        if self.stamp_flux_tol is not None and not 1e-6 <= self.stamp_flux_tol <= 0.1:
            raise bad("stamp_flux_tol", "a fraction in 1e-6..0.1")

    def changed(self) -> dict:
        """The options that differ from the defaults (recorded in truth_meta.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


def sample_options(**kw) -> SampleOptions:
    """SampleOptions from keyword arguments (InputError naming an unknown one)."""
    from ..errors import InputError
    names = {f.name for f in fields(SampleOptions)}
    unknown = sorted(set(kw) - names)
    if unknown:
        raise InputError(f"make-sample: unknown option(s) {', '.join(unknown)}; expected some of "
                         + ", ".join(sorted(names)))
    return SampleOptions(**kw)


def add_option_arguments(parser) -> None:
    """Add one command-line flag per option to an argparse (sub)parser (dest = field name)."""
    for f in fields(SampleOptions):
        m = f.metadata
        unit = f" [{m['unit']}]" if m["unit"] else ""
        if m["type"] is bool:     # the flag turns the option from its default to the other value
            parser.add_argument(m["flag"], dest=f.name, action="store_true" if not f.default else "store_false",
                                default=None, help=m["doc"])
        else:
            default = "" if f.default is None else f"; default {f.default}"
            parser.add_argument(m["flag"], dest=f.name, type=m["type"], default=None,
                                help=f"{m['doc']}{unit}{default}")


def options_from_namespace(ns) -> dict:
    """The options given on the command line (those not given are left out)."""
    return {f.name: getattr(ns, f.name) for f in fields(SampleOptions) if getattr(ns, f.name, None) is not None}
