"""Cluster overhead: `dmdask.train` on a LocalCluster against calling `train_block` in a loop.

Both train the same models of the same job on the same cores:

* loop      — one process: `job.train_block` block after block, the library using every core
              (torch threads = cores), plus reading masks from and writing margins to the store;
* loop/1t   — the same with one thread: the per-core rate;
* loop × P  — the plain loop split over P processes (one per core, one thread each, blocks
              dealt round-robin), timed from a barrier once every process has built its job:
              the same parallelism as the cluster with none of its machinery — the baseline
              the cluster's overhead is measured against;
* dmdask    — `dmdask.train` on a LocalCluster of one single-threaded worker process per core
              (started as `dmdask train` starts it, see dmdask.train.malloc-trim-threshold):
              scheduling, per-worker job construction, store reads and validated block writes.

    python benchmarks/bench_train.py [--job jobs.digits:DigitsMLP] [--models 6144]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import dask
import numpy as np

import dmdask
from dmdask.store import jobspec
from dmdask.store.runstore import block_range, read_meta, write_block

try:
    from benchmarks.results import record, table
except ImportError:  # run as a script
    from results import record, table


def _loop(path: str, spec: dict, threads: int | None, lane: int = 0, lanes: int = 1,
          barrier=None) -> float:
    """Train blocks lane, lane + lanes, … of the store in a plain loop; seconds taken (timed
    after the job is built and, if given, after ``barrier``)."""
    import zarr

    if threads:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
    job = jobspec.construct_job(spec["path"], spec["params"])
    g = zarr.open_group(path)
    meta = read_meta(path)
    nb = -(-meta["n_models"] // meta["block_size"])
    if barrier is not None:
        barrier.wait()
    t = time.perf_counter()
    for b in range(lane, nb, lanes):
        s, e = block_range(meta, b)
        write_block(path, b, job.train_block(g["mask"][s:e], g["seed"][s:e]), job=spec)
    return time.perf_counter() - t


def _share(path, spec, lane, lanes, barrier, out):
    out.put(_loop(path, spec, 1, lane, lanes, barrier))


def _parallel_loop(path: str, spec: dict, lanes: int) -> float:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(lanes), ctx.Queue()
    procs = [ctx.Process(target=_share, args=(path, spec, i, lanes, barrier, out))
             for i in range(lanes)]
    for p in procs:
        p.start()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--job", default="jobs.digits:DigitsMLP")
    ap.add_argument("--params", default="{}", help="JSON job parameters")
    ap.add_argument("--models", type=int, default=6144)
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    params = json.loads(a.params)
    spec = {"path": a.job, "params": params}
    tmp = tempfile.mkdtemp(prefix="dmdask-bench-")
    rows = []
    try:
        def fresh(name):
            return dmdask.create_store(os.path.join(tmp, name), a.job, a.models, a.alpha,
                                       params=params, block_size=a.block_size)

        t_loop = _loop(fresh("loop"), spec, cores)
        rows.append({"runner": f"loop, {cores} threads", "seconds": t_loop,
                     "models/s": a.models / t_loop})
        t_loop1 = _loop(fresh("loop1"), spec, 1)
        rows.append({"runner": "loop, 1 thread", "seconds": t_loop1,
                     "models/s": a.models / t_loop1})
        t_par = _parallel_loop(fresh("par"), spec, cores)
        rows.append({"runner": f"loop × {cores} processes, 1 thread each", "seconds": t_par,
                     "models/s": a.models / t_par})
        from distributed import Client, LocalCluster

        p = fresh("cluster")
        t0 = time.perf_counter()
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
                              dmdask.config.get("train.malloc-trim-threshold")}), \
                LocalCluster(n_workers=cores, threads_per_worker=1, processes=True,
                             dashboard_address=":0", silence_logs=40) as lc, Client(lc) as c:
            t_start = time.perf_counter() - t0
            rep = dmdask.train(p, client=c, progress=False)
        rows.append({"runner": f"dmdask.train, LocalCluster {cores}×1", "seconds": rep.wall_seconds,
                     "models/s": rep.models_per_second})
        m_loop = dmdask.open_store(os.path.join(tmp, "loop")).margin.values
        m_cl = dmdask.open_store(p).margin.values
        same = np.array_equal(m_loop, m_cl)
        maxdiff = float(np.abs(m_loop - m_cl).max())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    over = rep.wall_seconds / t_par - 1
    out = (f"Job `{a.job}` {params or ''}, {a.models:,} models at α = {a.alpha}, blocks of "
           f"{read_meta_block(a, params)} models; cluster start-up {t_start:.1f} s (not counted).\n\n"
           + table(rows, ["runner", "seconds", "models/s"])
           + f"\n\nCluster overhead against the same loop run as {cores} plain processes: "
           f"**{100 * over:+.1f}%** (scheduling, store reads, validated block writes; the one-off "
           f"job construction on the workers, {rep.setup_seconds:.1f} s, and cluster start-up "
           f"are not counted, as the plain processes build their job before their clock "
           f"starts). Margins from the cluster "
           f"{'equal the loop’s bit for bit' if same else f'differ from the loop’s by at most {maxdiff:.2g}'}.")
    print(out)
    if not a.no_record:
        record(f"Training throughput and cluster overhead ({a.job})", out)


def read_meta_block(a, params) -> int:
    if a.block_size:
        return a.block_size
    cls = jobspec.resolve_job_class(a.job)
    from dmdask import config

    return getattr(cls, "preferred_block_size", None) or config.get("store.block-size")


if __name__ == "__main__":
    main()
