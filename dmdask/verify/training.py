"""The protocols on a real job: every model either side trains is a model of a run store.

* The **verifier** owns a store of the job (``<workdir>/verifier.zarr``): its spot checks
  (the prover's masks *and seeds*) and its MSE sample M (fresh seeds: the store's own) are
  models of kind ``"verify"`` added with :func:`~dmdask.store.trainsets.ensure_models` and
  trained by :func:`dmdask.train` — on a local cluster or a scheduler, resumable: the draws
  are a function of the verifier's seed and ``ensure_models`` finds existing models again, so a
  rerun after a kill trains only what is missing and reaches the same decision.
* The **prover** (dmdask itself, honest about its models, sending whatever scores it is
  given) trains the challenge E in a challenge store (``<workdir>/challenge.zarr``), each
  subset with the challenge's seed; its message is that store's margins, matched to the
  challenge by (mask, seed) — a store that lacks a challenged model is refused.

Outputs are centred by a public constant c (default: the mean margin of the source store's
trained models): B_{≥2} and every MSE with an intercept are unchanged by a shift, and the
products the estimator averages get smaller. ``bound`` defaults to 2 standard deviations of
those margins about c — margins are unbounded (REFERENCE.md §0), so KPN's b_f is a scale here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InputError, StoreError
from ..store import runstore, trainsets
from . import protocols
from .protocols import Challenge, ProverMessage, Verdict

__all__ = ["StoreProver", "StoreTrainer", "load_scores", "message_from_store", "scale_of",
           "verify_store"]


def _train(path: str, options: dict[str, Any]) -> int:
    from ..train import train

    return train(path, **options).models


def _job_store(path: str, source: str, seed: int) -> str:
    meta = runstore.read_meta(source)
    job = meta.get("job")
    if job is None:
        raise InputError(f"{source}: the store has no job (imported or made by hand), so the "
                         f"verifier cannot train its models")
    return runstore.create_store(path, job["path"], 0, float(meta["alpha"]),
                                 params=job.get("params") or {}, seed=int(seed))


class StoreTrainer:
    """The verifier's trainer: models of kind ``verify`` in its own store, margins − ``offset``."""

    support = None

    def __init__(self, path: str, targets: np.ndarray, *, offset: np.ndarray | float = 0.0,
                 train_options: dict[str, Any] | None = None):
        self.path, self.targets = str(path), np.asarray(targets, np.int64)
        self.n_train = int(runstore.read_meta(self.path)["n_train"])
        self.offset = offset
        self.options = dict(train_options or {})
        self.trained = 0      # models asked for (the protocol's count)
        self.new = 0          # of those, trained in this run (the rest were found done)

    def train(self, masks: np.ndarray, seeds: np.ndarray, view: np.ndarray, *,
              fresh: bool = False) -> np.ndarray:
        if len(view) != self.n_train:
            raise InputError("a store trains on full masks")
        idx = trainsets.ensure_models(self.path, masks, kind="verify", runs=1,
                                      seeds=None if fresh else seeds)[:, 0]
        self.new += _train(self.path, self.options)
        self.trained += len(masks)
        out = trainsets.model_margins(self.path, idx, self.targets)
        if np.isnan(out).any():
            raise StoreError(f"{self.path}: {int(np.isnan(out).any(axis=1).sum())} verifier "
                             f"models are still untrained after training")
        return out - self.offset


def message_from_store(path: str, ch: Challenge, targets: np.ndarray, scores,
                       offset: np.ndarray | float = 0.0) -> ProverMessage:
    """The prover's message read from its challenge store: the margins of its ``verify``
    models matched to the challenge rows by (mask, seed); refused unless every challenged
    model is there and trained."""
    ds = runstore.open_store(path)
    rows = np.flatnonzero(ds.kind.values == "verify")
    masks = ds.mask.values[rows]
    seeds = ds.seed.values[rows].astype(np.uint64)
    if masks.shape[1] != ch.masks.shape[1]:
        raise InputError(f"the prover's message does not match the challenge: {path} has "
                         f"{masks.shape[1]} training examples, the challenge "
                         f"{ch.masks.shape[1]}")
    have = {(k, int(s)): int(r) for k, s, r in
            zip(trainsets.set_keys("verify", masks), seeds, rows, strict=True)}
    want = trainsets.set_keys("verify", ch.masks)
    idx = np.array([have.get((k, int(s)), -1) for k, s in zip(want, ch.seeds, strict=True)])
    if (idx < 0).any():
        raise InputError(f"the prover's message does not match the challenge: {path} lacks "
                         f"{int((idx < 0).sum())} of the {idx.size} challenged (subset, seed) "
                         f"models")
    out = trainsets.model_margins(path, idx, targets)
    if np.isnan(out).any():
        raise InputError(f"the prover's message does not match the challenge: "
                         f"{int(np.isnan(out).any(axis=1).sum())} challenged models in {path} "
                         f"are untrained")
    return ProverMessage(outputs=out - offset, scores=scores, trainings=idx.size)


