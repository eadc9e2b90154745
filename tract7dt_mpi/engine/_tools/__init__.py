"""Maintenance scripts (not imported at run time)."""
