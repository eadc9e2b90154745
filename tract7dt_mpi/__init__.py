"""tract7dt-mpi: MPI-parallel forced multi-band model-fitting photometry for 7DT images."""
from ._version import __version__

__all__ = ["__version__"]
