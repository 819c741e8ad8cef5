"""Train–test leakage on the planted-duplicate digits (issue 17, the paper's Figure 12
comparison): recall of the planted pairs among the top-C datamodel candidates against the top-C
nearest examples in the trained MLP's penultimate layer, as a curve over C.

Trains a store of ``jobs.digits_leaky:DigitsLeakyMLP`` (``--planted`` test images each with
one near-duplicate added to the training set: pixel noise, a one-pixel shift with probability
one half), fits LASSO datamodels on all 500 test targets, scores the candidates
(:func:`dmdask.similarity.leakage`) and prints recall and precision at every C, the average
precision of each global ranking, and the times. ``--record`` writes the section of
benchmarks/RESULTS.md. Resumable: an existing store is trained on, not rebuilt.

    python benchmarks/bench_leakage.py --workdir DIR --record
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dmdask  # noqa: E402
from benchmarks.results import record, table  # noqa: E402

JOB = "jobs.digits_leaky:DigitsLeakyMLP"


def build(path: str, models: int, planted: int, noise: float, workers: int | None):
    """Create (unless it exists) and train the store; (models trained now, seconds)."""
    if not os.path.exists(path):
        dmdask.create_store(path, JOB, models, 0.5,
                            params={"n_planted": planted, "noise": noise})
    t0 = time.perf_counter()
    rep = dmdask.train(path, workers=workers, progress=False)
    return rep.models, time.perf_counter() - t0


def by_shift(runs: dict, planted: int, noise: float) -> str:
    """Recall at C = 1, 5 and the largest, split by whether the copy was shifted."""
    from jobs.digits_leaky import DigitsLeakyMLP

    job = DigitsLeakyMLP(n_planted=planted, noise=noise)
    pairs, shifted = job.planted_pairs(), (job.split.shifts != 0).any(axis=1)
    any_lk = next(iter(runs.values()))[0]
    row = {int(t): i for i, t in enumerate(any_lk.target.values)}
    C = any_lk.sizes["rank"]
    cs = sorted({1, min(5, C), C})
    rows, cols = [], ["planted copies"]
    for name, sel in (("no shift", ~shifted), ("one-pixel shift", shifted)):
        r = {"planted copies": f"{name} ({int(sel.sum())})"}
        for label, (lk, var) in runs.items():
            hit = lk[var].values
            for c in cs:
                found = [hit[row[int(t)], :c].any() for t in pairs[sel, 0] if int(t) in row]
                r[f"{label} @{c}"] = float(np.mean(found)) if found else float("nan")
                if f"{label} @{c}" not in cols:
                    cols.append(f"{label} @{c}")
        rows.append(r)
    return "Recall by kind of copy:\n\n" + table(rows, cols)


def top_pairs(runs: dict, planted: int, noise: float, n: int = 50) -> str:
    """Of each global ranking's top ``n`` pairs: the share planted, and the share whose
    candidate is the target's nearest training image in pixel space (L2) — the digits have
    natural near-duplicates (the same writers in train and test) that no ground truth lists."""
    from jobs.digits_leaky import DigitsLeakyMLP

    job = DigitsLeakyMLP(n_planted=planted, noise=noise)
    d = ((job.x_target[:, None, :] - job.split.x_train[None]) ** 2).sum(axis=2)
    nearest = d.argmin(axis=1)
    rows = []
    for label, (lk, src, _) in runs.items():
        pfx = "" if src == "datamodels" else "rep_"
        k = min(n, lk.sizes[f"{pfx}pair"])
        t = lk[f"{pfx}pair_target"].values[:k]
        c = lk[f"{pfx}pair_candidate"].values[:k]
        rows.append({"ranking": label, "pairs": k,
                     "planted": float(lk[f"{pfx}pair_planted"].values[:k].mean()),
                     "pixel-nearest": float((nearest[t] == c).mean()),
                     "either": float((lk[f"{pfx}pair_planted"].values[:k]
                                      | (nearest[t] == c)).mean())})
    return (f"Top {n} pairs of each global ranking: share planted, share whose candidate is "
            "the target's nearest training image in pixel space (L2), either:\n\n"
            + table(rows, ["ranking", "pairs", "planted", "pixel-nearest", "either"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/dmdask-leakage")
    ap.add_argument("--models", type=int, default=6000)
    ap.add_argument("--planted", type=int, default=50, help="test images given a duplicate")
    ap.add_argument("--noise", type=float, default=1.0, help="pixel noise (0..16 units)")
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--rep-models", type=int, default=1,
                    help="models whose penultimate features the baseline averages")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    store = os.path.join(a.workdir, "leaky.zarr")
    trained, t_train = build(store, a.models, a.planted, a.noise, a.workers)
    print(f"store {store}: trained {trained} models in {t_train:.0f} s", flush=True)

    from dmdask.fit.datamodels import fit_datamodels, save_datamodels

    dmp = os.path.join(a.workdir, "dm.zarr")
    t0 = time.perf_counter()
    fitted = "fitted by an earlier run"
    if not os.path.exists(dmp):
        save_datamodels(fit_datamodels(store), dmp)
        fitted = f"in {time.perf_counter() - t0:.0f} s"
    print(f"datamodels {dmp}: {fitted}", flush=True)

    from dmdask.similarity import leakage

    t0 = time.perf_counter()
    lk = leakage(store, dmp, a.candidates, representation=True, n_models=a.rep_models)
    t_leak = time.perf_counter() - t0
    mag = leakage(store, dmp, a.candidates, by="magnitude")
    # (Dataset, source, "planted" variable) per column: DM by weight, DM by |w|, representation
    runs = {"DM w": (lk, "datamodels", "planted"), "DM abs": (mag, "datamodels", "planted"),
            "rep.": (lk, "representation", "rep_planted")}
    C = a.candidates
    rows = []
    for c in range(1, C + 1):
        r = {"C": c}
        for short, (ds_, src, _) in runs.items():
            s = ds_.sel(source=src, n_candidates=c)
            r[f"recall {short}"] = float(s.recall)
            r[f"precision {short}"] = float(s.precision)
        rows.append(r)
    text = table(rows, ["C"] + [f"{m} {k}" for m in ("recall", "precision") for k in runs])
    aps = ", ".join(f"{k} {float(d.average_precision.sel(source=src)):.3f}"
                    for k, (d, src, _) in runs.items())
    dm = dmdask.open_store(store)
    first = lk.candidate.values[:, 0]
    has = first >= 0
    tl = dm.target_label.values[lk.target.values]
    same = float((dm.train_label.values[first[has]] == tl[has]).mean())
    n_pos = int((lk.weight_norm.values > 0).sum())
    body = (f"`{JOB}` with {a.planted} of the 500 test images each given one near-duplicate "
            f"in the training set (uniform pixel noise ±{a.noise:g} of 16, a one-pixel shift "
            f"with probability ½; 1,297 + {a.planted} training examples); {a.models:,} models "
            f"at α = 0.5 trained in {t_train:.0f} s ({trained} this run), LASSO datamodels "
            f"on all 500 targets {fitted}, candidates scored in {t_leak:.1f} s "
            "(DM w: the largest positive weights, DM abs: the largest |weight|; rep.: the "
            f"representation baseline, penultimate ReLU layer of {a.rep_models} full-data "
            f"model(s), L2 distance). Recall = share of the {lk.attrs['n_planted_covered']} "
            "planted pairs whose copy is among its target's top C candidates; precision = "
            "share of all candidates issued (every target's top C) that are planted pairs.\n\n"
            f"{text}\n\n"
            "- average precision of the global ranking of pairs (DM: score = w / ‖w‖₂ or "
            f"|w| / ‖w‖₂; rep.: L2 distance): {aps}\n"
            f"- datamodel top candidate shares the target's label for {same:.3f} of the "
            f"{int(has.sum())} targets with a positive weight; {n_pos} of 500 datamodels "
            "non-zero")
    body += "\n\n" + by_shift({k: (d, v) for k, (d, _, v) in runs.items()}, a.planted,
                                a.noise)
    body += "\n\n" + top_pairs(runs, a.planted, a.noise)
    print(body)
    if a.record:
        record("Train–test leakage on planted duplicates (DigitsLeakyMLP)", body)


if __name__ == "__main__":
    main()
