"""Throughput and accuracy of the digits jobs (``python benchmarks/bench_jobs.py``).

Contestants, all trained on fixed-size alpha = 0.5 masks drawn with numpy:

* ``DigitsMLP``        -- ``jobs.digits:DigitsMLP.train_block`` with its defaults, at several
  block sizes (the job's ``preferred_block_size`` among them);
* ``baseline-autograd`` -- the straightforward way to train the same B models at once: the same
  architecture, init, minibatches and hyper-parameters, but the forward pass in the usual
  ``[B, batch, classes]`` layout, ``F.cross_entropy``, ``loss.backward()`` and
  ``torch.optim.SGD`` (momentum, weight decay) with the one-cycle learning rate;
* ``DigitsLogistic``   -- the convex job (Newton-CG to a gradient norm of 1e-10).

For every contestant: models/s (median and best of ``--repeats`` timed calls after one
warm-up call; the best is the least disturbed by other load on the machine), mean test
accuracy of the alpha = 0.5 models, and test accuracy when trained on the full training set.
The machine's load average is printed: other processes on a small machine inflate times.

    python benchmarks/bench_jobs.py [--repeats 3] [--threads N] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs._batched_mlp import lr_factor, make_schedule  # noqa: E402
from jobs.digits import N_CLASSES, DigitsLogistic, DigitsMLP, margins_from_logits  # noqa: E402


def fixed_size_masks(B: int, n: int, alpha: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = int(round(alpha * n))
    masks = np.zeros((B, n), bool)
    for b in range(B):
        masks[b, rng.choice(n, k, replace=False)] = True
    return masks


def baseline_autograd_logits(job: DigitsMLP, masks, seeds, train_labels=None):
    """The straightforward batched torch loop: autograd + torch.optim.SGD, same recipe."""
    import torch
    import torch.nn.functional as F

    masks, seeds, labels = job._check(masks, seeds, train_labels)
    x_train, x_eval = job._data()
    B, n = masks.shape
    d, H, C, bs = x_train.shape[1], job.hidden, N_CLASSES, job.batch_size
    init, index, weight, steps = make_schedule(masks, seeds, n_init=d * H + H * C,
                                               epochs=job.epochs, batch_size=bs)
    if len(set(steps.tolist())) > 1:
        raise ValueError("the baseline needs masks of one size (one learning-rate schedule)")
    T = index.shape[1]
    init_t = torch.from_numpy(init)
    W1 = (init_t[:, : d * H].reshape(B, d, H) * math.sqrt(2.0 / d)).requires_grad_()
    b1 = torch.zeros(B, 1, H, requires_grad=True)
    W2 = (init_t[:, d * H:].reshape(B, H, C) * math.sqrt(1.0 / H)).requires_grad_()
    b2 = torch.zeros(B, 1, C, requires_grad=True)
    opt = torch.optim.SGD([W1, b1, W2, b2], lr=job.lr, momentum=job.momentum,
                          weight_decay=job.weight_decay)
    y_seq = np.take_along_axis(labels, index.reshape(B, -1), 1).reshape(B, T, bs)
    idx_t = torch.from_numpy(index)
    y_t = torch.from_numpy(y_seq)
    w_t = torch.from_numpy(weight)
    for t in range(T):
        for group in opt.param_groups:
            group["lr"] = job.lr * float(lr_factor(t / T, job.warmup))
        xb = x_train[idx_t[:, t]]  # [B, bs, d]
        logits = torch.baddbmm(b2, torch.relu(torch.baddbmm(b1, xb, W1)), W2)  # [B, bs, C]
        ce = F.cross_entropy(logits.reshape(-1, C), y_t[:, t].reshape(-1), reduction="none")
        loss = (ce.view(B, bs) * w_t[:, t]).sum()  # sum over models of each batch's mean
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        h = torch.relu(torch.baddbmm(b1, x_eval.expand(B, -1, -1), W1))
        return torch.baddbmm(b2, h, W2).numpy()


def _cpu_idle_fraction(seconds: float = 2.0) -> float | None:
    """Fraction of all cores idle over ``seconds`` (Linux ``/proc/stat``; None elsewhere)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    try:
        i0, t0 = read()
        time.sleep(seconds)
        i1, t1 = read()
    except OSError:
        return None
    return (i1 - i0) / max(t1 - t0, 1)


def wait_for_idle(limit_s: float, threshold: float = 0.9) -> float | None:
    """Wait (up to ``limit_s``) until other processes leave the cores idle; returns the last
    idle fraction seen. Timings on a shared machine are otherwise mostly noise."""
    deadline = time.monotonic() + limit_s
    while True:
        idle = _cpu_idle_fraction()
        if idle is None or idle >= threshold or time.monotonic() >= deadline:
            return idle


WAIT_IDLE_S = 0.0


def time_calls(fn, repeats: int) -> tuple[list[float], list[float], float | None]:
    """Wall and process-CPU seconds of ``repeats`` calls after one warm-up call."""
    fn()  # warm-up
    idle = wait_for_idle(WAIT_IDLE_S) if WAIT_IDLE_S > 0 else None
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu, idle


