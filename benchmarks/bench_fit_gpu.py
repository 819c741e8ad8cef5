"""The full datamodel fit on one GPU at the paper's CIFAR shape (issue 6 §3).

300,000 models x 50,000 training examples x 10,000 targets by default: the statistics pass
(``dmdask.fit.stats.compute_stats`` on CuPy-backed dask arrays, under the chunk-type guard
``dmdask.backend.expect_chunks("cupy")``), the Gram path with holdout selection and refit
(``dmdask.fit.solve.gram.solve_from_stats``), the Gram product's measured TFLOP/s against the GPU's
nominal peak, and the blocked GPU SAGA (``dmdask.fit.solve.saga.saga_path``) on a subset of the
targets, its time scaled to all targets. ``--cpu-scaled`` runs the same pipeline on the NumPy
backend at a scaled-down shape for the GPU/CPU ratio.

Data. A planted problem, not a run store: a 300,000 x 50,000 store takes long to write and
~2 GB to hold, and the issue asks for the fit's time. The masks (Bernoulli, alpha = 0.5) and
outputs are generated on the device, row block by row block, inside the dask graph that
feeds the real statistics pass (each block seeded by its index, so every read of a block
gives the same rows; the Y block regenerates its masks). Outputs: y = x[pool] . w* + b* + noise
with k = 20 planted weights per target drawn from a pool of 1,000 training examples (so
generating Y costs ~2% of the Gram product), signal ~40% of the variance. Generation is
timed on its own and included in the statistics-pass time (said in the output).

Memory. The Gram path holds several d x d float64 matrices (statistics per group, their sum,
the standardised Gram of the training split and of all rows, float32 copies): ~7 x 8 d^2
bytes, 140 GB at d = 50,000. The script prints the estimate and, when the GPU runs out of
memory, records the stage where it did; ``--d`` runs a shape that fits.

    python benchmarks/bench_fit_gpu.py                        # on a GPU, the CIFAR shape
    python benchmarks/bench_fit_gpu.py --d 20000 --cpu-scaled # a shape that fits + CPU ratio
    python benchmarks/bench_fit_gpu.py --smoke                # tiny, NumPy on the CPU, prints only

The section in ``benchmarks/RESULTS.md`` is written only when run on a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

try:
    from benchmarks.results import record, table
except ImportError:  # pragma: no cover
    from results import record, table

SECTION = "Datamodel fit on one GPU at the CIFAR shape (bench_fit_gpu.py)"

# Nominal dense peaks (vendor datasheets, no structured sparsity), TFLOP/s:
# (bf16/fp16 tensor core, tf32 tensor core, fp32 non-tensor, fp64 tensor core)
PEAKS = {
    "H100 PCIe": (756.0, 378.0, 51.2, 51.2),
    "H100 NVL": (835.0, 417.5, 60.0, 60.0),
    "H100": (989.4, 494.7, 66.9, 66.9),  # SXM
    "H200": (989.4, 494.7, 66.9, 66.9),
    "GH200": (989.4, 494.7, 66.9, 66.9),
    "A100": (312.0, 156.0, 19.5, 19.5),
    "L40S": (362.0, 183.0, 91.6, 1.4),
}
PAPER_NOTE = "fast_l1 (the paper's GPU SAGA) takes GPU-hours at this shape"


def peaks_for(name: str):
    for key in sorted(PEAKS, key=len, reverse=True):  # most specific first
        if key in name:
            return key, PEAKS[key]
    return None, None


# ------------------------------------------------------------------------------ the problem
class Planted:
    """Planted sparse datamodels; masks and outputs generated per row block on ``xp``."""

    def __init__(self, xp, n, d, T, *, k=20, pool=1000, alpha=0.5, seed=0, explained=0.4):
        self.xp, self.n, self.d, self.T, self.alpha, self.seed = xp, n, d, T, alpha, seed
        rng = np.random.default_rng([seed, 1])
        P = min(pool, d)
        self.pool = np.sort(rng.choice(d, P, replace=False))
        Wp = np.zeros((P, T), np.float32)
        for t in range(T):
            Wp[rng.choice(P, min(k, P), replace=False), t] = rng.normal(size=min(k, P))
        sig_var = alpha * (1 - alpha) * (Wp.astype(np.float64) ** 2).sum(0)
        self.noise = np.sqrt(sig_var * (1 - explained) / explained).astype(np.float32)
        self.b = rng.normal(size=T).astype(np.float32)
        self.Wp_host = Wp
        self.Wp = xp.asarray(Wp)
        self.pool_d = xp.asarray(self.pool)
        self.noise_d = xp.asarray(self.noise)
        self.b_d = xp.asarray(self.b)

    def true_weight(self, targets):
        """Raw-mask planted weights [len(targets), d] (host)."""
        w = np.zeros((len(targets), self.d), np.float32)
        w[:, self.pool] = self.Wp_host[:, targets].T
        return w

    def _rng(self, block):
        xp = self.xp
        if xp is np:
            return np.random.default_rng([self.seed, 2, block])
        return xp.random.RandomState(self.seed * 1_000_003 + block)

    def mask(self, block, rows):
        xp, r = self.xp, self._rng(block)
        u = r.random((rows, self.d), dtype=np.float32) if xp is np else \
            r.random_sample((rows, self.d), dtype=xp.float32)
        return u < self.alpha

    def outputs(self, block, rows, X=None):
        xp = self.xp
        X = self.mask(block, rows) if X is None else X
        r = self._rng(block + 10**9)
        eps = r.standard_normal((rows, self.T), dtype=np.float32) if xp is np else \
            r.standard_normal((rows, self.T), dtype=xp.float32)
        return X[:, self.pool_d].astype(xp.float32) @ self.Wp + self.b_d + eps * self.noise_d

    def dask_arrays(self, row_chunks):
        """(X bool [n, d], Y float32 [n, T]) as dask arrays with chunks of ``xp`` type."""
        import dask.array as da

        xp = self.xp

        def gx(block_info=None):
            i = block_info[None]["chunk-location"][0]
            return self.mask(i, block_info[None]["chunk-shape"][0])

        def gy(block_info=None):
            i = block_info[None]["chunk-location"][0]
            return self.outputs(i, block_info[None]["chunk-shape"][0])

        X = da.map_blocks(gx, chunks=(row_chunks, (self.d,)), dtype=bool,
                          meta=xp.empty((0, 0), bool), name=f"planted-mask-{id(self)}")
        Y = da.map_blocks(gy, chunks=(row_chunks, (self.T,)), dtype=np.float32,
                          meta=xp.empty((0, 0), np.float32), name=f"planted-y-{id(self)}")
        return X, Y


# ------------------------------------------------------------------------------ helpers
def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def _pool_gb(xp):
    if xp is np:
        return float("nan")
    return xp.get_default_memory_pool().total_bytes() / 2**30


def _free(xp):
    if xp is not np:
        xp.get_default_memory_pool().free_all_blocks()


def gpu_info():
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    mem = cupy.cuda.Device(0).mem_info[1] / 2**30
    return name, mem


def gemm_tflops(xp, rows, d, reps=3):
    """XᵀX of one row block of masks: fp32 (what the statistics pass runs), fp16 (CuPy) and
    bf16 with fp32 output (torch), each in TFLOP/s (2·rows·d² per product)."""
    out = {}
    flops = 2.0 * rows * d * d
    X = Planted(xp, rows, d, 1, pool=1).mask(0, rows)
    cases = [("fp32 (statistics pass)", xp.float32), ("fp16 in, fp16 out (CuPy)", xp.float16)]
    for label, dt in cases:
        if xp is np and "fp16" in label:
            continue
        xb = X.astype(dt)
        xb.T @ xb
        _sync(xp)
        t0 = time.perf_counter()
        for _ in range(reps):
            G = xb.T @ xb
        _sync(xp)
        out[label] = flops * reps / (time.perf_counter() - t0) / 1e12
        del G, xb
    if xp is not np:
        try:
            import torch

            xt = torch.as_tensor(X, device="cuda").to(torch.bfloat16)
            xtt = xt.T.contiguous()
            try:
                f = lambda: torch.mm(xtt, xt, out_dtype=torch.float32)  # noqa: E731
                f()
                label = "bf16 in, fp32 out (torch)"
            except Exception:
                f = lambda: xtt @ xt  # noqa: E731
                label = "bf16 in, bf16 out (torch)"
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            torch.cuda.synchronize()
            out[label] = flops * reps / (time.perf_counter() - t0) / 1e12
            del xt, xtt
            torch.cuda.empty_cache()
        except Exception as e:  # torch missing or no CUDA: say so
            out[f"bf16 (torch unavailable: {type(e).__name__})"] = float("nan")
    del X
    _free(xp)
    return out


def mem_estimate_gb(n, d, T):
    """Rough device memory of the Gram path (bytes of d x d and d x T float64 matrices)."""
    dd, dT = 8 * d * d, 8 * d * T
    return (7 * dd + 6 * dT) / 2**30


def _row_chunks(n: int, row_block: int, bounds) -> tuple[int, ...]:
    """Row chunks of at most ``row_block`` rows that also cut at the group ``bounds``."""
    cuts = set(range(0, n, row_block)) | {int(b) for b in bounds} | {n}
    cuts = sorted(c for c in cuts if 0 <= c <= n)
    return tuple(int(b - a) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a)


# ------------------------------------------------------------------------------ pipeline
def run_pipeline(xp, n, d, T, *, row_block, saga_targets, saga_epochs, n_lambdas, threads,
                 guard, log):
    """Statistics pass, Gram path + selection + refit, SAGA on ``saga_targets`` targets.
    Returns a dict of stage times and measurements (an ``oom`` entry if the GPU ran out)."""
    import dask

    from dmdask.backend import expect_chunks
    from dmdask.fit.solve.base import PathOptions, Split
    from dmdask.fit.solve.gram import solve_from_stats
    from dmdask.fit.solve.saga import saga_path
    from dmdask.fit.stats import compute_stats, group_bounds_for

    backend = "numpy" if xp is np else "cupy"
    res = {"backend": backend, "n": n, "d": d, "T": T, "row_block": row_block}
    split = Split("holdout", val_fraction=0.1)
    bounds = group_bounds_for(n, split)
    rows = _row_chunks(n, row_block, bounds)
    prob = Planted(xp, n, d, T)
    X, Y = prob.dask_arrays(rows)
    settings = {"dmdask.array.backend": backend, "scheduler": "threads",
                "num_workers": threads}
    if xp is not np:
        settings["dmdask.solve.stats-lanes"] = 1  # one d x d float64 accumulator per group
    opts = PathOptions(n_lambdas=n_lambdas, tol=1e-5, early_stop=True)
    stage = ["generation"]

    def stats_and_gram():  # its locals (the d x d statistics) die with it, OOM or not
        with dask.config.set(settings):
            # generation alone (what the statistics pass pays on top of its GEMMs)
            prob.outputs(0, rows[0])  # warm-up: kernel compilation
            _sync(xp)
            t0 = time.perf_counter()
            for i, r in enumerate(rows[: min(4, len(rows))]):
                prob.outputs(i, r)
            _sync(xp)
            per_row = (time.perf_counter() - t0) / sum(rows[: min(4, len(rows))])
            res["gen_s"] = per_row * n
            log(f"generation (masks + outputs, on the fly): ~{res['gen_s']:.2f} s for all rows "
                "(estimated from 4 blocks)")
            _free(xp)

            stage[0] = "statistics pass"
            t0 = time.perf_counter()
            if guard:
                with expect_chunks("cupy"):
                    groups = compute_stats(X, Y, bounds, row_block_size=row_block,
                                           c_dtype="float32")
            else:
                groups = compute_stats(X, Y, bounds, row_block_size=row_block,
                                       c_dtype="float32")
            _sync(xp)
            res["stats_s"] = time.perf_counter() - t0
            res["stats_gram_tflops"] = 2.0 * n * d * d / res["stats_s"] / 1e12
            res["stats_all_tflops"] = (2.0 * n * d * d + 2.0 * n * d * T) / res["stats_s"] / 1e12
            res["mem_after_stats_gb"] = _pool_gb(xp)
            log(f"statistics pass: {res['stats_s']:.2f} s (incl. generation), "
                f"XᵀX at {res['stats_gram_tflops']:.2f} TFLOP/s effective "
                f"(XᵀX + XᵀY: {res['stats_all_tflops']:.2f})")

            stage[0] = "Gram path"
            t0 = time.perf_counter()
            fit = solve_from_stats(groups, split, opts)
            _sync(xp)
            res["gram_s"] = time.perf_counter() - t0
            res["gram_blocks"] = fit.info.get("blocks")
            res["gram_converged"] = float(np.mean(fit.converged))
            res["gram_nnz_mean"] = float(np.mean((fit.weight != 0).sum(1)))
            res["mem_after_gram_gb"] = _pool_gb(xp)
            k = min(T, 256)
            wt = prob.true_weight(np.arange(k))
            res["gram_weight_rel_err"] = float(np.linalg.norm(fit.weight[:k] - wt)
                                               / np.linalg.norm(wt))
            log(f"Gram path + holdout selection + refit: {res['gram_s']:.2f} s "
                f"({res['gram_blocks']} target blocks; converged {res['gram_converged']:.3f}; "
                f"mean nnz {res['gram_nnz_mean']:.1f}; weight rel. error vs planted "
                f"{res['gram_weight_rel_err']:.3f} on {k} targets)")

    try:
        stats_and_gram()
    except Exception as e:
        _oom(e, stage[0], res, log, xp)
    _free(xp)
    try:
        with dask.config.set(settings):
            if saga_targets:
                ks = min(saga_targets, T)
                o = PathOptions(n_lambdas=n_lambdas, tol=1e-5, early_stop=True,
                                extra={"max_epochs": saga_epochs})
                t0 = time.perf_counter()
                sres = saga_path(X, Y[:, :ks], split=split, options=o)
                _sync(xp)
                res["saga_s"] = time.perf_counter() - t0
                res["saga_targets"] = ks
                res["saga_scaled_s"] = res["saga_s"] * T / ks
                res["saga_converged"] = float(np.mean(sres.converged))
                wt = prob.true_weight(np.arange(ks))
                res["saga_weight_rel_err"] = float(np.linalg.norm(sres.weight - wt)
                                                   / np.linalg.norm(wt))
                log(f"SAGA (blocked, streaming) on {ks} targets: {res['saga_s']:.2f} s -> "
                    f"{res['saga_scaled_s']:.1f} s scaled linearly to {T} targets "
                    f"(converged {res['saga_converged']:.3f}, max_epochs {saga_epochs}; "
                    f"weight rel. error vs planted {res['saga_weight_rel_err']:.3f})")
                _free(xp)
    except Exception as e:
        _oom(e, "SAGA", res, log, xp)
    return res


def _oom(e, stage, res, log, xp):
    """Record an out-of-memory error on the device (where it happened); re-raise others."""
    text = f"{type(e).__name__}: {e}"
    if not ("OutOfMemory" in text or "out of memory" in text.lower()
            or "ALLOC_FAILED" in text):
        raise e
    res.setdefault("oom", [])
    res["oom"].append(f"{stage}: {text[:160]}")
    log(f"OUT OF MEMORY in the {stage}: {text[:300]}")
    traceback.print_exc(limit=3)
    _free(xp)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000, help="models (rows)")
    ap.add_argument("--d", type=int, default=50_000, help="training examples (columns)")
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--row-block", type=int, default=8192)
    ap.add_argument("--n-lambdas", type=int, default=30)
    ap.add_argument("--saga-targets", type=int, default=64,
                    help="targets SAGA solves (its time is scaled to all); 0 skips SAGA")
    ap.add_argument("--saga-max-epochs", type=int, default=100, help="per λ")
    ap.add_argument("--threads", type=int, default=2, help="dask threads on the GPU run")
    ap.add_argument("--cpu-scaled", action="store_true",
                    help="also run the NumPy pipeline at the shape scaled by --cpu-scale")
    ap.add_argument("--cpu-scale", type=float, default=0.1,
                    help="factor on n, d and targets for --cpu-scaled (default 0.1)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shape, NumPy backend on the CPU, prints only")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from dmdask import optional

    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    on_gpu = optional.has_gpu() and not args.smoke
    rows_md = []
    gpu_res = cpu_res = None
    gpu_name = None
    if args.smoke:
        args.n, args.d, args.targets, args.row_block = 3000, 60, 12, 512
        args.saga_targets, args.saga_max_epochs, args.n_lambdas = 3, 50, 8
        args.cpu_scaled, args.cpu_scale = True, 0.5
        log("SMOKE run: tiny shape, NumPy backend on the CPU (not a measurement)")
    log(f"shape: {args.n:,} models x {args.d:,} training examples x {args.targets:,} targets; "
        f"Gram path memory estimate ~{mem_estimate_gb(args.n, args.d, args.targets):.0f} GB")

    if on_gpu:
        import cupy

        gpu_name, mem = gpu_info()
        key, pk = peaks_for(gpu_name)
        log(f"GPU: {gpu_name} ({mem:.0f} GiB); nominal peaks "
            + (f"({key}): bf16 {pk[0]}, tf32 {pk[1]}, fp32 {pk[2]}, fp64 {pk[3]} TFLOP/s dense"
               if pk else "unknown for this GPU"))
        g = gemm_tflops(cupy, min(args.row_block, args.n), args.d)
        for label, v in g.items():
            frac = ""
            if pk:
                ref = pk[2] if label.startswith("fp32") else pk[0]
                frac = f" = {100 * v / ref:.0f}% of the nominal {'fp32' if ref == pk[2] else 'bf16'} peak"
            log(f"XᵀX of one {min(args.row_block, args.n)} x {args.d} block, {label}: "
                f"{v:.1f} TFLOP/s{frac}")
            rows_md.append({"measure": f"XᵀX block GEMM, {label}", "value": f"{v:.1f} TFLOP/s",
                            "note": frac.strip(" =") or "no nominal peak known"})
        gpu_res = run_pipeline(cupy, args.n, args.d, args.targets, row_block=args.row_block,
                               saga_targets=args.saga_targets, saga_epochs=args.saga_max_epochs,
                               n_lambdas=args.n_lambdas, threads=args.threads, guard=True,
                               log=log)
        if pk and "stats_gram_tflops" in gpu_res:
            log(f"statistics pass XᵀX effective {gpu_res['stats_gram_tflops']:.1f} TFLOP/s = "
                f"{100 * gpu_res['stats_gram_tflops'] / pk[2]:.0f}% of nominal fp32, "
                f"{100 * gpu_res['stats_gram_tflops'] / pk[0]:.1f}% of nominal bf16")
    elif not args.smoke:
        log("no CUDA GPU with CuPy here: the GPU part is skipped")
    else:
        g = gemm_tflops(np, min(args.row_block, args.n), args.d, reps=1)
        for label, v in g.items():
            log(f"XᵀX block GEMM {label}: {v:.3f} TFLOP/s (CPU, smoke)")
        gpu_res = run_pipeline(np, args.n, args.d, args.targets, row_block=args.row_block,
                               saga_targets=args.saga_targets, saga_epochs=args.saga_max_epochs,
                               n_lambdas=args.n_lambdas, threads=2, guard=False, log=log)

    if args.cpu_scaled:
        s = args.cpu_scale
        n, d, T = (max(int(v * s), 8) for v in (args.n, args.d, args.targets))
        log(f"CPU path (NumPy) at the scaled shape {n:,} x {d:,} x {T:,} (factor {s} on each)")
        cpu_res = run_pipeline(np, n, d, T, row_block=args.row_block,
                               saga_targets=max(1, int(args.saga_targets * s)),
                               saga_epochs=args.saga_max_epochs, n_lambdas=args.n_lambdas,
                               threads=os.cpu_count() or 1, guard=False, log=log)
        if gpu_res and "stats_s" in gpu_res and "stats_s" in cpu_res:
            def work(r):  # statistics: XᵀX + XᵀY flops; Gram solve: ~d²·T per iteration
                return 2.0 * r["n"] * r["d"] * (r["d"] + r["T"]), float(r["d"]) ** 2 * r["T"]
            gw, gs = work(gpu_res)
            cw, cs = work(cpu_res)
            r1 = (cpu_res["stats_s"] / cw) / (gpu_res["stats_s"] / gw)
            log(f"{'(smoke: both on the CPU) ' if args.smoke else ''}GPU/CPU speed ratio per unit of work: statistics pass {r1:.1f}x"
                + (f", Gram solve {(cpu_res['gram_s'] / cs) / (gpu_res['gram_s'] / gs):.1f}x "
                   "(work ∝ d²·T, approximate)" if "gram_s" in gpu_res and "gram_s" in cpu_res
                   else ""))

    # --------------------------------------------------------------------- the record
    def stage_rows(r, where):
        out = []
        if r is None:
            return out
        shape = f"{r['n']:,} x {r['d']:,} x {r['T']:,}"
        for key, label in (("gen_s", "generation (estimate, included in the statistics pass)"),
                           ("stats_s", "statistics pass (XᵀX, Xᵀ1, XᵀY per holdout group)"),
                           ("gram_s", "Gram path + holdout selection + refit"),
                           ("saga_s", f"SAGA on {r.get('saga_targets')} targets"),
                           ("saga_scaled_s", "SAGA scaled linearly to all targets")):
            if key in r:
                out.append({"where": where, "shape": shape, "stage": label,
                            "seconds": f"{r[key]:.2f}"})
        if "stats_s" in r and "gram_s" in r:
            out.append({"where": where, "shape": shape, "stage": "**fit total (stats + Gram)**",
                        "seconds": f"**{r['stats_s'] + r['gram_s']:.2f}**"})
        if "oom" in r:
            for o in r["oom"]:
                out.append({"where": where, "shape": shape, "stage": f"OUT OF MEMORY ({o})",
                            "seconds": "—"})
        return out

    body = [f"GPU: **{gpu_name}** (CuPy device 0). Planted data generated on the device per "
            "row block inside the dask graph of the real statistics pass (no store read); "
            f"nominal peaks are vendor datasheet dense numbers. {PAPER_NOTE}; aim: ≤ 10 "
            "minutes on one H100.", "",
            table(stage_rows(gpu_res, "GPU") + stage_rows(cpu_res, "CPU (NumPy)"),
                  ["where", "shape", "stage", "seconds"])]
    if rows_md:
        body += ["", table(rows_md, ["measure", "value", "note"])]
    body += ["", "Log:", "", "```", *lines, "```"]
    md = "\n".join(body)
    if on_gpu and not args.no_record:
        record(SECTION, md)
        print(f"recorded in benchmarks/RESULTS.md ({SECTION})")
    else:
        print("not recorded (" + ("smoke run" if args.smoke else "no GPU or --no-record") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
