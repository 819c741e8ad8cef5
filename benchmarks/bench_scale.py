"""Scale of the blockwise fit (issue 18, item 3): phase times, rates and peak memory of
``fit_datamodels(..., out=PATH)`` on planted stores, a kill-and-resume, and peak RSS against
the number of targets.

Each store is generated (``benchmarks/synthetic.py``: masks sampled by the store, margins from
a planted sparse linear model, block by block) in a child process, and each fit runs in a
child process of its own, so that every peak RSS (``getrusage`` ``ru_maxrss``) is that fit's
alone. Phase times come from the output's ``phase_seconds`` attribute (the Gram pass; the
standardised Grams; the per-block ``XᵀY`` passes; paths + selection + refit; writing).

    python benchmarks/bench_scale.py --record                     # the recorded runs
    python benchmarks/bench_scale.py --models 20000 --train 1000 --targets 200 --no-rss

Rates: Gram pass n·d² multiply-adds (``syrk``, ×2 flops), ``XᵀY`` 2·n·d·T flops; the path
solve is reported per target (its work depends on supports and iterations, not a formula).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results  # noqa: E402

GB = 1e9
HERE = os.path.abspath(__file__)


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, HERE, *args], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make(work, models, d, targets, seed=0) -> str:
    path = os.path.join(work, f"scale-{models}x{d}x{targets}.zarr")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        _child(["--make", path, "--models", str(models), "--train", str(d), "--targets",
                str(targets), "--seed", str(seed)])
        print(f"generated {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def fit_child(store, out, block, targets=None) -> dict:
    args = ["--fit", store, "--out", out, "--block-targets", str(block)]
    if targets:
        args += ["--first-targets", str(targets)]
    return _child(args)


def _do_make(a):
    import synthetic

    synthetic.make_store(a.make, a.models, a.train, a.targets, block_size=1024, seed=a.seed,
                         support=20)
    print(json.dumps({"ok": 1}))


def _do_fit(a):
    import resource

    import numpy as np

    import dmdask

    tsel = np.arange(a.first_targets) if a.first_targets else None
    t0 = time.perf_counter()
    dm = dmdask.fit_datamodels(a.fit, selection="holdout", out=a.out,
                               block_targets=a.block_targets, targets=tsel)
    sec = time.perf_counter() - t0
    ph = json.loads(dm.attrs["phase_seconds"])
    print(json.dumps({"seconds": sec, "phases": ph,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "n": int(dm.attrs["n_models"]), "d": dm.sizes["train"],
                      "T": dm.sizes["target"]}))


def _row(label, r, block) -> dict:
    n, d, T = r["n"], r["d"], r["T"]
    ph = r["phases"]
    return {
        "run": label, "models n": n, "train d": d, "targets T": T, "block": block,
        "Gram pass (s)": ph["gram_pass"], "Gram GFLOP/s": 2 * n * d * d / ph["gram_pass"] / 1e9,
        "std. Grams (s)": ph["gram_prepare"], "XᵀY passes (s)": ph["target_stats"],
        "XᵀY GFLOP/s": 2 * n * d * T / max(ph["target_stats"], 1e-9) / 1e9,
        "paths+selection+refit (s)": ph["solve"],
        "ms per target": 1e3 * ph["solve"] / T, "write (s)": ph["write"],
        "total (s)": r["seconds"], "peak RSS (GB)": r["peak_rss"] / GB,
    }


COLS = ["run", "models n", "train d", "targets T", "block", "Gram pass (s)", "Gram GFLOP/s",
        "std. Grams (s)", "XᵀY passes (s)", "XᵀY GFLOP/s", "paths+selection+refit (s)",
        "ms per target", "write (s)", "total (s)", "peak RSS (GB)"]


def kill_and_resume(store, out, block) -> dict:
    """SIGKILL a fit once it has committed at least one block, then resume it."""
    import zarr

    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.Popen([sys.executable, HERE, "--fit", store, "--out", out,
                          "--block-targets", str(block)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    done = 0
    while p.poll() is None:
        time.sleep(0.5)
        try:
            done = int(zarr.open_group(out, mode="r")["block_done"][:].sum())
        except Exception:
            continue
        if done >= 1:
            p.send_signal(signal.SIGKILL)
            p.wait()
            break
    killed_after = time.perf_counter() - t0
    done = int(zarr.open_group(out, mode="r")["block_done"][:].sum())
    total = int(zarr.open_group(out, mode="r")["block_done"].shape[0])
    r = fit_child(store, out, block)
    return {"killed after (s)": killed_after, "blocks committed at the kill": f"{done}/{total}",
            "resume (s)": r["seconds"], "resume XᵀY+solve (s)":
                r["phases"]["target_stats"] + r["phases"]["solve"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=40000)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--targets", type=int, default=2000)
    ap.add_argument("--block-targets", type=int, default=500)
    ap.add_argument("--widths", default="1000", help="train widths of the 2,000/20,000-target "
                    "RSS comparison (comma-separated)")
    ap.add_argument("--rss-models", type=int, default=10000)
    ap.add_argument("--no-rss", action="store_true", help="skip the targets-vs-RSS runs")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dmdask-bench-scale"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--make", help=argparse.SUPPRESS)
    ap.add_argument("--fit", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--first-targets", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.make:
        return _do_make(a)
    if a.fit:
        return _do_fit(a)
    os.makedirs(a.workdir, exist_ok=True)
    load0 = os.getloadavg()
    rows = []
    store = make(a.workdir, a.models, a.train, a.targets, a.seed)
    r = fit_child(store, os.path.join(a.workdir, "dm.zarr"), a.block_targets)
    rows.append(_row("scale", r, a.block_targets))
    print(results.table(rows, COLS), flush=True)
    kr = kill_and_resume(store, os.path.join(a.workdir, "dm-killed.zarr"), a.block_targets)
    print(kr, flush=True)
    rss_rows = []
    if not a.no_rss:
        for d in [int(x) for x in a.widths.split(",")]:
            st = make(a.workdir, a.rss_models, d, 20000, a.seed)
            for T in (2000, 20000):
                r = fit_child(st, os.path.join(a.workdir, f"dm-{d}-{T}.zarr"), a.block_targets,
                              targets=T)
                rss_rows.append(_row("RSS vs T", r, a.block_targets))
                print(rss_rows[-1], flush=True)
    load1 = os.getloadavg()
    body = (f"`fit_datamodels(store, selection='holdout', out=..., block_targets=...)` on "
            "planted stores (benchmarks/synthetic.py, 20 planted weights per target, α = 0.5, "
            "fixed-size subsets), each fit in a process of its own (peak RSS = getrusage). "
            f"Load average {load0[0]:.2f} before, {load1[0]:.2f} after (other sessions share "
            "these 2 cores: rates are lower bounds).\n\n"
            + results.table(rows + rss_rows, COLS)
            + "\n\nKill and resume (SIGKILL once a block is committed, then the same fit "
            "again):\n\n" + results.table([kr], list(kr)))
    print(body)
    if a.record:
        results.record("Scale of the blockwise fit", body)
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
