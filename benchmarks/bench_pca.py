"""PCA of datamodel embeddings (dmdask.similarity.pca): accuracy against the number of power
iterations, the out-of-core scale run beside scikit-learn's ``randomized_svd``, and digits.

``--accuracy``  principal angles and captured variance against an exact SVD, for a flat
                synthetic spectrum and the digits datamodels, for each q in --q-grid; the
                default ``dmdask.embed.n-power-iter`` is read off this table.
``--scale``     100 components of a 60,000 × 50,000 float32 matrix in a Zarr store (a planted
                rank-r structure plus noise, generated chunk by chunk under --workdir):
                dmdask's ``pca`` out of core, and scikit-learn's ``randomized_svd`` on the
                matrix loaded into memory (same components, oversampling, power iterations,
                QR normaliser), each in its own subprocess so that each peak RSS is its own;
                accuracy = principal angles to the planted subspace; the floor = one read of
                the store (timed) × the passes dmdask makes.
``--digits``    the digits store's datamodel spectrum beside the penultimate-layer features
                of its job, and the faithfulness of the first components (App. J.1), on a
                copy of the store under --workdir (the copy gains the retrained models).

Each mode prints a Markdown section; ``--record`` writes it to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import results  # noqa: E402

GB = 1e9


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def _angles_deg(a, b) -> np.ndarray:
    """Principal angles (degrees) between the row spaces of a and b."""
    from scipy.linalg import subspace_angles

    return np.degrees(subspace_angles(np.asarray(a, np.float64).T, np.asarray(b, np.float64).T))


# ------------------------------------------------------------------ accuracy vs q
def _flat(m, n, seed):
    """A matrix whose singular values decay as (i+1)^-0.25 (a flat spectrum: the top 100 of
    1,500 hold about a fifth of the energy, like datamodel embeddings)."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.normal(size=(m, r)))
    v, _ = np.linalg.qr(rng.normal(size=(n, r)))
    return (u * (np.arange(1, r + 1) ** -0.25)) @ v.T


def accuracy(args) -> str:
    import xarray as xr

    from dmdask.similarity import embeddings, pca

    mats = {"flat spectrum 2000 × 1500": _flat(2000, 1500, 0)}
    dm_path = os.path.join(args.digits_store, "datamodels.zarr")
    if os.path.exists(dm_path):
        mats["digits datamodels " + dm_path] = xr.open_zarr(dm_path, consolidated=False)
    rows = []
    K = args.components_small
    for name, w in mats.items():
        if isinstance(w, np.ndarray):
            T, N = w.shape
            w = xr.Dataset({"weight": (("target", "train"), w)},
                           coords={"target": np.arange(T), "train": np.arange(N)})
        e = embeddings(w)
        E = np.asarray(e.data.compute(), np.float64)
        C = E - E.mean(axis=0)
        _, s, vt = np.linalg.svd(C, full_matrices=False)
        ev = s**2 / (E.shape[0] - 1)
        k = min(K, E.shape[0] - 1)
        exact = ev[:k].sum()
        for q in args.q_grid:
            t0 = time.perf_counter()
            out = pca(w, k, n_power_iter=q, fit_on="all")
            sec = time.perf_counter() - t0
            got = out.explained_variance.values
            ang = _angles_deg(out.components.values, vt[:k])
            ang10 = _angles_deg(out.components.values[:10], vt[:10])
            rows.append({
                "matrix": name, "K": k, "q": q,
                "captured variance / exact": float(got.sum() / exact),
                "max rel. error of λ_i": float(np.max(np.abs(got - ev[:k]) / ev[:k])),
                "max angle top-10 (°)": float(ang10.max()),
                "max angle top-K (°)": float(ang.max()),
                "seconds": sec,
            })
            print(rows[-1], flush=True)
    cols = list(rows[0])
    ok = {}
    for name in mats:
        r = [x for x in rows if x["matrix"] == name]
        good = [x["q"] for x in r if x["captured variance / exact"] >= 1 - args.tolerance]
        ok[name] = min(good) if good else None
    pick = max((v for v in ok.values() if v is not None), default=None)
    body = ("`dmdask.similarity.pca(..., n_power_iter=q)` (randomized SVD: q iterations "
            "of subspace iteration, one read of the matrix each, QR after each; 10 "
            "oversampling columns) against `numpy.linalg.svd` of the same centred "
            "unit-normalised embeddings. 'captured variance / exact': the explained variance "
            "of the K components found over that of the exact top K (1 = optimal); angles: "
            "largest principal angle between the found and the exact subspaces (on a flat "
            "spectrum the top-K subspace itself is ill-conditioned, so the captured variance "
            "is the criterion).\n\n" + results.table(rows, cols)
            + f"\n\nSmallest q within {args.tolerance:.1%} of the exact captured variance: "
            + "; ".join(f"{k}: {v}" for k, v in ok.items())
            + f". Default `dmdask.embed.n-power-iter` = the largest of these = {pick}. "
            f"Load: `{os.popen('uptime').read().strip()}`.")
    return body


