"""How dask work runs: local or on a ``distributed`` client, with a progress bar, and how many
parallel lanes and BLAS threads per lane a pass over row blocks uses.

Shared by the statistics pass, the solvers and the analyses, so none of them imports another's
internals to compute.
"""

from __future__ import annotations

import dask
import dask.callbacks

from . import config

__all__ = ["Deferred", "TqdmCallback", "blas_per_lane", "compute", "lane_blas_threads", "lanes"]


def lane_blas_threads(client, lanes: int) -> int:
    """BLAS threads each of ``lanes`` parallel lanes gets: cores/lanes locally (see
    :func:`blas_per_lane`); one on a ``client``'s workers (distributed starts them with
    one BLAS thread per process)."""
    import os

    if client is not None:
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, lanes))


def blas_per_lane(client, lanes):
    """On the local scheduler, the lanes already use the cores: BLAS gets cores/lanes threads
    each (measured at 50,000 × 5,000 on 2 cores: 2 lanes × 1 thread took 12% less CPU than
    2 lanes × 2 threads, which oversubscribe). Workers of a ``client`` are left alone."""
    import contextlib

    if client is not None or lanes <= 1:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return contextlib.nullcontext()
    return threadpool_limits(limits=lane_blas_threads(client, lanes), user_api="blas")


def lanes(client) -> int:
    """Parallel accumulation chains: setting ``dmdask.solve.stats-lanes``, else the worker
    threads of ``client``, else one (on the local scheduler one chain with a BLAS that uses
    every core: at 50,000 × 5,000 × 500 on 2 cores 10.2–10.9 s against 15.0–15.2 s for two
    chains of one BLAS thread each, and one d × d accumulator instead of two)."""
    lanes = config.get("solve.stats-lanes", None)
    if lanes:
        return int(lanes)
    if client is not None:
        try:
            return max(1, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))
        except Exception:
            pass
    return 1


def compute(objs, *, client=None, progress=False, desc=""):
    """Compute dask objects locally or on ``client``, with an optional tqdm bar."""
    if client is not None:
        futures = client.compute(objs)
        if progress:
            from distributed import as_completed
            from tqdm.auto import tqdm

            for _ in tqdm(as_completed(futures), total=len(futures), desc=desc):
                pass
        return client.gather(futures)
    if progress:
        with TqdmCallback(desc):
            return dask.compute(*objs)
    return dask.compute(*objs)


class TqdmCallback(dask.callbacks.Callback):
    """A tqdm bar over the tasks of a local ``dask.compute``."""

    def __init__(self, desc=""):
        super().__init__()
        self._desc = desc
        self._bar = None

    def _start_state(self, dsk, state):
        from tqdm.auto import tqdm

        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar = tqdm(total=total, desc=self._desc)

    def _posttask(self, key, result, dsk, state, worker_id):
        self._bar.update(1)

    def _finish(self, dsk, state, errored):
        if self._bar is not None:
            self._bar.close()


class Deferred:
    """A block of rows that dask must not compute ahead of time: the task holding it loads it
    when it runs. Block loads have no dependencies, so as separate tasks the scheduler runs
    them far ahead of a sequential chain (an accumulation lane, a solver pass) and the loaded
    blocks pile up in memory; loaded inside the chain, one block per running task is live.
    ``array`` is a dask array (computed synchronously in the task) or an in-memory one."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def load(self):
        import dask.array as da

        a = self.array
        return a.compute(scheduler="sync") if isinstance(a, da.Array) else a
