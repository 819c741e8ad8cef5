"""Jobs on scikit-learn's bundled 8x8 digits (1,797 images, 10 classes, no download).

The data (:func:`load_split`, cached per process) is split once, deterministically, into

* **1,297 training examples** -- the examples datamodels attribute to -- and
* **500 target (test) examples**, stratified by class (48 to 51 of each digit, in
  proportion to the class sizes), chosen by ``numpy.random.RandomState(0)`` permutations per class (the legacy generator,
  whose streams NumPy keeps stable across versions, so the split never moves).

Both id arrays are sorted; ``train_id``/``target_id`` are indices into
``sklearn.datasets.load_digits()``. Features are the 64 pixel intensities divided by 16 and
centred with the mean of the full training set (the same for every model).

``DigitsMLP``
    A 64-H-10 ReLU MLP trained by minibatch SGD with momentum, many models at once as one
    batched torch computation (:mod:`jobs._batched_mlp`). The embedded default job.
``DigitsLogistic``
    L2-regularised multinomial logistic regression solved to a gradient norm of 1e-10 by
    batched Newton-CG in float64 (:mod:`jobs._batched_logistic`); deterministic given the mask
    (the seed is ignored). The convex job for exactness checks.

Both return the **correct-class margin** ``z_y - max_{c != y} z_c`` of every target, measured
against the targets' true labels (also when ``train_labels`` flips what the models train on).
``train_targets=k`` appends the first ``k`` training examples to the targets (after the 500
test targets) with their ``target_train_index`` set.

Both implement the optional ``examples(which, index)`` hook of :mod:`dmdask.store.jobspec`
(the images the report draws) and the optional **model hooks** of :mod:`dmdask.jobspec` (``model_inputs``,
``train_params``, ``features``, ``head``, ``last_layer``, ``l2_penalty``; ``DigitsMLP`` also
``train_checkpoints``) used by the model-based estimators (:mod:`dmdask.analysis.estimators.model`).
For ``DigitsLogistic`` the "penultimate features" are the inputs themselves and the last
layer is the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ._common import check_block, check_examples, margins_from_logits, torch_threads

N_CLASSES = 10
N_TEST = 500
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed train/target split of the digits and its features (arrays are read-only)."""

    x: np.ndarray  # float64 [1797, 64]: pixels / 16, centred with the training-set mean
    y: np.ndarray  # int64 [1797]
    train_id: np.ndarray  # int64 [1297], sorted
    test_id: np.ndarray  # int64 [500], sorted

    @property
    def x_train(self) -> np.ndarray:
        return self.x[self.train_id]

    @property
    def y_train(self) -> np.ndarray:
        return self.y[self.train_id]

    @property
    def x_test(self) -> np.ndarray:
        return self.x[self.test_id]

    @property
    def y_test(self) -> np.ndarray:
        return self.y[self.test_id]


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with ``n_test`` test examples spread over the classes in
    proportion to their sizes (largest remainders), each class permuted by ``RandomState``."""
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    quota = n_test * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    extra = n_test - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    rs = np.random.RandomState(seed)
    test = []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(y == c)
        test.append(idx[rs.permutation(idx.size)[:k]])
    test = np.sort(np.concatenate(test)).astype(np.int64)
    train = np.setdiff1d(np.arange(y.size), test).astype(np.int64)
    return train, test


@lru_cache(maxsize=1)
def load_split() -> DigitsSplit:
    """Load the digits, split them and scale the features (once per process)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    y = np.asarray(data.target, np.int64)
    train_id, test_id = stratified_split(y, N_TEST, SPLIT_SEED)
    x = np.asarray(data.data, np.float64) / 16.0
    x = x - x[train_id].mean(axis=0)
    for a in (x, y, train_id, test_id):
        a.setflags(write=False)
    return DigitsSplit(x=x, y=y, train_id=train_id, test_id=test_id)



