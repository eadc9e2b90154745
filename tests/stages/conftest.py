"""Tiny synthetic 7DT-like inputs written into tmp_path: FITS bands, image list, catalog, config.

Stars are analytic circular Gaussians on a flat zero sky plus Gaussian noise of SKYSIG ADU, so
tests can compute expected values (white stack, saturation, positions) independently of the code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

os.environ.setdefault("MPLBACKEND", "Agg")

SHAPE = (120, 140)  # (H, W)


def make_wcs(shape=SHAPE, crval=(150.0, 2.0), pixscale_arcsec=0.5, crpix=None) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix) if crpix is not None else [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    s = pixscale_arcsec / 3600.0
    w.wcs.cd = [[-s, 0.0], [0.0, s]]
    return w


def gaussian_image(shape, stars, fwhm=3.0):
    """Sum of unit-integral circular Gaussians scaled by flux: stars = [(x, y, flux), ...]."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    sig = fwhm / 2.3548200450309493
    img = np.zeros(shape)
    for x, y, f in stars:
        img += f / (2 * np.pi * sig ** 2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sig ** 2))
    return img


@dataclass
class Tile:
    root: str
    image_paths: list
    catalog_path: str
    image_list: str
    wcs: WCS
    shape: tuple
    raw: dict = field(default_factory=dict)      # band -> raw float32 array written
    headers: dict = field(default_factory=dict)  # band -> header dict used

    def cfg(self, **sections):
        from tract7dt_mpi.config import config_from_dict
        d = {
            "inputs": {"input_catalog": self.catalog_path, "image_list_file": self.image_list,
                       "gaiaxp_synphot_csv": None},
            "outputs": {"work_dir": os.path.join(self.root, "work")},
            "crop": {"enabled": True, "margin": 10, "plot_pre_crop": False, "plot_post_crop": False},
            "overlay": {"enabled": False},
            "plotting": {"dpi": 40},
        }
        for k, v in sections.items():
            d.setdefault(k, {}).update(v)
        return config_from_dict(d, base_dir=self.root)


def write_fits(path, data, header: dict, wcs: WCS | None):
    hdr = wcs.to_header() if wcs is not None else fits.Header()
    for k, v in header.items():
        if v is not None:
            hdr[k] = v
    fits.PrimaryHDU(data=data, header=hdr).writeto(path, overwrite=True)


def build_tile(root, bands=("m400", "m500"), shape=SHAPE, stars=None, catalog_rows=None,
               header_over=None, zp=None, skysig=5.0, saturate=60000.0, seed=1, extra=None,
               catalog_flux=True) -> Tile:
    """Write one FITS per band + image_list.txt + catalog.csv under ``root``.

    ``stars``: [(x, y, flux_adu)] rendered in every band; ``catalog_rows``: list of dicts with
    x/y (pixel, converted to RA/DEC) or RA/DEC plus any other columns; default = the stars.
    ``header_over``: {band: {KEY: value-or-None}} (None removes the key).
    ``extra``: {band: callable(raw) -> raw} to plant saturation or NaNs.
    """
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    wcs = make_wcs(shape)
    stars = stars if stars is not None else [(40.0, 50.0, 2e4), (90.0, 70.0, 1e4)]
    zp = zp or {b: 25.0 + 0.5 * i for i, b in enumerate(bands)}
    paths, raws, hdrs = [], {}, {}
    for i, b in enumerate(bands):
        raw = gaussian_image(shape, stars) + rng.normal(0, skysig, shape)
        raw = raw.astype(np.float32)
        if extra and b in extra:
            raw = extra[b](raw)
        h = {"FILTER": b, "ZP_AUTO": zp[b], "SKYSIG": skysig, "EGAIN": 1.5, "SATURATE": saturate,
             "PEEING": 3.0}
        h.update((header_over or {}).get(b, {}))
        h = {k: v for k, v in h.items() if v is not None}
        p = os.path.join(root, f"img_{b}.fits")
        write_fits(p, raw, h, wcs)
        paths.append(p)
        raws[b], hdrs[b] = raw, h
    rows = catalog_rows
    if rows is None:
        rows = [{"ID": f"{i:05d}", "x": x, "y": y, "TYPE": "STAR"} for i, (x, y, _) in enumerate(stars)]
    recs = []
    for r in rows:
        r = dict(r)
        if "x" in r:
            ra, dec = wcs.all_pix2world([r.pop("x")], [r.pop("y")], 0)
            r.setdefault("RA", float(ra[0]))
            r.setdefault("DEC", float(dec[0]))
        recs.append(r)
    cat = pd.DataFrame(recs)
    if catalog_flux:
        for b in bands:
            cat[f"FLUX_{b}"] = 100.0
    cat_path = os.path.join(root, "catalog.csv")
    cat.to_csv(cat_path, index=False)
    lst = os.path.join(root, "image_list.txt")
    with open(lst, "w") as fh:
        fh.write("# test image list\n\n" + "\n".join(os.path.basename(p) for p in paths) + "\n")
    return Tile(root=str(root), image_paths=paths, catalog_path=cat_path, image_list=lst, wcs=wcs,
                shape=shape, raw=raws, headers=hdrs)


@pytest.fixture
def tile_factory(tmp_path):
    counter = {"n": 0}

    def make(**kw):
        counter["n"] += 1
        return build_tile(str(tmp_path / f"tile{counter['n']}"), **kw)
    return make


@pytest.fixture
def synth():
    """The helper functions of this conftest (test modules here are not a package)."""
    from types import SimpleNamespace
    return SimpleNamespace(make_wcs=make_wcs, gaussian_image=gaussian_image, write_fits=write_fits)
