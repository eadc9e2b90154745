"""Why ePSF cells have no star, in one line per cell and per band (the cells' meta records in)."""
from __future__ import annotations

__all__ = ["no_star_reason", "failure_summary"]


def _reasons_text(counts: dict) -> str:
    items = [f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if v]
    return ", ".join(items) if items else "none"


def no_star_reason(meta: dict) -> str:
    """One line: why a cell's selection found no PSF star (detections, candidates, each cut)."""
    sel = meta.get("selection") or {}
    if not sel:
        return f"no usable ePSF: {meta.get('error', 'unknown')}"
    return (f"no usable ePSF: {sel.get('n_sep_detections', 0)} SEP detection(s), "
            f"{sel.get('n_sep_candidates', 0)} left after the cuts, {meta.get('nstars_seed', 0)} Gaia "
            f"seed(s); removed by: {_reasons_text(sel.get('rejected') or {})}")


def failure_summary(metas) -> list:
    """Per band one line: cells OK, cells without a star (with how many detections, and the
    summed reasons their candidates were removed for), cells too small, other failures."""
    bands: dict = {}
    for m in metas:
        bands.setdefault(m.get("band"), []).append(m)
    out = []
    for band, ms in bands.items():
        ok = sum(m.get("status") == "ok" for m in ms)
        small = [m for m in ms if m.get("cell_too_small")]
        nostar = [m for m in ms if m.get("status") != "ok" and not m.get("cell_too_small")
                  and m.get("nstars_sel", 0) == 0 and m.get("selection")]
        other = len(ms) - ok - len(small) - len(nostar)
        reasons: dict = {}
        for m in nostar:
            for k, v in ((m.get("selection") or {}).get("rejected") or {}).items():
                reasons[k] = reasons.get(k, 0) + int(v)
        empty = sum((m.get("selection") or {}).get("n_sep_detections", 0) == 0 for m in nostar)
        line = f"ePSF {band}: {ok}/{len(ms)} cells OK"
        if nostar:
            line += (f"; no PSF star in {len(nostar)} ({empty} without any detection; candidates "
                     f"removed by: {_reasons_text(reasons)})")
        if small:
            line += f"; {len(small)} too small for a star"
        if other:
            line += f"; {other} failed otherwise (see warnings)"
        out.append(line)
    return out
