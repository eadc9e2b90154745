"""Load and validate the inputs, streaming one band at a time.

:func:`plan_load` first reads every FITS *header* (cheap) and runs all checks that can fail
(header keywords, duplicate FILTER, shape, WCS alignment, catalog bands), so a bad input stops
the run before any pixel work, and lists one job per band. Each band is then prepared on its own
(:func:`tract7dt_mpi.stages.load_band.load_band`: read -> check -> scale and mask -> Moffat ->
weight map) and added to the white stack; :func:`finish_load` applies the saturation cut to the
catalogue. :func:`load_inputs` does all of it in this process, one band in memory at a time; the
pipeline runs the bands as tasks (:mod:`tract7dt_mpi.load_steps`).
"""
from __future__ import annotations

import logging
import os
import pickle
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from ..errors import InputError
from ..io import fits as fio
from ..io.prepared import BandInfo
from . import data_checks
from .catalog import ColumnMap, check_bands, read_catalog, validate_catalog
from .band_headers import check_alignment, headers_pass, parse_band_header
from .image_list import attach_entry_files, read_image_entries, read_image_list
from .load_band import BandJob, PreparedBand, band_attrs, load_band, prepare_band

__all__ = ["read_image_list", "parse_band_header", "prepare_band", "PreparedBand", "check_alignment",
           "crop_box", "load_inputs", "LoadOptions", "LoadResult", "WhiteStack", "SaturationCut",
           "saturation_hits", "project_catalog", "LoadPlan", "plan_load", "finish_load",
           "pre_crop_stack", "add_pre_crop"]

log = logging.getLogger("tract7dt_mpi.stages.load")


