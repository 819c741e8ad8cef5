"""The Gram path against its peers (issue 4, "Fast"), and the holdout/CV crossover.

    python benchmarks/bench_solve.py            # (models, train, targets) = (50,000, 5,000, 500)
    python benchmarks/bench_solve.py --small    # (8,000, 1,000, 100), a minute
    python benchmarks/bench_solve.py --crossover
    python benchmarks/bench_solve.py --methods  # CD vs FISTA, early stop on/off
    python benchmarks/bench_solve.py --newton   # n < d: with and without Newton steps
    python benchmarks/bench_solve.py --allocator  # the fit with/without its memory policy

Planted sparse truth (2% of the training examples per target, Gaussian weights) with noise so
the truth explains 40% of the margin variance; fixed-size α = 0.5 masks written to a run store
with the store API and read back from Zarr. Every contestant uses the same λ grid (30 values,
ratio 1e-3, λ_max of the training split), the same 10% holdout, holdout selection and a refit
on all fitting models:

(a) dmdask ``fit_datamodels(..., solver="gram", selection="holdout")``: statistics pass over
    the store + path + selection + refit;
(b) scikit-learn as a careful user runs it: the standardised matrices, both Grams and every
    target's Xy formed once (timed once), then per target ``lasso_path`` on the precomputed
    Gram and Xy at scikit-learn's tolerance matched to dmdask's (``tol / 2``: scikit-learn
    scales the gap by ‖y‖², dmdask by ‖y_c‖²/2n), the same selection, and the refit by
    ``lasso_path`` at the chosen λ on the full-data Gram and Xy, warm-started from the path's
    solution at that λ (per-target part timed on
    ``--sk-targets`` targets and scaled; the setup is counted once);
(c) the usual loop: ``Lasso(precompute=G, warm_start=True)`` along the path per target, with
    ``predict`` on the validation rows, at the same matched tolerance (subset of targets,
    scaled, plus the shared setup);
(d) the floor: one float32 XᵀX of the same size with the same BLAS;
(e) the streaming SAGA solver (``dmdask.fit.solve.saga``) on ``--saga-targets k`` targets, in a
    child process stopped after ``--saga-cap`` seconds. Reported as a **lower bound** on its
    time for all targets, not scaled: SAGA updates all targets of a block with one GEMM per
    minibatch, so its cost per epoch for T ≥ k targets is at least its cost for k, and its
    time for all targets ≥ its time for k (≥ the cap when stopped).

Tables are written to ``benchmarks/RESULTS.md`` by the script with ``--record`` (never by hand).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dmdask  # noqa: E402
from benchmarks.results import record as _record  # noqa: E402
from benchmarks.results import table  # noqa: E402
from dmdask.store.runstore import create_jobless_store, open_store, write_block  # noqa: E402


def planted_store(path, n, d, T, *, seed=0, r2=0.4, k_frac=0.02, block=1024):
    """A run store with n fixed-size α=0.5 random models; margins = planted sparse linear
    signal (explaining ``r2`` of the variance) + Gaussian noise + offset. Returns (W, b)."""
    rng = np.random.default_rng(seed)
    create_jobless_store(path, d, T, block_size=block, seed=seed)
    dmdask.add_models(path, "random", n=n, alpha=0.5)
    k = max(int(k_frac * d), 3)
    W = np.zeros((d, T), np.float32)
    for t in range(T):
        W[rng.choice(d, k, replace=False), t] = rng.standard_normal(k)
    # signal variance per target under fixed-size α = 0.5 sampling
    var_sig = 0.25 * d / (d - 1) * ((W**2).sum(0) - W.sum(0) ** 2 / d)
    noise_sd = np.sqrt(var_sig * (1 - r2) / r2).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    mask = open_store(path)["mask"].data
    for i in range(-(-n // block)):
        xb = np.asarray(mask[i * block:(i + 1) * block]).astype(np.float32)
        yb = xb @ W + b + noise_sd * rng.standard_normal((xb.shape[0], T)).astype(np.float32)
        write_block(path, i, yb.astype(np.float32))
    return W, b


def _std_train(X, n_val):
    Xt = X[n_val:].astype(np.float64)
    mu, sd = Xt.mean(0), Xt.std(0)
    return mu, sd


def bench(n, d, T, *, sk_targets, naive_targets, saga_targets, tmp, saga_cap=600.0,
          repeats=1):
    from sklearn.linear_model import Lasso, lasso_path

    from dmdask.fit.solve.grid import holdout_size, select_lambda
    from dmdask.fit.stats import compute_stats

    path = os.path.join(tmp, "bench.zarr")
    t0 = time.perf_counter()
    W_true, b_true = planted_store(path, n, d, T)
    print(f"planted store {n}x{d}x{T}: {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []

    # (a) dmdask: the whole fit from the store, best of `repeats` (as the floor: the least
    # disturbed run on a shared machine)
    dm_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dm = dmdask.fit_datamodels(path, solver="gram", selection="holdout")
        dm_times.append(time.perf_counter() - t0)
    t_dm = min(dm_times)
    lambdas = dm.lambdas.values
    print(f"(a) dmdask: {t_dm:.1f}s (runs: {', '.join(f'{x:.1f}' for x in dm_times)})",
          flush=True)
    ds = open_store(path)
    X = ds["mask"].values
    Y = ds["margin"].values.astype(np.float64)
    # the statistics pass alone, as the fit runs it (float32 XᵀY at the default tolerance),
    # with each route for XᵀX: exact int8 GEMMs (what `auto` takes where its probe finds them faster) and
    # float32 ssyrk
    import dask

    from dmdask.fit.stats import _gram_kind
    from dmdask.memory import fit_memory

    t_stats = {}
    for route in ("int8", "float32"):
        # under the fit's memory policy, as inside (a)
        with dask.config.set({"dmdask.solve.stats-gram": route}), fit_memory():
            if _gram_kind(ds["mask"].data, n, d) != route:
                continue
            t0 = time.perf_counter()
            compute_stats(ds["mask"].data, ds["margin"].data, [0, holdout_size(n, 0.1), n],
                          c_dtype="float32")
            t_stats[route] = time.perf_counter() - t0
    default = _gram_kind(ds["mask"].data, n, d)
    n_val = holdout_size(n, 0.1)

    # (d) the floor: one float32 XᵀX
    Xf = X.astype(np.float32)
    floor_times = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        _ = Xf.T @ Xf
        floor_times.append(time.perf_counter() - t0)
    t_floor = min(floor_times)
    del Xf, _
    # for reference: XᵀX as the int8 GEMMs of the statistics pass (one full product)
    t_int8 = None
    if "int8" in t_stats:
        import torch

        Xi = torch.from_numpy(X.view(np.int8) if X.dtype in (np.uint8, bool) else
                              X.astype(np.int8))
        int8_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            torch._int_mm(Xi.T, Xi)
            int8_times.append(time.perf_counter() - t0)
        t_int8 = min(int8_times)
        del Xi
    print(f"(d) floor: {t_floor:.1f}s (runs: {', '.join(f'{x:.1f}' for x in floor_times)})",
          flush=True)

    # (b) scikit-learn as a careful user runs it: scikit-learn's tolerance convention matched to
    # dmdask's (sklearn stops when the gap of ½‖y−Xw‖² + nα‖w‖₁ is ≤ tol·‖y‖², i.e. the gap of
    # the 1/(2n)-scaled objective ≤ tol·‖y_c‖²/n; dmdask's default stops at 1e-5·‖y_c‖²/(2n):
    # sklearn tol = dmdask tol / 2), the standardised matrices, Grams and every target's Xy
    # formed once (timed once, not scaled), then per target one lasso_path on the precomputed
    # Gram and Xy, the validation MSE of the path, the same selection and a refit by lasso_path
    # at the chosen λ on the full-data Gram and Xy, warm-started from the path's solution there:
    # no per-target copies of X.
    import inspect

    tol_sk = inspect.signature(dmdask.fit_datamodels).parameters["tol"].default / 2
    t0 = time.perf_counter()
    mu, sd = _std_train(X, n_val)
    Xs = (X[n_val:] - mu) / sd
    Xv = X[:n_val].astype(np.float64)
    Ytr = Y[n_val:]
    # targets as contiguous rows: scikit-learn's unchecked path needs contiguous y and Xy
    Ytr_c = np.ascontiguousarray((Ytr - Ytr.mean(0)).T)
    Gs = Xs.T @ Xs
    Xys = np.ascontiguousarray((Xs.T @ Ytr_c.T).T)
    mu_f, sd_f = X.mean(0), X.std(0)
    Xsf = (X - mu_f) / sd_f
    Gf = Xsf.T @ Xsf
    Yf_c = np.ascontiguousarray((Y - Y.mean(0)).T)
    Xyf = np.ascontiguousarray((Xsf.T @ Yf_c.T).T)
    t_setup = time.perf_counter() - t0
    print(f"(b) setup (standardise, Grams, Xy of every target): {t_setup:.1f}s", flush=True)

    def val_mse(coef_std, t):
        w = coef_std / sd[:, None]
        b = Ytr[:, t].mean() - mu @ w
        return ((Xv @ w + b - Y[:n_val, t, None]) ** 2).mean(0)

    tsub = np.arange(min(sk_targets, T))
    sk_val = np.zeros((tsub.size, lambdas.shape[1]))
    t0 = time.perf_counter()
    for i, t in enumerate(tsub):
        _, coefs, _ = lasso_path(Xs, Ytr_c[t], alphas=lambdas[t], precompute=Gs,
                                 Xy=Xys[t], tol=tol_sk, check_input=False)
        sk_val[i] = val_mse(coefs, t)
        best = select_lambda(sk_val[i:i + 1])[0]
        # warm start from the path's solution at the chosen λ (in full-data standardisation)
        lasso_path(Xsf, Yf_c[t], alphas=lambdas[t, best:best + 1], precompute=Gf,
                   Xy=Xyf[t], tol=tol_sk, check_input=False,
                   coef_init=np.ascontiguousarray(coefs[:, best] / sd * sd_f))
    t_per = (time.perf_counter() - t0) / tsub.size
    t_sk = t_setup + t_per * T
    print(f"(b) sklearn lasso_path: {t_sk:.1f}s = setup {t_setup:.1f}s + {t_per:.3f}s per "
          f"target x {T} (timed on {tsub.size} targets)", flush=True)

    # (c) naive loop
    tn = np.arange(min(naive_targets, T))
    t0 = time.perf_counter()
    for t in tn:
        m = Lasso(precompute=Gs, warm_start=True, tol=tol_sk)
        vals = []
        for lam in lambdas[t]:
            m.set_params(alpha=lam)
            m.fit(Xs, Ytr[:, t])
            vals.append(np.mean((m.predict((Xv - mu) / sd) - Y[:n_val, t]) ** 2))
        best = int(np.argmin(vals))
        Lasso(alpha=lambdas[t, best], precompute=Gf, tol=tol_sk).fit(Xsf, Y[:, t])
    t_naive = (time.perf_counter() - t0) * T / tn.size
    print(f"(c) naive loop: {t_naive:.1f}s (scaled from {tn.size} targets)", flush=True)
    t_naive += t_setup
    del Xs, Xsf, Gs, Gf

    # (e) streaming SAGA: a lower bound from k targets, capped
    saga = None
    if saga_targets > 0:  # --saga-targets 0 skips it
        k = min(saga_targets, T)
        saga = saga_lower_bound(path, k, saga_cap)
        state = "stopped at the cap" if saga["capped"] else "finished"
        print(f"(e) SAGA on {k} targets: {saga['seconds']:.1f}s ({state}); all {T} targets "
              f"take >= that", flush=True)

    dm_val = dm.val_mse.values
    rows.append({"contestant": "(a) dmdask fit_datamodels (Gram)", "seconds": t_dm,
                 "dmdask faster by": 1.0, "aim": "",
                 "val MSE / dmdask (same targets)": 1.0})
    rows.append({"contestant": f"(b) sklearn lasso_path + Gram, as a careful user runs it "
                 f"(setup once + {tsub.size} targets timed, scaled)",
                 "seconds": t_sk, "dmdask faster by": t_sk / t_dm, "aim": "",
                 "val MSE / dmdask (same targets)":
                     float(np.mean(sk_val.min(1)) / np.mean(dm_val[tsub]))})
    cores = os.cpu_count() or 1
    t_sk_par = t_setup + t_per * T / cores
    rows.append({"contestant": f"(b') the same with its per-target part spread perfectly over "
                 f"{cores} cores (computed from (b), not run)", "seconds": t_sk_par,
                 "dmdask faster by": t_sk_par / t_dm, "aim": "",
                 "val MSE / dmdask (same targets)": ""})
    rows.append({"contestant": f"(c) Lasso(precompute, warm_start) loop ({tn.size} targets, "
                 "scaled)", "seconds": t_naive, "dmdask faster by": t_naive / t_dm,
                 "aim": "", "val MSE / dmdask (same targets)": ""})
    if saga is not None:
        k = saga["targets"]
        how = (f"stopped at the {saga['cap']:.0f} s cap" if saga["capped"]
               else "finished")
        rows.append({"contestant": f"(e) streaming SAGA, lower bound: {k} target(s) timed, "
                     f"{how}, not scaled",
                     "seconds": f"≥ {saga['seconds']:.4g}",
                     "dmdask faster by": f"≥ {saga['seconds'] / t_dm:.4g}", "aim": ">= 20x",
                     "val MSE / dmdask (same targets)":
                         "" if saga["val_mse"] is None else
                         float(np.mean(saga["val_mse"]) / np.mean(dm_val[:k]))})
    rows.append({"contestant": "(d) floor: one float32 XᵀX", "seconds": t_floor,
                 "dmdask faster by": t_floor / t_dm, "aim": "dmdask within 2x",
                 "val MSE / dmdask (same targets)": ""})
    if t_int8 is not None:
        rows.append({"contestant": "(d') for reference: one int8 XᵀX (torch._int_mm, full "
                     "square)", "seconds": t_int8, "dmdask faster by": t_int8 / t_dm,
                     "aim": "", "val MSE / dmdask (same targets)": ""})
    # recovery sanity: correlation with the planted weights
    corr = np.mean([np.corrcoef(dm.weight.values[t], W_true[:, t])[0, 1] for t in range(T)])
    body = (f"(models, training examples, targets) = ({n:,}, {d:,}, {T}); planted truth "
            f"explains 40% of variance; holdout 10%, 30 λ, ratio 1e-3. dmdask (best of "
            f"{len(dm_times)}) = **{t_dm / t_floor:.2f}× the floor** (best of "
            f"{len(floor_times)}; aim ≤ 2×). dmdask statistics pass alone "
            f"(XᵀX route '{default}', the default here): {t_stats[default]:.1f}s"
            + (f" (with the float32 ssyrk route: {t_stats['float32']:.1f}s)"
               if default != "float32" and "float32" in t_stats else "")
            + f"; path+selection+refit ≈ {t_dm - t_stats[default]:.1f}s. Mean "
            f"correlation of dmdask weights with the planted weights: {corr:.3f}. Load average "
            f"at the end of the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores. "
            f"Contestants (b) and (c) are timed on a subset of targets and scaled linearly to "
            f"all targets (they solve one target at a time). SAGA updates all targets of a block "
            f"with one GEMM per minibatch, so its cost for all targets is at least its cost for "
            f"a few: its row is the unscaled time on the targets named there (or the cap it "
            f"was stopped at), a lower bound, hence '≥'.\n\n")
    body += table(rows, ["contestant", "seconds", "dmdask faster by", "aim",
                         "val MSE / dmdask (same targets)"])
    print(body)
    return body


def _saga_child(path, k, queue):
    """Child process of :func:`saga_lower_bound`: SAGA on the first ``k`` targets."""
    from dmdask.fit.solve import PathOptions, Split, get_solver
    from dmdask.store.runstore import open_store as _open

    ds = _open(path)
    X, Y = ds["mask"].data, ds["margin"].data[:, :k]
    saga = get_solver("saga")
    queue.put(("start", None))
    t0 = time.perf_counter()
    res = saga.fit(X, Y, split=Split("holdout"), options=PathOptions())
    queue.put(("done", (time.perf_counter() - t0, np.asarray(res.val_mse))))


def saga_lower_bound(path, k, cap):
    """Time SAGA on ``k`` targets in a child process, stopped ``cap`` seconds after its solve
    started. Returns seconds (the solve's time, or the time until it was stopped), whether it
    was stopped, and its validation MSEs when it finished."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_saga_child, args=(path, k, q), daemon=True)
    p.start()
    out = {"targets": k, "cap": float(cap), "capped": False, "val_mse": None}

    def get(deadline):
        while time.perf_counter() < deadline:
            try:
                return q.get(timeout=1.0)
            except queue_mod.Empty:
                if not p.is_alive():
                    raise RuntimeError(f"the SAGA child died (exit code {p.exitcode})") from None
        return None

    try:
        msg = get(time.perf_counter() + 600)  # imports and opening the store
        if msg is None or msg[0] != "start":
            raise RuntimeError("the SAGA child did not start")
        t0 = time.perf_counter()
        msg = get(t0 + cap)
        if msg is None:
            out.update(seconds=time.perf_counter() - t0, capped=True)
        else:
            secs, val = msg[1]
            out.update(seconds=secs, val_mse=val)
    finally:
        if p.is_alive():
            p.terminate()
        p.join()
        q.close()
        q.join_thread()
    return out


def crossover(tmp, d=500, T=40, sizes=(1000, 2000, 4000, 8000, 16000, 32000)):
    """Holdout (10%) vs 5-fold CV: prediction error on fresh subsets against the planted
    signal (offset included), as the number of models grows."""
    rows = []
    rng = np.random.default_rng(123)
    Xnew = (np.argsort(rng.random((4000, d)), axis=1) < d // 2).astype(np.float64)
    for n in sizes:
        path = os.path.join(tmp, f"x{n}.zarr")
        W, b = planted_store(path, n, d, T, seed=n, block=500)
        truth = Xnew @ W + b
        err = {}
        secs = {}
        for sel in ("holdout", "cv"):
            t0 = time.perf_counter()
            dm = dmdask.fit_datamodels(path, solver="gram", selection=sel)
            secs[sel] = time.perf_counter() - t0
            pred = Xnew @ dm.weight.values.T.astype(np.float64) + dm.bias.values
            err[sel] = float(np.mean((pred - truth) ** 2) / np.mean(truth.var(0)))
        rows.append({"models": n, "validation models (10%)": int(round(0.1 * n)),
                     "holdout error": err["holdout"], "cv error": err["cv"],
                     "holdout / cv": err["holdout"] / err["cv"],
                     "holdout s": secs["holdout"], "cv s": secs["cv"]})
        print(rows[-1], flush=True)
        shutil.rmtree(path)
    body = (f"d = {d}, {T} targets, planted truth explains 40% of variance; error = mean "
            "squared error of predictions on 4,000 fresh fixed-size subsets against the planted "
            "signal (offset included), relative to the signal variance.\n\n")
    body += table(rows, list(rows[0]))
    print(body)
    return body


def methods(n=8000, d=1000, T=100):
    """Inner solver (coordinate descent vs FISTA) × validation early stop, on the statistics of
    one planted problem (fixed-size masks), from the same statistics."""
    from dmdask.fit.solve.base import PathOptions, Split
    from dmdask.fit.solve.gram import solve_from_stats
    from dmdask.fit.stats import compute_stats

    rng = np.random.default_rng(0)
    X = np.argsort(rng.random((n, d)), axis=1) < d // 2
    W = np.zeros((d, T))
    for t in range(T):
        W[rng.choice(d, d // 50, replace=False), t] = rng.standard_normal(d // 50)
    S = X @ W
    Y = S + rng.standard_normal((n, T)) * S.std(0) * np.sqrt(1.5)
    groups = compute_stats(X, Y, [0, n // 10, n])
    rows = []
    for m in ("cd", "fista"):
        for es in (False, True):
            t0 = time.perf_counter()
            r = solve_from_stats(groups, Split("holdout"), PathOptions(early_stop=es), method=m)
            rows.append({"method": m, "early stop": es, "path+selection+refit s":
                         time.perf_counter() - t0, "mean val MSE": float(r.val_mse.mean()),
                         "iterations / target": float(r.n_iter.mean()),
                         "converged": float(r.converged.mean())})
            print(rows[-1], flush=True)
    body = f"(models, training examples, targets) = ({n:,}, {d:,}, {T}), holdout 10%, 30 λ.\n\n"
    return body + table(rows, list(rows[0]))


def newton(tmp, d=1300, T=100, sizes=(160, 320, 640, 1280, 2560), folds=5):
    """Fewer models than training examples: the masked route with and without Newton steps on
    settled supports (setting ``dmdask.solve.gram-newton-every``; 0 = never), 5-fold CV as
    the quickstart's sample-complexity curves run it. Same statistics, same grid."""
    import dask

    rows = []
    for n in sizes:
        path = os.path.join(tmp, f"n{n}.zarr")
        planted_store(path, n, d, T, seed=n, block=64)
        res = {}
        for every in (0, 3):
            with dask.config.set({"dmdask.solve.gram-newton-every": every}):
                best = np.inf
                for _ in range(2):
                    t0 = time.perf_counter()
                    dm = dmdask.fit_datamodels(path, solver="gram", selection="cv", folds=folds)
                    best = min(best, time.perf_counter() - t0)
            res[every] = (best, dm)
        (t0_, d0), (t3, d3) = res[0], res[3]
        rows.append({"models": n, "rows per fold path": n - n // folds,
                     "without Newton s": t0_, "with Newton s": t3, "speed-up": t0_ / t3,
                     "iterations / target without": float(np.median(d0.n_iter.values)),
                     "with": float(np.median(d3.n_iter.values)),
                     "val MSE with / without": float(d3.val_mse.mean() / d0.val_mse.mean()),
                     "max |Δ weight|": float(np.abs(d3.weight.values - d0.weight.values).max())})
        print(rows[-1], flush=True)
        shutil.rmtree(path)
    body = (f"d = {d:,} training examples, {T} targets, planted truth explains 40% of variance, "
            f"{folds}-fold CV (the paths run on (k−1)/k of the models, then the refit path), "
            "30 λ, ratio 1e-3, default tolerance; best of 2 fits each. Iterations are per "
            "target over all paths (median).\n\n")
    body += table(rows, list(rows[0]))
    print(body)
    return body


_ONE_FIT = """
import json, resource, sys, time
import dask, dmdask
with dask.config.set(json.loads(sys.argv[2])):
    t0 = time.perf_counter()
    dmdask.fit_datamodels(sys.argv[1], solver="gram", selection="holdout")
    print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

# the memory policy of fits (dmdask/memory.py) as it ships, and with each part undone
_POLICIES = {
    "default (keep freed, small pages)": {},
    "freed memory returned": {"dmdask.memory.keep-freed": False},
    "NumPy's huge pages": {"dmdask.memory.huge-pages": True},
    "neither": {"dmdask.memory.keep-freed": False, "dmdask.memory.huge-pages": True},
}


def allocator(tmp, n, d, T, rounds=3):
    """The fit under dmdask's memory policy and with each of its parts switched off
    (``dmdask.memory.keep-freed``, ``dmdask.memory.huge-pages``; dmdask/memory.py): one fit
    per fresh process, as a user runs ``dmdask fit``, the settings taking turns so that all
    see the same machine."""
    import json
    import subprocess

    path = os.path.join(tmp, "bench.zarr")
    planted_store(path, n, d, T)
    res = {k: [] for k in _POLICIES}
    for _ in range(rounds):
        for name, settings in _POLICIES.items():
            out = subprocess.run([sys.executable, "-c", _ONE_FIT, path, json.dumps(settings)],
                                 check=True, capture_output=True, text=True).stdout.split()
            res[name].append((float(out[-2]), int(out[-1]) / 1e6))
            print(name, res[name][-1], flush=True)
    rows = [{"memory policy": name, "fits s": " / ".join(f"{t:.2f}" for t, _ in r),
             "median s": float(np.median([t for t, _ in r])),
             "peak RSS GB": max(m for _, m in r)} for name, r in res.items()]
    base = rows[0]["median s"]
    for r in rows:
        r["× default"] = r["median s"] / base
    body = (f"(models, train, targets) = ({n:,}, {d:,}, {T}), the planted store of *Gram solver "
            f"vs peers*; `fit_datamodels(solver=\"gram\", selection=\"holdout\")`, one fit per "
            f"fresh process (timed after `import dmdask`), settings taking turns, {rounds} "
            f"rounds. Median fit without the whole policy: **{rows[-1]['× default']:.2f}×** "
            f"the default's.\n\n")
    body += table(rows, list(rows[0]))
    print(body)
    return body


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true")
    p.add_argument("--crossover", action="store_true")
    p.add_argument("--methods", action="store_true", help="CD vs FISTA x early stop")
    p.add_argument("--newton", action="store_true",
                   help="fewer models than training examples: with and without Newton steps")
    p.add_argument("--allocator", action="store_true",
                   help="the fit with and without parts of its memory policy (fresh processes)")
    p.add_argument("--models", type=int, default=50_000)
    p.add_argument("--train", type=int, default=5_000)
    p.add_argument("--targets", type=int, default=500)
    p.add_argument("--sk-targets", type=int, default=50)
    p.add_argument("--naive-targets", type=int, default=2)
    p.add_argument("--saga-targets", type=int, default=1,
                   help="SAGA lower bound: time it on this many targets, unscaled (0 skips)")
    p.add_argument("--saga-cap", type=float, default=600.0,
                   help="stop the SAGA run after this many seconds (the bound is then the cap)")
    p.add_argument("--repeats", type=int, default=3,
                   help="dmdask's fit is timed this many times and the floor at least 3 times; "
                        "the best of each is reported")
    p.add_argument("--tmp", default=None)
    p.add_argument("--record", action="store_true",
                   help="write the section into benchmarks/RESULTS.md (else print only)")
    a = p.parse_args(argv)

    def record(name, body):
        if a.record:
            _record(name, body)
    tmp = tempfile.mkdtemp(dir=a.tmp)
    try:
        if a.methods:
            record("Gram inner solver: CD vs FISTA", methods())
            return
        if a.newton:
            record("Gram path with fewer models than training examples (Newton steps)",
                   newton(tmp))
            return
        if a.crossover:
            record("Holdout vs CV crossover (selection='auto')", crossover(tmp))
            return
        n, d, T = (8_000, 1_000, 100) if a.small else (a.models, a.train, a.targets)
        if a.allocator:
            record("Allocator policy" + (" (--small)" if a.small else ""),
                   allocator(tmp, n, d, T))
            return
        name = "Gram solver vs peers" + (" (--small)" if a.small else "")
        record(name, bench(n, d, T, sk_targets=a.sk_targets, naive_targets=a.naive_targets,
                           saga_targets=a.saga_targets, tmp=tmp, saga_cap=a.saga_cap,
                           repeats=a.repeats))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
