"""Training sets defined against the full training set, each trained ``runs`` times.

A counterfactual ("the training set without R", "with F relabelled", "only S"), a control
(the full training set) or a verifier's challenge is a *training set*: a mask row and, for
relabellings, a full row of training labels. :func:`ensure_models` makes sure the store holds
``runs`` models of each set, and returns their model indices; nothing else is needed to train
them (``dmdask.train`` trains every incomplete block).

It is idempotent: the models of a set are found again by content (kind, mask, labels), so a
rerun after any interruption adds only what is missing, at the same model indices, with the
same seeds (a seed is a function of the store's seed and the model index), and a deterministic
job reproduces an uninterrupted run exactly. Identical sets asked for twice share models.
Another process growing the store at the same moment is not excluded between the lookup and
the growth (the growth itself holds the grow lease); the worst case is extra replicates.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ..errors import InputError
from . import runstore
from .sampling import model_seeds

__all__ = ["ensure_models", "model_margins", "set_keys"]


def _key(kind_code: int, mask_row: np.ndarray, label_row: np.ndarray | None) -> str:
    h = hashlib.sha1(bytes([kind_code]))
    h.update(np.packbits(mask_row).tobytes())
    if label_row is not None:
        h.update(np.asarray(label_row, np.int64).tobytes())
    return h.hexdigest()


def set_keys(kind: str, masks: np.ndarray, labels: np.ndarray | None = None,
             base_labels: np.ndarray | None = None) -> list[str]:
    """Content keys of training sets (what :func:`ensure_models` matches models by); a label
    row equal to ``base_labels`` (the store's) keys as no relabelling."""
    code = runstore.KIND_CODE[kind]
    keys = []
    for i in range(masks.shape[0]):
        lab = None if labels is None else labels[i]
        if lab is not None and base_labels is not None and np.array_equal(lab, base_labels):
            lab = None
        keys.append(_key(code, masks[i], lab))
    return keys


def _check(path, masks, labels, n_train, base_labels):
    masks = np.asarray(masks)
    if masks.ndim == 1:
        masks = masks[None]
    if masks.ndim != 2 or masks.shape[1] != n_train:
        raise InputError(f"{path}: training-set masks have shape {masks.shape}, expected "
                         f"(m, {n_train})")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise InputError(f"{path}: training-set masks must be bool or 0/1")
        masks = masks.astype(bool)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.broadcast_to(labels, masks.shape)
        if labels.shape != masks.shape or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{path}: training labels must be int of shape {masks.shape}, got "
                             f"{labels.dtype} {labels.shape}")
        # a row that relabels nothing is the plain set: store it without an override
        same = (labels == base_labels[None]).all(axis=1)
        if same.all():
            labels = None
    return masks, labels


def _existing(path: str, group, kind_code: int, n_models: int) -> dict[str, list[int]]:
    """Content key -> model indices (ascending) of the store's models of one kind."""
    if n_models == 0:
        return {}
    kinds = group["kind"][:n_models]
    rows = np.flatnonzero(kinds == kind_code)
    found: dict[str, list[int]] = {}
    if rows.size == 0:
        return found
    has_override = "train_label_override" in group
    base = group["train_label"][:] if has_override else None
    step = 4096
    for s in range(0, rows.size, step):
        r = rows[s:s + step]
        mk = group["mask"].get_orthogonal_selection((r, slice(None)))
        ov = (group["train_label_override"].get_orthogonal_selection((r, slice(None)))
              if has_override else None)
        for i, m in enumerate(r):
            lab = None
            if ov is not None and (ov[i] >= 0).any():
                lab = np.where(ov[i] >= 0, ov[i], base).astype(np.int64)
                if (lab == base).all():
                    lab = None
            found.setdefault(_key(kind_code, mk[i], lab), []).append(int(m))
    return found


