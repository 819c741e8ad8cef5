"""Many small MLPs trained at once: one batched torch computation on the CPU.

:func:`train_mlp_block` trains ``B`` one-hidden-layer ReLU networks, model ``b`` on the
training rows selected by ``masks[b]``, and returns their logits on a fixed set of evaluation
inputs. Forward and backward passes are written out by hand (no autograd) as batched matrix
products (``torch.baddbmm``/``torch.bmm`` over weights of shape ``[B, d, H]``), which is about
twice as fast as the same loop through autograd and ``torch.optim`` on a small CPU.

Each model's training is a pure function of its own (mask row, seed, label row):

* its initial weights and its per-epoch shuffles come from ``numpy.random.default_rng(seed)``
  and depend on nothing else;
* its minibatches are its own subset, reshuffled every epoch and cut into
  ``k = ceil(n_b / batch_size)`` batches of (almost) equal size, each padded to
  ``batch_size`` rows with zero-weight rows, so every array a model touches has the same shape
  whatever its neighbours are;
* models that finish early (smaller subsets, so fewer steps) sit out the remaining steps with a
  learning rate of 0 and a momentum factor of 1, which leaves their weights and momentum
  bit-for-bit unchanged.

So the margins do not depend on which other models share the block, nor on its size, nor on
the model's position in it -- bit for bit -- provided every kernel computes each model's slice
the same way wherever it sits. That holds for the ops used here with torch 2.13's CPU kernels
(MKL batched GEMM, elementwise ops, max/sum reductions; checked by the tests, including a
hypothesis property test), across torch thread counts too. It does *not* hold for
``torch.softmax`` over a strided dim for some batch sizes (a model's values round
differently at different positions), so the softmax is spelled out. Another BLAS or torch
version could in principle break it; the tests would say so.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=4096)
def _batch_layout(n: int, batch_size: int, epochs: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Where the ``n`` shuffled examples of each epoch go in the padded step arrays.

    Each epoch is cut into ``k = ceil(n / batch_size)`` near-equal batches (``n % k`` of size
    ``ceil(n / k)``, the rest ``floor(n / k)``). Returns ``k``, the flat position
    ``(epoch * k + batch) * batch_size + slot`` of every (epoch, position) ``[epochs * n]``
    and its weight ``1 / |batch|`` ``[epochs * n]`` (read-only, cached).
    """
    if n == 0:
        return 0, np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = -(-n // batch_size)
    q, r = divmod(n, k)  # r batches of q + 1, then k - r batches of q
    pos = np.arange(n)
    big = r * (q + 1)
    batch = np.where(pos < big, pos // (q + 1), r + (pos - big) // max(q, 1))
    start = np.where(batch < r, batch * (q + 1), big + (batch - r) * q)
    flat = (np.arange(epochs)[:, None] * k + batch[None, :]) * batch_size + (pos - start)
    sizes = np.bincount(batch, minlength=k).astype(np.float32)
    weight = np.broadcast_to((1.0 / sizes)[batch], (epochs, n)).ravel()
    flat = flat.ravel().astype(np.int64)
    flat.setflags(write=False)
    weight = np.ascontiguousarray(weight)
    weight.setflags(write=False)
    return k, flat, weight


def lr_factor(frac: np.ndarray, warmup: float) -> np.ndarray:
    """Learning-rate multiplier at training fraction ``frac`` in [0, 1): linear warm-up over
    the first ``warmup`` of training, then linear decay to 0 (a one-cycle triangle)."""
    frac = np.asarray(frac, np.float64)
    if warmup > 0:
        up = (frac + 1e-12) / warmup
        down = (1.0 - frac) / (1.0 - warmup)
        return np.minimum(np.minimum(up, down), 1.0)
    return 1.0 - frac


def make_schedule(masks: np.ndarray, seeds: np.ndarray, *, n_init: int, epochs: int,
                  batch_size: int):
    """Per-model random init draws and minibatch index/weight arrays.

    Model ``b`` draws, from ``numpy.random.default_rng(seeds[b])`` and nothing else, first
    ``n_init`` standard normals (its initial weights), then one independent shuffle of its
    subset per epoch. Returns ``(init [B, n_init] float32, index [B, T, batch_size] int64,
    weight [B, T, batch_size] float32, steps [B] int64)`` where ``T`` is the largest number of
    steps of any model in the block, ``index`` points into the training set (0 in padding) and
    ``weight`` is ``1/|batch|`` for real rows and 0 for padding.
    """
    B, n_train = masks.shape
    counts = masks.sum(axis=1)
    ks = np.array([_batch_layout(int(c), batch_size, epochs)[0] for c in counts], np.int64)
    steps = ks * epochs
    T = int(steps.max()) if B else 0
    init = np.empty((B, n_init), np.float32)
    index = np.zeros((B, max(T, 1) * batch_size), np.int64)
    weight = np.zeros((B, max(T, 1) * batch_size), np.float32)
    for b in range(B):
        rng = np.random.default_rng(int(seeds[b]))
        init[b] = rng.standard_normal(n_init, dtype=np.float32)
        sel = np.flatnonzero(masks[b])
        n = sel.size
        if n == 0 or epochs == 0:
            continue
        _, flat, wts = _batch_layout(n, batch_size, epochs)
        order = rng.permuted(np.broadcast_to(np.arange(n), (epochs, n)), axis=1)
        index[b, flat] = sel[order].ravel()  # the subset, reshuffled every epoch
        weight[b, flat] = wts
    index = index.reshape(B, max(T, 1), batch_size)[:, :T]
    weight = weight.reshape(B, max(T, 1), batch_size)[:, :T]
    return init, index, weight, steps


def train_mlp_block(x_train, masks, seeds, labels, x_eval, *, n_classes: int, hidden: int,
                    epochs: int, lr: float, momentum: float, batch_size: int,
                    weight_decay: float, warmup: float = 0.2, return_state: bool = False,
                    checkpoints: bool = False):
    """Train ``B`` MLPs and return their logits on ``x_eval``: float32 tensor [B, C, m].

    ``x_train`` [n, d] and ``x_eval`` [m, d] are float32 torch tensors; ``masks`` bool
    [B, n], ``seeds`` [B] and ``labels`` int [B, n] (the labels each model trains on) are
    numpy arrays. The loss of a step is the mean cross-entropy over the model's minibatch;
    SGD with heavy-ball momentum, weight decay on the weights (not the biases) added to the
    gradient, and a one-cycle learning rate (see :func:`lr_factor`) over each model's own
    number of steps.
    """
    import torch

    masks = np.asarray(masks, bool)
    B, n = masks.shape
    d, H, C = x_train.shape[1], hidden, n_classes
    init, index, weight, steps = make_schedule(
        masks, seeds, n_init=d * H + H * C, epochs=epochs, batch_size=batch_size)
    T = index.shape[1]

    with torch.no_grad():
        ones = torch.ones(x_train.shape[0], 1, dtype=x_train.dtype)
        x_aug = torch.cat([x_train, ones], dim=1)  # the last input is 1: W1's last row is b1
        init_t = torch.from_numpy(init)
        # He init for the ReLU layer, LeCun init for the output layer; biases start at 0.
        W1 = torch.zeros(B, d + 1, H)
        W1[:, :d] = init_t[:, : d * H].reshape(B, d, H) * math.sqrt(2.0 / d)
        W2t = (init_t[:, d * H:].reshape(B, C, H) * math.sqrt(1.0 / H)).contiguous()
        b2 = torch.zeros(B, C, 1)
        params = [W1, W2t, b2]
        bufs = [torch.zeros_like(p) for p in params]
        ckpt = None
        epoch_lr = np.zeros((B, epochs))
        if checkpoints:
            # [epochs, B, ...] per parameter; a model with no steps keeps its init everywhere
            ckpt = [p.unsqueeze(0).repeat(epochs, *([1] * p.dim())) for p in params]

        if T > 0:
            # the labels every model sees in every batch slot: [B, T, bs]
            y_seq = np.take_along_axis(np.asarray(labels, np.int64), index.reshape(B, -1), 1)
            y_t = torch.from_numpy(y_seq.reshape(B, T, 1, batch_size))
            idx_t = torch.from_numpy(np.ascontiguousarray(index))
            w_t = torch.from_numpy(np.ascontiguousarray(weight)).view(B, T, 1, batch_size)
            # per-model, per-step learning rate (0 once a model has done all its steps) and
            # momentum factor (1 then). A finished model also has zero batch weights, hence a
            # zero gradient, so its weights and momentum stay bit-for-bit unchanged.
            t_idx = np.arange(T)[:, None]
            active = t_idx < steps[None, :]
            frac = t_idx / np.maximum(steps[None, :], 1)
            lrs = np.where(active, lr * lr_factor(frac, warmup), 0.0).astype(np.float32)
            mus = np.where(active, momentum, 1.0).astype(np.float32)
            lrs_t = torch.from_numpy(lrs).view(T, B, 1, 1)
            mus_t = torch.from_numpy(mus).view(T, B, 1, 1)
            wd_t = torch.from_numpy((active * weight_decay).astype(np.float32)).view(T, B, 1, 1)
            wd_rows = torch.ones(1, d + 1, 1)
            wd_rows[:, d] = 0.0  # no decay on b1
            neg_one = torch.full((B, 1, batch_size), -1.0)
            if checkpoints:
                ks = steps // max(epochs, 1)  # steps per epoch of every model
                for b in range(B):
                    if ks[b]:
                        epoch_lr[b] = lrs[: steps[b], b].reshape(epochs, ks[b]).mean(axis=1)

            for t in range(T):
                xb = x_aug.index_select(0, idx_t[:, t].reshape(-1)).view(B, batch_size, d + 1)
                h = torch.bmm(xb, W1).relu_()  # [B, bs, H]
                # logits with classes on dim 1 ([B, C, bs]): reductions over a strided dim of
                # 10 are ~10x faster on the CPU than over a contiguous last dim of 10. The
                # softmax is spelled out: torch.softmax over dim 1 rounds a model's values
                # differently depending on its position in the block for some batch sizes
                # (measured with torch 2.13 for bs = 16, 20, 48); max, exp, sum and divide
                # are position-independent.
                z2 = torch.baddbmm(b2, W2t, h.transpose(1, 2))
                p = z2.sub_(z2.amax(dim=1, keepdim=True)).exp_()
                p.div_(p.sum(dim=1, keepdim=True))
                p.scatter_add_(1, y_t[:, t], neg_one)
                g2 = p.mul_(w_t[:, t])  # dLoss/dlogits [B, C, bs]
                gW2 = torch.bmm(g2, h)
                gb2 = g2.sum(dim=2, keepdim=True)
                g1 = torch.ops.aten.threshold_backward(torch.bmm(g2.transpose(1, 2), W2t), h, 0)
                gW1 = torch.bmm(xb.transpose(1, 2), g1)
                wd_b = wd_t[t]
                gW1.addcmul_(W1, wd_rows * wd_b)
                gW2.addcmul_(W2t, wd_b)
                lr_b, mu_b = lrs_t[t], mus_t[t]
                for i, g in enumerate((gW1, gW2, gb2)):
                    g.addcmul_(bufs[i], mu_b)  # g <- momentum buffer mu * buf + grad
                    bufs[i] = g
                    params[i].addcmul_(g, lr_b, value=-1.0)
                if checkpoints:
                    # models whose epoch ends with this step: copy their parameters out
                    done = np.flatnonzero((ks > 0) & ((t + 1) % np.maximum(ks, 1) == 0)
                                          & (t + 1 <= steps))
                    for b in done:
                        e = (t + 1) // ks[b] - 1
                        for i in range(3):
                            ckpt[i][e, b] = params[i][b]

        # evaluation: logits on x_eval, in chunks of models to bound memory
        m = x_eval.shape[0]
        xe = torch.cat([x_eval, torch.ones(m, 1, dtype=x_eval.dtype)], dim=1).unsqueeze(0)
        out = torch.empty(B, C, m)
        for s in range(0, B, 64):
            e = min(B, s + 64)
            h = torch.bmm(xe.expand(e - s, m, d + 1), W1[s:e]).relu_()
            torch.baddbmm(b2[s:e], W2t[s:e], h.transpose(1, 2), out=out[s:e])
    if not return_state:
        return out

    def named(ps):
        return {"W1": ps[0].clone(), "W2": ps[1].clone(), "b2": ps[2][..., 0].clone()}

    state = {"params": named(params)}
    if checkpoints:
        state["checkpoints"] = [named([c[e] for c in ckpt]) for e in range(epochs)]
        state["epoch_lr"] = epoch_lr
    return out, state
