"""The true, band- and position-dependent Moffat PSF of the synthetic tile.

Model (x, y are 0-based pixel coordinates of the FULL generated image, x = column; W, H its size):

    u = (x - (W-1)/2) / (W/2),   v = (y - (H-1)/2) / (H/2)            (both in about [-1, 1])
    fwhm(x, y) = fwhm0 * (1 + fwhm_x*u + fwhm_y*v + fwhm_r*(u^2 + v^2))   [px]
    beta(x, y) = beta0 + beta_x*u
    g1(x, y)   = g1_0 + g1_x*u,      g2(x, y) = g2_0 + g2_y*v            (reduced shear)

    PSF = galsim.Moffat(beta, fwhm=fwhm).shear(g1=g1, g2=g2)                    (kind "moffat")
    PSF = galsim.Convolve(galsim.Kolmogorov(fwhm=f_k), galsim.Airy(lam_over_diam=lod))
          .shear(g1=g1, g2=g2)                                                   (kind "kolmogorov")

so the FWHM changes by a few per cent across the tile and the PSF is slightly elliptical (|g| of a
few hundredths), i.e. a per-cell ePSF matters. The default tile uses beta0 = 3.5, beta_x = 0 (see
``options.SampleOptions.psf_beta`` for why); the beta terms stay in the model and the headers. For the
Kolmogorov (x) Airy kind ``lod`` is the band's diffraction scale lambda/D in pixels and ``f_k``
is chosen so that the convolution's FWHM (GalSim ``calculateFWHM``) is ``fwhm(x, y)``;
``beta`` is unused. Rendering is GalSim's default pixel-integrated drawing (``method='auto'``),
exactly as the generator renders its stars. Every image header carries the coefficients (``PSF*``
keywords; ``PSFKIND``/``PSFLOD`` only for a non-Moffat PSF), so the truth can be rebuilt from the
image alone.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields, replace

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
    "PSFKIND": "kind", "PSFLOD": "lam_over_diam",
    "PSFSX0": "shift_x0", "PSFSXV": "shift_xv", "PSFSY0": "shift_y0", "PSFSYU": "shift_yu",
}
#: header cards written only for a non-Moffat PSF (and optional when read back)
_KIND_KEYS = ("kind", "lam_over_diam")
#: header cards written only for a band registered off the others (optional when read back)
_SHIFT_KEYS = ("shift_x0", "shift_xv", "shift_y0", "shift_yu")


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
    kind: str = "moffat"            # "moffat" or "kolmogorov"
    lam_over_diam: float = 0.0      # Airy lambda/D [px] (kolmogorov only)
    #: the band's registration offset [px]: every object appears shifted by
    #: (shift_x0 + shift_xv v, shift_y0 + shift_yu u), u and v as in :meth:`_uv`
    shift_x0: float = 0.0
    shift_xv: float = 0.0
    shift_y0: float = 0.0
    shift_yu: float = 0.0

    def _uv(self, x: float, y: float) -> tuple[float, float]:
        """Full-frame pixel (x, y) in units of the half frame from its centre."""
        return ((x - (self.width - 1) / 2.0) / (self.width / 2.0),
                (y - (self.height - 1) / 2.0) / (self.height / 2.0))

    def at(self, x: float, y: float) -> tuple[float, float, float, float]:
        """(fwhm_px, beta, g1, g2) of the PSF at full-frame pixel (x, y)."""
        u, v = self._uv(x, y)
        fwhm = self.fwhm0 * (1.0 + self.fwhm_x * u + self.fwhm_y * v + self.fwhm_r * (u * u + v * v))
        beta = self.beta0 + self.beta_x * u
        return float(fwhm), float(beta), float(self.g1_0 + self.g1_x * u), float(self.g2_0 + self.g2_y * v)

    def shift_at(self, x: float, y: float) -> tuple[float, float]:
        """(dx, dy) px by which the band shows an object at full-frame pixel (x, y)."""
        u, v = self._uv(x, y)
        return float(self.shift_x0 + self.shift_xv * v), float(self.shift_y0 + self.shift_yu * u)

    def galsim_psf(self, x: float, y: float, flux: float = 1.0):
        """The GalSim PSF profile at (x, y) with the given total flux."""
        import galsim
        fwhm, beta, g1, g2 = self.at(x, y)
        gsp = _gsparams()
        if self.kind == "kolmogorov":
            prof = galsim.Convolve(galsim.Kolmogorov(fwhm=kolmogorov_fwhm(fwhm, self.lam_over_diam),
                                                     flux=flux, gsparams=gsp),
                                   galsim.Airy(lam_over_diam=self.lam_over_diam, gsparams=gsp))
        else:
            prof = galsim.Moffat(beta=beta, fwhm=fwhm, flux=flux, gsparams=gsp)
        prof = prof.shear(g1=g1, g2=g2)
        dx, dy = self.shift_at(x, y)
        return prof.shift(dx, dy) if (dx or dy) else prof

    def to_dict(self) -> dict:
        return asdict(self)

    def header_cards(self) -> list[tuple[str, object, str]]:
        """(keyword, value, comment) cards that describe this PSF field in a FITS header."""
        inv = {v: k for k, v in _HEADER_KEYS.items()}
        shifted = any(getattr(self, k) for k in _SHIFT_KEYS)
        return [(inv[f.name], getattr(self, f.name), f"synthetic PSF truth: {f.name}") for f in fields(self)
                if (self.kind != "moffat" or f.name not in _KIND_KEYS)
                and (shifted or f.name not in _SHIFT_KEYS)]

    @classmethod
    def from_header(cls, header, where: str = "header") -> "PsfParams":
        """Rebuild from a header written by make-sample (InputError if the PSF* cards are missing)."""
        vals = {}
        for key, name in _HEADER_KEYS.items():
            if name in _KIND_KEYS + _SHIFT_KEYS and key not in header:
                continue                        # a Moffat PSF, no registration offset (the defaults)
            if name == "kind":
                vals[name] = str(header[key]).strip().lower()
                continue
            if key not in header:
                raise InputError(f"{where}: missing {key}; not an image written by make-sample")
            vals[name] = int(header[key]) if name in ("width", "height") else float(header[key])
        return cls(**vals)

    @classmethod
    def from_dict(cls, d: dict) -> "PsfParams":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


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


# ------------------------------------------------------------------ Kolmogorov (x) Airy helpers

#: rho = lambda/D over the Kolmogorov FWHM at which the FWHM of the convolution is tabulated
_RHO_GRID = np.linspace(0.0, 1.0, 21)


@functools.lru_cache(maxsize=1)
def _kolmogorov_airy_fwhm_table() -> np.ndarray:
    """FWHM of Kolmogorov(fwhm=1) (x) Airy(lam_over_diam=rho) on ``_RHO_GRID``: GalSim's
    calculateFWHM at its default (Nyquist) scale, accurate to < 0.1 % (finer scales need FFTs of
    10^4 px). The FWHM of the pair scales with both sizes, so one table serves every band."""
    import galsim
    out = [1.0]
    for rho in _RHO_GRID[1:]:
        prof = galsim.Convolve(galsim.Kolmogorov(fwhm=1.0, gsparams=_gsparams()),
                               galsim.Airy(lam_over_diam=float(rho), gsparams=_gsparams()))
        out.append(float(prof.calculateFWHM(size=int(8.0 / prof.nyquist_scale) + 1)))
    return np.array(out)


def kolmogorov_fwhm(fwhm: float, lam_over_diam: float) -> float:
    """FWHM of the Kolmogorov part that gives the Kolmogorov (x) Airy PSF a total FWHM ``fwhm``."""
    table = _kolmogorov_airy_fwhm_table()
    fk = float(fwhm)
    for _ in range(30):           # fixed point of fk * h(lod / fk) = fwhm; h is nearly flat
        rho = lam_over_diam / fk
        if rho > _RHO_GRID[-1]:
            raise InputError(f"make-sample: a {fwhm:.3g}-px Kolmogorov PSF is too small for the "
                             f"band's diffraction scale lambda/D = {lam_over_diam:.3g} px")
        fk = float(fwhm) / float(np.interp(rho, _RHO_GRID, table))
    return fk


@functools.lru_cache(maxsize=64)
def radial_profile(params: PsfParams, rmax: float = 400.0, step: float = 0.5):
    """(r, surface brightness, flux fraction outside r) of the unit-flux PSF at the tile centre,
    circularised (no shear), for r = 0, step, ..., rmax px; used to size the rendering stamps.

    Moffat: analytic. Kolmogorov (x) Airy: the surface brightness is the Hankel transform of
    GalSim's Fourier profile (a drawing this fine would need huge FFTs); the flux outside r is
    bounded by the Kolmogorov part's outside r/2 (Hankel) plus the Airy part's (analytic,
    J0^2 + J1^2), since the Airy transform's kink at k = 0 spoils a direct transform. The
    Kolmogorov transform's k^(5/3) term still leaves ~1e-3 errors beyond ~60 FWHM, so the
    outside fraction is made non-increasing (conservative: stamps then reach the cap).
    """
    from scipy.special import j0, j1
    fwhm, beta, _, _ = params.at((params.width - 1) / 2.0, (params.height - 1) / 2.0)
    r = np.arange(0.0, rmax + step / 2, step)
    if params.kind == "moffat":
        alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
        u = 1.0 + (r / alpha) ** 2
        return r, (beta - 1.0) / (np.pi * alpha ** 2) * u ** -beta, u ** (1.0 - beta)
    import galsim
    lod = params.lam_over_diam
    kolmo = galsim.Kolmogorov(fwhm=kolmogorov_fwhm(fwhm, lod), gsparams=_gsparams())
    airy = galsim.Airy(lam_over_diam=lod, gsparams=_gsparams())
    k = np.arange(0.0, 2.0 * np.pi / lod, 2.0 * np.pi / (rmax * 24.0))   # the Airy transform ends there
    pk_k = np.array([kolmo.kValue(float(kk), 0.0).real for kk in k])
    pk = pk_k * np.array([airy.kValue(float(kk), 0.0).real for kk in k])
    w = np.full(len(k), k[1] - k[0])
    w[0] = w[-1] = w[0] / 2.0                                              # trapezoid weights
    sb = (j0(np.outer(r, k)) * (pk * k * w)).sum(axis=1) / (2.0 * np.pi)
    half = r / 2.0
    out_k = 1.0 - half * (j1(np.outer(half, k)) * (pk_k * w)).sum(axis=1)
    x = np.pi * half / lod
    out_a = j0(x) ** 2 + j1(x) ** 2
    return r, sb, np.minimum.accumulate(np.clip(out_k + out_a, 0.0, 1.0))


#: square box sides [px] whose share of the total PSF flux psf_truth.json records
BOX_SIDES = (25, 41, 55, 75, 101, 151, 201)


def psf_truth_record(params: PsfParams) -> dict:
    """The band's PSF at the tile centre for ``psf_truth.json``: parameters, FWHM (asked for and
    measured by GalSim on the unsheared profile) and the share of the total flux (pixel-integrated,
    PSF centred on a pixel) inside centred square boxes of ``BOX_SIDES`` px."""
    import galsim
    xc, yc = (params.width - 1) / 2.0, (params.height - 1) / 2.0
    fwhm, beta, g1, g2 = params.at(xc, yc)
    rec = {"kind": params.kind, "fwhm_px": fwhm, "g1": g1, "g2": g2}
    if params.kind == "moffat":
        rec["beta"] = beta
    else:
        rec["lam_over_diam_px"] = params.lam_over_diam
        rec["kolmogorov_fwhm_px"] = kolmogorov_fwhm(fwhm, params.lam_over_diam)
    round_psf = replace(params, g1_0=0.0, g1_x=0.0, g2_0=0.0, g2_y=0.0).galsim_psf(xc, yc)
    rec["measured_fwhm_px"] = float(round_psf.calculateFWHM(size=256, scale=fwhm / 40.0))
    n = max(BOX_SIDES)
    img = galsim.ImageD(n, n, xmin=0, ymin=0, scale=1.0)
    params.galsim_psf(xc, yc).drawImage(image=img, center=galsim.PositionD(n // 2, n // 2), method="auto")
    c = n // 2
    rec["box_flux_fraction"] = {str(b): float(img.array[c - b // 2:c + b // 2 + 1, c - b // 2:c + b // 2 + 1].sum())
                                for b in BOX_SIDES}
    rec["params"] = params.to_dict()
    return rec
