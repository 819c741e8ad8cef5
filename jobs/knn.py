"""A distance-weighted k-nearest-neighbour classifier on scikit-learn's digits: a memorising
learner whose outputs saturate (issue 15, item 8).

The data are those of :mod:`jobs.digits` (pixels / 16, the same fixed split), cut smaller:
``n_train`` training examples and ``n_target`` targets, each drawn by class in proportion to
the class sizes (``numpy.random.RandomState(seed)``, sorted), from the digits job's 1,297
training and 500 test examples respectively.

A model is the classifier on the training examples of its mask: a target's class scores are
the inverse-distance weights of its ``k`` nearest training examples in the subset, summed per
class and normalised (scikit-learn's ``KNeighborsClassifier(weights="distance")``), and its
margin is the correct class's score minus the best other class's. Where all ``k`` neighbours
share the target's class the margin is exactly 1.0, and a target takes only as many distinct
margins as its neighbourhoods have distinct compositions: a saturated, heavily tied output.
Deterministic given the mask (the seed is ignored).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ._common import check_block
from .digits import N_CLASSES, load_split, stratified_split

__all__ = ["DigitsKNN", "knn_margins"]


def knn_margins(dist: np.ndarray, train_label: np.ndarray, target_label: np.ndarray,
                masks: np.ndarray, k: int = 5, n_classes: int = N_CLASSES) -> np.ndarray:
    """Correct-class margins float32 [B, n_target] of distance-weighted k-NN models.

    ``dist`` [n_target, n_train] holds the distances, ``train_label`` [B, n_train] (or
    [n_train]) the labels each model trains on, ``masks`` [B, n_train] bool the subsets (each
    with at least ``k`` examples). A neighbour at distance 0 takes all the weight (shared
    equally among such neighbours), as in scikit-learn."""
    masks = np.asarray(masks, bool)
    B = masks.shape[0]
    nt = dist.shape[0]
    labels = np.broadcast_to(np.asarray(train_label, np.int64), masks.shape)
    out = np.empty((B, nt), np.float32)
    rows = np.arange(nt)[:, None]
    for b in range(B):
        cols = np.flatnonzero(masks[b])
        if cols.size < k:
            raise ValueError(f"model {b}: {cols.size} training examples, k-NN needs {k}")
        D = dist[:, cols]
        nn = np.argpartition(D, k - 1, axis=1)[:, :k]
        dn = D[rows, nn]
        zero = dn == 0
        w = np.where(zero.any(axis=1, keepdims=True), zero.astype(np.float64),
                     1.0 / np.where(zero, 1.0, dn))
        lab = labels[b, cols][nn]
        score = np.zeros((nt, n_classes))
        np.add.at(score, (np.broadcast_to(rows, lab.shape), lab), w)
        score /= score.sum(axis=1, keepdims=True)
        correct = score[rows[:, 0], target_label]
        score[rows[:, 0], target_label] = -np.inf
        out[b] = correct - score.max(axis=1)
    return out


@lru_cache(maxsize=4)
def _data(n_train: int, n_target: int, seed: int):
    s = load_split()
    _, tr = stratified_split(s.y_train, n_train, seed)
    _, te = stratified_split(s.y_test, n_target, seed)
    train_id, target_id = s.train_id[tr], s.test_id[te]
    x_tr, x_te = s.x[train_id], s.x[target_id]
    sq = (x_te**2).sum(1)[:, None] + (x_tr**2).sum(1)[None, :] - 2 * x_te @ x_tr.T
    dist = np.sqrt(np.maximum(sq, 0.0))
    for a in (train_id, target_id, dist):
        a.setflags(write=False)
    return train_id, target_id, dist


class DigitsKNN:
    """Distance-weighted ``k``-NN on ``n_train`` digits training examples, scored on
    ``n_target`` digits test examples (see the module docstring)."""

    supports_train_labels = True
    preferred_block_size = 256

    def __init__(self, k: int = 5, n_train: int = 700, n_target: int = 300, seed: int = 0):
        s = load_split()
        if not 1 <= int(k) <= int(n_train):
            raise ValueError(f"k must be in [1, n_train], got {k}")
        if not 1 <= int(n_train) <= s.train_id.size or not 1 <= int(n_target) <= s.test_id.size:
            raise ValueError(f"n_train must be in [1, {s.train_id.size}] and n_target in "
                             f"[1, {s.test_id.size}]")
        self.k = int(k)
        self.train_id, self.target_id, self.dist = _data(int(n_train), int(n_target), int(seed))
        self.y_train = s.y[self.train_id]
        self.y_target = s.y[self.target_id]
        self.n_train, self.n_target = self.train_id.size, self.target_id.size

    def describe(self) -> dict:
        return {
            "train_label": self.y_train.copy(),
            "target_label": self.y_target.copy(),
            "target_train_index": np.full(self.n_target, -1, np.int64),
            "train_id": self.train_id.copy(),
            "target_id": self.target_id.copy(),
        }

    def train_block(self, masks, seeds, train_labels=None) -> np.ndarray:
        masks, _, labels = check_block(masks, seeds, train_labels, self.y_train, N_CLASSES)
        return knn_margins(self.dist, labels, self.y_target, masks, self.k)
