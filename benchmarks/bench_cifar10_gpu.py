"""CIFAR-10 ResNet-9 job throughput on a GPU: models per hour/day at alpha = 0.5.

Trains ``--models`` models of ``jobs.cifar10:CIFAR10ResNet9`` on random alpha-subsets for each
``--models-at-once`` value and reports models/hour and models/day against the datamodels
paper's ~5,000 models/day per A100 (FFCV, Appendix D.3) and this project's aim of >= 50,000/day
on one H100, with the achieved TFLOP/s of the network's convolutions and head (analytic count:
forward + 2x for backward over every training image, plus the test-time-augmented evaluation).

Data: the real CIFAR-10 python batches with ``--data-dir`` (then also the mean test accuracy
of the timed alpha-models and of ``--full-models`` models trained on all 50,000 images), else a
synthetic CIFAR-shaped dataset of the real size (50,000 train / 10,000 test), which measures
throughput only; the output says which. The section is written to ``benchmarks/RESULTS.md``
only when run on a GPU.

    python benchmarks/bench_cifar10_gpu.py [--data-dir DIR] [--models 8] [--models-at-once 1,2,4]
    python benchmarks/bench_cifar10_gpu.py --cpu-smoke      # tiny, on the CPU, prints only
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

try:
    from benchmarks.results import record, table
except ImportError:  # run as a script
    from results import record, table

PAPER_PER_DAY = 5_000  # models/day per A100 (datamodels paper, Appendix D.3)
AIM_PER_DAY = 50_000  # models/day on one H100 (issue 6)


def net_flops_per_image(width: float) -> float:
    """Forward FLOPs (2 x multiply-adds) of one ResNet-9 image at ``width``."""
    from jobs._cifar_net import channels

    c0, layers = channels(width)
    f = 2 * 3 * c0 * 9 * 32 * 32
    cin, hw = c0, 32
    for c, res in layers:
        f += 2 * cin * c * 9 * hw * hw  # the conv runs before the pool, at the input size
        hw //= 2
        if res:
            f += 2 * 2 * c * c * 9 * hw * hw
        cin = c
    return f + 2 * cin * 10


def model_flops(job, n_sub: int) -> float:
    steps = -(-job.epochs * n_sub // job.batch_size)
    per = net_flops_per_image(job.width)
    return 3 * per * steps * job.batch_size + per * job.n_target * (2 if job.tta else 1)


def run_config(params: dict, M: int, n_models: int, alpha: float, seed: int = 0):
    from jobs.cifar10 import CIFAR10ResNet9

    job = CIFAR10ResNet9(**{**params, "models_at_once": M})
    rng = np.random.default_rng(seed)
    n = job.n_train
    k = int(round(alpha * n))
    masks = np.zeros((n_models, n), bool)
    for b in range(n_models):
        masks[b, rng.choice(n, k, replace=False)] = True
    seeds = np.arange(1, n_models + 1, dtype=np.uint64)
    # warm-up: a one-epoch chunk (cuDNN autotuning, torch.compile, allocator)
    epochs = job.epochs
    job.epochs = 1
    job.train_block(masks[:M], seeds[:M])
    job.epochs = epochs
    _sync(job)
    t = time.perf_counter()
    margins = job.train_block(masks, seeds)
    _sync(job)
    dt = time.perf_counter() - t
    return job, margins, dt, k


def _sync(job):
    import torch

    if job.device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", help="directory with the CIFAR-10 python batches")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--models", type=int, default=8, help="models timed per configuration")
    ap.add_argument("--models-at-once", default="1,2,4", help="comma-separated M values")
    ap.add_argument("--full-models", type=int, default=2,
                    help="models trained on the full training set for accuracy (real data)")
    ap.add_argument("--params", default="{}",
                    help="extra JSON job parameters (e.g. '{\"epochs\": 12, \"compile\": true}')")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="a tiny run on the CPU (synthetic data, tiny net); prints only")
    ap.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = ap.parse_args()

    import torch

    extra = json.loads(args.params)
    if args.cpu_smoke:
        params = dict(synthetic={"n_train": 256, "n_test": 64, "seed": 0}, width=1 / 16,
                      epochs=2, batch_size=64, lr_peak_epoch=0.5, device="cpu", threads=1)
        Ms = [1, 2]
        n_models = min(args.models, 2)
        data = "synthetic CIFAR-shaped, tiny (256 train / 64 test), width 1/16, 2 epochs"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu-smoke for the CPU version")
        Ms = [int(v) for v in args.models_at_once.split(",")]
        n_models = args.models
        if args.data_dir:
            params = dict(data_dir=args.data_dir)
            data = f"real CIFAR-10 ({args.data_dir})"
        else:
            params = dict(synthetic={"n_train": 50_000, "n_test": 10_000, "seed": 0})
            data = ("synthetic CIFAR-shaped data of the real size (50,000 train / 10,000 test):"
                    " throughput only, no CIFAR-10 accuracy")
    params.update(extra)
    real = "data_dir" in params
    dev = "cpu" if args.cpu_smoke else torch.cuda.get_device_name()
    print(f"device: {dev}\ndata: {data}\nparams: {json.dumps(params)}", flush=True)

    rows, best = [], None
    for M in Ms:
        try:
            job, margins, dt, k = run_config(params, M, max(n_models, M), args.alpha)
        except torch.cuda.OutOfMemoryError:
            print(f"models_at_once={M}: out of GPU memory, skipped", flush=True)
            torch.cuda.empty_cache()
            continue
        n = margins.shape[0]
        per = dt / n
        tflops = model_flops(job, k) * n / dt / 1e12
        row = {"models at once": M, "models": n, "s/model": per, "models/hour": 3600 / per,
               "models/day": 86400 / per, "x paper (5k/day A100)": 86400 / per / PAPER_PER_DAY,
               "x aim (50k/day)": 86400 / per / AIM_PER_DAY, "TFLOP/s": tflops,
               "dtype": job._setup()["dtype"]}
        if real or args.cpu_smoke:
            row["test acc (alpha)"] = float((margins > 0).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
        if best is None or per < best[1]:
            best = (M, per)
        del job
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    cols = ["models at once", "models", "s/model", "models/hour", "models/day",
            "x paper (5k/day A100)", "x aim (50k/day)", "TFLOP/s", "dtype"]
    if real or args.cpu_smoke:
        cols.append("test acc (alpha)")
    lines = [f"Device: **{dev}**. Data: {data}. alpha = {args.alpha}. Job parameters: "
             f"`{json.dumps(params)}`; parameters not named take the paper's defaults (24 epochs, "
             "batch 512, peak lr 0.5 at epoch 5, momentum 0.9, wd 5e-4, label smoothing 0.1, "
             "crop + flip + 8x8 Cutout, flip TTA, width 1, bf16 on a GPU).", "", table(rows, cols)]
    if best is not None and (real or args.cpu_smoke) and args.full_models > 0:
        from jobs.cifar10 import CIFAR10ResNet9

        job = CIFAR10ResNet9(**{**params, "models_at_once": best[0]})
        nf = args.full_models
        m = job.train_block(np.ones((nf, job.n_train), bool), np.arange(100, 100 + nf))
        acc = (m > 0).mean(axis=1)
        lines += ["", f"Full-data test accuracy ({nf} models): mean {acc.mean():.4f} "
                  f"(each: {', '.join(f'{a:.4f}' for a in acc)}); the paper reports ~0.93 "
                  "full-data and 0.896 at alpha = 0.5."]
    elif not real:
        lines += ["", "No accuracy: CIFAR-10 is not on this machine (synthetic data)."]
    body = "\n".join(lines)
    print("\n" + body)
    if torch.cuda.is_available() and not args.cpu_smoke and not args.no_record:
        record("CIFAR-10 ResNet-9 job throughput (GPU)", body)
        print("\nrecorded in benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
