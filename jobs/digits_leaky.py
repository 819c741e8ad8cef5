"""The digits jobs with planted train–test leakage: a ground truth for ``dmdask leakage``.

``n_planted`` of the 500 target (test) images, drawn by
``numpy.random.RandomState(plant_seed)``, each get ``copies`` near-duplicates **added** to the
training set (after the 1,297 original training examples, which are kept): the target's 8×8
image (0..16 intensities), shifted by one pixel in a random direction (up, down, left or
right, zero filled) with probability ``shift``, plus independent uniform pixel noise in
``[-noise, +noise]`` intensity units, clipped to ``[0, 16]``. The copy keeps the target's
label. So every planted image lies within ``noise`` per pixel (clipping only brings it
closer) of its target or of a one-pixel shift of it.

The features are built as in :mod:`jobs.digits` (pixels / 16, centred with the mean of the
whole training set, planted copies included). ``describe()["train_id"]`` gives the planted
copies the ids ``1797, 1798, ...`` (past the end of ``load_digits()``).

``planted_pairs()`` returns the planted (target position, training position) pairs, int64
``[n_planted · copies, 2]`` in the store's ``target``/``train`` axes: the same for the same
parameters on any machine (``RandomState`` streams are stable across NumPy versions).
:func:`dmdask.similarity.leakage` reads it through the store's job to score its candidates.

``DigitsLeakyMLP``
    :class:`jobs.digits.DigitsMLP` on the leaky training set (penultimate layer: the hidden
    ReLU units, so the representation baseline is a trained network's).
``DigitsLeakyLogistic``
    :class:`jobs.digits.DigitsLogistic` on the leaky training set (deterministic, fast; its
    "representation" is the pixels themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ._common import check_examples
from .digits import DigitsLogistic, DigitsMLP, DigitsSplit, load_split

__all__ = ["DigitsLeakyLogistic", "DigitsLeakyMLP", "LeakySplit", "plant"]

_SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (rows, columns): up, down, left, right


@dataclass(frozen=True)
class LeakySplit(DigitsSplit):
    """A :class:`jobs.digits.DigitsSplit` whose training set ends with planted copies."""

    images: np.ndarray = None  # float64 [1797 + P, 8, 8], 0..16: the originals, then copies
    pairs: np.ndarray = None  # int64 [P, 2]: (target position, training position)
    shifts: np.ndarray = None  # int64 [P, 2]: the (row, column) shift of each copy


def shift_image(img: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``img`` moved by ``dr`` rows and ``dc`` columns, zero filled (no wrap-around)."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dr, 0):h + min(dr, 0), max(dc, 0):w + min(dc, 0)] = \
        img[max(-dr, 0):h + min(-dr, 0), max(-dc, 0):w + min(-dc, 0)]
    return out


@lru_cache(maxsize=8)
def plant(n_planted: int = 50, copies: int = 1, noise: float = 1.0, shift: float = 0.5,
          plant_seed: int = 0) -> LeakySplit:
    """The digits split with ``copies`` near-duplicates of ``n_planted`` test images added to
    the training set (see the module docstring); cached per parameters, arrays read-only."""
    from sklearn.datasets import load_digits

    base = load_split()
    n_test = base.test_id.size
    n_planted, copies = int(n_planted), int(copies)
    if not 0 <= n_planted <= n_test:
        raise ValueError(f"n_planted must be in [0, {n_test}], got {n_planted}")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if not 0.0 <= float(noise) <= 16.0:
        raise ValueError(f"noise must be in [0, 16] intensity units, got {noise}")
    if not 0.0 <= float(shift) <= 1.0:
        raise ValueError(f"shift must be a probability in [0, 1], got {shift}")
    rs = np.random.RandomState(int(plant_seed))
    targets = np.sort(rs.choice(n_test, size=n_planted, replace=False)).astype(np.int64)
    raw = np.asarray(load_digits().images, np.float64)
    n_all, n_train = raw.shape[0], base.train_id.size
    planted, pairs, shifts = [], [], []
    for t in targets:
        img = raw[base.test_id[t]]
        for _ in range(copies):
            dr, dc = _SHIFTS[rs.randint(4)] if rs.random_sample() < shift else (0, 0)
            copy = shift_image(img, dr, dc) + rs.uniform(-noise, noise, size=img.shape)
            planted.append(np.clip(copy, 0.0, 16.0))
            pairs.append((t, n_train + len(pairs)))
            shifts.append((dr, dc))
    p = len(planted)
    images = np.concatenate([raw, np.asarray(planted).reshape(p, 8, 8)])
    y = np.concatenate([base.y, np.repeat(base.y[base.test_id[targets]], copies)])
    train_id = np.concatenate([base.train_id, n_all + np.arange(p)]).astype(np.int64)
    x = images.reshape(-1, 64) / 16.0
    x = x - x[train_id].mean(axis=0)
    pairs = np.asarray(pairs, np.int64).reshape(p, 2)
    shifts = np.asarray(shifts, np.int64).reshape(p, 2)
    for a in (x, y, train_id, images, pairs, shifts):
        a.setflags(write=False)
    return LeakySplit(x=x, y=y, train_id=train_id, test_id=base.test_id, images=images,
                      pairs=pairs, shifts=shifts)


class _Leaky:
    """Swaps the digits split for the planted one; the rest is the parent job's."""

    def _plant(self, n_planted, copies, noise, shift, seed):
        self.n_planted, self.copies = int(n_planted), int(copies)
        self.noise, self.shift, self.plant_seed = float(noise), float(shift), int(seed)
        split = plant(self.n_planted, self.copies, self.noise, self.shift, self.plant_seed)
        # the targets are unchanged (test images first, then the first training examples,
        # which come before the copies): only the training side grows
        self.split = split
        self.n_train = split.train_id.size

    def planted_pairs(self) -> np.ndarray:
        """The planted (target position, training position) pairs: int64 ``[P, 2]``."""
        return np.array(self.split.pairs, np.int64)

    def examples(self, which: str, index) -> np.ndarray:
        """8×8 uint8 images (0..255) of training examples (planted copies included) or
        targets at store positions ``index``."""
        idx = check_examples(which, index, self.n_train, self.n_target)
        ids = (self.split.train_id if which == "train" else self._target_id)[idx]
        return np.rint(self.split.images[ids] * (255.0 / 16.0)).astype(np.uint8)


