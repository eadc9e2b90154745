"""Read, validate and resolve a tract7dt-mpi YAML config into a frozen :class:`Config`.

Rules: missing keys take the schema defaults; unknown keys and wrong
types raise :class:`ConfigError` naming the dotted key (with a did-you-mean hint); bool and int are
strict, float also accepts int; paths expand ``~`` and resolve against the YAML folder (inputs,
``outputs.work_dir``) or ``work_dir`` (other outputs); keys that mean nothing under MPI are accepted
and reported by :meth:`Config.ignored_key_notices`. YAML is read with a safe loader only.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields

import yaml

from ..errors import ConfigError
from . import schema
from .schema import SECTIONS

# Keys resolved against the YAML folder; every other outputs.* path (and mpi.prepared_store)
# resolves against outputs.work_dir.
_CONFIG_DIR_PATHS = {"inputs.input_catalog", "inputs.image_list_file", "inputs.gaiaxp_synphot_csv",
                     "outputs.work_dir", "moffat_psf.module_path"}


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-6`` as a float (YAML 1.2 style) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key '{key}'")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _got(value) -> str:
    return "null" if value is None else f"{type(value).__name__} {_short(value)}"


def _suggest(key: str, section: str | None, choices) -> str:
    """Did-you-mean text for an unknown key (same level first, then other sections)."""
    close = difflib.get_close_matches(str(key), list(choices), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]}?"
    if section is not None:
        others = [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)
                  if f.name == key and name != section]
        if others:
            return f"; did you mean {others[0]}?"
    return ""


def _check_range(dotted, value, meta):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                            ("le", lambda v, b: v <= b, "<=")):
        b = meta.get(bound)
        if b is not None and not ok(value, b):
            raise ConfigError(f"{dotted}: must be {word} {b}, got {_short(value)}")


def _check_scalar(dotted, value, kind, meta, notices):
    """Validate one non-null value of a given kind; return the normalised value."""
    expected = schema.type_text(meta)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{dotted}: expected bool (true/false), got {_got(value)}")
        return value
    if kind == "int":
        if not is_int:
            raise ConfigError(f"{dotted}: expected {expected}, got {_got(value)}")
        return value
    if kind == "float":
        if not (is_int or isinstance(value, float)):
            raise ConfigError(f"{dotted}: expected {expected}, got {_got(value)}")
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{dotted}: expected a number, got NaN")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{dotted}: expected {expected}, got {_got(value)}")
        return value
    if kind == "path":
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{dotted}: expected a non-empty path string{' or null' if meta['null'] else ''}, "
                              f"got {_got(value)}")
        return value
    if kind == "workers":
        if is_int:
            return max(1, value)
        if isinstance(value, str):
            text = value.strip()
            if text.lower() == "auto":
                return "auto"
            try:
                return max(1, int(text))
            except ValueError:
                pass
        raise ConfigError(f'{dotted}: expected int or "auto", got {_got(value)}')
    if kind == "enum":
        choices = meta["choices"]
        if isinstance(value, bool) and "true" in choices and "false" in choices:
            return "true" if value else "false"          # YAML's unquoted true/false
        if isinstance(value, str):
            for choice in choices:
                if value.strip().lower() == choice.lower():
                    return choice
        if meta.get("fallback") is not None:
            notices.append(f"{dotted}: invalid value {_short(value)} (expected one of "
                           f"{'|'.join(choices)}); using {meta['fallback']!r}")
            return meta["fallback"]
        raise ConfigError(f"{dotted}: expected one of {'|'.join(choices)}, got {_got(value)}")
    if kind in ("floats", "ints", "strs"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{dotted}: expected {expected}, got {_got(value)}")
        if meta["length"] and len(value) != meta["length"]:
            raise ConfigError(f"{dotted}: expected {meta['length']} values, got {len(value)}")
        elem = {"floats": "float", "ints": "int", "strs": "str"}[kind]
        emeta = dict(meta, kind=elem, null=False, length=None)
        return tuple(_check_scalar(f"{dotted}[{i}]", v, elem, emeta, notices) for i, v in enumerate(value))
    raise AssertionError(kind)


def _check_value(dotted, value, meta, notices):
    if value is None:
        if meta["null"]:
            return None
        raise ConfigError(f"{dotted}: expected {schema.type_text(meta)}, got null")
    value = _check_scalar(dotted, value, meta["kind"], meta, notices)
    _check_range(dotted, value, meta)
    return value


def _build(cls, user, prefix, notices):
    """Build one section dataclass from the user's mapping (None = all defaults)."""
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {_got(user)}")
    names = {f.name: f for f in fields(cls)}
    section = prefix.split(".")[0]
    for key in user:
        if key not in names:
            raise ConfigError(f"{prefix}.{key}: unknown key{_suggest(key, section, names)}")
    values = {}
    for name, f in names.items():
        dotted = f"{prefix}.{name}"
        meta = f.metadata
        if meta["kind"] == "section":
            values[name] = _build(type(f.default_factory()), user.get(name), dotted, notices)
            continue
        if name not in user:
            continue
        values[name] = _check_value(dotted, user[name], meta, notices)
        if meta.get("legacy") and values[name] != f.default:
            notices.append(f"{dotted}: {meta['legacy']} (value ignored)")
    return cls(**values)


