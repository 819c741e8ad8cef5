"""Run-store throughput: drawing + writing masks, writing margins by blocks, reading back.

    python benchmarks/bench_store.py [--models 100000] [--train 5000] [--targets 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import dask
import numpy as np

import dmdask
from dmdask.store.runstore import block_range, read_meta

try:
    from benchmarks.results import record, table
except ImportError:  # run as a script
    from results import record, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=100_000)
    ap.add_argument("--train", type=int, default=5_000)
    ap.add_argument("--targets", type=int, default=500)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dmdask-bench-")
    path = os.path.join(tmp, "s.zarr")
    rows = []
    try:
        dmdask.create_jobless_store(path, a.train, a.targets, block_size=a.block_size, alpha=0.5)
        t = time.perf_counter()
        dmdask.add_models(path, "random", n=a.models)
        dt = time.perf_counter() - t
        mask_bytes = a.models * a.train
        rows.append({"operation": "add_models: draw + write masks (fixed α = 0.5)",
                     "seconds": dt, "throughput": f"{mask_bytes / dt / 1e6:.0f} M entries/s",
                     "models/s": a.models / dt})
        meta = read_meta(path)
        rng = np.random.default_rng(0)
        margins = rng.standard_normal((a.block_size, a.targets)).astype(np.float32)
        nb = -(-a.models // a.block_size)
        t = time.perf_counter()
        for b in range(nb):
            s, e = block_range(meta, b)
            dmdask.write_block(path, b, margins[: e - s])
        dt = time.perf_counter() - t
        rows.append({"operation": "write_block: margins, validated, then completed",
                     "seconds": dt,
                     "throughput": f"{a.models * a.targets * 4 / dt / 1e6:.0f} MB/s",
                     "models/s": a.models / dt})
        ds = dmdask.open_store(path)
        with dask.config.set(scheduler="threads"):
            t = time.perf_counter()
            s = ds.mask.sum("model").values
            dt = time.perf_counter() - t
        assert s.sum() == a.models * round(0.5 * a.train)
        rows.append({"operation": "read masks (dask, threads): column sums", "seconds": dt,
                     "throughput": f"{mask_bytes / dt / 1e6:.0f} M entries/s",
                     "models/s": a.models / dt})
        with dask.config.set(scheduler="threads"):
            t = time.perf_counter()
            m = ds.margin.mean("model").values
            dt = time.perf_counter() - t
        assert np.isfinite(m).all()
        rows.append({"operation": "read margins (dask, threads): means", "seconds": dt,
                     "throughput": f"{a.models * a.targets * 4 / dt / 1e6:.0f} MB/s",
                     "models/s": a.models / dt})
        info = dmdask.store_info(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = (f"Store of {a.models:,} models × {a.train:,} training examples × {a.targets} targets, "
           f"blocks of {a.block_size}; masks stored at {info['mask_bits_per_entry']:.3f} bits "
           f"per entry ({info['bytes']['mask'] / 1e6:.1f} MB on disk).\n\n"
           + table(rows, ["operation", "seconds", "throughput", "models/s"]))
    print(out)
    if not a.no_record:
        record("Run store throughput", out)


if __name__ == "__main__":
    main()
