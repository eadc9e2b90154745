"""File input/output: FITS, CSV/JSON tables, the HDF5 prepared-image store and atomic writers."""