class _DigitsJob:
    """Shared data handling: targets, description and argument checks."""

    #: trains on relabelled examples (``train_labels``): label-flip counterfactuals work
    supports_train_labels = True

    def __init__(self, train_targets: int = 0, threads: int | None = None):
        split = load_split()
        n_train = split.train_id.size
        train_targets = int(train_targets)
        if not 0 <= train_targets <= n_train:
            raise ValueError(f"train_targets must be in [0, {n_train}], got {train_targets}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be None or >= 1, got {threads}")
        self.train_targets = train_targets
        self.threads = None if threads is None else int(threads)
        self.split = split
        tti = np.concatenate([np.full(split.test_id.size, -1, np.int64),
                              np.arange(train_targets, dtype=np.int64)])
        self._target_train_index = tti
        self._target_id = np.concatenate([split.test_id, split.train_id[:train_targets]])
        self.n_train = n_train
        self.n_target = self._target_id.size

    # -- data -------------------------------------------------------------------------------
    @property
    def x_target(self) -> np.ndarray:
        return self.split.x[self._target_id]

    @property
    def y_target(self) -> np.ndarray:
        return self.split.y[self._target_id]

    def describe(self) -> dict:
        s = self.split
        return {
            "train_label": s.y_train.copy(),
            "target_label": self.y_target.copy(),
            "target_train_index": self._target_train_index.copy(),
            "train_id": s.train_id.copy(),
            "target_id": self._target_id.copy(),
        }

    def _check(self, masks, seeds, train_labels):
        return check_block(masks, seeds, train_labels, self.split.y_train, N_CLASSES)

    def examples(self, which: str, index) -> np.ndarray:
        """The 8×8 images of training examples or targets at store positions ``index``:
        uint8 ``[n, 8, 8]``, the digits' 0..16 intensities scaled to 0..255 (ink is high)."""
        from sklearn.datasets import load_digits

        idx = check_examples(which, index, self.n_train, self.n_target)
        ids = (self.split.train_id if which == "train" else self._target_id)[idx]
        raw = np.asarray(load_digits().images, np.float64)[ids]
        return np.rint(raw * (255.0 / 16.0)).astype(np.uint8)

    # -- model hooks (dmdask.jobspec) -------------------------------------------------------
    _dtype = "float32"

    def model_inputs(self) -> dict:
        """Torch tensors ``x_train``/``x_target`` (the features the models see, in the dtype
        they train in) and ``y_train``/``y_target`` (int64 labels)."""
        import torch

        s, dt = self.split, getattr(torch, self._dtype)
        return {"x_train": torch.tensor(s.x_train, dtype=dt),
                "y_train": torch.tensor(s.y_train, dtype=torch.int64),
                "x_target": torch.tensor(self.x_target, dtype=dt),
                "y_target": torch.tensor(self.y_target, dtype=torch.int64)}