def _resolve(path, base):
    """Expand ``~``, make absolute against ``base`` and normalise (symlinks resolved)."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(base, path)
    return os.path.realpath(path)


def _cross_checks(sections):
    e, p, z = sections["epsf"], sections["patch_run"], sections["zp"]
    pairs = [("epsf.q_range", e.q_range[0], e.q_range[1]),
             ("epsf.gaia_forced_rmin_pix/gaia_forced_rmax_pix", e.gaia_forced_rmin_pix, e.gaia_forced_rmax_pix),
             ("epsf.star_local_bkg_annulus_rin_pix/rout_pix", e.star_local_bkg_annulus_rin_pix,
              e.star_local_bkg_annulus_rout_pix),
             ("patch_run.cutout_data_p_lo/p_hi", p.cutout_data_p_lo, p.cutout_data_p_hi),
             ("patch_run.cutout_model_p_lo/p_hi", p.cutout_model_p_lo, p.cutout_model_p_hi),
             ("zp.plot_mag_lo/plot_mag_hi", z.plot_mag_lo, z.plot_mag_hi)]
    for name, lo, hi in pairs:
        if lo > hi:
            raise ConfigError(f"{name}: lower value {lo} is above upper value {hi}")


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; attribute names are the YAML section names."""

    inputs: schema.Inputs
    outputs: schema.Outputs
    image_scaling: schema.ImageScaling
    crop: schema.Crop
    overlay: schema.Overlay
    checks: schema.Checks
    source_saturation_cut: schema.SourceSaturationCut
    bright_mask: schema.BrightMask
    logging: schema.Logging
    plotting: schema.Plotting
    performance: schema.Performance
    epsf: schema.Epsf
    patches: schema.Patches
    patch_inputs: schema.PatchInputs
    patch_run: schema.PatchRun
    moffat_psf: schema.MoffatPsf
    merge: schema.Merge
    zp: schema.Zp
    mpi: schema.Mpi
    #: absolute path of the YAML file (None when built from a dict)
    config_path: str | None = field(default=None, compare=False)
    #: absolute folder relative input paths resolve against (the YAML folder, or base_dir)
    config_dir: str | None = field(default=None, compare=False)
    _raw: dict = field(default_factory=dict, compare=False, repr=False, hash=False)
    _notices: tuple = field(default=(), compare=False, repr=False)

    def ignored_key_notices(self) -> list[str]:
        """One-line notices: legacy/MPI-meaningless keys set, invalid values replaced by defaults."""
        return list(self._notices)

    def with_overrides(self, overrides: dict) -> "Config":
        """A new validated Config with ``overrides`` (nested or dotted keys) deep-merged on top."""
        merged = _deep_merge(copy.deepcopy(self._raw), _undot(overrides))
        return config_from_dict(merged, self.config_dir, config_path=self.config_path)

    def to_dict(self) -> dict:
        """Resolved values as plain nested dicts/lists (for logging and hashing)."""
        def plain(obj):
            if dataclasses.is_dataclass(obj):
                return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
            return list(obj) if isinstance(obj, tuple) else obj
        return {name: plain(getattr(self, name)) for name in SECTIONS}

    def raw_dict(self) -> dict:
        """The user's settings as given (before defaults and path resolution)."""
        return copy.deepcopy(self._raw)

    def get(self, dotted: str):
        """Value of a dotted key, e.g. ``cfg.get('checks.wcs_tolerance.crval')``."""
        obj = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def resolve_input_path(self, path: str) -> str:
        """Resolve a user path (e.g. an image-list entry) against the YAML folder."""
        return _resolve(os.fspath(path), self.config_dir or os.getcwd())

    def log_file(self, command: str) -> str | None:
        """Log file of a command: ``logging.file`` resolved, ``auto`` -> {work_dir}/{command}.log."""
        f = self.logging.file
        if f is None:
            return None
        if f == "auto":
            return os.path.join(self.outputs.work_dir, f"{command}.log")
        return f


