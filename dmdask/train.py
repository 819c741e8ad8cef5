"""Training: map the incomplete blocks of a run store onto a ``dask.distributed`` cluster.

Each block is one task. The task opens the store on the worker, reads the block's masks,
seeds and label overrides, trains the block with the store's job (constructed once per
worker process, after the class passed the job-interface check), checks the margins and
writes them, ``completed`` last (:func:`dmdask.store.write_block`). Nothing else is shared
between tasks, so a killed worker or a killed coordinator loses at most the blocks in
flight: a rerun trains exactly the blocks whose ``completed`` is false.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from . import config
from .errors import DmdaskError, JobError, StoreError
from .store import jobspec, lease
from .store.runstore import (
    _meta_of,
    _open_group,
    _write_rows_to,
    block_range,
    incomplete_blocks,
    read_meta,
    remove_stale_partials,
)

_JOBS: dict[str, Any] = {}
_JOBS_LOCK = threading.Lock()


def _job_for(spec: dict[str, Any], fingerprint: str, store: str, trusted: tuple[str, ...] = ()):
    """The job of ``spec``, constructed once per process and checked against the store;
    ``trusted``: the job modules the coordinator found trusted (a worker's own config may not
    list them)."""
    key = json.dumps(spec, sort_keys=True)
    with _JOBS_LOCK:
        job = _JOBS.get(key)
        if job is None:
            job = jobspec.construct_job(spec["path"], spec.get("params") or {}, trusted)
            desc = jobspec.validate_description(job.describe(), spec["path"])
            if jobspec.fingerprint(desc) != fingerprint:
                raise JobError(
                    f"{store}: job {spec['path']} now describes a different dataset than the "
                    f"store was made with (fingerprint {jobspec.fingerprint(desc)} != "
                    f"{fingerprint}); refusing to mix them"
                )
            _JOBS[key] = job
    return job


def prepare_worker(path: str, spec: dict[str, Any], fingerprint: str, block: int,
                   trusted: tuple[str, ...] = ()) -> int:
    """Construct (and check) the job on a worker before any block is sent to it, and train
    the first pending model of ``block`` so what the job imports lazily (torch …) is
    loaded too. A job that fails, or returns something other than float32 margins of the
    right shape, raises :class:`JobError` here, before any block is sent."""
    job = _job_for(spec, fingerprint, path, trusted)
    group = _open_group(path, "r")
    meta = _meta_of(group, path)
    first, last = block_range(meta, block)
    start = first + int(np.argmin(group["completed"][first:last]))  # a model the block will train
    mask = group["mask"][start:start + 1]
    seed = group["seed"][start:start + 1]
    where = f"{path}: job {spec['path']} failed its warm-up training (model {start})"
    try:
        out = job.train_block(mask, seed, train_labels=_labels(group, start, start + 1))
    except Exception as e:
        raise JobError(f"{where}: {type(e).__name__}: {e}") from e
    expect = (1, meta["n_target"])
    got = None
    if not isinstance(out, np.ndarray):
        got = type(out).__name__
    elif out.shape != expect or out.dtype != np.float32:
        got = f"{out.dtype} {out.shape}"
    if got is not None:  # NaN margins are a model's failure, refused when its block is written
        raise JobError(f"{where}: train_block returned {got}, expected float32 {expect}")
    return os.getpid()


def _labels(group, start: int, stop: int) -> np.ndarray | None:
    if "train_label_override" not in group:
        return None
    over = group["train_label_override"][start:stop].astype(np.int64)
    if not (over >= 0).any():
        return None
    base = group["train_label"][:]
    return np.where(over >= 0, over, base[None, :])


def train_block_task(path: str, block: int, spec: dict[str, Any],
                     trusted: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train the rows of one block that are not completed and write them (runs on a worker).
    Returns timing for the coordinator."""
    group = _open_group(path, "r+")
    meta = _meta_of(group, path)
    if meta["job"] != spec:
        raise JobError(f"{path}: store job is {meta['job']}, this task was sent {spec}")
    start, stop = block_range(meta, block)
    todo = np.nonzero(~group["completed"][start:stop])[0]
    if todo.size == 0:
        return {"block": block, "models": 0, "seconds": 0.0, "pid": os.getpid()}
    job = _job_for(spec, meta["fingerprint"], path, trusted)
    masks = group["mask"][start:stop][todo]
    seeds = group["seed"][start:stop][todo]
    labels = _labels(group, start, stop)
    if labels is not None:
        labels = labels[todo]
    t0 = time.perf_counter()
    margins = job.train_block(masks, seeds, train_labels=labels)
    seconds = time.perf_counter() - t0
    if not isinstance(margins, np.ndarray):
        raise JobError(f"{path} block {block}: job {spec['path']}.train_block returned "
                       f"{type(margins).__name__}, not a numpy array")
    _write_rows_to(group, meta, path, block, start + todo, margins, job=spec)
    return {"block": block, "models": int(todo.size), "seconds": seconds, "pid": os.getpid()}


