"""``M`` ResNet-9s packed into one network: every layer's channels times ``M``, ``groups = M``.

Model ``m`` owns channel block ``m`` of every activation and slice ``m`` (along the leading
axis) of every parameter, so one forward/backward pass trains ``M`` independent models on
``M`` different minibatches: the input is ``[N, M*3, 32, 32]`` (model ``m``'s ``N`` images in
channels ``3m..3m+2``), convolutions are grouped, BatchNorm statistics are per channel (hence
per model), and the head is a batched matrix product. ``M = 1`` is a plain dense ResNet-9.

Two ways to run the pack, the same parameters and the same function:

``separate=False`` (grouped)
    One grouped convolution per layer for all ``M`` models: the fast way on a GPU. The kernel
    a library picks for a grouped convolution depends on ``M``, so a model's round-off, and
    after training's amplification its margins, depend on how many models share its pack.
``separate=True``
    Every model runs its own dense convolutions, BatchNorms and head on its own contiguous
    slice, with the shapes it would have alone, so model ``m`` of a pack of ``M`` computes
    exactly what it computes in a pack of one: margins bit for bit independent of ``M``,
    of the pack-mates and of the position (on one machine, at one thread count).

The architecture is the Myrtle / DAWNBench ResNet-9 the datamodels paper used (Kakao Brain's
variant of Page's network), channels scaled by ``width``::

    prep    conv3x3(3 -> 64)                    BN ReLU
    layer1  conv3x3(64 -> 128)   maxpool2       BN ReLU   + residual(2 x conv3x3 BN ReLU)
    layer2  conv3x3(128 -> 256)  maxpool2       BN ReLU
    layer3  conv3x3(256 -> 512)  maxpool2       BN ReLU   + residual(2 x conv3x3 BN ReLU)
    head    global max pool -> linear(512 -> 10, no bias) -> x 0.125

One change from Page's order, taken from airbench: max-pooling comes *before* BatchNorm/ReLU
in the three down-sampling layers. BN with a positive scale and ReLU are monotone, so this is
the same function class, and BN/ReLU run on 4x fewer pixels (their statistics are taken over
the pooled map). All parameters are initialised from NumPy with each model's own seed, so a
model's initial weights do not depend on the device or on the other models in the pack.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

BASE = {"prep": 64, "layers": ((128, True), (256, False), (512, True)), "scale": 0.125}


def channels(width: float) -> tuple[int, list[tuple[int, bool]]]:
    def w(c):
        return max(1, int(round(c * float(width))))

    return w(BASE["prep"]), [(w(c), res) for c, res in BASE["layers"]]


class PackedConvBN(nn.Module):
    """conv3x3 (grouped over ``M`` models) -> [maxpool2] -> BN -> ReLU."""

    def __init__(self, M: int, cin: int, cout: int, pool: bool = False):
        super().__init__()
        self.M, self.cin, self.cout, self.pool = M, cin, cout, pool
        self.conv = nn.Conv2d(M * cin, M * cout, 3, padding=1, groups=M, bias=False)
        self.bn = nn.BatchNorm2d(M * cout)

    def forward(self, x):
        x = self.conv(x)
        if self.pool:
            x = F.max_pool2d(x, 2)
        return F.relu(self.bn(x))

    def forward_each(self, xs: list) -> list:
        """The layer on each model's own input ``xs[m] [N, cin, H, W]``, with its own slices of
        the packed weight and BatchNorm (running statistics updated in place, per slice)."""
        bn, C = self.bn, self.cout
        out = []
        for m, (x, w) in enumerate(zip(xs, self.conv.weight.split(C), strict=True)):
            y = F.conv2d(x, w, padding=1)
            if self.pool:
                y = F.max_pool2d(y, 2)
            c = slice(m * C, (m + 1) * C)
            y = F.batch_norm(y, bn.running_mean[c], bn.running_var[c], bn.weight[c],
                             bn.bias[c], bn.training, bn.momentum, bn.eps)
            out.append(F.relu(y))
        return out


class PackedResNet9(nn.Module):
    def __init__(self, M: int, width: float = 1.0, n_classes: int = 10,
                 separate: bool = False, channels_last: bool = False):
        super().__init__()
        self.M, self.n_classes = M, n_classes
        self.separate, self.channels_last = bool(separate), bool(channels_last)
        c0, layers = channels(width)
        self.prep = PackedConvBN(M, 3, c0)
        blocks = []
        cin = c0
        for c, res in layers:
            blocks.append(PackedConvBN(M, cin, c, pool=True))
            if res:
                blocks.append(nn.Sequential(PackedConvBN(M, c, c), PackedConvBN(M, c, c)))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.feat = cin
        self.head = nn.Parameter(torch.zeros(M, cin, n_classes))
        self.scale = BASE["scale"]

    def forward(self, x):
        """``x [N, M*3, 32, 32]`` -> logits ``[N, M, n_classes]``."""
        if self.separate:
            return self._forward_each(x)
        x = self.prep(x)
        for blk in self.blocks:
            x = x + blk(x) if isinstance(blk, nn.Sequential) else blk(x)
        f = torch.amax(x, dim=(2, 3)).view(x.shape[0], self.M, self.feat)
        return torch.einsum("nmc,mck->nmk", f, self.head.to(f.dtype)) * self.scale

    def _forward_each(self, x):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # each model's own contiguous input, laid out as if it were alone
        xs = [v.contiguous(memory_format=fmt) for v in x.split(3, dim=1)]
        xs = self.prep.forward_each(xs)
        for blk in self.blocks:
            if isinstance(blk, nn.Sequential):
                ys = xs
                for cb in blk:
                    ys = cb.forward_each(ys)
                xs = [a + b for a, b in zip(xs, ys, strict=True)]
            else:
                xs = blk.forward_each(xs)
        heads = self.head.unbind(0)
        z = [torch.amax(v, dim=(2, 3)) @ h.to(v.dtype) * self.scale
             for v, h in zip(xs, heads, strict=True)]
        return torch.stack(z, dim=1)

    # -- per-model parameters -----------------------------------------------------------------
    def convbns(self) -> list[PackedConvBN]:
        return [m for m in self.modules() if isinstance(m, PackedConvBN)]

    @torch.no_grad()
    def reset(self, seeds) -> None:
        """Initialise model ``m`` from ``seeds[m]`` (NumPy, so the same on every device):
        convolutions and head uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default), BN scale 1,
        shift 0, running statistics 0/1."""
        M = self.M
        shapes = [(cb.conv.weight, (cb.cout, cb.cin, 3, 3)) for cb in self.convbns()]
        shapes.append((self.head, (self.feat, self.n_classes)))
        host = [np.empty((M,) + s, np.float32) for _, s in shapes]
        for m, seed in enumerate(seeds):
            rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1,)))
            for h, (_, s) in zip(host, shapes, strict=True):
                fan_in = int(np.prod(s[1:])) if len(s) == 4 else s[0]
                bound = 1.0 / np.sqrt(fan_in)
                h[m] = rng.uniform(-bound, bound, size=s).astype(np.float32)
        for (p, _), h in zip(shapes, host, strict=True):
            p.copy_(torch.from_numpy(h).reshape(p.shape))
        for cb in self.convbns():
            cb.bn.reset_parameters()  # weight 1, bias 0, running mean 0 / var 1, count 0


class PackedSGD:
    """SGD with (optionally Nesterov) momentum and a learning rate per model.

    Every parameter's leading axis is ``M`` blocks, one per model, so ``p.view(M, -1)`` splits
    it by model and ``lr [M]`` scales each model's update. Weight decay is added to the gradient
    (all parameters, as in the paper's FFCV code). A model whose ``lr`` is 0 does not move.
    """

    def __init__(self, params, M: int, momentum: float, weight_decay: float,
                 nesterov: bool = False):
        self.params = [p for p in params if p.requires_grad]
        self.M, self.momentum, self.wd, self.nesterov = M, momentum, weight_decay, nesterov
        self.bufs = [torch.zeros_like(p) for p in self.params]

    def zero(self):
        for b in self.bufs:
            b.zero_()
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr, grad_scale: float = 1.0):
        """``lr``: float tensor [M] on the parameters' device."""
        for p, buf in zip(self.params, self.bufs, strict=True):
            g = p.grad
            if grad_scale != 1.0:
                g = g * grad_scale
            # a * b and + as two ops, never add(alpha=): its vectorised body fuses them into an
            # FMA and its scalar tail does not, so an element's rounding would depend on where
            # the tensor's length (which grows with M) puts the tail
            g = g + p * self.wd if self.wd else g
            buf.mul_(self.momentum).add_(g)
            upd = g + buf * self.momentum if self.nesterov else buf
            # unflatten, not view: a channels_last weight is not contiguous
            lr_p = lr.view((self.M,) + (1,) * p.dim())
            p.unflatten(0, (self.M, -1)).sub_(lr_p * upd.unflatten(0, (self.M, -1)))
            p.grad = None