class DigitsLeakyMLP(_Leaky, DigitsMLP):
    """:class:`jobs.digits.DigitsMLP` trained on the digits with planted near-duplicates of
    ``n_planted`` test images (``copies``, ``noise``, ``shift``, ``plant_seed``: see
    :func:`plant`); the other parameters are DigitsMLP's."""

    def __init__(self, n_planted: int = 50, copies: int = 1, noise: float = 1.0,
                 shift: float = 0.5, plant_seed: int = 0, hidden: int = 64, epochs: int = 8,
                 lr: float = 0.4, momentum: float = 0.9, batch_size: int = 32,
                 weight_decay: float = 3e-3, warmup: float = 0.2, train_targets: int = 0,
                 threads: int | None = None):
        super().__init__(hidden=hidden, epochs=epochs, lr=lr, momentum=momentum,
                         batch_size=batch_size, weight_decay=weight_decay, warmup=warmup,
                         train_targets=train_targets, threads=threads)
        self._plant(n_planted, copies, noise, shift, plant_seed)


class DigitsLeakyLogistic(_Leaky, DigitsLogistic):
    """:class:`jobs.digits.DigitsLogistic` on the digits with planted near-duplicates (see
    :func:`plant`); the other parameters are DigitsLogistic's."""

    def __init__(self, n_planted: int = 50, copies: int = 1, noise: float = 1.0,
                 shift: float = 0.5, plant_seed: int = 0, l2: float = 1e-3,
                 tol: float = 1e-10, max_iter: int = 100, train_targets: int = 0,
                 threads: int | None = None):
        super().__init__(l2=l2, tol=tol, max_iter=max_iter, train_targets=train_targets,
                         threads=threads)
        self._plant(n_planted, copies, noise, shift, plant_seed)
