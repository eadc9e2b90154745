"""``python -m tract7dt_mpi.cli``: the ``tract7dt-mpi`` command."""
import sys

from .command import main

sys.exit(main())
