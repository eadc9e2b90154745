"""One band of the load stage: read its working frame, check it, scale and mask it, fit its
stars' Moffat and read its weight map.

:func:`load_band` is the unit of work of the band tasks (one per band, any rank) and of the
in-process loop of :func:`tract7dt_mpi.stages.load.load_inputs`: everything it needs is in its
:class:`BandJob`, so its result does not depend on where it runs. The all-band parts (white
stack, saturation cut, catalogue) stay in :mod:`tract7dt_mpi.stages.load`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..io import fits as fio
from ..io.prepared import MASK_NONFINITE, MASK_SATURATED, BandInfo
from . import data_checks
from .star_moffat import band_moffat
from .weights import band_ivar, sigma_from_ivar

__all__ = ["BandJob", "LoadedBand", "PreparedBand", "band_attrs", "load_band", "prepare_band"]

log = logging.getLogger("tract7dt_mpi.stages.load")


@dataclass(frozen=True)
class BandJob:
    """What one band's preparation needs (small and picklable: a task payload).

    ``info``: the band's header numbers and files (checked by the header pass); ``box``:
    (y0, y1, x0, x1) of the working frame in the input image; ``star_xy``: working-frame (x, y)
    of the fallback-Moffat star candidates; ``pre_crop_step`` > 0: also read the full frame at
    that stride (the pre-crop white image of the crop figure)."""

    index: int
    info: BandInfo
    box: tuple
    saturation_divisor: float
    star_xy: np.ndarray
    pre_crop_step: int = 0


@dataclass
class PreparedBand:
    """One band in the working frame: scaled image and the two masks kept apart."""

    info: BandInfo
    img: np.ndarray        # float32, raw * scale
    nonfinite: np.ndarray  # bool
    satur: np.ndarray      # bool, raw >= SATURATE / saturation_divisor

    @property
    def sigma_sky(self) -> float:
        return self.info.skysig * self.info.scale

    def mask_bits(self) -> np.ndarray:
        bits = self.nonfinite.astype(np.uint8) * MASK_NONFINITE
        bits |= self.satur.astype(np.uint8) * MASK_SATURATED
        return bits


@dataclass
class LoadedBand:
    """:func:`load_band`'s result: the prepared band, its scaled inverse variance (None without a
    weight map), the strided scaled full frame (None unless asked) and its timings (s)."""

    band: PreparedBand
    ivar: np.ndarray | None
    pre_crop: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)

    def white_sigma(self):
        """The sigma the white stack weights this band with: scalar SKYSIG or the map's."""
        return self.band.sigma_sky if self.ivar is None else sigma_from_ivar(self.ivar)

    @property
    def satur_pixels(self) -> np.ndarray:
        """(n, 2) int32 (y, x) of the band's saturated working-frame pixels."""
        return np.argwhere(self.band.satur).astype(np.int32)


def prepare_band(raw: np.ndarray, info: BandInfo, saturation_divisor: float = 1.3,
                 logger=None) -> PreparedBand:
    """Scale ``raw`` (float32) in place and build the masks. An all-NaN image only warns and is
    flagged (``info.all_nan``) so that the run can go on with the other bands."""
    logger = logger or log
    nonfinite = ~np.isfinite(raw)
    all_nan = bool(nonfinite.all())
    if all_nan:
        logger.warning("Band %s (%s) has no finite pixel in the working frame; it is flagged "
                       "(all_nan) and contributes nothing.", info.band, info.path)
    thr = info.saturate / float(saturation_divisor)
    with np.errstate(invalid="ignore"):
        satur = (raw >= thr) & ~nonfinite if np.isfinite(thr) else np.zeros(raw.shape, dtype=bool)
    raw *= np.float32(info.scale)
    if all_nan != info.all_nan:
        info = BandInfo(**{**info.__dict__, "all_nan": all_nan})
    return PreparedBand(info=info, img=raw, nonfinite=nonfinite, satur=satur)


def load_band(job: BandJob, logger=None) -> LoadedBand:
    """Read and prepare one band (InputError naming the file for an unreadable or constant image)."""
    logger = logger or log
    info = job.info
    t0 = time.perf_counter()
    pre = None
    if job.pre_crop_step > 0:
        pre = fio.read_image(info.path, step=int(job.pre_crop_step))[0] * np.float32(info.scale)
    raw, _ = fio.read_image(info.path, box=tuple(job.box))      # only the working frame
    data_checks.check_not_constant(raw, info.path)
    pb = prepare_band(raw, info, job.saturation_divisor, logger)
    del raw
    pb.info = _with_star_moffat(pb, job.star_xy, logger)
    ivar = _weight_masked(pb, band_ivar(pb.info, tuple(job.box), logger))
    return LoadedBand(band=pb, ivar=ivar, pre_crop=pre, seconds={"prep": time.perf_counter() - t0})


def band_attrs(info: BandInfo) -> dict:
    """The BandInfo fields the prepared store keeps as the band's attributes."""
    return dict(filter=info.filter, path=info.path, scale=info.scale, zp_auto=info.zp_auto,
                skysig=info.skysig, egain=info.egain, saturate=info.saturate, fwhm_pix=info.fwhm_pix,
                all_nan=info.all_nan, header=info.header, weight=info.weight,
                weight_kind=info.weight_kind, psf_file=info.psf_file,
                star_fwhm_pix=info.star_fwhm_pix, star_beta=info.star_beta)


def _with_star_moffat(pb: PreparedBand, xy, logger) -> BandInfo:
    """The band's info with the Moffat FWHM and beta of its own stars (the fallback PSF)."""
    if pb.info.all_nan or len(xy) == 0:
        return pb.info
    got = band_moffat(pb.img, pb.nonfinite | pb.satur, xy, pb.info.fwhm_pix)
    if got is None:
        logger.info("Band %s: no Moffat from its stars (fewer than 3 clean fits); the fallback PSF "
                    "uses the header FWHM and moffat_psf.beta", pb.info.band)
        return pb.info
    logger.info("Band %s: stars' Moffat FWHM %.2f px, beta %.2f from %d stars (header FWHM %s)",
                pb.info.band, got.fwhm, got.beta, got.n_stars,
                f"{pb.info.fwhm_pix:.2f} px" if np.isfinite(pb.info.fwhm_pix) else "none")
    return replace(pb.info, star_fwhm_pix=got.fwhm, star_beta=got.beta)


def _weight_masked(pb: PreparedBand, ivar):
    """Zero-weight pixels join the non-finite mask and are never saturated: they carry no data
    (a bad column's junk values must not trigger the saturation cut). Returns ``ivar``."""
    if ivar is not None:
        bad = ~(ivar > 0)
        pb.nonfinite |= bad
        pb.satur &= ~bad
    return ivar
