"""One patch's in-memory unit of work: ROI cut-outs of every band, the PSF
choice inputs and the catalog sub-table, built from the prepared-image store by any rank.

Replaces the original gzip-pickle payloads: nothing is written by default; for debugging or
re-running one patch, :func:`patch_input_record` turns a patch into named arrays (cut-outs, PSF
stamps) and a JSON-ready document (catalog, band numbers, geometry), which
:mod:`tract7dt_mpi.io.patch_dumps` writes as ``{patch_tag}.npz`` + ``{patch_tag}.json``, and
:func:`patch_input_from_record` turns them back into a PatchInput. No pickles anywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputError
from .patches import PatchSpec

_CUTOUT_FIELDS = ("img", "sigma_sky", "sigma_total", "nonfinite", "saturated", "bright",
                  "bad_final")


@dataclass
class PsfChoiceInput:
    """What the fitter needs to choose one band's PSF for one ePSF cell.

    ``stamp``: the ePSF (float32, unit sum) or None when the cell has no ePSF; ``nstars_used``:
    from the cell's meta.json (None when unknown); ``path``: where the ePSF lives (for the audit);
    ``sources``: ((cell tag, weight), ...) when the stamp is interpolated between cells;
    ``flux_err_frac``: the band's PSF flux-error fraction (stages.psf_error; NaN when unknown);
    ``stars``: ((x, y, share), ...) the ePSF's own stars (working frame) and their shares of it, so
    the PSF check of a fitted star that is one of them can undo the part of its residual the ePSF
    absorbed; ``flux_in_stamp``: the fraction of the PSF's total flux inside the (unit-sum) stamp,
    by which fitted fluxes are divided to make them total fluxes; ``note``: how the stamp was
    made when not from the own cell (e.g. from the nearest cells of the band); ``halos``,
    ``halo_wing``: see :func:`build_patch_input`.
    """

    stamp: np.ndarray | None
    nstars_used: int | None = None
    path: str = ""
    sources: tuple = ()
    flux_err_frac: float = float("nan")
    stars: tuple = ()
    flux_in_stamp: float = 1.0
    note: str = ""
    #: bright stars' halos beyond the stamp, subtracted from the patch images: ((x, y, total
    #: flux), ...) working frame, and the band's wing (amp, slope) of a unit-total PSF
    halos: tuple = ()
    halo_wing: tuple = ()
    #: per row of the patch catalogue: the (shape, normalisation) factors a point source's total
    #: flux needs because the PSF at its own position differs from ``stamp``
    #: (stages.psf_field.with_position_scales)
    row_scales: tuple = ()

    @property
    def exists(self) -> bool:
        return self.stamp is not None


@dataclass
class PatchInput:
    """Everything one patch fit needs; arrays are ROI slices of the working frame."""

    spec: PatchSpec
    bands: list[str]
    images: dict            # band -> io.prepared.Cutout
    band_info: dict         # band -> io.prepared.BandInfo
    cat: pd.DataFrame       # base + halo rows: all columns + x/y_pix_patch, _is_halo_source
    psfs: dict = field(default_factory=dict)  # band -> PsfChoiceInput

    @property
    def tag(self) -> str:
        return self.spec.patch_tag

    def meta(self) -> dict:
        """Payload meta: tags, cell and patch indices, halo, base and ROI boxes, source counts."""
        s = self.spec
        return {"patch_tag": s.patch_tag, "epsf_tag": s.epsf_tag, "epsf_r": s.epsf_r,
                "epsf_c": s.epsf_c, "patch_r": s.patch_r, "patch_c": s.patch_c,
                "halo_pix": s.halo_pix,
                "base_bbox": [s.x0_base, s.x1_base, s.y0_base, s.y1_base],
                "roi_bbox": [s.x0_roi, s.x1_roi, s.y0_roi, s.y1_roi],
                "n_sources": int((~self.cat["_is_halo_source"]).sum()),
                "n_halo_sources": int(self.cat["_is_halo_source"].sum())}


def patch_catalog(spec: PatchSpec, catalog: pd.DataFrame, extra: pd.DataFrame | None = None,
                  outer: int = 0) -> pd.DataFrame:
    """Sub-table of base then halo rows with ``x/y_pix_patch`` and ``_is_halo_source``.

    ``extra``: unmatched saturated stars (``x, y`` working frame; stages.bright_mask); those within
    ``outer`` px of the ROI are appended as halo STAR rows with ``_row`` < 0, so their wings are
    modelled and never written.
    """
    sub = _catalog_rows(spec, catalog)
    if extra is not None and len(extra):
        ex = np.asarray(extra["x"], float)
        ey = np.asarray(extra["y"], float)
        near = ((ex >= spec.x0_roi - outer) & (ex < spec.x1_roi + outer)
                & (ey >= spec.y0_roi - outer) & (ey < spec.y1_roi + outer))
        if near.any():
            k = np.flatnonzero(near)
            type_col = next((c for c in catalog.columns if c.lower() == "type"), "TYPE")
            id_col = next((c for c in catalog.columns if c.lower() == "id"), "ID")
            add = pd.DataFrame({"_row": -(k + 1), id_col: [f"saturated_{i}" for i in k], type_col: "STAR",
                                "x_pix_white": ex[k], "y_pix_white": ey[k],
                                "x_pix_patch": ex[k] - spec.x0_roi, "y_pix_patch": ey[k] - spec.y0_roi,
                                "_is_halo_source": True})
            sub = pd.concat([sub, add], ignore_index=True)
    return sub


def _catalog_rows(spec: PatchSpec, catalog: pd.DataFrame) -> pd.DataFrame:
    if "_row" not in catalog.columns:
        raise InputError("working catalog: missing column '_row'")
    pos = pd.Index(catalog["_row"].to_numpy(np.int64))
    rows = np.concatenate([spec.base_rows, spec.halo_rows]).astype(np.int64)
    idx = pos.get_indexer(rows)
    if (idx < 0).any():
        raise InputError(f"patch {spec.patch_tag}: _row {rows[idx < 0][0]} not in the catalog")
    sub = catalog.iloc[idx].copy().reset_index(drop=True)
    sub["x_pix_patch"] = pd.to_numeric(sub["x_pix_white"], errors="coerce") - spec.x0_roi
    sub["y_pix_patch"] = pd.to_numeric(sub["y_pix_white"], errors="coerce") - spec.y0_roi
    sub["_is_halo_source"] = np.r_[np.zeros(len(spec.base_rows), bool),
                                   np.ones(len(spec.halo_rows), bool)]
    return sub


def without_halos(cut, choice: PsfChoiceInput, info, x0: int, y0: int):
    """``cut`` (io.prepared.Cutout of the frame box at ``x0``, ``y0``) minus the halos beyond the
    stamp of ``choice.halos`` (stages.star_halos), on its good pixels; ``cut`` itself when the
    choice lists none."""
    if not choice.halos or len(choice.halo_wing) < 2 or choice.stamp is None:
        return cut
    from .star_halos import halo_image
    amp, slope = choice.halo_wing[:2]
    half = (int(np.shape(choice.stamp)[0]) - 1) // 2
    sigma = float(info.skysig) * float(info.scale)
    halo = halo_image(cut.img.shape, x0, y0, choice.halos, float(amp), float(slope), half, sigma)
    img = np.where(cut.bad_final, cut.img, cut.img - halo.astype(cut.img.dtype))
    return dataclasses.replace(cut, img=img, halo=halo.astype(np.float32))


def build_patch_input(spec: PatchSpec, prepared, catalog: pd.DataFrame, psfs: dict,
                      outer: int = 0, extra: pd.DataFrame | None = None) -> PatchInput:
    """Read the ROI of every band from ``prepared`` (io.prepared.PreparedImages) into a PatchInput.

    ``psfs`` maps band -> PsfChoiceInput (missing bands get "no ePSF"); ``extra``: unmatched
    saturated stars to model as halo sources (within ``outer`` px of the ROI: the pipeline uses
    ``epsf.final_psf_size // 2``). The bright stars' halos beyond the stamp that a band's
    choice lists (``halos``) are subtracted from its image (:func:`without_halos`).
    """
    bands = list(prepared.bands)
    images, infos = {}, {}
    choice = {b: psfs.get(b) or PsfChoiceInput(stamp=None) for b in bands}
    for b in bands:
        images[b] = prepared.read(b, spec.y0_roi, spec.y1_roi, spec.x0_roi, spec.x1_roi,
                                  with_bright=True)
        infos[b] = prepared.band_info(b)
        images[b] = without_halos(images[b], choice[b], infos[b], spec.x0_roi, spec.y0_roi)
    return PatchInput(spec=spec, bands=bands, images=images, band_info=infos,
                      cat=patch_catalog(spec, catalog, extra, int(outer)),
                      psfs=choice)


# --------------------------------------------------------------------------- debug dumps


def _plain(v):
    """A JSON-ready scalar (full float precision; NaN kept as NaN)."""
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    if v is None or isinstance(v, (str, int)):
        return v
    return str(v)


def _spec_json(spec: PatchSpec) -> dict:
    d = spec.record()
    d["base_rows"] = [int(v) for v in spec.base_rows]
    d["halo_rows"] = [int(v) for v in spec.halo_rows]
    return d


def patch_input_record(pin: PatchInput) -> tuple[dict, dict]:
    """(arrays, doc) of one patch: ``arrays`` name -> ndarray (cut-outs, PSF stamps), ``doc`` the
    rest as plain JSON values (written by :func:`tract7dt_mpi.io.patch_dumps.write_patch_dump`)."""
    arrays = {}
    for b in pin.bands:
        c = pin.images[b]
        for f in _CUTOUT_FIELDS:
            arrays[f"{b}/{f}"] = np.asarray(getattr(c, f))
        if c.halo is not None:          # the halo light subtracted from img (its wing error)
            arrays[f"{b}/halo"] = np.asarray(c.halo)
        st = pin.psfs[b].stamp if b in pin.psfs else None
        if st is not None:
            arrays[f"{b}/psf_stamp"] = np.asarray(st, np.float32)
    doc = {
        "format": "tract7dt-mpi patch input v1",
        "spec": _spec_json(pin.spec),
        "bands": list(pin.bands),
        "band_info": {b: dataclasses.asdict(pin.band_info[b]) for b in pin.bands},
        "psfs": {b: {"nstars_used": pin.psfs[b].nstars_used, "path": pin.psfs[b].path,
                     "sources": [list(t) for t in pin.psfs[b].sources],
                     "flux_err_frac": pin.psfs[b].flux_err_frac,
                     "stars": [list(t) for t in pin.psfs[b].stars],
                     "flux_in_stamp": pin.psfs[b].flux_in_stamp, "note": pin.psfs[b].note,
                     "halos": [list(t) for t in pin.psfs[b].halos],
                     "halo_wing": list(pin.psfs[b].halo_wing),
                     "row_scales": [list(t) for t in pin.psfs[b].row_scales]} for b in pin.bands},
        "meta": pin.meta(),
        "cat": {"columns": [str(c) for c in pin.cat.columns],
                "dtypes": [str(t) for t in pin.cat.dtypes],
                "data": [[_plain(v) for v in row] for row in pin.cat.itertuples(index=False)]},
    }
    return arrays, doc


def patch_input_from_record(doc: dict, arrs: dict) -> PatchInput:
    """The PatchInput of a record made by :func:`patch_input_record` (read back from a dump by
    :func:`tract7dt_mpi.io.patch_dumps.read_patch_dump`)."""
    from ..io.prepared import BandInfo, Cutout

    sd = dict(doc["spec"])
    for k in ("n_sources", "n_halo_sources"):
        sd.pop(k, None)
    sd["base_rows"] = np.asarray(sd["base_rows"], np.int64)
    sd["halo_rows"] = np.asarray(sd["halo_rows"], np.int64)
    spec = PatchSpec(**sd)
    bands = list(doc["bands"])
    images = {b: Cutout(**{f: arrs[f"{b}/{f}"] for f in _CUTOUT_FIELDS}, halo=arrs.get(f"{b}/halo"))
              for b in bands}
    infos = {b: BandInfo(**doc["band_info"][b]) for b in bands}
    psfs = {b: PsfChoiceInput(stamp=arrs[f"{b}/psf_stamp"] if f"{b}/psf_stamp" in arrs else None,
                              nstars_used=doc["psfs"][b]["nstars_used"],
                              path=doc["psfs"][b]["path"],
                              sources=tuple(tuple(t) for t in doc["psfs"][b].get("sources", ())),
                              flux_err_frac=float(doc["psfs"][b].get("flux_err_frac", float("nan"))),
                              stars=tuple(tuple(t) for t in doc["psfs"][b].get("stars", ())),
                              flux_in_stamp=float(doc["psfs"][b].get("flux_in_stamp", 1.0)),
                              note=str(doc["psfs"][b].get("note", "")),
                              halos=tuple(tuple(t) for t in doc["psfs"][b].get("halos", ())),
                              halo_wing=tuple(doc["psfs"][b].get("halo_wing", ())),
                              row_scales=tuple(tuple(t) for t in doc["psfs"][b].get("row_scales", ())))
            for b in bands}
    cd = doc["cat"]
    cat = pd.DataFrame(cd["data"], columns=cd["columns"], dtype=object)
    for c, t in zip(cd["columns"], cd["dtypes"]):
        if t in ("bool", "float64", "float32", "int64", "int32"):
            cat[c] = cat[c].astype(float if t.startswith("float") else t)
    return PatchInput(spec=spec, bands=bands, images=images, band_info=infos, cat=cat, psfs=psfs)
