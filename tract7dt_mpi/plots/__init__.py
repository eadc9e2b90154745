"""Matplotlib (Agg) diagnostic plots, one module per stage family.

Plots never use pyplot's global state: each builds a ``Figure`` and saves it with
:func:`tract7dt_mpi.plots.common.savefig` (atomic write at the configured dpi). Callers wrap plot
calls so that a failing plot only logs a warning.
"""