def ensure_models(path: str | os.PathLike, masks, *, kind: str, runs: int,
                  labels=None, alpha: float | None = None, seeds=None) -> np.ndarray:
    """Make the store at ``path`` hold ``runs`` models of ``kind`` for each training set and
    return their model indices, int64 ``[m, runs]`` (row i: set i's models, oldest first).

    ``masks``: bool ``[m, n_train]`` (or one row); ``labels``: optional int ``[m, n_train]``
    (or one row for all) — the labels the models train on (a relabelling; rows equal to the
    store's labels are plain sets). ``alpha``: recorded for sets drawn at random (an α-control),
    else NaN. Models already in the store with the same kind and content are reused; only the
    missing replicates are added (one growth), so reruns are free and deterministic.

    ``seeds`` (uint64 ``[m]``, only with ``runs=1``): each set's model trains with that seed
    (a verifier retraining a prover's model); such a model is found again only with its seed.
    """
    path = runstore._path(path)
    if kind not in runstore.KIND_CODE:
        raise InputError(f"kind must be one of {runstore.KINDS}, got {kind!r}")
    runs = int(runs)
    if runs < 1:
        raise InputError(f"runs must be >= 1, got {runs}")
    group = runstore._open_group(path, "r")
    meta = runstore._meta_of(group, path)
    n_train = int(meta["n_train"])
    base = np.asarray(group["train_label"][:], np.int64)
    masks, labels = _check(path, masks, labels, n_train, base)
    if labels is not None and meta.get("job") is None:
        raise InputError(f"{path}: the store has no job, so it cannot train relabelled sets")
    if seeds is not None:
        return _ensure_seeded(path, group, meta, masks, labels, base, kind, runs, seeds, alpha)
    keys = set_keys(kind, masks, labels, base)
    found = _own_seeded(group, meta, _existing(path, group, runstore.KIND_CODE[kind],
                                               int(meta["n_models"])))
    add_rows: list[int] = []
    for key in dict.fromkeys(keys):  # each distinct set once, in first-asked order
        have = len(found.get(key, ()))
        first = keys.index(key)
        add_rows += [first] * max(0, runs - have)
    if add_rows:
        sel = np.asarray(add_rows)
        new = runstore.add_models(
            path, kind, masks=masks[sel], alpha=alpha,
            train_labels=None if labels is None else np.ascontiguousarray(labels[sel]))
        for r, m in zip(add_rows, new, strict=True):
            found.setdefault(keys[r], []).append(int(m))
    out = np.empty((len(keys), runs), np.int64)
    for i, key in enumerate(keys):
        out[i] = sorted(found[key])[:runs]
    return out


def _own_seeded(group, meta, found: dict[str, list[int]]) -> dict[str, list[int]]:
    """Only the models that train with the store's own seed: one added with a given seed (a
    prover's, retrained by a verifier) never stands in for a fresh one."""
    rows = sorted({m for ms in found.values() for m in ms})
    if not rows:
        return found
    have = group["seed"].get_orthogonal_selection(np.asarray(rows, np.int64))
    own = {r for r, s, o in zip(rows, have, model_seeds(meta["seed"], np.asarray(rows)),
                                strict=True) if s == o}
    return {k: [m for m in ms if m in own] for k, ms in found.items()}


def _ensure_seeded(path, group, meta, masks, labels, base, kind, runs, seeds, alpha):
    if runs != 1:
        raise InputError(f"seeds are given for one model per set (runs=1), got runs={runs}")
    seeds = np.asarray(seeds)
    if seeds.shape != (masks.shape[0],) or not np.issubdtype(seeds.dtype, np.integer):
        raise InputError(f"{path}: seeds must be {masks.shape[0]} integers, got {seeds.dtype} "
                         f"{seeds.shape}")
    seeds = seeds.astype(np.uint64)
    keys = set_keys(kind, masks, labels, base)
    found = _existing(path, group, runstore.KIND_CODE[kind], int(meta["n_models"]))
    keys_of = {m: k for k in set(keys) for m in found.get(k, ())}
    cand = sorted(keys_of)
    have_seed = dict(zip(cand, group["seed"].get_orthogonal_selection(np.asarray(cand, np.int64))
                         if cand else [], strict=True))
    table: dict[tuple[str, int], int] = {}
    for m in cand:
        table.setdefault((keys_of[m], int(have_seed[m])), m)
    add_rows: list[int] = []
    pending: set[tuple[str, int]] = set()
    for i, k in enumerate(keys):
        key = (k, int(seeds[i]))
        if key not in table and key not in pending:
            pending.add(key)
            add_rows.append(i)
    if add_rows:
        sel = np.asarray(add_rows)
        new = runstore.add_models(
            path, kind, masks=masks[sel], alpha=alpha, seeds=seeds[sel],
            train_labels=None if labels is None else np.ascontiguousarray(labels[sel]))
        for r, m in zip(add_rows, new, strict=True):
            table[(keys[r], int(seeds[r]))] = int(m)
    out = np.array([table[(k, int(seeds[i]))] for i, k in enumerate(keys)], np.int64)
    return out[:, None]


def model_margins(path: str | os.PathLike, models, targets=None) -> np.ndarray:
    """Margins of ``models`` (any int array shape ``S``) on ``targets`` (default all):
    float ``S + [n_targets]``; NaN where a model is not trained yet."""
    path = runstore._path(path)
    group = runstore._open_group(path, "r")
    models = np.asarray(models, np.int64)
    flat = models.ravel()
    n = int(runstore._meta_of(group, path)["n_models"])
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise InputError(f"{path}: model indices outside [0, {n})")
    tsel = slice(None) if targets is None else np.asarray(targets, np.int64)
    uniq, inv = np.unique(flat, return_inverse=True)
    if uniq.size == 0:
        width = group["margin"].shape[1] if targets is None else np.size(tsel)
        return np.zeros(models.shape + (width,))
    mg = group["margin"].get_orthogonal_selection((uniq, tsel)).astype(np.float64)
    done = group["completed"].get_orthogonal_selection(uniq)
    mg[~done] = np.nan
    return mg[inv].reshape(models.shape + (mg.shape[1],))
