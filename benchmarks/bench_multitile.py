"""Many tiles in one run (``tract7dt-mpi run --tiles``): measured gain and predicted efficiency.

``python benchmarks/bench_multitile.py``            predicted efficiency of 16 full 40-band tiles on
                                                     256 ranks (and other packings)
``python benchmarks/bench_multitile.py --measure``  also: 4 small tiles (2 bands, 256 px, seeds
                                                     1-4) as 4 single-tile runs and as one
                                                     ``run --tiles`` under ``mpirun -n 3``: wall and
                                                     CPU seconds of both, catalogs compared byte
                                                     for byte, and the multi-tile run's wall
                                                     predicted from the single-tile stores

The full-tile model is the measured full-size 40-band synthetic tile of ``bench_scale.py`` (9576 x
6388 px, 2882 sources, 1960 ePSF cells, 1406 patches), either from its results store
(``--store work/results.h5``, via ``simulate-scaling``'s :func:`tile_model`) or, by default, from
its figures in ``docs/mpi.md``: 40 band loads of 3.4 CPU s, 25 white-stack strips of 0.4 s, 40
loci of 0.6 s, 932 CPU s of ePSF cells, 40 PSF fields of 2.35 s, 1524 CPU s of patches (their
spread is not in the docs: log-normal, sigma 1, scaled to that sum), 14 s of rank-0 steps (here
6 s inputs, 3 s fields, 2 s plan, 3 s merge + ZP) and 41 summary plots of 1 s.  ``--store S --area A``
models a tile A times the measured one's area at the same density (e.g. a survey-density full tile
from a measured 2048 x 2048 part of one: ``make-sample DIR --bands 40 --size 2048 --seed 5 --sources 1370
--stars 480 --galaxy-mag-min 17 --galaxy-mag-max 23 --blends 14``, run, then
``--store DIR/work/results.h5 --area 14.58``).  The comparison
row runs each tile's loading (bands, strips, loci) and its PSF fields inside its one-off steps,
as the program did before those became tasks.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tract7dt_mpi.parallel.scaling_tiles import TileModel, simulate_tiles  # noqa: E402

OVERHEAD_S = 0.0003     #: master seconds per message (order of the measured dispatch overhead)


def full_tile() -> TileModel:
    rng = np.random.default_rng(1)
    patches = np.exp(rng.normal(0.0, 1.0, 1406))
    patches *= 1524.0 / patches.sum()
    return TileModel(0.0, [932.0 / 1960] * 1960, 2.0, list(patches), 3.0, [1.0] * 41,
                     load=[137.0 / 40] * 40, white=[0.4] * 25, inputs=6.0, locus=[23.0 / 40] * 40,
                     fields=3.0, psf_field=[94.0 / 40] * 40)


def one_off(m: TileModel) -> TileModel:
    """``m`` with loading, loci and PSF fields inside its one-off steps (the earlier program)."""
    return TileModel(m.prepare + sum(m.load) + sum(m.white) + m.inputs + sum(m.locus), m.epsf,
                     m.plan + m.fields + sum(m.psf_field), m.patch, m.finish, m.summary)


def _repeat(costs: list, k: float) -> list:
    """``costs`` repeated ``k`` times (a fraction of a copy: its first tasks)."""
    whole = int(np.floor(k))
    return list(costs) * whole + list(costs)[:int(round((k - whole) * len(costs)))]


def scaled(m: TileModel, area: float) -> TileModel:
    """A tile ``area`` times the measured one's area at the same density: as many more ePSF cells,
    patches and white-stack strips, band tasks (load, locus, PSF field) and one-off steps that
    take ``area`` times longer (which overstates the one-off steps' fixed parts), the same plots."""
    return TileModel(m.prepare * area, _repeat(m.epsf, area), m.plan * area, _repeat(m.patch, area),
                     m.finish * area, m.summary, load=[x * area for x in m.load],
                     white=_repeat(m.white, area), inputs=m.inputs * area,
                     locus=[x * area for x in m.locus], fields=m.fields * area,
                     psf_field=[x * area for x in m.psf_field])


def predict(store: str | None = None, area: float = 1.0) -> None:
    if store:
        from tract7dt_mpi.parallel.scaling import load_measurements
        from tract7dt_mpi.parallel.scaling_tiles import tile_model
        meas = load_measurements(store)
        model, overhead = tile_model(meas), max(OVERHEAD_S, meas["overhead"])
        p = sorted(model.patch)
        print(f"measured tile ({store}): {model.work:.0f} CPU s; {len(p)} patches, median "
              f"{p[len(p) // 2]:.1f} s, largest {p[-1]:.1f} s; {len(model.epsf)} ePSF cells")
    else:
        model, overhead = full_tile(), OVERHEAD_S
    if area != 1.0:
        model = scaled(model, area)
    print(f"tile model ({store or 'docs/mpi.md figures'}{f', x {area:g} in area' if area != 1.0 else ''}): "
          f"{model.work:.0f} CPU s per tile")
    print("predicted efficiency (work / (ranks x makespan)), one core per rank:")
    print(f"{'tiles':>6} {'ranks':>6} {'steps':>22} {'makespan_s':>11} {'efficiency':>10}")
    for what, m in (("as run (tasks)", model), ("loading in one-off steps", one_off(model))):
        for tiles, ranks in ((1, 16), (1, 64), (1, 256), (16, 256), (32, 256), (64, 256)):
            r = simulate_tiles([m] * tiles, ranks, overhead)
            print(f"{tiles:>6} {ranks:>6} {what:>22} {r['makespan']:>11.1f} {r['efficiency']:>10.3f}")


FAST = """\
inputs: {{tile_name: T{k}, input_catalog: {d}/input_catalog.csv, image_list_file: {d}/image_list.txt,
  gaiaxp_synphot_csv: {d}/gaiaxp_synphot.csv}}
outputs: {{work_dir: {work}}}
crop: {{enabled: true, margin: 16, plot_pre_crop: false, plot_post_crop: false}}
overlay: {{enabled: false}}
plotting: {{dpi: 30}}
epsf: {{epsf_ngrid: 1, ngrid: 2, maxiters: 2, save_growth_curve: false, save_residual_diagnostics: false,
  save_patch_background_diagnostics: false, save_star_local_background_diagnostics: false,
  save_star_montage_max: 0}}
patch_run: {{n_opt_iters: 3, enable_staged_fit: false, no_cutouts: true, no_patch_overview: true}}
zp: {{enabled: true}}
"""


def _timed(cmd: list[str], env: dict) -> tuple[int, float, float]:
    """(exit code, wall s, CPU s of the children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        timeout=1800).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return rc, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(ranks: int, n_tiles: int, root: str) -> None:
    from tract7dt_mpi.sample import make_sample
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    mpirun = ["mpirun", "-n", str(ranks), "--oversubscribe", "--bind-to", "none", sys.executable,
              "-m", "tract7dt_mpi.cli"]
    single, multi = [], []
    for k in range(1, n_tiles + 1):
        d = os.path.join(root, f"s{k}")
        if not os.path.exists(os.path.join(d, "image_list.txt")):
            make_sample(d, bands=2, size=256, seed=k, verbose=False)
        for mode, lst in (("single", single), ("multi", multi)):
            path = os.path.join(d, f"{mode}.yaml")
            with open(path, "w") as fh:
                fh.write(FAST.format(k=k, d=d, work=os.path.join(root, f"w_{mode}{k}")))
            lst.append(path)
    tiles = os.path.join(root, "tiles.txt")
    with open(tiles, "w") as fh:
        fh.write("".join(p + "\n" for p in multi))
    walls, cpus = [], []
    for cfg in single:
        rc, w, c = _timed(mpirun + ["run", cfg], env)
        assert rc == 0, f"{cfg}: exit {rc}"
        walls.append(w)
        cpus.append(c)
    rc, w_multi, c_multi = _timed(mpirun + ["run", "--tiles", tiles], env)
    assert rc == 0, f"run --tiles: exit {rc}"
    same = all(open(os.path.join(root, f"w_single{k}", "output_catalog.csv"), "rb").read()
               == open(os.path.join(root, f"w_multi{k}", "output_catalog.csv"), "rb").read()
               for k in range(1, n_tiles + 1))
    print(f"{n_tiles} tiles under mpirun -n {ranks} (load average at the end: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
    print(f"  {n_tiles} single-tile runs: wall {sum(walls):.1f} s, CPU {sum(cpus):.1f} s")
    print(f"  one run --tiles:      wall {w_multi:.1f} s, CPU {c_multi:.1f} s")
    print(f"  catalogs identical: {same}")
    pred, start = _predicted(root, n_tiles, ranks)
    print(f"  predicted from the single-tile stores (simulate-scaling's tile model, one core per "
          f"worker): {pred:.1f} s of tasks + {start:.1f} s start-up = {pred + start:.1f} s, "
          f"{(pred + start) / w_multi:.2f} x the measured wall")


def _predicted(root: str, n_tiles: int, ranks: int) -> tuple[float, float]:
    """Makespan of the measured tiles on one queue (each modelled from its own single-tile run)
    and the mean start-up of those runs (launch, imports, first messages)."""
    from tract7dt_mpi.parallel.scaling import load_measurements
    from tract7dt_mpi.parallel.scaling_tiles import tile_model
    from tract7dt_mpi.parallel.scheduler import resolve_master_works
    meas = [load_measurements(os.path.join(root, f"w_single{k}", "results.h5"))
            for k in range(1, n_tiles + 1)]
    r = simulate_tiles([tile_model(m) for m in meas], ranks, max(m["overhead"] for m in meas),
                       master_works=resolve_master_works("auto", ranks))
    return r["makespan"], float(np.mean([m["startup"] for m in meas]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true", help="also measure 4 small tiles")
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--dir", default=None, help="folder for the small tiles (default: a temporary one)")
    ap.add_argument("--store", default=None, help="results.h5 of a measured full-size single-tile run "
                    "(bench_scale.py) to model the tiles on")
    ap.add_argument("--area", type=float, default=1.0, help="with --store: model a tile this many times "
                    "the measured tile's area at its density (e.g. 14.58 for a full 9576 x 6388 tile "
                    "from a 2048 x 2048 one)")
    args = ap.parse_args(argv)
    predict(args.store, args.area)
    if args.measure:
        if args.dir:
            os.makedirs(args.dir, exist_ok=True)
            measure(args.ranks, args.tiles, args.dir)
        else:
            with tempfile.TemporaryDirectory() as root:
                measure(args.ranks, args.tiles, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
