"""7DT medium bands and the per-band instrument truth of the synthetic tile.

The 7-Dimensional Telescope has 40 medium-band filters (25 nm wide) with central wavelengths from
400 to 887.5 nm in steps of 12.5 nm, named by the integer part: m400, m412, m425, m437, ..., m887.
For N < 40 bands, N evenly spaced ones are used (8 -> m400 m475 m537 m612 m675 m750 m812 m887).
For each rendered band this module fixes, deterministically from the seed, everything the FITS
header states and everything the header deliberately gets wrong:

* ``zp_true`` (AB mag of 1 ADU) and ``zp_auto = zp_true + offset`` with |offset| in 0.03..0.06 mag
  (the header value the pipeline scales with; its Gaia ZP stage should recover the offset);
* ``egain`` (e-/ADU), ``sky_e`` (sky level in electrons per pixel, subtracted from the image) and
  ``skysig = sqrt(sky_e)/egain`` (ADU), ``saturate`` (ADU);
* the PSF parameters (:class:`~tract7dt_mpi.sample.psf.PsfParams`).

Values vary smoothly with wavelength (bluer bands: lower throughput, darker sky, broader PSF)
plus a small per-band jitter, so every band is a little different, like real data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .options import SampleOptions
from .psf import PsfParams

WAVE_NM = {f"m{int(400 + 12.5 * k)}": 400 + 12.5 * k for k in range(40)}   #: band -> centre [nm]
ALL_BANDS = tuple(WAVE_NM)                                  #: the 40 7DT medium bands, blue to red
PIXEL_SCALE_ARCSEC = 0.505                                 #: 7DT pixel scale
SATURATE_ADU = 60000.0                                      #: header SATURATE of every band
APERTURE_M = 0.5                                            #: 7DT primary mirror diameter


def r6(v) -> float:
    """Round to 6 decimals so the value survives a FITS header card exactly."""
    return round(float(v), 6)


def pick_bands(n: int) -> list[str]:
    """Return ``n`` evenly spaced 7DT band names (all 40 for n=40), blue to red."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(ALL_BANDS):
        raise InputError(f"make-sample --bands: expected an integer in 1..{len(ALL_BANDS)}, got {n!r}")
    if n == 1:
        return ["m625"]
    idx = np.round(np.linspace(0, len(ALL_BANDS) - 1, int(n))).astype(int)
    return [ALL_BANDS[i] for i in idx]


def band_wavelength_nm(band: str) -> float:
    """Central wavelength in nm of a 7DT band name (``m412`` -> 412.5)."""
    if band not in WAVE_NM:
        raise InputError(f"unknown 7DT band {band!r}; expected one of m400, m412, ..., m887")
    return WAVE_NM[band]


@dataclass(frozen=True)
class BandTruth:
    """Instrument truth of one band (everything needed to render and to describe the image)."""

    band: str
    wave_nm: float
    zp_true: float      # AB mag giving 1 ADU
    zp_auto: float      # header ZP_AUTO (= zp_true + zp_offset)
    zp_offset: float
    egain: float        # e-/ADU
    sky_e: float        # sky level per pixel in electrons (subtracted; only its noise remains)
    skysig: float       # ADU, = sqrt(sky_e)/egain
    saturate: float     # ADU
    psf: PsfParams

    def scale(self, zp_ref: float = 25.0) -> float:
        """The pipeline's image scaling 10^(-0.4 (ZP_AUTO - zp_ref))."""
        return 10.0 ** (-0.4 * (self.zp_auto - zp_ref))

    def mag_to_adu(self, mag):
        """True AB magnitude -> total counts in ADU."""
        return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - self.zp_true))

    def mag_to_scaled(self, mag, zp_ref: float = 25.0):
        """True AB magnitude -> flux in the pipeline's scaled system (what a perfect fit returns)."""
        return self.mag_to_adu(mag) * self.scale(zp_ref)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["psf"] = self.psf.to_dict()
        return d


def lam_over_diam_pix(wave_nm: float) -> float:
    """Diffraction scale lambda/D of the 7DT aperture in pixels."""
    return wave_nm * 1e-9 / APERTURE_M * 206264.806 / PIXEL_SCALE_ARCSEC


def _registration(seed: int, lam: float, scale: float) -> dict:
    """A band's registration offset (PsfParams shift_*), from its own random stream so that the
    other truths do not change with it; none when ``scale`` is 0."""
    if not scale > 0:
        return {}
    rng = np.random.default_rng([int(seed), 29, int(lam * 10)])
    v = rng.uniform(-scale, scale, 4)
    return {"shift_x0": r6(v[0]), "shift_xv": r6(v[1]), "shift_y0": r6(v[2]), "shift_yu": r6(v[3])}


def band_truths(bands: list[str], seed: int, width: int, height: int,
                options: SampleOptions | None = None) -> list[BandTruth]:
    """Instrument truth for each band of a ``width`` x ``height`` tile.

    A band's values depend only on (seed, band, options), not on how many bands are rendered.
    """
    o = options or SampleOptions()
    fwhm_drop = round(o.psf_fwhm_blue - o.psf_fwhm_red, 10)      # 1.0 exactly for the defaults
    fv, gr = o.psf_field_variation, o.psf_shear_range
    kolmo = o.psf_kind == "kolmogorov"
    out = []
    for band in bands:
        lam = band_wavelength_nm(band)
        rng = np.random.default_rng([int(seed), 17, int(lam * 10)])
        t = (lam - 400.0) / 487.5                               # 0 (m400) .. 1 (m887)
        zp_true = 26.35 + 0.75 * np.exp(-((lam - 660.0) / 260.0) ** 2) + rng.normal(0, 0.03)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        zp_offset = sign * rng.uniform(0.03, 0.06)
        egain = 7.0 + rng.uniform(-1.0, 1.0)                    # a stack: many frames' electrons per ADU
        sky_e = (2400.0 + 2400.0 * t) * rng.uniform(0.9, 1.1)
        fwhm0 = o.psf_fwhm_blue - fwhm_drop * t + rng.normal(0, o.psf_fwhm_jitter)   # px; broader in the blue
        psf = PsfParams(
            fwhm0=r6(fwhm0),
            fwhm_x=r6(rng.uniform(-0.03, 0.03) * fv),
            fwhm_y=r6(rng.uniform(-0.03, 0.03) * fv),
            fwhm_r=r6(rng.uniform(0.01, 0.04) * fv),
            beta0=0.0 if kolmo else float(o.psf_beta),
            beta_x=0.0,
            g1_0=r6(rng.uniform(-gr, gr) + o.psf_g1),
            g1_x=r6(rng.uniform(-gr, gr)),
            g2_0=r6(rng.uniform(-gr, gr) + o.psf_g2),
            g2_y=r6(rng.uniform(-gr, gr)),
            width=int(width), height=int(height),
            **({"kind": "kolmogorov", "lam_over_diam": r6(lam_over_diam_pix(lam))} if kolmo else {}),
            **_registration(seed, lam, o.band_shift),
        )
        zp_true, zp_offset = round(float(zp_true), 4), round(float(zp_offset), 4)
        egain, sky_e = round(float(egain), 4), round(float(sky_e), 3)
        out.append(BandTruth(
            band=band, wave_nm=lam, zp_true=zp_true, zp_auto=round(zp_true + zp_offset, 4),
            zp_offset=zp_offset, egain=egain, sky_e=sky_e, skysig=float(np.sqrt(sky_e) / egain),
            saturate=SATURATE_ADU, psf=psf,
        ))
    return out
