"""``python -m tract7dt_mpi.sample DIR [--bands N] [--size PX] [--seed S] [--full-size] [--n-sources N]
[scene options]``

Same as ``tract7dt-mpi make-sample`` (handy for benchmarks without the full CLI); the scene
options (``--psf kolmogorov``, ``--psf-beta 2``, ``--blends 10``, ...) are listed by ``--help``.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from .generate import make_sample
from .options import add_option_arguments, options_from_namespace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tract7dt_mpi.sample",
                                 description="Write a synthetic 7DT tile rendered with GalSim.")
    ap.add_argument("out_dir")
    ap.add_argument("--bands", type=int, default=8, help="number of 7DT bands, 1..40 (default 8)")
    ap.add_argument("--size", type=int, default=1024, help="square tile side in px (default 1024)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--full-size", action="store_true", help="real 7DT tile size, 9576 x 6388 px")
    ap.add_argument("--n-sources", type=int, default=None, help="catalogued sources (default by area)")
    add_option_arguments(ap)
    a = ap.parse_args(argv)
    try:
        make_sample(a.out_dir, bands=a.bands, size=a.size, seed=a.seed, full_size=a.full_size,
                    n_sources=a.n_sources, **options_from_namespace(a))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
