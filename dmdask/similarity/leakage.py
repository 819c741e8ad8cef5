"""Train–test leakage candidates from datamodels (paper §4.2.2, App. H), scored and ranked,
beside the same number from a representation baseline; measured against planted pairs.

**Candidates.** Per target the ``C`` training examples with the largest positive weights
(``by="weight"``, the paper's "ten largest coordinates") or the largest ``|weight|``
(``by="magnitude"``: REFERENCE §4's "highest |w| = nearest neighbours", App. H showed the
top and the bottom weights), ties by the lower index, fewer where the target has fewer
positive (non-zero) weights: padded with index −1 and score NaN; as ``candidate(target,
rank)`` with the signed ``weight(target, rank)``.

**Score.** ``score = w_tj / ‖w_t‖₂`` (``|w_tj| / ‖w_t‖₂`` by magnitude): the weight divided
by the L2 norm of the target's whole weight vector, i.e. the candidate's coordinate in the
target's normalised datamodel embedding (REFERENCE §4). Raw weights are in margin units and their scale varies from target to target
(a confidently classified target has small weights everywhere), so they cannot rank pairs
*across* targets; the normalised weight can: it lies in [−1, 1], equals 1 exactly when the
target's datamodel is that one example alone, and a near-duplicate, which explains most of
its target's dependence on the training set, scores near the top whatever the target's scale.
Within a target it orders candidates as the weights do. All candidate pairs, pooled over
targets and sorted by score (ties: target, then rank), are the global ranking
``pair_target(pair)``, ``pair_candidate(pair)``, ``pair_score(pair)``.

**Representation baseline** (with a run store and ``representation=True``): the ``C``
training examples nearest each target in the penultimate layer of the store's job
(``rep_candidate``, ``rep_distance``), globally ranked by distance (``rep_pair_*``), the usual
way of looking for near-duplicates (Barz & Denzler).

**Planted ground truth.** Where the store's job exposes ``planted_pairs()`` (e.g.
:mod:`jobs.digits_leaky`) or ``planted=`` is given, the Dataset also holds, per source of
candidates (``datamodels``, ``representation``), ``recall(source, n_candidates)`` — the share of
planted pairs whose training example is among its target's top ``c`` candidates — and
``precision(source, n_candidates)`` — the share of all candidates issued (top ``c`` of every
target) that are planted pairs — for ``c = 1..C``, and the precision–recall curve of each
global ranking (``pair_precision``, ``pair_recall``, ``average_precision``). Only planted pairs
whose target has a datamodel count (``n_planted_covered`` of ``n_planted``). Without a ground
truth the curves are simply absent.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs
from .neighbors import _weights, representation_nearest, top_k_rows

__all__ = ["candidate_curves", "leakage", "planted_pairs_of", "ranking_curve"]

BY = ("weight", "magnitude")
SCORES = {"weight": "weight", "magnitude": "|weight|"}


def _block_candidates(b, c: int, by: str):
    from ..backend import get_namespace, to_numpy

    xp = get_namespace(b)
    b = b.astype(xp.float64)
    bad = xp.isnan(b).any(axis=1)
    norm = xp.sqrt((xp.where(xp.isnan(b), 0.0, b) ** 2).sum(axis=1, keepdims=True))
    # an all-zero target has no candidates: divide by 1 and let top_k_rows pad it
    v = b / xp.where(norm > 0, norm, 1.0)
    idx, s = top_k_rows(v if by == "weight" else xp.abs(v), c, sign=1)
    signed = xp.where(idx >= 0, xp.take_along_axis(b, xp.where(idx >= 0, idx, 0), axis=1),
                      xp.nan)
    return to_numpy(idx), to_numpy(s), to_numpy(signed), to_numpy(norm[:, 0]), to_numpy(bad)


def candidate_curves(candidates: np.ndarray, targets: np.ndarray, pairs: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(recall[C], precision[C], n_covered)`` of planted ``pairs`` (int ``[P, 2]``: store
    target position, training position) among per-target candidate lists ``candidates``
    (int ``[T, C]``, −1 padding) of store targets ``targets`` (``[T]``): at ``c`` candidates,
    recall = planted pairs found in the top ``c`` / planted pairs whose target is in
    ``targets``; precision = those found / candidates issued (non-padding) in the top ``c``."""
    cand = np.asarray(candidates, np.int64)
    targets = np.asarray(targets, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    hit = _is_planted(np.broadcast_to(targets[:, None], cand.shape), cand, pairs)
    covered = int(np.isin(np.unique(pairs, axis=0)[:, 0], targets).sum())
    found = np.cumsum(hit.sum(axis=0))
    issued = np.cumsum((cand >= 0).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = found / covered if covered else np.full(found.shape, np.nan)
        precision = np.where(issued > 0, found / np.maximum(issued, 1), np.nan)
    return recall.astype(np.float64), precision.astype(np.float64), covered


def _is_planted(t: np.ndarray, j: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Elementwise: is (t, j) one of ``pairs``? (j = −1 never is.)"""
    if pairs.size == 0:
        return np.zeros(np.shape(t), bool)
    big = int(max(pairs[:, 1].max(), np.max(j, initial=0))) + 1
    want = np.unique(pairs[:, 0] * big + pairs[:, 1])
    return (np.asarray(j) >= 0) & np.isin(np.asarray(t) * big + np.asarray(j), want)


def ranking_curve(planted: np.ndarray, n_covered: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(precision, recall, average precision)`` of a global ranking whose ``i``-th pair is
    planted where ``planted[i]``: precision and recall of the first ``i + 1`` pairs, and the
    mean over the ``n_covered`` planted pairs of the precision at each (0 where a planted pair
    is never ranked)."""
    planted = np.asarray(planted, bool)
    hits = np.cumsum(planted)
    precision = hits / np.arange(1, planted.size + 1)
    if not n_covered:
        return precision, np.full(planted.size, np.nan), float("nan")
    return precision, hits / n_covered, float(precision[planted].sum() / n_covered)


def planted_pairs_of(ds: xr.Dataset) -> tuple[np.ndarray | None, str]:
    """``(pairs, source)``: the planted (target, training) pairs of a run store's job
    (its optional ``planted_pairs()`` hook), or ``(None, why not)``."""
    from ..store import jobspec

    spec = (ds.attrs.get("dmdask") or {}).get("job")
    if not isinstance(spec, dict) or not spec.get("path"):
        return None, "the store has no job"
    cls = jobspec.resolve_job_class(spec["path"])
    if not callable(getattr(cls, "planted_pairs", None)):
        return None, f"job {spec['path']} plants no pairs"
    job = jobspec.construct_job(spec["path"], spec.get("params") or {})
    desc = jobspec.validate_description(job.describe(), spec["path"])
    want = (ds.attrs.get("dmdask") or {}).get("fingerprint")
    if want and jobspec.fingerprint(desc) != want:
        raise InputError(f"job {spec['path']} now describes a different dataset than the "
                         "store was made with: its planted pairs are not the store's")
    return _check_pairs(job.planted_pairs(), ds.sizes["target"], ds.sizes["train"],
                        f"job {spec['path']}"), f"job {spec['path']}"


def _check_pairs(pairs, n_target: int, n_train: int, where: str) -> np.ndarray:
    p = np.asarray(pairs)
    if p.size == 0:
        return np.zeros((0, 2), np.int64)
    if p.ndim != 2 or p.shape[1] != 2 or not np.issubdtype(p.dtype, np.integer):
        raise InputError(f"{where}: planted pairs must be integers of shape [P, 2] (target, "
                         f"train), got {p.dtype} {p.shape}")
    if p[:, 0].min() < 0 or p[:, 0].max() >= n_target or p[:, 1].min() < 0 \
            or p[:, 1].max() >= n_train:
        raise InputError(f"{where}: planted pairs outside [0, {n_target}) × [0, {n_train})")
    return p.astype(np.int64)


def _global(cand: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Flat (target row, rank) order of the non-padding pairs, ``key`` ascending, ties by
    target row then rank."""
    ok = cand >= 0
    rows, ranks = np.nonzero(ok)
    order = np.lexsort((ranks, rows, key[ok]))
    return rows[order], ranks[order]


def leakage(store, datamodels, candidates: int = 10, *, by: str = "weight",
            representation: bool = False, n_models: int = 1, seed: int = 0, planted=None,
            client=None) -> xr.Dataset:
    """Leakage candidates per target of ``datamodels`` (a Dataset or Zarr path with
    ``weight(target, train)``) fitted on the run store ``store`` (a path, or None for
    datamodels alone), ranked ``by`` ``"weight"`` (largest positive) or ``"magnitude"``
    (largest ``|w|``): ``candidate``, ``score``, ``weight`` over ``(target, rank)`` and the
    global ranking over ``pair``; with ``representation`` the baseline's ``rep_*``; with a
    ground truth (``planted`` pairs, else the store job's ``planted_pairs()``) the recall and
    precision curves. See the module docstring."""
    import dask

    from ..backend import dask_to_backend
    from ..scheduling import compute

    c = int(candidates)
    if c < 1:
        raise InputError(f"candidates must be >= 1, got {c}")
    if by not in BY:
        raise InputError(f"by must be one of {', '.join(BY)}, got {by!r}")
    if representation and store is None:
        raise InputError("the representation baseline needs the run store (store=)")
    dm, w = _weights(datamodels)
    ds = None
    if store is not None:
        from ..counterfactual.inputs import open_inputs

        inp = open_inputs(store, dm)  # refuses datamodels of another store
        ds, dm = inp.ds, inp.dm
    w = dask_to_backend(w.rechunk({1: -1}))
    parts = compute([dask.delayed(_block_candidates)(b, c, by)
                     for b in w.to_delayed().ravel()], client=client)
    cand, score, weight, norm, bad = (np.concatenate([p[i] for p in parts]) for i in range(5))
    tnames = np.asarray(dm["target"].values, np.int64)
    if bad.any():
        raise InputError(f"the datamodels have NaN weights for {int(bad.sum())} of "
                         f"{bad.size} targets (first: target {tnames[np.argmax(bad)]})")
    tl = np.asarray(dm["train_label"].values) if "train_label" in dm.coords else None
    data = {
        "candidate": (("target", "rank"), cand,
                      {"description": "training indices, highest score first; -1: fewer "
                                      "weights of the kind ranked than candidates"}),
        "score": (("target", "rank"), score,
                  {"description": f"{SCORES[by]} / L2 norm of the target's weights"}),
        "weight": (("target", "rank"), weight),
        "weight_norm": ("target", norm),
    }
    rows, ranks = _global(cand, -score)
    data.update({"pair_target": ("pair", tnames[rows]), "pair_rank": ("pair", ranks),
                 "pair_candidate": ("pair", cand[rows, ranks]),
                 "pair_score": ("pair", score[rows, ranks])})
    if tl is not None:
        data["candidate_label"] = (("target", "rank"), np.where(cand >= 0, tl[cand], -1))
    coords = {"target": tnames, "rank": np.arange(c)}
    for name in ("target_label", "target_train_index"):
        if name in dm.coords:
            coords[name] = ("target", np.asarray(dm[name].values))
    attrs = {"dmdask_leakage": 1, "candidates": c, "by": by,
             "score": f"{SCORES[by]} / L2 norm of the target's weight vector"}
    rep = None
    if representation:
        near, dist, path = representation_nearest(store, dm, c, n_models=n_models, seed=seed)
        rep = near
        data["rep_candidate"] = (("target", "rank"), near,
                                 {"description": "training indices nearest in the "
                                                 "penultimate layer of the store's job"})
        data["rep_distance"] = (("target", "rank"), dist)
        if tl is not None:
            data["rep_label"] = (("target", "rank"), tl[near])
        rrows, rranks = _global(near, dist)
        data.update({"rep_pair_target": ("rep_pair", tnames[rrows]),
                     "rep_pair_rank": ("rep_pair", rranks),
                     "rep_pair_candidate": ("rep_pair", near[rrows, rranks]),
                     "rep_pair_distance": ("rep_pair", dist[rrows, rranks])})
        attrs.update({"representation_models": n_models, "store": path})
    source = "given"
    if planted is not None:
        n_target = ds.sizes["target"] if ds is not None else int(tnames.max()) + 1
        n_train = w.shape[1]
        truth = _check_pairs(planted, n_target, n_train, "planted=")
    elif ds is not None:
        truth, source = planted_pairs_of(ds)
    else:
        truth = None
    if truth is not None:
        _add_truth(data, coords, attrs, truth, source, tnames, cand, rows, ranks, rep,
                   (rrows, rranks) if rep is not None else None)
    out = xr.Dataset(data, coords=coords)
    out.attrs.update(portable_attrs(attrs))
    return out


def _add_truth(data, coords, attrs, truth, source, tnames, cand, rows, ranks, rep, rep_order):
    lists = {"datamodels": (cand, rows, ranks, "pair")}
    if rep is not None:
        lists["representation"] = (rep, *rep_order, "rep_pair")
    rec, prec, aps = [], [], []
    covered = 0
    for method, (cl, r, k, dim) in lists.items():
        recall, precision, covered = candidate_curves(cl, tnames, truth)
        rec.append(recall)
        prec.append(precision)
        hit = _is_planted(np.broadcast_to(tnames[:, None], cl.shape), cl, truth)
        pfx = "" if method == "datamodels" else "rep_"
        data[f"{pfx}planted"] = (("target", "rank"), hit)
        flags = hit[r, k]
        p_curve, r_curve, ap = ranking_curve(flags, covered)
        data[f"{pfx}pair_planted"] = (dim, flags)
        data[f"{pfx}pair_precision"] = (dim, p_curve)
        data[f"{pfx}pair_recall"] = (dim, r_curve)
        aps.append(ap)
    methods = list(lists)
    coords["source"] = methods  # not "method": Dataset.sel has a method= argument
    coords["n_candidates"] = np.arange(1, cand.shape[1] + 1)
    data["recall"] = (("source", "n_candidates"), np.array(rec),
                      {"description": "share of planted pairs among their target's top "
                                      "n_candidates"})
    data["precision"] = (("source", "n_candidates"), np.array(prec),
                         {"description": "share of the candidates issued that are planted"})
    data["average_precision"] = ("source", np.array(aps))
    data["planted_target"] = ("planted", truth[:, 0])
    data["planted_train"] = ("planted", truth[:, 1])
    attrs.update({"n_planted": int(len(truth)), "n_planted_covered": covered,
                  "planted_source": source})