class DigitsMLP(_DigitsJob):
    """A 64-``hidden``-10 ReLU MLP on the digits, ``B`` models trained as one batched
    torch computation on the CPU.

    Each model starts from its own random init (He/LeCun normal, from ``seeds[b]``) and runs
    ``epochs`` passes over its own subset, reshuffled every epoch, in minibatches of at most
    ``batch_size`` (the subset is cut into ``ceil(n_b / batch_size)`` near-equal batches), SGD
    with heavy-ball ``momentum``, ``weight_decay`` on the weights and a one-cycle learning
    rate (linear warm-up to ``lr`` over the first ``warmup`` of the steps, linear decay to 0).

    Defaults (tuned on a 2-core CPU, see ``benchmarks/bench_jobs.py``): about 96.6% mean test
    accuracy at alpha = 0.5 and 97.8% on the full training set, at about 650 models/s
    (block of 256, alpha = 0.5, 2 threads). More epochs buy little (12: +0.05% at 0.7x the
    speed); ``hidden=32`` runs ~1.6x faster at about -0.3%, ``epochs=6`` ~1.3x at -0.25%.

    A model's margins are a pure function of its (mask row, seed, label row): every tensor a
    model touches has a shape that does not depend on the rest of the block, so it gets the
    same margins bit for bit in any block, of any size, at any position (tested, torch 2.13
    with MKL; across torch thread counts too on the machines we tried, though that is not
    promised). See :mod:`jobs._batched_mlp`.

    ``threads`` sets ``torch.set_num_threads`` for the duration of each call (and restores
    it): a process-wide setting, so leave it None when several threads of one process train
    at once.
    """

    preferred_block_size = 256

    def __init__(self, hidden: int = 64, epochs: int = 8, lr: float = 0.4,
                 momentum: float = 0.9, batch_size: int = 32, weight_decay: float = 3e-3,
                 warmup: float = 0.2, train_targets: int = 0, threads: int | None = None):
        super().__init__(train_targets=train_targets, threads=threads)
        if int(hidden) < 1 or int(epochs) < 0 or int(batch_size) < 1:
            raise ValueError("hidden and batch_size must be >= 1 and epochs >= 0")
        if not 0.0 <= float(warmup) < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {warmup}")
        self.hidden, self.epochs, self.batch_size = int(hidden), int(epochs), int(batch_size)
        self.lr, self.momentum = float(lr), float(momentum)
        self.weight_decay, self.warmup = float(weight_decay), float(warmup)
        self._tensors = None

    def _data(self):
        if self._tensors is None:
            import torch

            self._tensors = (torch.tensor(self.split.x_train, dtype=torch.float32),
                             torch.tensor(self.x_target, dtype=torch.float32))
        return self._tensors

    def train_logits(self, masks, seeds, train_labels=None):
        """Logits of the ``B`` trained models on the targets: float32 numpy [B, n_target, 10]."""
        from ._batched_mlp import train_mlp_block

        masks, seeds, labels = self._check(masks, seeds, train_labels)
        x_train, x_target = self._data()
        with torch_threads(self.threads):
            logits = train_mlp_block(
                x_train, masks, seeds, labels, x_target, n_classes=N_CLASSES,
                hidden=self.hidden, epochs=self.epochs, lr=self.lr, momentum=self.momentum,
                batch_size=self.batch_size, weight_decay=self.weight_decay, warmup=self.warmup)
        return logits.transpose(1, 2).numpy()

    def train_block(self, masks, seeds, train_labels=None) -> np.ndarray:
        return margins_from_logits(self.train_logits(masks, seeds, train_labels), self.y_target)

    # -- model hooks ------------------------------------------------------------------------
    last_layer = ("W2", "b2")

    def _train_state(self, masks, seeds, train_labels, checkpoints: bool) -> dict:
        from ._batched_mlp import train_mlp_block

        masks, seeds, labels = self._check(masks, seeds, train_labels)
        x_train, x_target = self._data()
        with torch_threads(self.threads):
            _, state = train_mlp_block(
                x_train, masks, seeds, labels, x_target, n_classes=N_CLASSES,
                hidden=self.hidden, epochs=self.epochs, lr=self.lr, momentum=self.momentum,
                batch_size=self.batch_size, weight_decay=self.weight_decay, warmup=self.warmup,
                return_state=True, checkpoints=checkpoints)
        return state

    def train_params(self, masks, seeds, train_labels=None) -> dict:
        """Final parameters of the ``B`` models that :meth:`train_block` trains (the same
        training, bit for bit): ``W1`` [B, 65, H] (last row: hidden bias), ``W2`` [B, 10, H],
        ``b2`` [B, 10], float32 tensors."""
        return self._train_state(masks, seeds, train_labels, False)["params"]

    def train_checkpoints(self, masks, seeds, train_labels=None):
        """Parameters at the end of every epoch (a list of ``epochs`` dicts as in
        :meth:`train_params`; the last is the final model) and ``lr`` float64 [B, epochs]:
        the mean learning rate of each model's steps in that epoch (TracIn's η for the
        interval the checkpoint closes; heavy-ball momentum scales every step by about
        1 / (1 - momentum) more, the same factor for all)."""
        st = self._train_state(masks, seeds, train_labels, True)
        return st["checkpoints"], st["epoch_lr"]

    @staticmethod
    def features(params: dict, x):
        """Penultimate (post-ReLU hidden) activations [m, H] of one model."""
        return (x @ params["W1"][:-1] + params["W1"][-1]).relu()

    @staticmethod
    def head(params: dict, h):
        """Logits [m, 10] of one model from its penultimate activations ``h``."""
        return h @ params["W2"].T + params["b2"]

    def l2_penalty(self, params: dict) -> dict:
        """Per-entry coefficient c of the training objective's ``(c/2)·θ²`` (weight decay on
        the weights, not on the biases)."""
        import torch

        pen = {k: torch.full_like(v, self.weight_decay) for k, v in params.items()}
        pen["W1"][..., -1, :] = 0.0
        pen["b2"].zero_()
        return pen