def bench_contestant(name, block, train, accuracy_full, repeats, n_train, job, extra=None):
    masks = fixed_size_masks(block, n_train, 0.5, seed=1)
    seeds = np.random.default_rng(2).integers(0, 2**63, block, dtype=np.uint64)
    times, cpu, idle = time_calls(lambda: train(masks, seeds), repeats)
    margins = train(masks, seeds)
    acc = (margins[:, : job.split.test_id.size] > 0).mean(axis=1)
    row = {
        "contestant": name, "block": block,
        "models_per_s_median": block / statistics.median(times),
        "models_per_s_best": block / min(times),
        "seconds": times, "cpu_seconds": cpu, "idle_before": idle,
        "acc_half_mean": float(acc.mean()), "acc_half_min": float(acc.min()),
        "acc_full": accuracy_full,
    }
    row.update(extra or {})
    return row


def full_accuracy(train, n_train, n_test, n_models):
    masks = np.ones((n_models, n_train), bool)
    seeds = np.random.default_rng(3).integers(0, 2**63, n_models, dtype=np.uint64)
    return float((train(masks, seeds)[:, :n_test] > 0).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads (default: all cores)")
    p.add_argument("--blocks", default=None,
                   help="MLP block sizes, comma-separated (default: 64, preferred, 1024)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before timing each contestant, wait up to S seconds for the other "
                        "processes on the machine to leave the cores idle")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--record", action="store_true",
                   help="also record the table in benchmarks/RESULTS.md (benchmarks.results)")
    args = p.parse_args(argv)
    global WAIT_IDLE_S
    WAIT_IDLE_S = args.wait_idle

    import torch

    torch.set_num_threads(args.threads)
    mlp = DigitsMLP()
    n_train, n_test = mlp.n_train, mlp.split.test_id.size
    pref = DigitsMLP.preferred_block_size
    blocks = ([int(b) for b in args.blocks.split(",")] if args.blocks
              else sorted({64, pref, 1024}))
    load_before = os.getloadavg()
    rows = []

    acc_full = full_accuracy(mlp.train_block, n_train, n_test, 8)
    for block in blocks:
        rows.append(bench_contestant("DigitsMLP", block, mlp.train_block, acc_full, args.repeats,
                                     n_train, mlp, {"preferred": block == pref}))
    if not args.no_baseline:
        def base(m, s):
            return margins_from_logits(baseline_autograd_logits(mlp, m, s), mlp.y_target)
        acc_full_b = full_accuracy(base, n_train, n_test, 8)
        rows.append(bench_contestant("baseline-autograd", pref, base, acc_full_b, args.repeats,
                                     n_train, mlp))

    logi = DigitsLogistic()
    lblock = DigitsLogistic.preferred_block_size
    info_masks = fixed_size_masks(lblock, n_train, 0.5, seed=1)
    _, info = logi.fit(info_masks, return_info=True)
    acc_full_l = full_accuracy(logi.train_block, n_train, n_test, 1)
    rows.append(bench_contestant(
        "DigitsLogistic", lblock, logi.train_block, acc_full_l, args.repeats, n_train, logi,
        {"max_grad_norm": float(info["grad_norm"].max()),
         "newton_iters_mean": float(info["newton_iters"].mean()),
         "cg_iters_mean": float(info["cg_iters"].mean())}))

    mlp_pref = next((r for r in rows if r["contestant"] == "DigitsMLP" and r["preferred"]), None)
    base_row = next((r for r in rows if r["contestant"] == "baseline-autograd"), None)
    speedup = (mlp_pref["models_per_s_median"] / base_row["models_per_s_median"]
               if base_row and mlp_pref else None)

    env = {
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "mlp_params": {k: getattr(mlp, k) for k in ("hidden", "epochs", "lr", "momentum",
                                                     "batch_size", "weight_decay", "warmup")},
        "logistic_params": {"l2": logi.l2, "tol": logi.tol},
        "alpha": 0.5, "n_train": n_train, "n_test": n_test,
    }
    lines = [f"digits jobs, alpha = 0.5, torch {env['torch']}, {env['torch_threads']} threads, "
             f"load average {load_before[0]:.2f} before / {env['loadavg_after'][0]:.2f} after",
             "",
             "| contestant | block | models/s (median) | models/s (best) | acc@0.5 mean "
             "| acc@0.5 min | acc full |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (preferred)" if r.get("preferred") else ""
        lines.append(f"| {r['contestant']} | {r['block']}{mark} | "
                     f"{r['models_per_s_median']:.1f} | {r['models_per_s_best']:.1f} | "
                     f"{r['acc_half_mean']:.4f} | {r['acc_half_min']:.3f} | "
                     f"{r['acc_full']:.4f} |")
    lines.append("")
    if speedup is not None:
        lines.append(f"DigitsMLP / baseline-autograd speed (median, block {pref}): "
                     f"{speedup:.2f}x")
    lr = rows[-1]
    lines.append(f"DigitsLogistic: max gradient norm {lr['max_grad_norm']:.2e}, "
                 f"{lr['newton_iters_mean']:.1f} Newton / {lr['cg_iters_mean']:.0f} CG "
                 f"iterations per model")
    text = "\n".join(lines)
    print(text)
    if args.record:
        from benchmarks.results import record

        record("Digits jobs throughput (CPU)", text)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": rows, "speedup": speedup},
                                        indent=2))
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
