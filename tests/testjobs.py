"""Jobs that live outside the dmdask package, used by the tests.

``RidgeDigits`` is real training on real data: a one-vs-rest ridge classifier on
scikit-learn's digits, solved in closed form, so it is deterministic given the mask and
cheap. ``delay`` slows each block down so tests can kill workers mid-training; ``log`` names a
file that gets one line per trained model (its seed), so tests can count trainings.
"""

from __future__ import annotations

import os
import time

import numpy as np


def _digits(n_target: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.float64) / 16.0
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    tgt, tr = perm[:n_target], perm[n_target:]
    return x[tr], d.target[tr], x[tgt], d.target[tgt], tr, tgt


class RidgeDigits:
    """One-vs-rest ridge classifier on digits, closed form: margins deterministic per mask."""

    supports_train_labels = True
    preferred_block_size = 16

    def __init__(self, n_train: int = 200, n_target: int = 40, l2: float = 1.0,
                 delay: float = 0.0, nan_models: int = 0, log: str | None = None):
        xtr, ytr, xte, yte, tr, tgt = _digits(n_target)
        self.x, self.y = xtr[:n_train], ytr[:n_train]
        self.xt, self.yt = xte, yte
        self.ids = (tr[:n_train], tgt)
        self.l2, self.delay, self.nan_models, self.log = l2, delay, nan_models, log

    def describe(self) -> dict:
        return {"train_label": self.y, "target_label": self.yt,
                "target_train_index": np.full(len(self.yt), -1), "train_id": self.ids[0],
                "target_id": self.ids[1]}

    def train_block(self, masks, seeds, train_labels=None):
        if self.delay:
            time.sleep(self.delay)
        xa = np.hstack([self.x, np.ones((len(self.x), 1))])
        xt = np.hstack([self.xt, np.ones((len(self.xt), 1))])
        out = np.empty((len(masks), len(self.yt)), np.float32)
        for b, m in enumerate(masks):
            y = self.y if train_labels is None else train_labels[b]
            yy = -np.ones((len(y), 10))
            yy[np.arange(len(y)), y] = 1.0
            a = xa[m]
            w = np.linalg.solve(a.T @ a + self.l2 * np.eye(a.shape[1]), a.T @ yy[m])
            z = xt @ w
            zc = z[np.arange(len(self.yt)), self.yt]
            z[np.arange(len(self.yt)), self.yt] = -np.inf
            out[b] = zc - z.max(axis=1)
        if self.nan_models:
            out[: self.nan_models, 0] = np.nan
        if self.log:
            with open(self.log, "a") as f:  # one write per block: lines of blocks never mix
                f.write("".join(f"{int(s)}\n" for s in seeds))
        return out


class BrokenRidge(RidgeDigits):
    """Describes its data like RidgeDigits but cannot train (a bug in the learner)."""

    def train_block(self, masks, seeds, train_labels=None):
        raise RuntimeError("learner bug: matrices do not align")


class Boom:
    """Not a job: constructing it has a side effect (a file appears)."""

    def __init__(self, path: str = "/tmp/dmdask-boom"):
        with open(path, "w") as f:
            f.write("constructed")
        os.environ["DMDASK_BOOM"] = "1"


class Additive:
    """A synthetic learner whose margins are exactly additive in the mask: margin = b + mask @ W
    (+ ``noise``·N(0, 1) drawn from the model's seed). ``W`` has ``zeros`` exact zeros per target.
    The planted ``weights()``/``bias()`` are the true datamodels."""

    preferred_block_size = 32

    def __init__(self, n_train: int = 60, n_target: int = 6, noise: float = 0.0,
                 zeros: int = 20, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.W = rng.normal(0.0, 1.0, (n_target, n_train)) / np.sqrt(n_train)
        for t in range(n_target):
            self.W[t, rng.choice(n_train, size=zeros, replace=False)] = 0.0
        self.b = rng.normal(0.0, 1.0, n_target)
        self.noise = float(noise)
        self.y = np.arange(n_train) % 3
        self.yt = np.arange(n_target) % 3

    def weights(self) -> np.ndarray:
        return self.W.copy()

    def bias(self) -> np.ndarray:
        return self.b.copy()

    def describe(self) -> dict:
        return {"train_label": self.y, "target_label": self.yt,
                "target_train_index": np.full(len(self.yt), -1)}

    def train_block(self, masks, seeds, train_labels=None):
        out = self.b[None] + np.asarray(masks, np.float64) @ self.W.T
        for i, s in enumerate(seeds):
            if self.noise:
                out[i] += self.noise * np.random.default_rng(int(s)).normal(size=out.shape[1])
        return out.astype(np.float32)
