"""A saturated learner's store against a planted store of the same shape (issue 15, item 8).

Builds two run stores of ``--models`` × ``--train`` × ``--targets``:

* **5-NN**: real margins of ``jobs.knn:DigitsKNN`` (a distance-weighted 5-NN on digits),
  written block by block through the store API: most margins exactly 1.0, many constant
  targets, the others few distinct values;
* **planted**: ``benchmarks/synthetic.py`` outputs on the same shape (well-behaved targets);

then times dmdask's default ``fit_datamodels`` on each (best of ``--repeats``, in the same
process, alternating) and scikit-learn's ``LassoCV`` run as a careful user would, one target
at a time on one BLAS thread (standardised masks computed once, 5 contiguous folds, the same
30-λ grid ratio, its tolerance matched to dmdask's default: scikit-learn stops at gap ≤
tol·‖y_c‖² on the unscaled objective, dmdask at gap ≤ tol·‖y_c‖²/(2n) on the 1/(2n) one, so
scikit-learn's tol = dmdask's / 2), on ``--sk-targets`` varying targets, scaled to all varying
targets (constant targets counted as free for scikit-learn).

    python benchmarks/bench_saturated.py [--models 3000] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import record, table  # noqa: E402


def make_knn_store(path: str, n_models: int, n_train: int, n_target: int, seed: int = 0):
    import dmdask
    from dmdask.store.runstore import create_jobless_store, read_meta, write_block
    from jobs.knn import DigitsKNN

    job = DigitsKNN(n_train=n_train, n_target=n_target)
    desc = job.describe()
    create_jobless_store(path, job.n_train, job.n_target, seed=seed,
                         train_label=desc["train_label"], target_label=desc["target_label"],
                         source={"benchmark": "benchmarks/bench_saturated.py", "job": "jobs.knn"})
    dmdask.add_models(path, "random", n=n_models, alpha=0.5)
    ds = dmdask.open_store(path)
    B = int(read_meta(path)["block_size"])
    for k in range(-(-n_models // B)):
        masks = ds["mask"][k * B:(k + 1) * B].values
        write_block(path, k, job.train_block(masks, np.zeros(masks.shape[0], np.int64)))


def describe(path: str) -> dict:
    import dmdask

    Y = dmdask.open_store(path)["margin"].values
    distinct = np.array([np.unique(y).size for y in Y.T])
    return {"ones": float((Y == 1.0).mean()), "constant": int((distinct == 1).sum()),
            "median distinct": float(np.median(distinct))}


def fit_seconds(path: str) -> tuple[float, object]:
    import dmdask

    t0 = time.perf_counter()
    dm = dmdask.fit_datamodels(path)
    return time.perf_counter() - t0, dm


def sklearn_seconds(path: str, n_targets: int, tol: float) -> tuple[float, int]:
    """Seconds per varying target of LassoCV (one thread) and the number of varying targets."""
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import KFold
    from threadpoolctl import threadpool_limits

    import dmdask

    ds = dmdask.open_store(path)
    X = ds["mask"].values.astype(np.float64)
    Y = ds["margin"].values.astype(np.float64)
    varying = np.flatnonzero(np.ptp(Y, axis=0) > 0)
    pick = varying[np.linspace(0, varying.size - 1, min(n_targets, varying.size)).astype(int)]
    mu, sd = X.mean(0), X.std(0)
    Xs = (X - mu) / np.where(sd > 0, sd, 1.0)
    t0 = time.perf_counter()
    with threadpool_limits(1):
        for t in pick:
            LassoCV(alphas=30, eps=1e-3, cv=KFold(5), tol=tol / 2, max_iter=5000,
                    precompute=True).fit(Xs, Y[:, t])
    return (time.perf_counter() - t0) / pick.size, int(varying.size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=3000)
    ap.add_argument("--train", type=int, default=700)
    ap.add_argument("--targets", type=int, default=300)
    ap.add_argument("--sk-targets", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args(argv)
    from benchmarks.synthetic import make_store

    root = a.dir or tempfile.mkdtemp(prefix="bench_saturated_")
    knn = os.path.join(root, f"knn_{a.models}.zarr")
    planted = os.path.join(root, f"planted_{a.models}.zarr")
    if not os.path.exists(knn):
        make_knn_store(knn, a.models, a.train, a.targets)
    if not os.path.exists(planted):
        make_store(planted, a.models, a.train, a.targets, seed=0)
    best = {"5-NN": np.inf, "planted": np.inf}
    dms = {}
    for _ in range(a.repeats):
        for name, path in (("5-NN", knn), ("planted", planted)):
            s, dms[name] = fit_seconds(path)
            best[name] = min(best[name], s)
    rows = []
    for name, path in (("5-NN", knn), ("planted", planted)):
        dm = dms[name]
        it = dm["n_iter"].values
        sk, nvar = sklearn_seconds(path, a.sk_targets, float(dm.attrs["opt_tol"]))
        rows.append({"store": name, **describe(path), "dmdask fit s": best[name],
                     "iterations / target median": float(np.median(it)),
                     "max": int(it.max()), "converged": float(dm["converged"].values.mean()),
                     "LassoCV s (scaled)": sk * nvar, "LassoCV / dmdask": sk * nvar / best[name]})
    ratio = best["5-NN"] / best["planted"]
    body = (f"{a.models:,} models × {a.train} training examples × {a.targets} targets, "
            f"fixed-size α = 0.5 subsets, default `fit_datamodels` (CV, tol 1e-5, early stop), "
            f"best of {a.repeats}. LassoCV: {a.sk_targets} varying targets timed one at a "
            "time on one thread, scaled to all varying targets (constant ones free). "
            "`ones`: fraction of margins exactly 1.0.\n\n"
            + table(rows, ["store", "ones", "constant", "median distinct", "dmdask fit s",
                           "iterations / target median", "max", "converged",
                           "LassoCV s (scaled)", "LassoCV / dmdask"])
            + f"\n\n5-NN / planted fit time: {ratio:.2f}×.")
    print(body)
    if a.record:
        record("Saturated learner (5-NN on digits) vs a planted store", body)


if __name__ == "__main__":
    main()