class DigitsLogistic(_DigitsJob):
    """L2-regularised multinomial logistic regression on the digits, solved to high precision.

    Model ``b`` minimises ``mean_{i in S_b} CE(x_i, y_i) + (l2 / 2) * ||W||_F^2`` over the
    weights ``W`` [64, 10] and an unpenalised intercept [10] -- scikit-learn's
    ``LogisticRegression(C=1 / (l2 * n_b))`` -- by batched Newton-CG in float64 until the
    gradient norm is at most ``tol`` (or ``max_iter`` Newton steps). Deterministic given the
    mask (and training labels); ``seeds`` are accepted and ignored. ``l2 = 1e-3`` gives about
    95.7% mean test accuracy at alpha = 0.5 and 96.6% on the full training set (``l2 = 1e-2``
    would give about 94%, below the 95% the tests ask of a full-data fit). About 8 Newton and
    110 CG iterations per model at alpha = 0.5; around 200 models/s on 2 CPU cores.
    """

    preferred_block_size = 64

    def __init__(self, l2: float = 1e-3, tol: float = 1e-10, max_iter: int = 100,
                 train_targets: int = 0, threads: int | None = None):
        super().__init__(train_targets=train_targets, threads=threads)
        if not float(l2) > 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.l2, self.tol, self.max_iter = float(l2), float(tol), int(max_iter)
        self._x = None

    def fit(self, masks, train_labels=None, return_info: bool = False):
        """Solve the ``B`` models; returns weights float64 numpy [B, 65, 10] (row 64 is the
        intercept, centred to sum 0 over classes), and with ``return_info`` a dict of final
        gradient norms and iteration counts."""
        import torch

        from ._batched_logistic import fit_logistic_block

        masks, _, labels = self._check(masks, np.zeros(len(np.asarray(masks)), np.uint64),
                                       train_labels)
        if self._x is None:
            self._x = torch.tensor(self.split.x_train, dtype=torch.float64)
        with torch_threads(self.threads):
            out = fit_logistic_block(self._x, masks, labels, n_classes=N_CLASSES, l2=self.l2,
                                     tol=self.tol, max_iter=self.max_iter,
                                     return_info=return_info)
        if return_info:
            W, info = out
            return W.numpy(), info
        return out.numpy()

    def logits(self, weights: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """Logits float64 [B, m, 10] of fitted ``weights`` on ``x`` (default: the targets)."""
        x = self.x_target if x is None else np.asarray(x, np.float64)
        return np.einsum("md,bdc->bmc", x, weights[:, :-1]) + weights[:, None, -1]

    def train_logits(self, masks, seeds, train_labels=None) -> np.ndarray:
        """Logits float64 [B, n_target, 10] of the fitted models on the targets."""
        masks, _, labels = self._check(masks, seeds, train_labels)
        return self.logits(self.fit(masks, labels))

    def train_block(self, masks, seeds, train_labels=None) -> np.ndarray:
        return margins_from_logits(self.train_logits(masks, seeds, train_labels), self.y_target)

    # -- model hooks: a linear model, so the features are the inputs and the last layer is
    # everything (no checkpoints: Newton-CG has no learning rate to weight them by)
    _dtype = "float64"
    last_layer = ("W",)

    def train_params(self, masks, seeds, train_labels=None) -> dict:
        """``W`` float64 tensor [B, 65, 10] (row 64: intercept) of the fitted models."""
        import torch

        masks, _, labels = self._check(masks, seeds, train_labels)
        return {"W": torch.from_numpy(self.fit(masks, labels))}

    @staticmethod
    def features(params: dict, x):
        """The inputs: a linear model's "penultimate layer"."""
        return x

    @staticmethod
    def head(params: dict, h):
        """Logits [m, 10] of one model."""
        return h @ params["W"][:-1] + params["W"][-1]

    def l2_penalty(self, params: dict) -> dict:
        """``l2`` on the weights, 0 on the intercept row."""
        import torch

        pen = torch.full_like(params["W"], self.l2)
        pen[..., -1, :] = 0.0
        return {"W": pen}




class DigitsRidge(_DigitsJob):
    """One-vs-rest ridge regression on the digits, in closed form: the least-squares job.

    Model ``b`` solves ``(X_bᵀX_b + l2·D)β = X_bᵀY_b`` over its subset, ``X`` the 64 pixel
    features and a ones column (``D`` = identity with 0 for the intercept: unpenalised),
    ``Y`` the one-hot labels coded ±1; logits ``[x, 1] @ β``. Deterministic given the mask;
    ``seeds`` are ignored. Its :meth:`least_squares` hook lets ``loo_exact`` compute every
    leave-one-out model from one factorisation (REFERENCE §5.1).
    """

    preferred_block_size = 64

    def __init__(self, l2: float = 1.0, train_targets: int = 0, threads: int | None = None):
        super().__init__(train_targets=train_targets, threads=threads)
        if not float(l2) > 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.l2 = float(l2)

    def least_squares(self) -> dict:
        """The problem every model solves on its rows: ``x_train`` [n, 65] and ``x_target``
        [m, 65] (ones column last), regression targets ``y_train`` [n, 10] and the per-column
        ``penalty`` [65] of ``(XᵀX + diag(penalty))β = XᵀY``; logits are ``x @ β``."""
        s = self.split
        one = np.ones((s.x_train.shape[0], 1))
        pen = np.full(s.x_train.shape[1] + 1, self.l2)
        pen[-1] = 0.0
        return {"x_train": np.hstack([s.x_train, one]),
                "x_target": np.hstack([self.x_target, np.ones((self.n_target, 1))]),
                "y_train": 2.0 * np.eye(N_CLASSES)[s.y_train] - 1.0, "penalty": pen}

    def train_block(self, masks, seeds, train_labels=None) -> np.ndarray:
        masks, _, labels = self._check(masks, seeds, train_labels)
        ls = self.least_squares()
        X, Xt, pen = ls["x_train"], ls["x_target"], np.diag(ls["penalty"])
        out = np.empty((masks.shape[0], self.n_target), np.float32)
        for b in range(masks.shape[0]):
            Y = 2.0 * np.eye(N_CLASSES)[labels[b]] - 1.0
            a = X[masks[b]]
            beta = np.linalg.solve(a.T @ a + pen, a.T @ Y[masks[b]])
            out[b] = margins_from_logits((Xt @ beta)[None], self.y_target)[0]
        return out
