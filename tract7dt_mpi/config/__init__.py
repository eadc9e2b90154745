"""Typed configuration of tract7dt-mpi (schema, YAML loader, commented template).

>>> cfg = load_config("config.yaml")          # ConfigError (exit 2) names the dotted key
>>> cfg.patch_run.n_opt_iters
"""
from .loader import Config, config_from_dict, default_config, iter_keys, load_config, read_yaml
from .schema import SECTIONS

__all__ = ["Config", "SECTIONS", "config_from_dict", "default_config", "iter_keys", "load_config", "read_yaml"]