# ------------------------------------------------------------------ scale
def _make(path, m, n, rank, chunk, seed):
    """The planted matrix X = G·diag(s)·Vᵀ/√m + N(0,1) noise, written chunk by chunk."""
    import dask
    import dask.array as da
    import xarray as xr

    rng = np.random.default_rng(seed)
    V, _ = np.linalg.qr(rng.normal(size=(n, rank)))
    G = rng.normal(size=(m, rank))
    edge = np.sqrt(m) + np.sqrt(n)  # top singular value of the noise
    s = np.linspace(3.0, 1.5, rank) * edge
    np.savez(path + ".truth.npz", V=V.T, s=s)
    SVt = (s[:, None] * V.T / np.sqrt(m)).astype(np.float32)

    def block(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        i, j = block_info[None]["chunk-location"]
        g = np.random.default_rng([seed, i, j, 7])
        out = g.standard_normal((r1 - r0, c1 - c0), dtype=np.float32)
        out += G[r0:r1].astype(np.float32) @ SVt[:, c0:c1]
        return out

    X = da.map_blocks(block, chunks=da.core.normalize_chunks((chunk, chunk), (m, n)),
                      dtype=np.float32, meta=np.empty((0, 0), np.float32))
    ds = xr.Dataset({"weight": (("target", "train"), X)},
                    coords={"target": np.arange(m), "train": np.arange(n)})
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        ds.to_zarr(path, mode="w", consolidated=True,
                   encoding={"weight": {"compressors": None}})
    return time.perf_counter() - t0


def _child(args):
    """One side of the scale run, in its own process; prints one JSON line."""
    import dask

    truth = np.load(args.path + ".truth.npz")
    Vt = truth["V"]
    r = Vt.shape[0]
    out = {}
    if args.child == "read":
        import dask.array as da
        import xarray as xr

        X = xr.open_zarr(args.path)["weight"].data
        t0 = time.perf_counter()
        with dask.config.set(scheduler="threads"):
            X.map_blocks(lambda b: b[:1, :1].astype(np.float64), chunks=(1, 1),
                         dtype=np.float64).sum().compute()
        out["read_s"] = time.perf_counter() - t0
        del da
    elif args.child == "ours":
        from dmdask.similarity import pca

        t0 = time.perf_counter()
        with dask.config.set(scheduler="threads", num_workers=args.threads):
            res = pca(args.path, args.components, n_power_iter=args.q, normalise=False,
                      fit_on="all", progress=True)
        out["seconds"] = time.perf_counter() - t0
        out["passes"] = int(res.attrs["passes"]) + 1  # + the embeddings' norm/NaN pass
        comp = res.components.values
        out["s"] = res.singular_values.values.tolist()
    else:
        import xarray as xr
        from sklearn.utils.extmath import randomized_svd

        Z = xr.open_zarr(args.path)["weight"]
        t0 = time.perf_counter()
        X = np.empty(Z.shape, np.float32)
        ch = Z.data.chunks[0][0]
        for i in range(0, X.shape[0], ch):
            X[i:i + ch] = Z.isel(target=slice(i, i + ch)).values
        out["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, s, comp = randomized_svd(X, args.components, n_oversamples=10, n_iter=args.q,
                                    power_iteration_normalizer="QR", random_state=0)
        out["seconds"] = time.perf_counter() - t0
        out["s"] = s.tolist()
    if args.child != "read":
        ang = _angles_deg(comp[:r], Vt)
        out["max_angle_deg"] = float(ang.max())
        out["mean_cos2"] = float((np.cos(np.radians(ang)) ** 2).mean())
    out["peak_rss_gb"] = _peak_gb()
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(args, which) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", which, "--path", args.path,
           "--components", str(args.components), "--q", str(args.q),
           "--threads", str(args.threads)]
    print("$", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(p.stderr[-3000:])
    if p.returncode != 0:
        raise SystemExit(f"{which} failed (exit {p.returncode})")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def scale(args) -> str:
    os.makedirs(args.workdir, exist_ok=True)
    m, n = args.rows, args.cols
    args.path = os.path.join(args.workdir, f"planted-{m}x{n}.zarr")
    gen = float("nan")
    if not os.path.exists(args.path + ".truth.npz"):
        print(f"generating {args.path} ({m * n * 4 / GB:.1f} GB)", flush=True)
        gen = _make(args.path, m, n, args.rank, args.chunk, args.seed)
        print(f"generated in {gen:.0f} s", flush=True)
    read = _run_child(args, "read")  # also warms the page cache, as sklearn's load is not timed
    ours = _run_child(args, "ours")
    sk = _run_child(args, "sklearn")
    floor = read["read_s"] * ours["passes"]
    s_ours, s_sk = np.array(ours["s"]), np.array(sk["s"])
    rows = [
        {"method": "dmdask pca (Zarr, out of core)", "seconds": ours["seconds"],
         "peak RSS (GB)": ours["peak_rss_gb"], "passes over the store": ours["passes"],
         f"max angle to planted top-{args.rank} (°)": ours["max_angle_deg"],
         "mean cos² to planted": ours["mean_cos2"], "Σσ² / sklearn's": float(
             (s_ours**2).sum() / (s_sk**2).sum())},
        {"method": "sklearn randomized_svd (in memory)", "seconds": sk["seconds"],
         "peak RSS (GB)": sk["peak_rss_gb"], "passes over the store": "—",
         f"max angle to planted top-{args.rank} (°)": sk["max_angle_deg"],
         "mean cos² to planted": sk["mean_cos2"], "Σσ² / sklearn's": 1.0},
    ]
    cols = list(rows[0])
    load = os.popen("uptime").read().strip()
    body = (f"{args.components} components of a {m:,} × {n:,} float32 matrix "
            f"({m * n * 4 / GB:.1f} GB, Zarr, uncompressed, {args.chunk} × {args.chunk} "
            f"chunks) = a planted rank-{args.rank} structure (singular values 3 to 1.5 × "
            "the noise edge √m + √n) plus N(0, 1) noise. Both with q = "
            f"{args.q} power iterations (QR normaliser; the same Krylov power (AᵀA)^(q+1) "
            "for both), 10 oversampling columns. dmdask: "
            f"`pca(path, {args.components}, normalise=False, n_power_iter=q)` on the threaded scheduler "
            f"with {args.threads} dask thread(s), each matmul on BLAS's own threads "
            "(centred implicitly; one extra pass finds the row norms and NaN); scikit-learn: "
            "`randomized_svd` (uncentred) on the matrix loaded into memory, load time "
            f"({sk['load_s']:.0f} s) not counted. Each in its own subprocess.\n\n"
            + results.table(rows, cols)
            + f"\n\nRatio dmdask / sklearn time: {ours['seconds'] / sk['seconds']:.2f}×; "
            f"memory: {ours['peak_rss_gb'] / sk['peak_rss_gb']:.2f}×. Floor (one read of "
            f"the store, {read['read_s']:.1f} s, × {ours['passes']} passes): {floor:.0f} s. "
            f"Generation: {gen:.0f} s. Load during the run: `{load}`.")
    return body


# ------------------------------------------------------------------ digits
def digits(args) -> str:
    import xarray as xr

    from dmdask.similarity import faithfulness, pca

    src = args.digits_store
    work = os.path.join(args.workdir, "digits")
    if not os.path.exists(os.path.join(work, "runs.zarr")):
        os.makedirs(work, exist_ok=True)
        for name in ("runs.zarr", "datamodels.zarr"):
            shutil.copytree(os.path.join(src, name), os.path.join(work, name))
    store, dm = os.path.join(work, "runs.zarr"), os.path.join(work, "datamodels.zarr")
    t0 = time.perf_counter()
    emb = pca(dm, args.components_small, store=store, representation=True, progress=True)
    pca_s = time.perf_counter() - t0
    emb_path = os.path.join(work, "emb.zarr")
    from dmdask.outputs import write_zarr

    write_zarr(emb, emb_path)
    a = emb.attrs
    evr = emb.explained_variance_ratio.values
    rev = emb.representation_explained_variance_ratio.values
    spec = [{"embedding": "datamodels (unit rows)", "targets": a["n_fit"],
             "dims": emb.sizes["train"], "top 1": evr[0], "top 10": evr[:10].sum(),
             f"top {evr.size}": evr.sum(), "PCs for 50%": a["n_components_50"],
             "PCs for 90%": a["n_components_90"],
             "participation ratio": a["participation_ratio"]},
            {"embedding": "penultimate features", "targets": a["n_fit"],
             "dims": a["representation_dim"], "top 1": rev[0], "top 10": rev[:10].sum(),
             f"top {evr.size}": rev[:evr.size].sum(),
             "PCs for 50%": a["representation_n_components_50"],
             "PCs for 90%": a["representation_n_components_90"],
             "participation ratio": a["representation_participation_ratio"]}]
    body = (f"Store {src} (copied to {work}), its datamodels; `pca(dm, "
            f"{args.components_small}, store=..., representation=True)` ({pca_s:.1f} s, "
            f"q = {a['n_power_iter']}; fitted on {a['fit_on']}). −1: more than the "
            "components computed. The participation ratio of the datamodels is that of the "
            "computed components only.\n\n" + results.table(spec, list(spec[0])))
    comps = [0, 1]
    ks = args.faith_k
    t0 = time.perf_counter()
    f = faithfulness(store, dm, emb_path, components=comps, k=ks, runs=args.runs,
                     n_targets=args.n_targets, progress=True)
    f_s = time.perf_counter() - t0
    write_zarr(f, os.path.join(work, "faith.zarr"))
    rows = []
    for c in comps:
        for d in ("positive", "negative"):
            for k in ks:
                row = {"component": c, "removed": d, "k": k}
                for g in ("top", "bottom", "all"):
                    e = float(f.effect.sel(component=c, direction=d, k=k, group=g))
                    s = float(f.effect_se.sel(component=c, direction=d, k=k, group=g))
                    row[f"{g} (± s.e.)"] = f"{e:+.3f} ± {s:.3f}"
                rows.append(row)
    body += (f"\n\nFaithfulness (App. J.1): `faithfulness(store, dm, emb, components={comps}, "
             f"k={ks}, runs={args.runs}, n_targets={args.n_targets})`, {f_s:.0f} s, "
             f"{f.attrs['models_trained']} models trained. Mean margin drop (control − "
             "removed) on the targets with the largest projections (top), the smallest "
             "(bottom) and all.\n\n" + results.table(rows, list(rows[0]))
             + f"\n\nLoad: `{os.popen('uptime').read().strip()}`.")
    del xr
    return body


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--accuracy", action="store_true")
    mode.add_argument("--scale", action="store_true")
    mode.add_argument("--digits", action="store_true")
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--cols", type=int, default=50_000)
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1,
                    help="dask threads for dmdask's pca (each matmul also uses BLAS threads)")
    ap.add_argument("--components", type=int, default=100)
    ap.add_argument("--components-small", type=int, default=100)
    ap.add_argument("--q", type=int, default=None,
                    help="power iterations (default dmdask.embed.n-power-iter)")
    ap.add_argument("--q-grid", type=lambda s: [int(x) for x in s.split(",")],
                    default=[0, 1, 2, 3, 4, 6, 8, 12])
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dmdask-bench-pca"))
    ap.add_argument("--digits-store", default="dmdask-quickstart",
                    help="a folder with runs.zarr and datamodels.zarr of a digits job")
    ap.add_argument("--faith-k", type=lambda s: [int(x) for x in s.split(",")],
                    default=[50, 200])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n-targets", type=int, default=50)
    ap.add_argument("--record", action="store_true", help="write the section to RESULTS.md")
    ap.add_argument("--child", choices=["ours", "sklearn", "read"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.q is None:
        from dmdask import config

        args.q = int(config.get("embed.n-power-iter"))
    if args.child:
        return _child(args)
    if args.accuracy:
        name, body = "PCA: accuracy against power iterations", accuracy(args)
    elif args.scale:
        name, body = "PCA at scale: 60,000 × 50,000 out of core vs scikit-learn", scale(args)
    elif args.digits:
        name, body = "PCA and faithfulness on digits", digits(args)
    else:
        ap.error("choose --accuracy, --scale or --digits")
    print(body)
    if args.record:
        results.record(name, body)


if __name__ == "__main__":
    main()
