"""Out-of-core fit (issue 4, "Out of core"): a store whose masks would take ≥ 8 GB as uint8
(1.6M models × 5,000 training examples), fitted with bounded memory.

1. The planted store (``benchmarks/synthetic.py``) is written block by block in a *separate
   process* (``--make-only``), so the fit's peak RSS is not the generator's.
2. This process fits it with ``dmdask.fit_datamodels`` (holdout selection, Gram solver: the
   statistics pass is the part that reads the masks, block by block, on dask) while a thread
   samples the resident set size every 0.1 s; ``resource.getrusage`` gives the kernel's peak.
3. The result is scored against the planted truth (fresh subsets) as a sanity check.

    python benchmarks/bench_outofcore.py                       # 1.6M × 5,000 × 50 (long)
    python benchmarks/bench_outofcore.py --models 200000       # scaled version

Writes its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results  # noqa: E402
import synthetic  # noqa: E402

GB = 1e9


class RssSampler:
    """Peak resident set size of this process, sampled in a thread."""

    def __init__(self, every=0.1):
        import psutil

        self.proc = psutil.Process()
        self.every = every
        self.peak = self.proc.memory_info().rss
        self.start_rss = self.peak
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def du(path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def make(path, models, d, targets, block_size, seed):
    t0 = time.perf_counter()
    synthetic.make_store(path, models, d, targets, block_size=block_size, seed=seed,
                         support=50, progress=True)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=1_600_000)
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--block-size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the store goes (default: a tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="dmdask-ooc-")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"ooc-{args.models}x{args.train}x{args.targets}.zarr")
    if args.make_only:
        sec = make(path, args.models, args.train, args.targets, args.block_size, args.seed)
        print(f"GENERATED {sec:.3f}")
        return
    gen_sec = float("nan")
    try:
        if not os.path.exists(path):
            cmd = [sys.executable, os.path.abspath(__file__), "--make-only",
                   "--models", str(args.models), "--train", str(args.train),
                   "--targets", str(args.targets), "--block-size", str(args.block_size),
                   "--seed", str(args.seed), "--workdir", work]
            print("generating:", " ".join(cmd), flush=True)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            print(out.stdout, end="", flush=True)
            gen_sec = float(out.stdout.strip().splitlines()[-1].split()[-1])
        import dmdask

        uint8_gb = args.models * args.train / GB
        disk_gb = du(path) / GB
        truth = synthetic.Truth.load(f"{path}.truth.npz")
        with RssSampler() as rss:
            t0 = time.perf_counter()
            dm = dmdask.fit_datamodels(path, selection="holdout", solver="auto",
                                       progress=True)
            fit_sec = time.perf_counter() - t0
        ru_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        ev = synthetic.evaluate(truth, dm.weight.values, dm.bias.values, n_subsets=2000)
        rows = [{
            "models": args.models, "train": args.train, "targets": args.targets,
            "masks as uint8 (GB)": uint8_gb, "store on disk (GB)": disk_gb,
            "generate (s)": gen_sec, "fit (s)": fit_sec,
            "RSS before fit (GB)": rss.start_rss / GB,
            "peak RSS, sampled (GB)": rss.peak / GB, "peak RSS, getrusage (GB)": ru_peak / GB,
            "solver": ",".join(str(dm.attrs.get("solvers_used", "")).split()),
            "rel. pred. error": ev["mean_rel_err"], "support F1": ev["mean_f1"],
        }]
        cols = list(rows[0])
        body = ("Planted store (50 planted weights per target, fixed-size α = 0.5), fitted by "
                "`dmdask.fit_datamodels(path, selection='holdout')`; masks stream from the "
                "Zarr store block by block (block = "
                f"{args.block_size} models). Peak RSS is this process's (the store is "
                "generated in a child process). 'rel. pred. error' is against the planted "
                "signal on 2,000 fresh subsets (sanity check).\n\n"
                + results.table(rows, cols))
        if args.models * args.train < 8e9:
            body += (f"\n\nScaled run: {args.models:,} models (masks {uint8_gb:.2f} GB as uint8)"
                     "; the full target is 1.6M × 5,000 (8 GB).")
        print(body)
        if not args.no_record:
            results.record("Out-of-core fit", body)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
