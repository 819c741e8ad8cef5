"""Peak memory of ``evaluate`` on a lazily opened datamodels Zarr at T and 10·T targets with
the same number of training examples (issue 18, item 1): each evaluation runs in a fresh
child process and reports its peak RSS (getrusage) and tracemalloc's peak.

    python benchmarks/bench_eval_memory.py --train 20000 --targets 500 5000 \
        --block-targets 250 --dir SCRATCH

Prints one line per (targets, block) setting; nothing is recorded (not a timed benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def make(dirpath: Path, n_train: int, n_target: int, block: int) -> tuple[str, str]:
    """A jobless store (random + held-out models, random margins) and a datamodels Zarr of
    random float32 weights chunked by ``block`` targets, written chunk by chunk."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    import dmdask
    from dmdask.store.runstore import create_jobless_store, read_meta, write_block

    store = dirpath / f"store_{n_train}_{n_target}.zarr"
    dm = dirpath / f"dm_{n_train}_{n_target}.zarr"
    if not store.exists():
        create_jobless_store(str(store), n_train, n_target, block_size=256, alpha=0.5, seed=0)
        dmdask.add_models(str(store), "random", n=256)
        dmdask.add_models(str(store), "heldout", n=256)
        rng = np.random.default_rng(0)
        n = read_meta(str(store))["n_models"]
        for b in range(-(-n // 256)):
            rows = min(256, n - b * 256)
            write_block(str(store), b, rng.normal(size=(rows, n_target)).astype(np.float32))
    if not dm.exists():
        w = da.random.default_rng(1).normal(size=(n_target, n_train), chunks=(block, n_train))
        out = xr.Dataset({"weight": (("target", "train"), w.astype(np.float32) * 1e-3),
                          "bias": ("target", np.zeros(n_target))},
                         coords={"target": np.arange(n_target), "train": np.arange(n_train)})
        out.to_zarr(str(dm), mode="w", consolidated=False)
    return str(store), str(dm)


def child(store: str, dm: str) -> None:
    import resource
    import tracemalloc

    import xarray as xr

    from dmdask.analysis.evaluate import evaluate
    from dmdask.store.runstore import open_store

    ds = open_store(store)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    ev = evaluate(ds, xr.open_zarr(dm, consolidated=False))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"rss_before_mb": before,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "tracemalloc_peak_mb": peak / 2**20,
                      "mse_mean": float(ev.attrs["mse_mean"])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--targets", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--block-targets", default="250",
                    help="dmdask.evaluate.block-targets for the children ('None': by block-bytes)")
    ap.add_argument("--dir", default="/tmp/bench_eval_memory")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    for t in a.targets:
        store, dm = make(d, a.train, t, 250)
        env = dict(os.environ, DASK_DMDASK__EVALUATE__BLOCK_TARGETS=str(a.block_targets))
        r = subprocess.run([sys.executable, __file__, "--child", store, dm], env=env,
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        full = t * a.train * 8 / 2**20
        print(f"targets {t:>6} × train {a.train}: block-targets {a.block_targets}; "
              f"peak RSS {res['peak_rss_mb']:.0f} MB (before evaluate "
              f"{res['rss_before_mb']:.0f} MB), tracemalloc peak "
              f"{res['tracemalloc_peak_mb']:.0f} MB; a float64 [T, d] would be {full:.0f} MB")


if __name__ == "__main__":
    main()