def _undot(d: dict) -> dict:
    out: dict = {}
    for key, value in d.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, dict):
            value = _undot(value)
        if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict):
            _deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def _deep_merge(base: dict, top: dict) -> dict:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def config_from_dict(d: dict | None, base_dir=None, *, config_path=None) -> Config:
    """Validate a nested mapping (as read from YAML) into a Config; relative paths use ``base_dir``."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"top level must be a mapping of sections, got {_got(d)}")
    base = os.path.realpath(os.path.expanduser(os.fspath(base_dir))) if base_dir is not None else os.getcwd()
    for key in d:
        if key not in SECTIONS:
            raise ConfigError(f"{key}: unknown section{_suggest(key, None, SECTIONS)}")
    notices: list[str] = []
    sections = {name: _build(cls, d.get(name), name, notices) for name, cls in SECTIONS.items()}
    _cross_checks(sections)

    # patch_run.threads_per_process is the legacy spelling of mpi.threads_per_rank.
    if "threads_per_process" in (d.get("patch_run") or {}) and "threads_per_rank" not in (d.get("mpi") or {}):
        n = sections["patch_run"].threads_per_process
        sections["mpi"] = dataclasses.replace(sections["mpi"], threads_per_rank=n)
        notices.append(f"patch_run.threads_per_process: used as mpi.threads_per_rank = {n}")

    # outputs.tractor_out_dir is the legacy name of outputs.patch_results_dir.
    raw_out = d.get("outputs") or {}
    if "tractor_out_dir" in raw_out and "patch_results_dir" not in raw_out:
        sections["outputs"] = dataclasses.replace(sections["outputs"],
                                                  patch_results_dir=sections["outputs"].tractor_out_dir)
        notices.append("outputs.tractor_out_dir: used as outputs.patch_results_dir "
                       f"= {sections['outputs'].tractor_out_dir!r} (rename the key)")

    inp, out = sections["inputs"], sections["outputs"]
    sections["inputs"] = dataclasses.replace(inp, **{
        name: _resolve(getattr(inp, name), base) for name in ("input_catalog", "image_list_file")},
        gaiaxp_synphot_csv=None if inp.gaiaxp_synphot_csv is None else _resolve(inp.gaiaxp_synphot_csv, base))
    work_dir = _resolve(out.work_dir, base)
    sections["outputs"] = dataclasses.replace(out, work_dir=work_dir, **{
        f.name: _resolve(getattr(out, f.name), work_dir) for f in fields(out) if f.name != "work_dir"})
    sections["mpi"] = dataclasses.replace(sections["mpi"],
                                          prepared_store=_resolve(sections["mpi"].prepared_store, work_dir))
    log = sections["logging"]
    if log.file is not None:
        lf = "auto" if log.file.strip().lower() == "auto" else _resolve(log.file, work_dir)
        sections["logging"] = dataclasses.replace(log, file=lf)
    mp = sections["moffat_psf"]
    if mp.module_path:
        sections["moffat_psf"] = dataclasses.replace(mp, module_path=_resolve(mp.module_path, base))

    path = None if config_path is None else os.path.realpath(os.fspath(config_path))
    return Config(**sections, config_path=path, config_dir=base, _raw=copy.deepcopy(d),
                  _notices=tuple(notices))


def read_yaml(path) -> dict:
    """Parse a YAML config file with the safe loader; one-line ConfigError on any problem."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"Config not found: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"Config is a directory, expected a YAML file: {path}")
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read config {path}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader subclasses SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path) -> Config:
    """Load and validate a YAML config file (relative paths resolve against its folder)."""
    data = read_yaml(path)
    abspath = os.path.realpath(os.path.expanduser(os.fspath(path)))
    return config_from_dict(data, os.path.dirname(abspath), config_path=abspath)


def default_config(base_dir=None) -> Config:
    """All defaults (relative default paths resolved against ``base_dir`` or the current folder)."""
    return config_from_dict({}, base_dir)


def iter_keys():
    """Yield ``(dotted_key, type_text, default, unit, doc)`` for every leaf key, in schema order."""
    def walk(cls, prefix):
        for f in fields(cls):
            if f.metadata["kind"] == "section":
                yield from walk(type(f.default_factory()), f"{prefix}.{f.name}")
                continue
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            yield (f"{prefix}.{f.name}", schema.type_text(f.metadata), default,
                   f.metadata["unit"], f.metadata["doc"])
    for name, cls in SECTIONS.items():
        yield from walk(cls, name)
