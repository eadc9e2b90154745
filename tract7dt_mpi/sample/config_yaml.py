"""The ready-to-run ``config.yaml`` written next to a synthetic tile.

Only keys that differ from the documented defaults (docs/config-reference.md) are written, plus
the input/output paths (relative to the YAML file's folder, so the tile folder can be moved).
"""
from __future__ import annotations

import yaml

HEADER = """\
# tract7dt-mpi configuration for the synthetic 7DT tile written by `tract7dt-mpi make-sample`.
# Paths are relative to this file. Every key not listed takes its documented default
# (`tract7dt-mpi dump-config` writes them all). Run: mpirun -n 2 tract7dt-mpi run config.yaml
"""


def tile_config(tile: str, width: int, height: int, full_size: bool) -> dict:
    """Config mapping tuned to a ``width`` x ``height`` synthetic tile."""
    margin = 32 if full_size else 16
    ww, hh = width - 2 * margin, height - 2 * margin          # working frame after the crop
    zx0, zy0 = ww // 3, hh // 3
    zoom = [zx0, zx0 + min(300, max(8, ww // 3)), zy0, zy0 + min(300, max(8, hh // 3))]
    ds = 8 if max(width, height) > 4096 else (4 if max(width, height) > 2048 else 2)
    if full_size:
        epsf_ngrid, ngrid = 7, 6
    else:
        epsf_ngrid, ngrid = int(min(7, max(1, round(min(width, height) / 512)))), 3
    cfg = {
        "inputs": {"tile_name": tile, "input_catalog": "input_catalog.csv",
                   "image_list_file": "image_list.txt", "gaiaxp_synphot_csv": "gaiaxp_synphot.csv"},
        "outputs": {"work_dir": "work"},
        "image_scaling": {"zp_ref": 25.0},
        "crop": {"enabled": True, "margin": margin, "plot_pre_crop": True, "plot_post_crop": True,
                 "display_downsample": ds, "post_crop_display_downsample": ds},
        "overlay": {"enabled": True, "downsample_full": ds, "zoom_enabled": True, "zoom_box": zoom},
        "plotting": {"dpi": 80},
        "epsf": {"epsf_ngrid": epsf_ngrid, "ngrid": ngrid},
        "zp": {"enabled": True},
        "patch_run": {"cutout_max_sources": 2},
    }
    if full_size:   # benchmark tile: keep the per-patch/per-star PNG count bounded
        cfg["epsf"].update({"save_star_local_background_diagnostics": False,
                            "save_patch_background_diagnostics": False})
        cfg["patch_run"].update({"no_cutouts": True, "no_patch_overview": True})
    return cfg


def config_text(cfg: dict) -> str:
    """YAML text (safe dumper, key order kept) with the explanatory header."""
    return HEADER + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
