"""Which diagnostic PNGs an ePSF cell asks for (drawn by the pipeline, :mod:`tract7dt_mpi.figures`).

The cell build lists them as :class:`FigureSpec` data with the arrays they show; it draws nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from . import epsf_build
from . import epsf_qa as qa

log = logging.getLogger(__name__)


@dataclass
class FigureSpec:
    """One diagnostic PNG of a cell: ``func`` of :mod:`tract7dt_mpi.plots.epsf_plots` called with
    ``args``/``kwargs`` into ``name``. ``status`` (meta section, key): set to ``"error"`` there when
    the drawing fails."""

    func: str
    name: str
    args: tuple
    kwargs: dict
    status: tuple | None = None


def request_figure(figs, enabled, func, name, *args, status=None, **kwargs):
    """Ask for one diagnostic PNG if figures are on and its toggle is set (True when asked)."""
    if figs is None or not enabled:
        return False
    figs.append(FigureSpec(func, name, args, kwargs, status))
    return True


def post_build_figures(inp, s, meta, figs, stamp, stacks, stars, good, bkg_rows, sel):
    """Success-only PNGs and the local-background diagnostic status."""
    origin_of = {i: o for i, o in enumerate(sel.origin)}
    request_figure(figs, True, "plot_epsf", "epsf.png", stamp,
          title=f"{inp.band} {inp.tag} used={meta['nstars_used']}/{meta['nstars_extract']}")
    if s.save_growth_curve:
        radii, ee = qa.growth_curve(stamp.astype(float))
        request_figure(figs, True, "plot_growth_curve", "epsf_growth_curve.png", radii, ee, meta["epsf_qa"])
    if stacks is not None:
        request_figure(figs, True, "plot_residual_diagnostics", "epsf_residual_diagnostics.png", stacks,
              meta["residual_qa"])
    _local_background_figure(s, meta, figs, good, bkg_rows)
    nmax = int(s.save_star_montage_max)
    if nmax > 0:
        used = good[:nmax]
        request_figure(figs, True, "plot_star_montage", "used_stars.png", [st.data for st in used],
              [origin_of.get(st.id_label, "") for st in used], title=f"used stars ({len(good)})")
        ext = epsf_build.star_list(stars)[:nmax]
        request_figure(figs, True, "plot_star_montage", "extracted_stars.png", [st.data for st in ext],
              [origin_of.get(st.id_label, "") for st in ext],
              title=f"extracted stars ({meta['nstars_extract']})")


def _local_background_figure(s, meta, figs, good, bkg_rows):
    """star_local_background_diagnostics.png for the used stars, or a skipped_* status."""
    rec = meta["local_bkg_diagnostics"]
    if figs is None or not (s.star_local_bkg_subtract and s.save_star_local_background_diagnostics):
        return
    ids = [st.id_label for st in good]
    if not ids:
        rec.update(local_bkg_diag_status="skipped_no_stars", local_bkg_diag_message="no used star")
    elif any(i is None for i in ids):
        rec.update(local_bkg_diag_status="skipped_missing_id_label",
                   local_bkg_diag_message="a used star has no id_label")
    elif len(set(ids)) != len(ids) or len({r["id"] for r in bkg_rows}) != len(bkg_rows):
        rec.update(local_bkg_diag_status="skipped_duplicate_id_label",
                   local_bkg_diag_message="star id_label values are not unique")
    else:
        rows = [r for r in bkg_rows if r["id"] in set(ids)]
        request_figure(figs, True, "plot_star_local_background", "star_local_background_diagnostics.png",
              rows, colorbar=s.diagnostics_show_colorbar,
              status=("local_bkg_diagnostics", "local_bkg_diag_status"))
        rec.update(local_bkg_diag_nstars=len(rows), local_bkg_diag_status="ok")   # "error" if drawing fails
        return
    log.warning("star local-background diagnostics skipped: %s", rec["local_bkg_diag_message"])
