"""``python -m tract7dt_mpi.campaign``, the entry point the job scripts call; the tool is :mod:`.cli.campaign`."""
import sys

from .cli.campaign import main

if __name__ == "__main__":
    sys.exit(main())