@dataclass
class TrainReport:
    """What a :func:`train` call did."""

    store: str
    blocks: int = 0
    models: int = 0
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    task_seconds: float = 0.0
    failed: dict[int, str] = field(default_factory=dict)
    dashboard: str | None = None

    @property
    def models_per_second(self) -> float:
        return self.models / self.wall_seconds if self.wall_seconds else float("nan")


def _client_for(scheduler: str | None, workers: int | None, threads: int | None,
                gpus: int | None = None):
    """(client, cluster-or-None) — join ``scheduler``, or start a LocalCUDACluster (``gpus``),
    or a LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler and gpus:
        raise DmdaskError("give --scheduler (join `dask cuda worker`s) or --gpus (start a local "
                          "GPU cluster), not both")
    # see dmdask.train.malloc-trim-threshold in dmdask.yaml
    trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
            config.get("train.malloc-trim-threshold", None)}
    if gpus is not None:
        from . import optional

        dask_cuda = optional.require("dask_cuda")
        if not optional.has_gpu():
            raise DmdaskError("--gpus: no CUDA GPU is visible to CuPy on this machine")
        import cupy

        n = cupy.cuda.runtime.getDeviceCount() if gpus == 0 else int(gpus)
        with dask.config.set(trim):
            cluster = dask_cuda.LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=list(range(n)), threads_per_worker=1,
                dashboard_address=":0", silence_logs=40,
            )
        return Client(cluster), cluster
    if scheduler:
        try:
            return Client(scheduler, timeout=config.get("train.connect-timeout", "20s")), None
        except OSError as e:
            raise DmdaskError(f"cannot reach dask scheduler at {scheduler} ({e})") from e
    workers = workers or config.get("train.workers") or os.cpu_count() or 1
    threads = threads or config.get("train.threads-per-worker") or 1
    with dask.config.set(trim):
        cluster = LocalCluster(
            n_workers=int(workers), threads_per_worker=int(threads), processes=True,
            dashboard_address=":0", silence_logs=40,
        )
    return Client(cluster), cluster


def train(
    path: str | os.PathLike,
    client=None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    gpus: int | None = None,
    retries: int | None = None,
    progress: bool = True,
    on_start: Callable[[str | None, int], None] | None = None,
    trust_job: Iterable[str] = (),
) -> TrainReport:
    """Train every incomplete block of the store at ``path``; return a :class:`TrainReport`.

    Uses ``client`` if given, else joins ``scheduler`` (a ``tcp://`` address of a
    ``dask scheduler``), else starts a ``LocalCluster`` of ``workers`` processes with
    ``threads_per_worker`` threads (settings ``dmdask.train.*``); ``gpus=N`` starts a
    ``dask_cuda.LocalCUDACluster`` with one worker per GPU instead (0: every GPU). Failed tasks are retried
    ``retries`` times; blocks that still fail are reported in one :class:`DmdaskError` after
    every other block is written. Safe to interrupt and rerun at any moment, and to grow the
    store with :func:`dmdask.add_models` meanwhile (the new models wait for the next run); a
    second training of the same store is refused while this one runs (lease with heartbeat,
    :mod:`dmdask.store.lease`).

    The store's job module is imported only if trusted on this machine
    (:mod:`dmdask.store.jobspec`); ``trust_job`` names modules to trust (recorded here, like
    ``dmdask train --trust-job``). Workers are told what the coordinator found trusted.
    """
    path = os.path.abspath(os.fspath(path))
    meta = read_meta(path)
    spec = meta["job"]
    pending = incomplete_blocks(path)
    if spec is None:
        if pending:
            n_pending = sum(np.subtract(*block_range(meta, b)[::-1]) for b in pending)
            raise StoreError(f"{path}: the store has no job (it was imported or made by hand), "
                             f"so its {n_pending} incomplete models cannot be trained")
        return TrainReport(store=path)
    # Check the trust, then the class, before any worker constructs it: an edited store can
    # neither import an untrusted module nor run a non-job.
    jobspec.record_trust(trust_job)
    cls = jobspec.resolve_job_class(spec["path"], trust_job, store=path)
    trusted = (jobspec.parse_job_path(spec["path"])[0],)
    jobspec.check_params(cls, spec.get("params") or {}, spec["path"])
    report = TrainReport(store=path)
    if not pending:
        return report
    retries = int(config.get("train.retries", 3) if retries is None else retries)
    with lease.hold(path, "train", "training", refuse="another training is running"):
        remove_stale_partials(path)  # left by killed writes; only a lease holder cleans
        return _train_pending(path, meta, spec, pending, report, client, scheduler, workers,
                              threads_per_worker, gpus, retries, progress, on_start, trusted)


def _train_pending(path, meta, spec, pending, report, client, scheduler, workers,
                   threads_per_worker, gpus, retries, progress, on_start,
                   trusted) -> TrainReport:
    # blocks found pending before the lease was taken may have been finished meanwhile
    pending = [b for b in incomplete_blocks(path) if b in set(pending)]
    if not pending:
        return report
    meta = read_meta(path)
    done = _open_group(path)["completed"][: meta["n_models"]]
    total = int(sum((~done[slice(*block_range(meta, b))]).sum() for b in pending))
    cluster = None
    own_client = client is None
    if own_client:
        client, cluster = _client_for(scheduler, workers, threads_per_worker, gpus)
    report.dashboard = getattr(client, "dashboard_link", None)
    if on_start is not None:
        on_start(report.dashboard, total)
    try:
        from distributed import as_completed
        from tqdm.auto import tqdm

        # Build the job on every worker at once, before the clock for blocks starts (workers
        # that join later build it in their first task).
        t_setup = time.perf_counter()
        client.run(prepare_worker, path, spec, meta["fingerprint"], pending[0], trusted)
        report.setup_seconds = time.perf_counter() - t_setup
        futures = [
            client.submit(train_block_task, path, b, spec, trusted, retries=retries, pure=False,
                          key=f"dmdask-train-block-{b}-{os.urandom(4).hex()}")
            for b in pending
        ]
        fmap = {f.key: b for f, b in zip(futures, pending, strict=True)}
        t0 = time.perf_counter()
        with tqdm(total=total, unit="model", desc="train", disable=not progress,
                  smoothing=0.1) as bar:
            for fut in as_completed(futures):
                b = fmap[fut.key]
                try:
                    res = fut.result()
                except Exception as e:  # keep going: every other block still lands
                    report.failed[b] = f"{type(e).__name__}: {e}"
                    continue
                report.blocks += 1
                report.models += res["models"]
                report.task_seconds += res["seconds"]
                bar.update(res["models"])
        report.wall_seconds = time.perf_counter() - t0
    finally:
        if own_client:  # a client joined to --scheduler is ours too: close it, not the cluster
            client.close()
            if cluster is not None:
                cluster.close()
    if report.failed:
        first = min(report.failed)
        raise DmdaskError(
            f"{path}: {len(report.failed)} of {len(pending)} blocks failed after {retries} "
            f"retries; the other {report.blocks} are written. First: block {first}: "
            f"{report.failed[first]}"
        )
    return report