class StoreProver:
    """dmdask as the prover: trains the challenge in its challenge store, sends ``scores``."""

    omniscient = False

    def __init__(self, source: str, scores: np.ndarray, path: str, targets: np.ndarray, *,
                 seed: int = 0, offset: np.ndarray | float = 0.0,
                 train_options: dict[str, Any] | None = None):
        self.source, self.scores, self.path = source, np.atleast_2d(scores), str(path)
        self.targets, self.seed, self.offset = np.asarray(targets), int(seed), offset
        self.options = dict(train_options or {})
        self.new = 0

    def respond(self, ch: Challenge, pairing=None) -> ProverMessage:
        _job_store(self.path, self.source, self.seed)
        trainsets.ensure_models(self.path, ch.masks, kind="verify", runs=1, seeds=ch.seeds)
        self.new += _train(self.path, self.options)
        return message_from_store(self.path, ch, self.targets, self.scores, self.offset)


def load_scores(path: str, n_train: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores from a ``.npy`` (``[N]`` or ``[Z, N]``) or a datamodels result (its ``weight``,
    and its ``target`` coordinate as the targets); returns (scores [Z, N], targets or None)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such scores file")
    targets = None
    if path.endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{path}: not a numeric .npy array ({e})") from None
    else:
        import xarray as xr

        try:
            ds = xr.open_zarr(path, consolidated=False)
        except Exception as e:  # noqa: BLE001 - any unreadable input is one line
            raise InputError(f"{path}: neither a .npy array nor a datamodels result ({e})"
                             ) from None
        if "weight" not in ds:
            raise InputError(f"{path}: a datamodels result needs a 'weight' variable")
        a = ds.weight.transpose("target", "train").values
        if "target" in ds.coords:
            targets = np.asarray(ds.target.values, np.int64)
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != n_train or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{path}: scores have shape {a.shape}, expected (targets, {n_train}) "
                         f"(one score per training example of the store)")
    return a.astype(np.float64), targets


def scale_of(store: str, targets: np.ndarray) -> tuple[np.ndarray, float]:
    """(c per target, bound): the mean margin of the store's trained models and 2 standard
    deviations about it (the largest over the targets)."""
    ds = runstore.open_store(store)
    done = np.flatnonzero(ds.completed.values)
    if done.size < 2:
        raise InputError(f"{store}: fewer than 2 trained models to set the output scale; "
                         f"train the store or pass --bound")
    mg = ds.margin.values[done][:, targets].astype(np.float64)
    c = np.nanmean(mg, axis=0)
    return c, float(2.0 * np.nanstd(mg, axis=0).max())


def verify_store(store: str, scores: np.ndarray, epsilon: float, delta: float, *,
                 protocol: str = "interactive", targets=None, bound: float | None = None,
                 workdir: str | None = None, seed: int = 0, atol: float = 0.0,
                 constants: dict[str, float] | None = None,
                 train_options: dict[str, Any] | None = None) -> Verdict:
    """Verify ``scores`` ``[Z, N]`` (indicator coding: datamodel weights) for ``targets`` of the
    run ``store``'s job; the verifier's models go to ``<workdir>/verifier.zarr``, dmdask's
    prover's to ``<workdir>/challenge.zarr`` (default workdir: ``<store>.verify``)."""
    if protocol not in protocols.PROTOCOLS:
        raise InputError(f"protocol must be one of {protocols.PROTOCOLS}, got {protocol!r}")
    store = os.path.abspath(store)
    meta = runstore.read_meta(store)
    if meta.get("job") is None:
        raise InputError(f"{store}: the store has no job (imported or made by hand), so the "
                         f"verifier cannot train its models")
    n_train, n_target = int(meta["n_train"]), int(meta["n_target"])
    a = np.atleast_2d(np.asarray(scores, np.float64))
    if a.ndim != 2 or a.shape[1] != n_train:
        raise InputError(f"scores have shape {np.shape(scores)}, expected (targets, {n_train})")
    if targets is None:
        if a.shape[0] != n_target:
            raise InputError(f"{a.shape[0]} rows of scores for a store with {n_target} "
                             f"targets: say which targets they are")
        targets = np.arange(n_target)
    targets = np.asarray(targets, np.int64).ravel()
    if targets.size != a.shape[0]:
        raise InputError(f"{a.shape[0]} rows of scores for {targets.size} targets")
    if targets.size and (targets.min() < 0 or targets.max() >= n_target):
        raise InputError(f"targets outside [0, {n_target})")
    c, scale = scale_of(store, targets) if bound is None else (np.zeros(targets.size), None)
    bound = float(scale if bound is None else bound)
    plan = protocols.make_plan(epsilon, delta, float(meta["alpha"]), bound=bound,
                               n_targets=targets.size, constants=constants)
    workdir = workdir or store.rstrip("/") + ".verify"
    os.makedirs(workdir, exist_ok=True)
    vpath = _job_store(os.path.join(workdir, "verifier.zarr"), store, seed + 1)
    trainer = StoreTrainer(vpath, targets, offset=c, train_options=train_options)
    extra: dict[str, Any] = {"store": store, "verifier_store": vpath,
                             "targets": targets.tolist(), "offset": np.asarray(c).tolist()}
    if protocol == "non-interactive":
        v = protocols.non_interactive(trainer, a, plan, seed=seed)
    else:
        cpath = os.path.join(workdir, "challenge.zarr")
        prover = StoreProver(store, a, cpath, targets, seed=seed + 2, offset=c,
                             train_options=train_options)
        v = protocols.interactive(trainer, prover, plan, seed=seed,
                                  check=protocols.CheckEquiv(atol=atol))
        extra.update(challenge_store=cpath, prover_trained_now=prover.new)
    v.intercept = v.intercept + c  # back to margin units
    extra.update(verifier_trained_now=trainer.new)
    v.extra.update(extra)
    return v
