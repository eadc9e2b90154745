"""The one place that turns the typed config into the options each stage takes.

Stages (``tract7dt_mpi.stages``) never see the whole :class:`~tract7dt_mpi.config.Config`: each
receives a small frozen options object (defined beside the stage) or the one config section it
needs, so a stage's signature says what it depends on and a test can build exactly that. The
pipeline layer (``tasks.py``, ``pipeline.py``) calls the functions here; each imports only its
own stage.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stages.bright_mask import BrightMaskOptions
    from .stages.fit import PatchFitOptions
    from .stages.gaia import GaiaOptions
    from .stages.load import LoadOptions
    from .stages.patches import PlanOptions


def load_options(cfg) -> LoadOptions:
    """Inputs, frame checks, crop and saturation cut of the load stage (S1)."""
    from .stages.load import LoadOptions
    return LoadOptions(input_catalog=cfg.inputs.input_catalog, image_list_file=cfg.inputs.image_list_file,
                       config_dir=cfg.config_dir, work_dir=cfg.outputs.work_dir,
                       zp_ref=float(cfg.image_scaling.zp_ref), checks=cfg.checks, crop=cfg.crop,
                       saturation_cut=cfg.source_saturation_cut,
                       need_psf=cfg.patch_run.psf_source == "psfex")


def gaia_options(cfg) -> GaiaOptions:
    """GaiaXP table, magnitude window and matching of the augmentation (S2)."""
    from .stages.gaia import GaiaOptions
    return GaiaOptions(gaiaxp_csv=cfg.inputs.gaiaxp_synphot_csv, work_dir=cfg.outputs.work_dir, zp=cfg.zp,
                       zp_ref=float(cfg.image_scaling.zp_ref), saturation_cut=cfg.source_saturation_cut)


def bright_mask_options(cfg) -> BrightMaskOptions:
    """The ``bright_mask`` section and the work folder of its products (S3)."""
    from .stages.bright_mask import BrightMaskOptions
    return BrightMaskOptions(settings=cfg.bright_mask, work_dir=cfg.outputs.work_dir)


def plan_options(cfg) -> PlanOptions:
    """The cell and patch grid of the patch plan."""
    from .stages.patches import PlanOptions
    return PlanOptions(epsf_ngrid=int(cfg.epsf.epsf_ngrid), ngrid=int(cfg.epsf.ngrid),
                       final_psf_size=int(cfg.epsf.final_psf_size),
                       halo_pix_min=int(cfg.patches.halo_pix_min))


def psf_reach(cfg) -> int:
    """How far (px) beyond a patch's ROI a source's PSF still reaches it: half the ePSF stamp."""
    return int(cfg.epsf.final_psf_size) // 2


def fit_options(cfg) -> PatchFitOptions:
    """The ``patch_run`` and ``moffat_psf`` sections of a patch fit."""
    from .stages.fit import PatchFitOptions
    return PatchFitOptions(patch_run=cfg.patch_run, moffat_psf=cfg.moffat_psf)
