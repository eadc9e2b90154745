"""``make_sample``: write a complete synthetic 7DT tile (images, catalogues, truth, config)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from .._version import __version__
from ..errors import InputError
from ..io.atomic import atomic_path
from . import tables
from .bands import PIXEL_SCALE_ARCSEC, band_truths, pick_bands
from .config_yaml import config_text, tile_config
from .options import SampleOptions, sample_options
from .psf import psf_truth_record
from .render import add_noise_and_saturate, galaxy_profiles, render_model
from .sources import band_mags, draw_population

FULL_WIDTH, FULL_HEIGHT = 9576, 6388     #: a real 7DT tile (x, y)
TILE_NAME = "SYN7DT"
ZP_REF = 25.0
CONVENTIONS = {     # copied into truth_meta.json so the truth files describe themselves
    "x, y": "0-based pixel of the full image, x = column, integer = pixel centre",
    "flux_{band}": "counts_ADU * 10**(-0.4*(ZP_AUTO - zp_ref)) (pipeline scaled system)",
    "mag_{band}": "true AB magnitude (counts_ADU = 10**(-0.4*(mag - zp_true)))",
    "re": "half-light radius along the major axis [px]; minor axis = ab*re",
    "theta": "major-axis angle [deg] counter-clockwise from +x, in (-90, 90] (catalogue THETA)",
    "psf": "tract7dt_mpi.sample.psf module docstring; header PSF* cards",
    "noise": "Poisson((model+sky_e/egain)*egain)/egain - sky_e/egain; clipped at SATURATE",
    "saturated": "the object's own noise-free peak >= SATURATE in some band (peak_over_saturate = max ratio)",
    "drawn_frac_{band}": "share of flux_{band} drawn into the image (stamp and image edges cut the rest)",
    "snr_{band}": "ideal S/N: sqrt(sum m^2 / (SKYSIG^2 + m/EGAIN)) over the object's own noise-free pixels m [ADU]",
    "blend_host_id": "ID of the star a blend galaxy was placed next to (--blends), else empty",
    "psf_truth.json": "per band: PSF kind, FWHM, shear, share of the flux in centred boxes, at the tile centre",
    "options": "the make-sample options that differ from the defaults",
}


def _atomic(path: Path, write) -> Path:
    """Call ``write(tmp_path)``, then rename onto ``path`` (io.atomic: no half-written products)."""
    with atomic_path(path) as tmp:
        write(Path(tmp))
    return path


def _write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda p: p.write_text(text))


def _int_arg(name: str, value, lo: int, hi: int | None = None) -> int:
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise InputError(f"make-sample {name}: expected an integer {rng}, got {value!r}")
    return int(value)


def image_header(bt, width: int, height: int, seed: int, pedestal: float = 0.0) -> fits.Header:
    """Primary header of one band: 7DT-style keywords, TAN WCS and the PSF truth cards."""
    hdr = fits.Header()
    hdr["OBJECT"] = (TILE_NAME, "synthetic 7DT tile")
    hdr["TELESCOP"] = ("7DT", "synthetic (tract7dt-mpi make-sample)")
    hdr["FILTER"] = (bt.band, "7DT medium band")
    hdr["BUNIT"] = ("ADU", "sky-subtracted")
    for k, v, c in tables.wcs_cards(width, height):
        hdr[k] = (v, c)
    fwhm_c = bt.psf.at((width - 1) / 2.0, (height - 1) / 2.0)[0]
    hdr["ZP_AUTO"] = (bt.zp_auto, "[AB mag] ZP (deliberately off the truth)")
    hdr["SKYSIG"] = (round(bt.skysig, 6), "[ADU] sky noise rms")
    hdr["EGAIN"] = (bt.egain, "[e-/ADU] effective gain")
    hdr["SATURATE"] = (bt.saturate, "[ADU] pixels at or above are clipped")
    hdr["PEEING"] = (round(fwhm_c, 4), "[px] PSF FWHM at the tile centre")
    hdr["SEEING"] = (round(fwhm_c * PIXEL_SCALE_ARCSEC, 4), "[arcsec] PSF FWHM at the tile centre")
    hdr["SKYLEVEL"] = (round(bt.sky_e / bt.egain, 4), "[ADU] subtracted sky level")
    if pedestal:
        hdr["SKYPED"] = (float(pedestal), "[ADU] constant left on the image (unsubtracted)")
    hdr["PSFMODEL"] = (bt.psf.kind.upper(), "synthetic PSF truth (tract7dt_mpi.sample.psf)")
    for k, v, c in bt.psf.header_cards():
        hdr[k] = (v, c)
    hdr["SAMPSEED"] = (int(seed), "make-sample seed")
    hdr["SAMPVER"] = (__version__, "tract7dt-mpi version that made this image")
    return hdr


def _write_tables(out: Path, pop, mags, bts, radec, render, wcs, seed, width, height, full_size,
                  opts: SampleOptions) -> dict:
    """Write truth.csv, input_catalog.csv, gaiaxp_synphot.csv, image_list.txt, truth_meta.json,
    psf_truth.json, config. ``render``: (peak_ratio, drawn, snr) from the band loop."""
    peak_ratio, drawn, snr = render
    gaia_ids = tables.assign_gaia_ids(pop["kind"], pop["g_mag"].to_numpy(), seed)
    truth = tables.truth_table(pop, mags, bts, radec, peak_ratio, gaia_ids, ZP_REF, drawn, snr)
    cat = tables.input_catalog(truth, bts, wcs, seed, opts)
    gaia = tables.gaia_table(truth, bts, width, height, seed)
    images = [f"images/{TILE_NAME}_{bt.band}.fits" for bt in bts]
    paths = {
        "truth": _atomic(out / "truth.csv", lambda p: tables.truth_csv_frame(truth).to_csv(p, index=False)),
        "input_catalog": _atomic(out / "input_catalog.csv", lambda p: cat.to_csv(p, index=False)),
        "gaiaxp_synphot": _atomic(out / "gaiaxp_synphot.csv", lambda p: gaia.to_csv(p, index=False)),
        "image_list": _write_text(out / "image_list.txt", "# synthetic 7DT tile: one FITS image per line, "
                                  "relative to this folder\n" + "".join(f"{p}\n" for p in images)),
    }
    meta = {
        "generator": "tract7dt_mpi.sample.make_sample", "version": __version__, "seed": seed,
        "tile": TILE_NAME, "width": width, "height": height, "full_size": bool(full_size),
        "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC, "crval": [tables.TILE_RA, tables.TILE_DEC],
        "zp_ref": ZP_REF, "n_objects": int(len(pop)), "n_catalogued": int(len(cat)),
        "n_gaia": int(len(gaia)), "bands": [bt.to_dict() for bt in bts], "images": images,
        "conventions": CONVENTIONS, "options": opts.changed(),
    }
    paths["truth_meta"] = _write_text(out / "truth_meta.json", json.dumps(meta, indent=1) + "\n")
    psf = {"note": "PSF at the tile centre per band; the exact PSF anywhere: tract7dt_mpi.sample.truth."
                   "true_psf_stamp(band, x, y, size, tile_dir) (x, y: 0-based full-frame pixels)",
           "bands": {bt.band: psf_truth_record(bt.psf) for bt in bts}}
    paths["psf_truth"] = _write_text(out / "psf_truth.json", json.dumps(psf, indent=1) + "\n")
    paths["config"] = _write_text(out / "config.yaml",
                                  config_text(tile_config(TILE_NAME, width, height, full_size)))
    return paths


def _stamp_tol(opts):
    """Untruncated galaxies need stamps sized to their light (all but 0.1 % of it, unless set)."""
    if opts.stamp_flux_tol is None and not opts.galaxy_truncation:
        return 1e-3
    return opts.stamp_flux_tol


def make_sample(out_dir, bands: int = 8, size: int = 1024, seed: int = 7, full_size: bool = False,
                n_sources: int | None = None, verbose: bool = True, **options) -> dict:
    """Render a deterministic synthetic 7DT tile into ``out_dir``; return the paths written.

    ``full_size`` makes a 9576 x 6388 px tile (``size`` is then ignored) with 3000 catalogued
    sources by default. ``n_sources`` overrides the number of catalogued sources (default about 270
    per 1024 x 1024 px). ``options``: the scene options of
    :class:`~tract7dt_mpi.sample.options.SampleOptions` (PSF kind, beta, FWHM trend, shear, galaxy
    magnitudes, star counts, blends, pedestal, untruncated galaxies, stamp flux tolerance, ...);
    the defaults give the original tile. Returned keys: out_dir, images (list), image_list,
    input_catalog, gaiaxp_synphot, truth, truth_meta, psf_truth, config (absolute path strings).
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    opts = sample_options(**options)
    nb = _int_arg("--bands", bands, 1, 40)
    seed = _int_arg("--seed", seed, 0)
    if full_size:
        width, height = FULL_WIDTH, FULL_HEIGHT
    else:
        width = height = _int_arg("--size", size, 128, 20000)
    if n_sources is not None:
        n_sources = _int_arg("n_sources", n_sources, 1)
    out = Path(out_dir).expanduser().resolve()
    img_dir = out / "images"
    try:
        img_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"make-sample: cannot create {img_dir}: {exc.strerror}") from None

    def say(msg):
        if verbose:
            print(f"make-sample: {msg}", flush=True)

    bts = band_truths(pick_bands(nb), seed, width, height, opts)
    pop = draw_population(seed, width, height, n_sources, bright_only=full_size, options=opts)
    mags = band_mags(pop, [bt.wave_nm for bt in bts])
    wcs = tables.tile_wcs(width, height)
    radec = np.column_stack(wcs.all_pix2world(pop["x"].to_numpy(), pop["y"].to_numpy(), 0))
    profiles = galaxy_profiles(pop, truncate=opts.galaxy_truncation)
    say(f"{width}x{height} px, {len(bts)} bands, {int(pop['in_catalog'].sum())} catalogued + "
        f"{int((~pop['in_catalog']).sum())} uncatalogued objects, seed {seed}")

    peak_ratio = np.zeros(len(pop))
    drawn, snr = np.zeros((len(pop), len(bts))), np.zeros((len(pop), len(bts)))
    images = []
    for j, bt in enumerate(bts):
        t0 = time.perf_counter()
        model, peaks, drawn[:, j], snr[:, j] = render_model(
            pop, profiles, bt.mag_to_adu(mags[:, j]), bt, width, height,
            stamp_flux_tol=_stamp_tol(opts), truncated=opts.galaxy_truncation)
        peak_ratio = np.maximum(peak_ratio, peaks / bt.saturate)
        t1 = time.perf_counter()
        img = add_noise_and_saturate(model, bt, seed, pedestal=opts.sky_pedestal)
        t2 = time.perf_counter()
        path = img_dir / f"{TILE_NAME}_{bt.band}.fits"
        hdu = fits.PrimaryHDU(data=img, header=image_header(bt, width, height, seed, opts.sky_pedestal))
        _atomic(path, lambda p: hdu.writeto(p, output_verify="exception"))
        del img, model, hdu
        images.append(path)
        say(f"band {bt.band} ({j + 1}/{len(bts)}): render {t1 - t0:.1f} s, noise {t2 - t1:.1f} s, "
            f"write {time.perf_counter() - t2:.1f} s")

    paths = {"out_dir": out, "images": images}
    paths.update(_write_tables(out, pop, mags, bts, radec, (peak_ratio, drawn, snr), wcs, seed, width,
                               height, full_size, opts))
    say(f"done in {time.perf_counter() - t_start:.1f} s wall, {time.process_time() - cpu_start:.1f} s CPU -> {out}")
    return {k: ([str(p) for p in v] if isinstance(v, list) else str(v)) for k, v in paths.items()}
