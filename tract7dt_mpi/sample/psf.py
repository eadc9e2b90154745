"""The true, band- and position-dependent Moffat PSF of the synthetic tile.

Model (x, y are 0-based pixel coordinates of the FULL generated image, x = column; W, H its size):

    u = (x - (W-1)/2) / (W/2),   v = (y - (H-1)/2) / (H/2)            (both in about [-1, 1])
    fwhm(x, y) = fwhm0 * (1 + fwhm_x*u + fwhm_y*v + fwhm_r*(u^2 + v^2))   [px]
    beta(x, y) = beta0 + beta_x*u
    g1(x, y)   = g1_0 + g1_x*u,      g2(x, y) = g2_0 + g2_y*v            (reduced shear)

    PSF = galsim.Moffat(beta, fwhm=fwhm).shear(g1=g1, g2=g2)

so the FWHM changes by a few per cent across the tile and the PSF is slightly elliptical (|g| of a
few hundredths), i.e. a per-cell ePSF matters. The generator uses beta0 = 3.5, beta_x = 0 (see
``bands.MOFFAT_BETA`` for why); the beta terms stay in the model and the headers. Rendering is
GalSim's default pixel-integrated drawing (``method='auto'``), exactly as the generator renders
its stars. Every image header carries the coefficients (``PSF*`` keywords), so the truth can be
rebuilt from the image alone.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import InputError

#: GalSim accuracy settings shared by the generator and the truth helpers (tighter than GalSim's
#: defaults so bright-star wings are not aliased by the FFT).
GSPARAMS_KW = dict(folding_threshold=1e-3, maxk_threshold=3e-4)

# header keyword -> PsfParams field
_HEADER_KEYS = {
    "PSFFWHM0": "fwhm0", "PSFFWHMX": "fwhm_x", "PSFFWHMY": "fwhm_y", "PSFFWHMR": "fwhm_r",
    "PSFBETA0": "beta0", "PSFBETAX": "beta_x", "PSFG1_0": "g1_0", "PSFG1_X": "g1_x",
    "PSFG2_0": "g2_0", "PSFG2_Y": "g2_y", "PSFNX": "width", "PSFNY": "height",
}


@functools.lru_cache(maxsize=1)
def _gsparams():
    """One shared GSParams object: GalSim caches profile tables per GSParams instance, so a new
    instance per object would rebuild them every time (4-5x slower rendering)."""
    import galsim
    return galsim.GSParams(**GSPARAMS_KW)


@dataclass(frozen=True)
class PsfParams:
    """Coefficients of the PSF field of one band (see the module docstring)."""

    fwhm0: float
    fwhm_x: float
    fwhm_y: float
    fwhm_r: float
    beta0: float
    beta_x: float
    g1_0: float
    g1_x: float
    g2_0: float
    g2_y: float
    width: int = 1024
    height: int = 1024

    def at(self, x: float, y: float) -> tuple[float, float, float, float]:
        """(fwhm_px, beta, g1, g2) of the PSF at full-frame pixel (x, y)."""
        u = (x - (self.width - 1) / 2.0) / (self.width / 2.0)
        v = (y - (self.height - 1) / 2.0) / (self.height / 2.0)
        fwhm = self.fwhm0 * (1.0 + self.fwhm_x * u + self.fwhm_y * v + self.fwhm_r * (u * u + v * v))
        beta = self.beta0 + self.beta_x * u
        return float(fwhm), float(beta), float(self.g1_0 + self.g1_x * u), float(self.g2_0 + self.g2_y * v)

    def galsim_psf(self, x: float, y: float, flux: float = 1.0):
        """The GalSim PSF profile at (x, y) with the given total flux."""
        import galsim
        fwhm, beta, g1, g2 = self.at(x, y)
        return galsim.Moffat(beta=beta, fwhm=fwhm, flux=flux, gsparams=_gsparams()).shear(g1=g1, g2=g2)

    def to_dict(self) -> dict:
        return asdict(self)

    def header_cards(self) -> list[tuple[str, object, str]]:
        """(keyword, value, comment) cards that describe this PSF field in a FITS header."""
        inv = {v: k for k, v in _HEADER_KEYS.items()}
        return [(inv[f.name], getattr(self, f.name), f"synthetic PSF truth: {f.name}") for f in fields(self)]

    @classmethod
    def from_header(cls, header, where: str = "header") -> "PsfParams":
        """Rebuild from a header written by make-sample (InputError if the PSF* cards are missing)."""
        vals = {}
        for key, name in _HEADER_KEYS.items():
            if key not in header:
                raise InputError(f"{where}: missing {key}; not an image written by make-sample")
            vals[name] = int(header[key]) if name in ("width", "height") else float(header[key])
        return cls(**vals)

    @classmethod
    def from_dict(cls, d: dict) -> "PsfParams":
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def draw_psf_stamp(params: PsfParams, x: float, y: float, size: int = 55,
                   offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Pixel-integrated PSF at (x, y) on a ``size`` x ``size`` stamp, normalised to unit sum.

    The PSF centre sits at the centre of the central pixel (index size//2) plus ``offset`` (dx, dy)
    in pixels, the 0-based convention where integer coordinates are pixel centres.
    """
    import galsim
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 3 or size % 2 == 0:
        raise InputError(f"true_psf_stamp: size must be an odd integer >= 3, got {size!r}")
    img = galsim.ImageD(int(size), int(size), xmin=0, ymin=0, scale=1.0)
    c = size // 2
    params.galsim_psf(x, y).drawImage(image=img, center=galsim.PositionD(c + offset[0], c + offset[1]),
                                      method="auto")
    arr = img.array.astype(np.float64)
    return arr / arr.sum()
