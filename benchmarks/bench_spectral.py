"""Spectral clustering at scale (issue 17, "Scale benchmark"; docs/clustering.md).

1. Nyström spectral clustering of 60,000 points: unit-norm 512-d embeddings with planted
   clusters, written to a Zarr store (chunked along both axes) and read back as dask chunks;
   time, peak RSS and ARI against the planted labels.
2. At 10,000 points (the store's first rows) dmdask's Nyström and kNN methods beside
   scikit-learn's ``SpectralClustering`` (RBF affinity, same γ and cluster count): time, peak
   RSS and ARI side by side, the time ratio printed.
3. On digits: cluster purity of the datamodel embeddings against the clustering of the job's
   penultimate-layer features (a run store and its datamodels: --store/--datamodels if
   it exists, else ``--store``/``--datamodels``).

Every measured run is a child process (``--child``), so each peak RSS (``ru_maxrss``) is that
run's alone; "baseline" is the child's RSS after its imports, before the work.

    python benchmarks/bench_spectral.py --record
    python benchmarks/bench_spectral.py --points 20000 --small 5000     # quicker

Writes its section of ``benchmarks/RESULTS.md`` with --record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results  # noqa: E402

GB = 1e9


def make(path: str, n: int, p: int, c: int, noise: float, seed: int) -> None:
    """Planted clusters on the unit sphere: centre + Gaussian noise (per coordinate
    ``noise``/√p, so the noise norm is ≈ ``noise``), normalised; labels beside."""
    import numpy as np
    import zarr

    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(c, p))
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    lab = rng.integers(0, c, n)
    z = zarr.open_array(path, mode="w", shape=(n, p), chunks=(4000, 128), dtype="f4")
    for a in range(0, n, 4000):
        b = min(n, a + 4000)
        x = cent[lab[a:b]] + noise / np.sqrt(p) * rng.normal(size=(b - a, p))
        z[a:b] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    np.save(path + ".labels.npy", lab)


def child(args) -> dict:
    import resource

    import dask.array as da
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from dmdask.similarity import spectral_clusters

    lab = np.load(args.zarr + ".labels.npy")[: args.n]
    x = da.from_zarr(args.zarr)[: args.n]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if args.child == "sklearn":
        from sklearn.cluster import SpectralClustering

        xs = x.compute()
        got = SpectralClustering(args.clusters, gamma=args.gamma, random_state=0,
                                 n_jobs=1).fit(xs).labels_
    else:
        got = spectral_clusters(x, args.clusters, method=args.child, gamma=args.gamma,
                                n_landmarks=args.landmarks, n_neighbors=args.neighbors).labels
    sec = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": sec, "peak": peak, "baseline": base,
            "ari": float(adjusted_rand_score(lab, got))}


def run_child(args, method: str, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--zarr", args.zarr,
           "--n", str(n), "--clusters", str(args.clusters), "--gamma", str(args.gamma),
           "--landmarks", str(args.landmarks), "--neighbors", str(args.neighbors)]
    print("running:", method, n, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {method} n={n}: {r['seconds']:.1f} s, peak RSS {r['peak'] / GB:.2f} GB, "
          f"ARI {r['ari']:.4f}", flush=True)
    return r


def digits(store: str, datamodels: str, clusters: int, per_class: int,
           gammas: list[float]) -> str:
    import numpy as np

    from dmdask.similarity import cluster

    rows = []
    runs = [("all targets", clusters, g) for g in gammas] + [("per class", per_class, 1.0)]
    for mode, k, g in runs:
        t0 = time.perf_counter()
        clu = cluster(datamodels, k, method="exact", gamma=g, per_class=mode == "per class",
                      store=store, representation=True)
        at = clu.attrs
        row = {"clustering": mode, "clusters": k, "γ": g, "targets": clu.sizes["target"],
               "seconds": time.perf_counter() - t0,
               "ARI (datamodels vs representation)": at["ari"],
               "NMI (datamodels vs representation)": at["nmi"],
               "mean representation overlap": float(np.nanmean(
                   clu.representation_overlap.values))}
        if mode == "all targets":
            row["label purity: datamodels"] = at["purity_overall"]
            row["label purity: representation"] = at["representation_purity_overall"]
            row["largest cluster share"] = float(clu["size"].max() / clu.sizes["target"])
        rows.append(row)
        print(row, flush=True)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    return results.table(rows, cols)


def record_digits(args) -> None:
    if not (args.store and args.datamodels and os.path.exists(args.store)
            and os.path.exists(args.datamodels)):
        print(f"no digits store at {args.store} / {args.datamodels}: skipped")
        return
    start_load = load()
    tab = digits(args.store, args.datamodels, 10, 3, [0.5, 1.0, 2.0, 5.0])
    body = (f"Spectral clusters (exact) of the unit-normalised datamodel embeddings of "
            f"`{args.datamodels}` and of the store's job's penultimate-layer features (one "
            "model on the full training set, the same clustering), as `dmdask cluster "
            f"{args.datamodels} --clusters 10 --gamma G --store {args.store} "
            "--representation` (and `--clusters 3 --per-class`). Label purity: the share of "
            f"each cluster's majority label, over all targets; {start_load}.\n\n" + tab)
    print(body)
    if args.record:
        results.record("Spectral clustering on digits", body)


def load() -> str:
    return "load average at the start {:.2f}, {:.2f}, {:.2f} (1, 5, 15 min)".format(
        *os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=60000)
    ap.add_argument("--small", type=int, default=10000, help="points in the sklearn comparison")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--noise", type=float, default=6.0, help="noise norm per point (centre: 1)")
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--landmarks", type=int, default=1000)
    ap.add_argument("--neighbors", type=int, default=10)
    ap.add_argument("--store", default=None,
                    help="a digits run store (e.g. a `dmdask quickstart` store) for the purity table")
    ap.add_argument("--datamodels", default=None, help="its fitted datamodels")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--digits-only", action="store_true", help="only the digits purity table")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--zarr", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.digits_only:
        record_digits(args)
        return
    import tempfile

    work = args.workdir or tempfile.mkdtemp(prefix="dmdask-spectral-")
    os.makedirs(work, exist_ok=True)
    args.zarr = os.path.join(work, f"emb-{args.points}x{args.dim}.zarr")
    start_load = load()
    try:
        t0 = time.perf_counter()
        make(args.zarr, args.points, args.dim, args.clusters, args.noise, 0)
        print(f"generated {args.points} x {args.dim} in {time.perf_counter() - t0:.1f} s")
        big = run_child(args, "nystrom", args.points)
        small = {m: run_child(args, m, args.small) for m in ("nystrom", "knn", "sklearn")}

        def row(name, n, r):
            return {"run": name, "points": n, "time (s)": r["seconds"],
                    "peak RSS (GB)": r["peak"] / GB, "baseline RSS (GB)": r["baseline"] / GB,
                    "ARI (planted)": r["ari"]}

        rows = [row(f"dmdask Nyström (L = {args.landmarks})", args.points, big)]
        rows += [row(f"dmdask Nyström (L = {args.landmarks})", args.small, small["nystrom"]),
                 row(f"dmdask kNN (k = {args.neighbors})", args.small, small["knn"]),
                 row("scikit-learn SpectralClustering (RBF)", args.small, small["sklearn"])]
        sk = small["sklearn"]
        ratio = (f"At {args.small:,} points: scikit-learn / dmdask Nyström time "
                 f"{sk['seconds'] / small['nystrom']['seconds']:.1f}×, peak RSS "
                 f"{sk['peak'] / small['nystrom']['peak']:.1f}×; scikit-learn / dmdask kNN "
                 f"time {sk['seconds'] / small['knn']['seconds']:.1f}×.")
        print(ratio)
        body = (f"{args.points:,} × {args.dim} float32 unit-norm embeddings with "
                f"{args.clusters} planted clusters (noise norm {args.noise} per point around "
                "unit centres), read from a Zarr store chunked (4000, 128); γ = "
                f"{args.gamma}, {args.clusters} clusters; each run a separate process, peak "
                f"RSS its `ru_maxrss`; {start_load}.\n\n"
                + results.table(rows, list(rows[0])) + "\n\n" + ratio)
        print(body)
        if args.record:
            results.record("Spectral clustering", body)
        record_digits(args)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
