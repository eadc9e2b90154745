"""Optional backend that drives the real Tractor (astrometry.net, github dstndstn/tractor).

``patch_run.engine: tractor`` calls :func:`fit_patch_tractor` with the same inputs and result type as
the native :func:`tract7dt_mpi.engine.fit_patch`.  When the Tractor cannot be imported,
:func:`tractor_available` returns (False, reason) and each patch fit stops with
:data:`INSTALL_HINT`.  (The unrelated PyPI package named ``tractor`` is detected and rejected.)
"""
from __future__ import annotations

import math

import numpy as np

from .psf import GaussianMixturePSF, HybridPSF, MoffatPSF, PixelizedPSF
from .shapes import catalog_shape_to_params, params_to_catalog_shape
from .types import FitOptions, FitResult, SourceResult

INSTALL_HINT = (
    "patch_run.engine: tractor needs the astrometry.net Tractor (not the PyPI package 'tractor'): "
    "pip install git+https://github.com/dstndstn/tractor (needs numpy, scipy, astrometry.net's util; "
    "see its README), or use patch_run.engine: native, which fits the same model (same profiles, PSFs "
    "and likelihood) but solves fluxes and sky exactly, uses per-parameter Levenberg-Marquardt steps "
    "with analytic derivatives and reports marginal flux errors (docs/dev/engine.md)."
)


def tractor_available():
    """(True, '') if the astrometry.net Tractor is importable, else (False, reason)."""
    try:
        import tractor  # noqa: F401
        import tractor.galaxy  # noqa: F401
    except Exception as exc:  # ImportError or a broken install
        return False, f"cannot import the Tractor ({exc.__class__.__name__}: {exc})"
    if not hasattr(tractor, "Tractor"):
        return False, "the installed 'tractor' package is not the astrometry.net Tractor (no tractor.Tractor)"
    return True, ""


def _tractor_psf(psf):
    import tractor

    if isinstance(psf, HybridPSF):
        from tractor.psf import HybridPixelizedPSF
        return HybridPixelizedPSF(tractor.PixelizedPSF(psf.stamp.astype(np.float32)), N=psf.mixture.amp.size)
    if isinstance(psf, MoffatPSF):   # stars pixelized, galaxies the 3-Gaussian mixture (approximation)
        return tractor.PixelizedPSF(psf.stamp.astype(np.float32))
    if isinstance(psf, PixelizedPSF):
        return tractor.PixelizedPSF(psf.stamp.astype(np.float32))
    if isinstance(psf, GaussianMixturePSF):
        return tractor.GaussianMixturePSF(psf.amp, psf.mean, psf.var)
    raise TypeError(f"unsupported PSF {type(psf).__name__}")


def fit_patch_tractor(images, sources, options: FitOptions | None = None) -> FitResult:
    """Fit with the real Tractor (multi-band mode; priors are not passed on)."""
    ok, why = tractor_available()
    if not ok:
        raise RuntimeError(f"{why}. {INSTALL_HINT}")
    import tractor
    from tractor.constrained_optimizer import ConstrainedOptimizer
    from tractor.ellipses import EllipseESoft
    from tractor.galaxy import DevGalaxy, ExpGalaxy
    from tractor.sersic import SersicGalaxy, SersicIndex

    opts = options or FitOptions()
    if not opts.multi_band:
        per = {im.band: fit_patch_tractor([im], [_one_band(s, b) for s in sources],
                                          FitOptions(**{**opts.__dict__, "multi_band": True}))
               for b, im in enumerate(images)}
        return FitResult(sources=[], per_band=per, bands=list(per))
    bands = [im.band for im in images]
    tims = [tractor.Image(data=im.data.astype(np.float32), invvar=im.invvar.astype(np.float32),
                          psf=_tractor_psf(im.psf), wcs=tractor.NullWCS(), sky=tractor.ConstantSky(im.sky),
                          photocal=tractor.FluxesPhotoCal(im.band), name=im.band) for im in images]
    cat = []
    for s in sources:
        pos = tractor.PixPos(float(s.x), float(s.y))
        br = tractor.Fluxes(**{b: float(max(f, 1e-4)) for b, f in zip(bands, s.fluxes)}, order=bands)
        if s.kind == "star":
            cat.append(tractor.PointSource(pos, br))
            continue
        shape = EllipseESoft(*catalog_shape_to_params(s.re, s.ab, s.phi_deg))
        if s.kind == "exp":
            cat.append(ExpGalaxy(pos, br, shape))
        elif s.kind == "dev":
            cat.append(DevGalaxy(pos, br, shape))
        else:
            cat.append(SersicGalaxy(pos, br, shape, SersicIndex(float(s.sersic_n))))
    tr = tractor.Tractor(tims, cat, optimizer=ConstrainedOptimizer())
    stages = []
    plan = [1, 2, 3] if opts.staged else [0]
    for st in plan:
        tr.thawAllRecursive()
        for tim in tims:
            if isinstance(tim.getPsf(), tractor.GaussianMixturePSF):
                tim.freezeParam("psf")
            if st == 2 or not opts.fit_sky:
                tim.freezeParam("sky")
        for src in cat:
            if st == 1:
                src.freezeParam("pos")
            elif st == 2:
                src.freezeAllBut("pos")
        niters, conv, last = 0, False, math.nan
        for _ in range(int(opts.n_opt_iters)):
            dlnp, _, _ = tr.optimize()
            niters, last = niters + 1, float(dlnp)
            if dlnp < opts.dlnp_stop:
                conv = True
                break
        stages.append({"stage": st, "niters": niters, "converged": conv, "last_dlnp": last})
    tr.thawAllRecursive()
    for tim in tims:
        if isinstance(tim.getPsf(), tractor.GaussianMixturePSF):
            tim.freezeParam("psf")
    var = tr.optimize(variance=True, just_variance=True)
    names = tr.getParamNames()
    vmap = dict(zip(names, var if var is not None else [np.nan] * len(names)))
    out = []
    for i, (s, src) in enumerate(zip(sources, cat)):
        fl = np.array([src.getBrightness().getFlux(b) for b in bands])
        err = np.array([vmap.get(f"catalog.source{i}.brightness.{b}", np.nan) for b in bands], dtype=float)
        r = SourceResult(kind=s.kind, x=float(src.pos.x), y=float(src.pos.y), fluxes=fl,
                         flux_errs=np.sqrt(np.where(err > 0, err, np.nan)))
        if s.kind != "star":
            r.re, r.ab, r.phi_deg = params_to_catalog_shape(src.shape.logre, src.shape.ee1, src.shape.ee2)
        if s.kind == "sersic":
            r.sersic_n = float(src.sersicindex.getValue())
        out.append(r)
    chi2 = float(sum(np.sum(tr.getChiImage(j).astype(float) ** 2) for j in range(len(tims))))
    last = stages[-1]
    return FitResult(sources=out, niters=last["niters"], converged=last["converged"],
                     hit_max_iters=(not last["converged"]) and last["niters"] >= max(1, opts.n_opt_iters - opts.flag_maxiter_margin),
                     last_dlnp=last["last_dlnp"], stages=stages,
                     sky=np.array([tim.getSky().getValue() for tim in tims]), chi2=chi2,
                     lnp=float(tr.getLogProb()), bands=bands,
                     _models=[tr.getModelImage(j).astype(float) for j in range(len(tims))])


def _one_band(src, b):
    from .fit import _band_source
    return _band_source(src, b)


__all__ = ["tractor_available", "fit_patch_tractor", "INSTALL_HINT"]
