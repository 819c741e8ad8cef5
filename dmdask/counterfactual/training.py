"""Training counterfactual sets through the run store and the cluster, in rounds.

A :class:`Trainer` adds the models a round needs (:func:`dmdask.store.trainsets.ensure_models`:
found again by content, so a rerun after a kill adds nothing), trains every incomplete block of
the store with :func:`dmdask.train` on one client kept for all rounds (started on first need:
a ``LocalCluster``, a ``dask scheduler``, or a given client), and reads the margins back.
"""

from __future__ import annotations

import numpy as np

from ..store import trainsets

__all__ = ["Trainer", "full_mask"]


def full_mask(n_train: int, removed=()) -> np.ndarray:
    m = np.ones(n_train, bool)
    m[np.asarray(removed, np.int64)] = False
    return m


class Trainer:
    """Adds, trains and reads training sets of one store (use as a context manager)."""

    def __init__(self, path: str, *, client=None, scheduler: str | None = None,
                 workers: int | None = None, threads_per_worker: int | None = None,
                 gpus: int | None = None, progress: bool = True):
        self.path = path
        self.client = client
        self._own = None
        self._opts = (scheduler, workers, threads_per_worker, gpus)
        self.progress = progress
        self.trained = 0  # models trained by this trainer
        self.seconds = 0.0

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        if self._own is not None:
            client, cluster = self._own
            client.close()
            if cluster is not None:
                cluster.close()
            self._own = None

    def models(self, masks, *, kind: str, runs: int, labels=None,
               alpha: float | None = None) -> np.ndarray:
        """Model indices ``[m, runs]`` of these sets (added if missing, not trained yet)."""
        return trainsets.ensure_models(self.path, masks, kind=kind, runs=runs, labels=labels,
                                       alpha=alpha)

    def train(self) -> None:
        """Train every incomplete block of the store."""
        from ..store.runstore import incomplete_blocks
        from ..train import _client_for, train

        if not incomplete_blocks(self.path):
            return
        if self.client is None and self._own is None:
            self._own = _client_for(*self._opts)
        rep = train(self.path, self.client or self._own[0], progress=self.progress)
        self.trained += rep.models
        self.seconds += rep.wall_seconds

    def margins(self, models, targets=None) -> np.ndarray:
        """Margins ``models.shape + [n_targets]`` (NaN where untrained)."""
        return trainsets.model_margins(self.path, models, targets)
