"""MadryLab formats: a regression ``.beton`` exported from and imported into a run store, with
time and peak RSS per step (each step in its own process), at several numbers of models.

    python benchmarks/bench_formats.py [--models 20000,60000] [--train 5000] [--targets 1000]
                                       [--dir SCRATCH] [--record]

A synthetic MadryLab directory (fixed α = 0.5 masks, float16 margins) is imported first
(``import_madrylab``), then ``export_beton`` writes the ``.beton`` (one FFCV writer process)
and ``import_beton`` reads it back (last 1,000 rows held out). The "modules" row is a process
that only imports dmdask and ffcv: the difference to it is what the rows cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

try:
    from benchmarks.results import record, table
except ImportError:  # run as a script
    from results import record, table

_CHILD = r"""
import json, resource, sys, time
step, d = sys.argv[1], sys.argv[2]
import ffcv.reader, ffcv.writer  # noqa: F401  (every step pays the same imports)
from dmdask.store.beton import export_beton, import_beton
from dmdask.store.madrylab import import_madrylab
t = time.perf_counter()
if step == "npy":
    import_madrylab(f"{d}/npy", f"{d}/s1", progress=False)
elif step == "export":
    export_beton(f"{d}/s1", f"{d}/r.beton", progress=False)
elif step == "import":
    import_beton(f"{d}/r.beton", f"{d}/s2", progress=False, heldout_rows=1000)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _make(d: str, n: int, n_train: int, n_target: int) -> None:
    os.makedirs(f"{d}/npy")
    rng = np.random.default_rng(0)
    m = np.lib.format.open_memmap(f"{d}/npy/masks.npy", "w+", bool, (n, n_train))
    y = np.lib.format.open_memmap(f"{d}/npy/margins.npy", "w+", np.float16, (n, n_target))
    for s in range(0, n, 1000):
        k = min(1000, n - s)
        m[s:s + k] = rng.random((k, n_train)) < 0.5
        y[s:s + k] = rng.standard_normal((k, n_target))
    m.flush()
    y.flush()
    del m, y
    np.save(f"{d}/npy/_completed.npy", np.ones(n, bool))


def _step(step: str, d: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _CHILD, step, d], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="20000,60000")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--record", action="store_true", help="write the section to RESULTS.md")
    a = ap.parse_args()
    rows = []
    base = _step("modules", tempfile.gettempdir())
    rows.append({"models": "modules only", "step": "-", "seconds": "-",
                 "peak RSS MB": round(base["rss_mb"])})
    for n in (int(x) for x in a.models.split(",")):
        if a.dir:
            os.makedirs(a.dir, exist_ok=True)
        d = tempfile.mkdtemp(prefix="dmdask-bench-formats-", dir=a.dir)
        try:
            _make(d, n, a.train, a.targets)
            _step("npy", d)
            for step in ("export", "import"):
                r = _step(step, d)
                row = {"models": n, "step": f"{step}_beton", "seconds": round(r["seconds"], 1),
                       "peak RSS MB": round(r["rss_mb"])}
                if step == "export":
                    row["file MB"] = round(os.path.getsize(f"{d}/r.beton") / 2**20)
                rows.append(row)
                print(row, flush=True)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    out = (f"{a.train} training examples × {a.targets} targets per model; each step its own "
           f"process.\n\n" + table(rows, ["models", "step", "seconds", "peak RSS MB",
                                          "file MB"]))
    print(out)
    if a.record:
        record("MadryLab .beton export and import", out)


if __name__ == "__main__":
    main()