class WhiteStack:
    """Inverse-variance white stack accumulated one band at a time.

    Per band ``w = 1/max(sigma_sky^2, 1e-12)`` on finite pixels (saturated pixels keep their
    weight), 0 elsewhere; ``white = sum(w*img)/sum(w)`` (NaN where sum(w) = 0) and
    ``sigma_white = sqrt(1/sum(w))`` (inf there), both float32. Sums are float64 and updated in
    row chunks of ``max(256, min(1024, H//8))`` rows to bound temporaries.
    """

    def __init__(self, shape):
        self.shape = tuple(int(v) for v in shape)
        self._num = np.zeros(self.shape, dtype=np.float64)
        self._den = np.zeros(self.shape, dtype=np.float64)
        self.step = max(256, min(1024, self.shape[0] // 8))
        self.n_bands = 0

    def add(self, img: np.ndarray, nonfinite: np.ndarray, sigma_sky) -> None:
        """Add one band; ``sigma_sky`` is a scalar or an array of the band's shape."""
        if img.shape != self.shape:
            raise ValueError(f"white stack: band shape {img.shape} != {self.shape}")
        scalar = np.ndim(sigma_sky) == 0
        for r0 in range(0, self.shape[0], self.step):
            sl = slice(r0, r0 + self.step)
            sig = np.float64(sigma_sky) if scalar else np.asarray(sigma_sky[sl], dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                w = 1.0 / np.maximum(sig * sig, 1e-12)
                good = ~nonfinite[sl] & np.isfinite(sig) & (sig > 0)
                w = np.where(good, w, 0.0)
                self._num[sl] += np.where(good, w * img[sl], 0.0)
            self._den[sl] += w
        self.n_bands += 1

    def finalize(self):
        """(white, sigma_white) float32; the accumulators are released."""
        white = np.empty(self.shape, dtype=np.float32)
        sigma = np.empty(self.shape, dtype=np.float32)
        for r0 in range(0, self.shape[0], self.step):
            sl = slice(r0, r0 + self.step)
            den = self._den[sl]
            with np.errstate(divide="ignore", invalid="ignore"):
                white[sl] = np.where(den > 0, self._num[sl] / den, np.nan)
                sigma[sl] = np.where(den > 0, np.sqrt(1.0 / den), np.inf)
        self._num = self._den = None
        return white, sigma


def _hits_one_band(xc, yc, pix, radius) -> np.ndarray:
    """True where a saturated pixel (rows of ``pix`` = (y, x)) lies within ``radius`` of the
    integer centre (xc, yc): the in-bounds integer offsets of the disk."""
    hit = np.zeros(len(xc), dtype=bool)
    if len(pix) == 0 or len(xc) == 0:
        return hit
    from scipy.spatial import cKDTree
    tree = cKDTree(pix[:, ::-1].astype(np.float64))
    d, _ = tree.query(np.column_stack([xc, yc]), k=1, distance_upper_bound=radius + 1e-9)
    hit[:] = np.isfinite(d) & (d <= radius + 1e-9)
    return hit


def saturation_hits(x, y, band_pixels, radius: float, require_all: bool = False) -> np.ndarray:
    """Saturation-cut flag at pixel positions: any (or all) bands hit within
    ``radius`` of the rounded position; non-finite positions are never flagged."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    cut = SaturationCut(x, y, radius, require_all)
    for pix in band_pixels:
        cut.add_band(pix)
    return cut.result()


class SaturationCut:
    """Streaming any-band / all-bands saturation cut over catalog positions."""

    def __init__(self, x, y, radius: float, require_all: bool = False):
        self.radius = max(0.0, float(radius))
        self.require_all = bool(require_all)
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        self._ok = np.isfinite(x) & np.isfinite(y)
        self._xc = np.rint(x[self._ok])
        self._yc = np.rint(y[self._ok])
        self._acc = None

    def add_band(self, satur_pixels: np.ndarray) -> None:
        """``satur_pixels``: (n, 2) array of (y, x) of the band's saturated pixels."""
        h = _hits_one_band(self._xc, self._yc, np.asarray(satur_pixels).reshape(-1, 2), self.radius)
        if self._acc is None:
            self._acc = h
        elif self.require_all:
            self._acc &= h
        else:
            self._acc |= h

    def result(self) -> np.ndarray:
        out = np.zeros(self._ok.shape, dtype=bool)
        if self._acc is not None:
            out[self._ok] = self._acc
        return out


def crop_box(shape, crop) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) kept by the ``crop`` section (whole frame when disabled); InputError when empty."""
    H, W = shape
    if not crop.enabled:
        return 0, W, 0, H
    m = int(crop.margin)
    x0, x1, y0, y1 = m, W - m, m, H - m
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"Invalid crop region: crop.margin={m} leaves nothing of a {W}x{H} frame")
    return x0, x1, y0, y1


def project_catalog(df: pd.DataFrame, cmap: ColumnMap, wcs: WCS) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel (x, y) of every row with the given WCS; NaN for non-finite RA/DEC."""
    ra = pd.to_numeric(df[cmap.ra], errors="coerce").to_numpy(float)
    dec = pd.to_numeric(df[cmap.dec], errors="coerce").to_numpy(float)
    x = np.full(len(df), np.nan)
    y = np.full(len(df), np.nan)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if ok.any():
        px, py = wcs.all_world2pix(ra[ok], dec[ok], 0, quiet=True) if _has_sip(wcs) \
            else wcs.all_world2pix(ra[ok], dec[ok], 0)
        x[ok], y[ok] = px, py
    x[~np.isfinite(x) | ~np.isfinite(y)] = np.nan
    y[~np.isfinite(x)] = np.nan
    return x, y


def _settled_wcs(wcs: WCS) -> WCS:
    """``wcs`` as a copy sent to another process gives it back. Astropy pickles a WCS through
    its FITS header, to 16 significant digits, so the first copy can differ in the last bit (a CD
    element 0.000140277777777777 comes back 0.00014027777777778) and later copies do not; with the
    settled WCS, every rank that projects with the plan's WCS gets the same pixels."""
    return pickle.loads(pickle.dumps(wcs, protocol=pickle.HIGHEST_PROTOCOL))


def _has_sip(wcs):
    return getattr(wcs, "sip", None) is not None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class LoadOptions:
    """What the load stage reads from the config (built by :func:`tract7dt_mpi.stage_options.load_options`).

    ``checks``, ``crop`` and ``saturation_cut`` are the config sections of those names
    (``source_saturation_cut`` for the last); ``need_psf``: every band needs a PSFEx file
    (``patch_run.psf_source: psfex``).
    """

    input_catalog: str
    image_list_file: str
    config_dir: str
    work_dir: str
    zp_ref: float
    checks: object
    crop: object
    saturation_cut: object
    need_psf: bool


@dataclass
class LoadResult:
    """Everything later stages need from the load stage (per-band arrays live in the store)."""

    catalog: pd.DataFrame
    column_map: ColumnMap
    catalog_path: str
    bands: list
    band_infos: dict
    wcs: WCS
    shape: tuple
    white: np.ndarray
    sigma_white: np.ndarray
    satur_any: np.ndarray
    satur_pixels: dict            # band -> (n, 2) int32 (y, x) of saturated working-frame pixels
    crop: tuple                   # (x0, x1, y0, y1) in the original frame
    wcs_path: str | None = None
    timings: dict = field(default_factory=dict)
    white_before_crop: np.ndarray | None = None   # strided full-frame white (``plots`` and cropping)
    display_downsample: int = 1                   # its stride
    peak_rss: float = float("nan")  # MiB

    def satur_hits(self, x, y, radius: float, require_all: bool = False) -> np.ndarray:
        """Saturation-cut rule at working-frame positions (for candidate Gaia rows)."""
        use = [b for b in self.bands if not self.band_infos[b].all_nan]
        return saturation_hits(x, y, [self.satur_pixels[b] for b in use], radius, require_all)


@dataclass
class LoadPlan:
    """The load stage before any pixel is read: the checked headers, the working frame, the
    projected catalogue and one :class:`~.load_band.BandJob` per band (image-list order)."""

    catalog: pd.DataFrame
    column_map: ColumnMap
    catalog_path: str
    jobs: list
    wcs: WCS                      # working frame
    shape: tuple                  # working frame (H, W)
    full_shape: tuple             # input images (H, W)
    crop: tuple                   # (x0, x1, y0, y1) in the original frame
    zp_ref: float
    saturation_cut: object        # the config section
    work_dir: str
    display_downsample: int = 0   # > 0: the strided pre-crop white is built (crop figure)
    timings: dict = field(default_factory=dict)
    t_start: float = 0.0

    @property
    def wcs_header(self) -> str:
        return fio.header_to_text(self.wcs.to_header(relax=True))


def plan_load(opts: LoadOptions, logger: logging.Logger | None = None, plots: bool = True) -> LoadPlan:
    """Read the catalogue and every FITS *header*, run every check that needs no pixel, project the
    catalogue on the working frame and list the band jobs. ``plots`` asks for the strided pre-crop
    white of the crop figure."""
    logger = logger or log
    t_all = time.perf_counter()
    cat_path = opts.input_catalog
    catalog = read_catalog(cat_path)
    cmap = validate_catalog(catalog, cat_path, logger)
    entries = read_image_entries(opts.image_list_file, opts.config_dir)
    paths = [e.image for e in entries]
    logger.info("Image list: %d image(s) from %s", len(paths), opts.image_list_file)
    infos, shape, ref_wcs = headers_pass(paths, float(opts.zp_ref), opts.checks, logger)
    infos = _with_entry_files(infos, entries, shape, opts.need_psf)
    check_bands(catalog, [i.band for i in infos], cat_path, logger)

    t0 = time.perf_counter()
    x0, x1, y0, y1 = crop_box(shape, opts.crop)
    wcs = _settled_wcs(ref_wcs[y0:y1, x0:x1] if (x0, y0, x1, y1) != (0, 0, shape[1], shape[0])
                      else ref_wcs)
    wshape = (y1 - y0, x1 - x0)
    catalog = catalog.copy()
    catalog["_row"] = np.arange(len(catalog), dtype=np.int64)
    xw, yw = project_catalog(catalog, cmap, wcs)
    catalog["x_pix_white"], catalog["y_pix_white"] = xw, yw
    cropping = bool(opts.crop.enabled)
    inside = np.isfinite(xw) & (xw >= 0) & (xw < wshape[1]) & (yw >= 0) & (yw < wshape[0])
    no_coords = _coordinate_checks(catalog, cmap, xw, yw, wshape, wcs, cat_path, logger)
    catalog["excluded_crop"] = (~inside & ~no_coords) if cropping else np.zeros(len(catalog), bool)
    catalog["excluded_coords"] = no_coords
    star_xy = _star_candidates(catalog, cmap.type)
    crop_s = time.perf_counter() - t0

    ds = max(1, int(opts.crop.display_downsample)) if plots and cropping and bool(opts.crop.plot_pre_crop) else 0
    divisor = float(opts.saturation_cut.saturation_divisor)
    jobs = [BandJob(index=k, info=info, box=(y0, y1, x0, x1), saturation_divisor=divisor,
                    star_xy=star_xy, pre_crop_step=ds) for k, info in enumerate(infos)]
    return LoadPlan(catalog=catalog, column_map=cmap, catalog_path=cat_path, jobs=jobs, wcs=wcs,
                    shape=wshape, full_shape=tuple(shape), crop=(x0, x1, y0, y1), zp_ref=float(opts.zp_ref),
                    saturation_cut=opts.saturation_cut, work_dir=opts.work_dir, display_downsample=ds,
                    timings=dict(prep=0.0, white=0.0, crop=crop_s, sat=0.0), t_start=t_all)


def pre_crop_stack(plan: LoadPlan) -> WhiteStack | None:
    """The accumulator of the strided pre-crop white (None when the crop figure is not drawn)."""
    ds = plan.display_downsample
    if ds <= 0:
        return None
    H, W = plan.full_shape
    return WhiteStack((len(range(0, H, ds)), len(range(0, W, ds))))


def add_pre_crop(stack: WhiteStack, small: np.ndarray, info: BandInfo) -> None:
    """One band's strided scaled full frame into the pre-crop white (SKYSIG weights)."""
    stack.add(small, ~np.isfinite(small), info.skysig * info.scale)


def finish_load(plan: LoadPlan, band_infos: list, satur_pixels: list, white: np.ndarray,
                sigma_white: np.ndarray, white_before_crop: np.ndarray | None = None,
                logger: logging.Logger | None = None) -> LoadResult:
    """The all-band end of the stage once every band is prepared (``band_infos`` and
    ``satur_pixels`` in band order, the finished white stack): saturation cut, exclusion flags,
    WCS snapshot, :class:`LoadResult`."""
    logger = logger or log
    tm = plan.timings
    t0 = time.perf_counter()
    shape, catalog = plan.shape, plan.catalog
    satur_any = np.zeros(shape, dtype=bool)
    sc = plan.saturation_cut
    sat_on = bool(sc.enabled)
    satcut = SaturationCut(catalog["x_pix_white"].to_numpy(float), catalog["y_pix_white"].to_numpy(float),
                           float(sc.radius_pix), bool(sc.require_all_bands))
    for info, pix in zip(band_infos, satur_pixels):
        satur_any[pix[:, 0], pix[:, 1]] = True
        if sat_on and not info.all_nan:
            satcut.add_band(pix)
    catalog["excluded_saturation"] = satcut.result() if sat_on else np.zeros(len(catalog), bool)
    tm["sat"] += time.perf_counter() - t0
    if sat_on:
        rule = "all-bands" if satcut.require_all else "any-band"
        logger.info("Saturation-cut (%s): flagged %d/%d sources within radius_pix=%s", rule,
                    int(catalog["excluded_saturation"].sum()), len(catalog), satcut.radius)
    catalog["excluded_any"] = catalog["excluded_crop"].to_numpy(bool) | catalog["excluded_saturation"].to_numpy(bool) \
        | catalog["excluded_coords"].to_numpy(bool)
    n_act = int((~catalog["excluded_any"]).sum())
    logger.info("Active (non-excluded) sources: %d/%d", n_act, len(catalog))

    wcs_path = os.path.join(plan.work_dir, "wcs.fits")
    fio.write_wcs_snapshot(wcs_path, plan.wcs, shape)
    logger.info("Saved WCS snapshot: %s", wcs_path)

    infos = {i.band: i for i in band_infos}
    res = LoadResult(catalog=catalog, column_map=plan.column_map, catalog_path=plan.catalog_path,
                     bands=list(infos), band_infos=infos, wcs=plan.wcs, shape=shape, white=white,
                     sigma_white=sigma_white, satur_any=satur_any,
                     satur_pixels={i.band: p for i, p in zip(band_infos, satur_pixels)}, crop=plan.crop,
                     wcs_path=wcs_path)
    if white_before_crop is not None:
        res.white_before_crop, res.display_downsample = white_before_crop, plan.display_downsample
    tm["total"] = time.perf_counter() - plan.t_start
    res.timings = tm
    res.peak_rss = peak_rss_mib()
    logger.info("load_inputs timing [s]: prep=%.2f white=%.2f crop=%.2f sat=%.2f total=%.2f",
                tm["prep"], tm["white"], tm["crop"], tm["sat"], tm["total"])
    logger.info("load_inputs peak RSS: %.0f MiB (%d bands of %dx%d)", res.peak_rss, len(infos),
                shape[1], shape[0])
    return res


def load_inputs(opts: LoadOptions, writer=None, logger: logging.Logger | None = None, plots: bool = True,
                on_band=None) -> LoadResult:
    """Run stage S1 in this process and return a :class:`LoadResult`; per-band arrays go to
    ``writer`` (a :class:`~tract7dt_mpi.io.prepared.PreparedWriter`, created here) and are then
    freed. ``on_band(i, n, band, seconds, shape)`` is called after each band (progress). ``plots``
    keeps the strided pre-crop white the crop figure needs (``res.white_before_crop``); the
    pipeline draws the figures (:func:`tract7dt_mpi.figures.draw_load`). A run of the pipeline
    does the same with one task per band (:mod:`tract7dt_mpi.load_steps`)."""
    logger = logger or log
    plan = plan_load(opts, logger, plots)
    tm = plan.timings
    white = WhiteStack(plan.shape)
    white_full = pre_crop_stack(plan)
    if writer is not None:
        x0, _, y0, _ = plan.crop
        writer.create(plan.shape, x0, y0, plan.zp_ref, plan.wcs_header)
    infos, satur_pixels = [], []
    for job in plan.jobs:  # ---- stream: one band in memory at a time ----
        t_band = time.perf_counter()
        got = load_band(job, logger)
        tm["prep"] += got.seconds["prep"]
        if white_full is not None:
            add_pre_crop(white_full, got.pre_crop, job.info)
        t0 = time.perf_counter()
        pb = got.band
        white.add(pb.img, pb.nonfinite, got.white_sigma())
        tm["white"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        satur_pixels.append(got.satur_pixels)
        tm["sat"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if writer is not None:
            writer.write_band(pb.info.band, pb.img, pb.mask_bits(), band_attrs(pb.info), ivar=got.ivar)
        tm["prep"] += time.perf_counter() - t0
        infos.append(pb.info)
        del pb, got
        if on_band is not None:
            on_band(job.index + 1, len(plan.jobs), job.info.band, time.perf_counter() - t_band, plan.shape)

    t0 = time.perf_counter()
    white_img, sigma_white = white.finalize()
    del white
    if writer is not None:
        writer.write_white(white_img, sigma_white)
    tm["white"] += time.perf_counter() - t0
    before = white_full.finalize()[0] if white_full is not None else None
    return finish_load(plan, infos, satur_pixels, white_img, sigma_white, before, logger)


def _coordinate_checks(catalog, cmap, xw, yw, wshape, wcs, cat_path, logger) -> np.ndarray:
    """Rows without usable RA/DEC (warned about, returned); InputError when no row is on the image."""
    no_coords = data_checks.bad_coordinates(catalog[cmap.ra], catalog[cmap.dec])
    data_checks.warn_bad_coordinates(no_coords, cat_path, logger)
    data_checks.check_rows_on_image(xw, yw, wshape, wcs, cat_path)
    return no_coords


def _with_entry_files(infos, entries, shape, need_psf):
    """BandInfos with their weight map / PSFEx file from the image list or header (checked)."""
    return [attach_entry_files(i, e, fio.header_from_text(i.header), shape, need_psf)
            for i, e in zip(infos, entries)]


def _star_candidates(catalog, type_col: str | None) -> np.ndarray:
    """Working-frame (x, y) of the rows the fallback Moffat is fitted to: the catalogue's STAR
    rows when it types any, else every row (stages.star_moffat keeps the stellar locus)."""
    x = pd.to_numeric(catalog["x_pix_white"], errors="coerce").to_numpy(float)
    y = pd.to_numeric(catalog["y_pix_white"], errors="coerce").to_numpy(float)
    sel = np.ones(len(catalog), bool)
    if type_col and type_col in catalog.columns:
        star = catalog[type_col].astype(str).str.strip().str.upper().eq("STAR").to_numpy()
        if star.sum() >= 3:
            sel = star
    return np.stack([x[sel], y[sel]], axis=1)
