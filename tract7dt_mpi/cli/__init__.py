"""Command-line tools: ``tract7dt-mpi`` (:mod:`.command`) and the SLURM/PBS campaign tool (:mod:`.campaign`)."""
from .command import main

__all__ = ["main"]
