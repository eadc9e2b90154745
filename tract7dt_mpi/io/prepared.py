"""The prepared-image HDF5 store: working-frame (post-crop) arrays of every band, written once
while the bands are loaded, then read by any process in small regions (ROIs).

A band is either a group of the store itself (:meth:`PreparedWriter.write_band`, one process
loading every band) or an HDF5 external link to the band's own file, written by the task that
prepared it (:meth:`PreparedWriter.link_band`, :mod:`.prepared_bands`); readers see no difference.

Layout (see docs/dev/architecture.md)::

    attrs: bands, shape, crop_x0, crop_y0, zp_ref, wcs_header
    /bands/{band}/img    float32 (H, W)  raw * scale
    /bands/{band}/mask   uint8   (H, W)  1 = non-finite (or zero weight), 2 = saturated
    /bands/{band}/ivar   float32 (H, W)  inverse variance (scaled units), only with a weight map
          attrs: filter, path, scale, zp_auto, skysig, egain, saturate, fwhm_pix, all_nan, header,
                 weight, weight_kind, psf_file
    /white/img, /white/sigma   float32 (H, W)
    /bright_mask               uint8 (H, W), 1 = masked (absent when the stage is disabled)

Sigma maps are not stored; :meth:`PreparedImages.read` derives them from the image, the band's
header numbers and, when present, its ``ivar`` map. Datasets are chunked (256, 256) and uncompressed so that ROI reads are cheap and
several readers may open the file at once (read-only; the caller sets
``HDF5_USE_FILE_LOCKING=FALSE`` on shared file systems, and we also ask h5py not to lock).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import InputError
from ..masks import compose_final_mask
from .fits import header_from_text, wcs_from_header

__all__ = ["PreparedWriter", "PreparedImages", "BandInfo", "Cutout", "MASK_NONFINITE",
           "MASK_SATURATED", "sigma_maps"]

MASK_NONFINITE = np.uint8(1)
MASK_SATURATED = np.uint8(2)
CHUNK = 256
BAND_GROUP = "/band"     #: the group of a band file (io.prepared_bands) a linked band points to


@dataclass(frozen=True)
class BandInfo:
    """Per-band numbers needed to turn stored arrays into sigma maps and PSF fallbacks."""

    band: str
    filter: str
    path: str
    scale: float
    zp_auto: float
    skysig: float
    egain: float
    saturate: float          # ADU; inf when the header has none
    fwhm_pix: float          # nan when unknown
    all_nan: bool = False    # band has no finite pixel in the working frame (flagged, not fatal)
    header: str = ""         # full header text (image HDU merged with the primary header)
    weight: str = ""         # FITS spec of the weight / RMS map ("" = none: scalar SKYSIG)
    weight_kind: str = ""    # "weight" (inverse variance) or "rms"
    psf_file: str = ""       # PSFEx model of the image ("" = none)
    star_fwhm_pix: float = float("nan")   # Moffat FWHM fitted to the band's stars (stages.star_moffat)
    star_beta: float = float("nan")       # and its beta: the analytic fallback's PSF

    @property
    def saturate_scaled(self) -> float:
        return self.saturate * self.scale


@dataclass
class Cutout:
    """One band's arrays over a region; every array has the region's shape."""

    img: np.ndarray          # float32 scaled image
    sigma_sky: np.ndarray    # float32, inf at non-finite pixels
    sigma_total: np.ndarray  # float32, inf at non-finite pixels
    nonfinite: np.ndarray    # bool
    saturated: np.ndarray    # bool
    bright: np.ndarray       # bool (all False when no bright mask)
    bad_final: np.ndarray    # bool = nonfinite | saturated | bright
    #: float32 light already subtracted from ``img`` as bright stars' halos (None: none)
    halo: np.ndarray | None = None


def sigma_maps(img: np.ndarray, nonfinite: np.ndarray, info: BandInfo, ivar: np.ndarray | None = None):
    """(sigma_sky, sigma_total) in scaled units from the scaled image (inputs spec 2.3).

    ``ivar``: the band's scaled inverse-variance map over the same region (weight-map input);
    then ``sigma_sky = 1/sqrt(ivar)`` (inf where ivar <= 0) replaces ``SKYSIG * scale``, and
    ``sigma_total`` adds the same Poisson term ``max(img, 0) * scale / EGAIN``."""
    s = np.float32(info.scale)
    if ivar is None:
        sky = np.full(img.shape, np.float32(info.skysig) * s, dtype=np.float32)
    else:
        iv = np.asarray(ivar, dtype=np.float32)
        sky = np.full(img.shape, np.inf, dtype=np.float32)
        np.divide(1.0, np.sqrt(iv, where=iv > 0, out=np.zeros_like(iv)), out=sky, where=iv > 0)
    raw = np.where(nonfinite, 0.0, img / s).astype(np.float32)
    np.maximum(raw, 0.0, out=raw)
    with np.errstate(invalid="ignore"):
        total = np.sqrt(sky ** 2 + raw * s * s / np.float32(info.egain)).astype(np.float32)
    sky[nonfinite] = np.inf
    total[nonfinite] = np.inf
    return sky, total


def _chunks(shape):
    return (min(CHUNK, max(1, shape[0])), min(CHUNK, max(1, shape[1])))


def _open_h5(path, mode):
    try:
        return h5py.File(path, mode, locking=False)
    except TypeError:  # h5py/HDF5 too old for the locking keyword
        return h5py.File(path, mode)


class PreparedWriter:
    """Create the store and add bands one at a time (rank 0, serial h5py)."""

    def __init__(self, path: str, shape: tuple[int, int] | None = None, crop_x0: int = 0,
                 crop_y0: int = 0, zp_ref: float = 25.0, wcs_header: str = ""):
        self.path = path
        self._f = None
        self._tmp = f"{path}.tmp{os.getpid()}"
        self._bands: list[str] = []
        self.shape = None
        if shape is not None:
            self.create(shape, crop_x0, crop_y0, zp_ref, wcs_header)

    def create(self, shape: tuple[int, int], crop_x0: int = 0, crop_y0: int = 0,
               zp_ref: float = 25.0, wcs_header: str = "") -> "PreparedWriter":
        """Open the (temporary) file and write the frame attributes; the loader calls this once
        it knows the working frame."""
        if self._f is not None:
            raise RuntimeError(f"prepared store {self.path} already created")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.shape = (int(shape[0]), int(shape[1]))
        self._f = _open_h5(self._tmp, "w")
        a = self._f.attrs
        a["shape"] = np.asarray(self.shape, dtype=np.int64)
        a["crop_x0"] = int(crop_x0)
        a["crop_y0"] = int(crop_y0)
        a["zp_ref"] = float(zp_ref)
        a["wcs_header"] = wcs_header
        a["bands"] = json.dumps([])
        self._f.create_group("bands")
        return self

    @classmethod
    def append(cls, path: str) -> "PreparedWriter":
        """Reopen a closed store to add late products (e.g. the bright mask); closes in place."""
        self = cls.__new__(cls)
        self.path = path
        self._tmp = path
        self._f = _open_h5(path, "r+")
        self.shape = tuple(int(v) for v in self._f.attrs["shape"])
        self._bands = list(json.loads(self._f.attrs["bands"]))
        return self

    def _dataset(self, name, arr, dtype):
        arr = np.asarray(arr)
        if arr.shape != self.shape:
            raise ValueError(f"{name}: shape {arr.shape} != store shape {self.shape}")
        return self._f.create_dataset(name, data=arr.astype(dtype, copy=False), chunks=_chunks(self.shape))

    def write_band(self, name: str, img: np.ndarray, mask_bits: np.ndarray, attrs: dict,
                   ivar: np.ndarray | None = None) -> None:
        """Store one band's scaled image, mask bits, header numbers (BandInfo fields) and, for a
        band with a weight map, its scaled inverse variance."""
        if name in self._bands:
            raise ValueError(f"band {name!r} already written")
        g = self._f["bands"].create_group(name)
        self._dataset(f"bands/{name}/img", img, np.float32)
        self._dataset(f"bands/{name}/mask", mask_bits, np.uint8)
        if ivar is not None:
            self._dataset(f"bands/{name}/ivar", ivar, np.float32)
        for k, v in attrs.items():
            if v is None:
                continue
            g.attrs[k] = v
        self._bands.append(name)
        self._f.attrs["bands"] = json.dumps(self._bands)

    def link_band(self, name: str, band_file: str) -> None:
        """Add a band written to its own file (:func:`.prepared_bands.write_band_file`): an HDF5
        external link ``/bands/{name}``, by path relative to the store's folder, which readers
        follow transparently."""
        if name in self._bands:
            raise ValueError(f"band {name!r} already written")
        rel = os.path.relpath(os.path.abspath(band_file), os.path.dirname(os.path.abspath(self.path)))
        self._f["bands"][name] = h5py.ExternalLink(rel, BAND_GROUP)
        self._bands.append(name)
        self._f.attrs["bands"] = json.dumps(self._bands)

    def write_white(self, white: np.ndarray, sigma_white: np.ndarray) -> None:
        self._dataset("white/img", white, np.float32)
        self._dataset("white/sigma", sigma_white, np.float32)

    def write_bright_mask(self, mask: np.ndarray) -> None:
        if "bright_mask" in self._f:
            del self._f["bright_mask"]
        self._dataset("bright_mask", mask, np.uint8)

    def close(self) -> None:
        """Flush, close and move the finished file into place (readers never see a partial store).

        A failing flush (full disk) removes the temporary file before the error propagates."""
        if self._f is None:
            return
        try:
            self._f.close()
        except BaseException:
            self.abort()
            raise
        self._f = None
        if self._tmp != self.path:
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the unfinished store: close (errors ignored: the disk may be full) and remove it."""
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - the temporary file is removed anyway
                pass
        if self._tmp != self.path and os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class PreparedImages:
    """Read-only view of the store; cheap ROI reads of any band."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise InputError(f"Prepared-image store not found: {path} (run the load stage first)")
        self.path = path
        self._f = _open_h5(path, "r")
        a = self._f.attrs
        self.bands: list[str] = list(json.loads(a["bands"]))
        self.shape: tuple[int, int] = tuple(int(v) for v in a["shape"])
        self.crop_x0 = int(a["crop_x0"])
        self.crop_y0 = int(a["crop_y0"])
        self.zp_ref = float(a["zp_ref"])
        self.wcs_header = str(a["wcs_header"])
        self._wcs = None
        self._info: dict[str, BandInfo] = {}
        self._ds: dict[str, object] = {}     # open band datasets (a linked band's file stays open)

    @property
    def wcs(self):
        if self._wcs is None:
            self._wcs = wcs_from_header(header_from_text(self.wcs_header))
        return self._wcs

    @property
    def has_white(self) -> bool:
        return "white" in self._f

    @property
    def has_bright_mask(self) -> bool:
        return "bright_mask" in self._f

    def band_info(self, band: str) -> BandInfo:
        if band not in self._info:
            if band not in self.bands:
                raise KeyError(f"band {band!r} not in prepared store {self.path}")
            try:
                a = self._f[f"bands/{band}"].attrs
            except KeyError:                             # a linked band whose file is gone
                link = self._f["bands"].get(band, getlink=True)
                raise InputError(f"Prepared store {self.path}: the file of band {band!r} "
                                 f"({getattr(link, 'filename', '?')}, beside the store) is missing") from None
            self._info[band] = BandInfo(
                band=band, filter=str(a.get("filter", band)), path=str(a.get("path", "")),
                scale=float(a["scale"]), zp_auto=float(a["zp_auto"]), skysig=float(a["skysig"]),
                egain=float(a["egain"]), saturate=float(a.get("saturate", np.inf)),
                fwhm_pix=float(a.get("fwhm_pix", np.nan)), all_nan=bool(a.get("all_nan", False)),
                header=str(a.get("header", "")), weight=str(a.get("weight", "")),
                weight_kind=str(a.get("weight_kind", "")), psf_file=str(a.get("psf_file", "")),
                star_fwhm_pix=float(a.get("star_fwhm_pix", np.nan)),
                star_beta=float(a.get("star_beta", np.nan)))
        return self._info[band]

    def _box(self, y0, y1, x0, x1):
        H, W = self.shape
        y0, y1 = max(0, int(y0)), min(H, int(y1))
        x0, x1 = max(0, int(x0)), min(W, int(x1))
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"empty region y[{y0}:{y1}] x[{x0}:{x1}] in frame {self.shape}")
        return np.s_[y0:y1, x0:x1]

    def read_bright(self, y0=0, y1=None, x0=0, x1=None) -> np.ndarray:
        sl = self._box(y0, self.shape[0] if y1 is None else y1, x0, self.shape[1] if x1 is None else x1)
        if not self.has_bright_mask:
            shp = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
            return np.zeros(shp, dtype=bool)
        return self._f["bright_mask"][sl] > 0

    def read_white(self, y0=0, y1=None, x0=0, x1=None):
        sl = self._box(y0, self.shape[0] if y1 is None else y1, x0, self.shape[1] if x1 is None else x1)
        return self._f["white/img"][sl], self._f["white/sigma"][sl]

    def _band_ds(self, band: str, name: str):
        """The dataset ``bands/{band}/{name}``, or None when the band has none (kept open)."""
        key = f"bands/{band}/{name}"
        if key not in self._ds:
            self.band_info(band)
            self._ds[key] = self._f[key] if key in self._f else None
        return self._ds[key]

    def read_mask_bits(self, band: str, y0, y1, x0, x1) -> np.ndarray:
        return self._band_ds(band, "mask")[self._box(y0, y1, x0, x1)]

    def read(self, band: str, y0: int, y1: int, x0: int, x1: int, with_bright: bool = True) -> Cutout:
        """Arrays of ``band`` over ``[y0:y1, x0:x1]`` (clipped to the frame)."""
        sl = self._box(y0, y1, x0, x1)
        info = self.band_info(band)
        img = self._band_ds(band, "img")[sl]
        bits = self._band_ds(band, "mask")[sl]
        nonfinite = (bits & MASK_NONFINITE) > 0
        saturated = (bits & MASK_SATURATED) > 0
        bright = self.read_bright(sl[0].start, sl[0].stop, sl[1].start, sl[1].stop) if with_bright \
            else np.zeros(img.shape, dtype=bool)
        ivar_ds = self._band_ds(band, "ivar")
        ivar = ivar_ds[sl] if ivar_ds is not None else None
        sky, total = sigma_maps(img, nonfinite, info, ivar)
        return Cutout(img=img, sigma_sky=sky, sigma_total=total, nonfinite=nonfinite,
                      saturated=saturated, bright=bright,
                      bad_final=compose_final_mask(nonfinite, saturated, bright))

    def close(self) -> None:
        self._ds.clear()
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def __getstate__(self):  # picklable: reopen by path in the receiving process
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])
