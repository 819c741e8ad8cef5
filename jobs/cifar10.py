"""The datamodels paper's CIFAR-10 job: ResNet-9, many models trained at once on one device.

``jobs.cifar10:CIFAR10ResNet9`` trains one ResNet-9 (:mod:`jobs._cifar_net`) per mask row and
returns each model's correct-class margins on the 10,000 test images (and optionally on the
first ``train_targets`` training images). Defaults are the paper's (Appendix D, Table 3,
which are also FFCV's CIFAR example defaults): batch 512, 24 epochs, SGD with momentum 0.9,
weight decay 5e-4, a triangular learning rate rising linearly from 0 to 0.5 at epoch 5 and
falling linearly to 0 at epoch 24, label smoothing 0.1, random 4-pixel crops of
reflection-padded images, horizontal flips, 8x8 Cutout, and test-time flip averaging (the
logits of an image and its mirror image are averaged before the margin is taken).

Data
    ``data_dir`` names a local directory with the CIFAR-10 python batches or FFCV's
    ``cifar_train.beton`` + ``cifar_test.beton`` (nothing is ever downloaded), or ``synthetic={"n_train": .., "n_test": .., "seed": ..}`` makes a
    deterministic CIFAR-shaped stand-in (:func:`jobs._cifar_data.synthetic_cifar`). The images
    live on the device as one uint8 tensor (the training set reflection-padded once), and every
    minibatch is gathered, cropped, flipped, Cut out and normalised there in one batched pass.

Models at once
    ``models_at_once = M`` models are trained together, each on its own minibatches, in one
    network of ``M`` times the channels. ``packing`` says how the pack runs: ``"grouped"``, one
    grouped convolution per layer (``groups = M``) for all models, the fast way on a GPU
    (which ``M`` is fastest depends on the GPU; ``benchmarks/bench_cifar10_gpu.py`` measures
    it); ``"separate"``, each model its own dense convolutions on its own slice, so it
    computes exactly what it would alone; ``"auto"`` (default): grouped on CUDA, separate on
    the CPU. A block of ``B`` models runs in chunks of ``M``, the last chunk padded with idle
    models.

Per-model schedule
    Model ``b`` sees its own subset of ``n_b`` examples as a stream of fresh permutations (one
    per epoch, drawn with NumPy from ``seeds[b]``), cut into ``T_b = ceil(epochs * n_b /
    batch_size)`` full batches, so every step has exactly ``batch_size`` images (a batch may
    straddle two epochs; a subset smaller than a batch repeats within it). Its learning rate
    follows the triangle over its own ``T_b`` steps. Models of a chunk that finish early
    (smaller subsets) take the remaining steps with learning rate 0 and their BatchNorm running
    statistics restored, so they do not change. An empty mask trains nothing: the margins are
    those of the untrained network.

Determinism
    Initial weights, data order and augmentation parameters are drawn with NumPy from the
    model's seed, so they are identical on every device and in every chunk. On the CPU the
    same (mask, seed, labels, chunk composition, thread count) gives bit-identical margins
    (tested), and with ``packing="separate"`` (the CPU default) a model's margins do not
    depend on ``M``, its pack-mates or its position either, bit for bit (tested): each model
    runs the very kernels it would run alone. Grouped packing gives no such promise: the
    kernel a grouped convolution gets depends on ``M`` and the CPU, and training amplifies
    that round-off into margins that differ by tens of percent between packings on some
    CPUs, so compare grouped margins across ``M`` only statistically. On a GPU,
    ``deterministic=True`` asks cuDNN for deterministic kernels; bf16 results are reproducible
    only to the tolerance the GPU test states.
"""

from __future__ import annotations

import math

import numpy as np

from . import _cifar_data as cdata
from ._common import check_block, check_examples, margins_from_logits, torch_threads

N_CLASSES = 10
_DTYPES = ("auto", "fp32", "bf16", "fp16")
_PACKINGS = ("auto", "grouped", "separate")
FP16_LOSS_SCALE = 1024.0




def lr_triangle(t: np.ndarray, steps: int, peak_frac: float) -> np.ndarray:
    """Learning-rate multiplier at step ``t`` of ``steps``: linear 0 -> 1 up to ``peak_frac``
    of training, then linear 1 -> 0 (evaluated at the step's midpoint ``t + 0.5``)."""
    if steps <= 0:
        return np.zeros_like(np.asarray(t, np.float64))
    peak = max(peak_frac * steps, 1e-9)
    return np.interp(np.asarray(t, np.float64) + 0.5, [0.0, peak, float(steps)], [0.0, 1.0, 0.0])


class CIFAR10ResNet9:
    """ResNet-9 on CIFAR-10 (the datamodels paper's setup); see the module docstring.

    Parameters (all JSON-serialisable):

    ``data_dir``            directory of the CIFAR-10 python batches or FFCV betons, or
    ``synthetic``           ``{"n_train", "n_test", "seed"}`` for a synthetic stand-in;
    ``epochs``, ``batch_size``, ``lr`` (peak), ``lr_peak_epoch``, ``momentum``, ``nesterov``,
    ``weight_decay``, ``label_smoothing``          the optimiser (paper defaults);
    ``crop``, ``flip``, ``cutout`` (square side, 0 = off), ``tta`` (flip averaging);
    ``width``               channel multiplier (1.0 = 64/128/256/512);
    ``models_at_once``      models packed into one network;
    ``packing``             "auto" (grouped on cuda, separate on cpu), "grouped", "separate";
    ``device``              "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...;
    ``dtype``               "auto" (bf16 autocast on cuda, fp32 on cpu), "fp32", "bf16", "fp16"
                            (fp16 with a static loss scale of 1024);
    ``channels_last``       None = on for cuda; ``compile``: ``torch.compile`` the network;
    ``deterministic``       deterministic cuDNN kernels (cuda only);
    ``train_targets``       also return margins on the first k training examples;
    ``eval_batch_size``, ``threads`` (torch CPU threads while training).
    """

    supports_train_labels = True
    preferred_block_size = 8

    def __init__(self, data_dir: str | None = None, synthetic: dict | None = None, *,
                 epochs: int = 24, batch_size: int = 512, lr: float = 0.5,
                 lr_peak_epoch: float = 5.0, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 5e-4, label_smoothing: float = 0.1, crop: bool = True,
                 flip: bool = True, cutout: int = 8, tta: bool = True, width: float = 1.0,
                 models_at_once: int = 1, packing: str = "auto", device: str = "auto", dtype: str = "auto",
                 channels_last: bool | None = None, compile: bool = False,
                 deterministic: bool = False, train_targets: int = 0,
                 eval_batch_size: int = 1000, threads: int | None = None):
        if (data_dir is None) == (synthetic is None):
            raise ValueError("give exactly one of data_dir (CIFAR-10 python batches) or "
                             "synthetic={'n_train':..,'n_test':..,'seed':..}")
        if data_dir is not None:
            x_tr, y_tr, x_te, y_te = cdata.load_cifar10(data_dir)
        else:
            syn = dict(synthetic)
            unknown = set(syn) - {"n_train", "n_test", "seed", "noise"}
            if unknown:
                raise ValueError(f"synthetic: unknown keys {sorted(unknown)}")
            x_tr, y_tr, x_te, y_te = cdata.synthetic_cifar(**syn)
        self.data_dir, self.synthetic = data_dir, synthetic
        for name, v in (("epochs", epochs), ("batch_size", batch_size),
                        ("models_at_once", models_at_once), ("eval_batch_size", eval_batch_size)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if packing not in _PACKINGS:
            raise ValueError(f"packing must be one of {_PACKINGS}, got {packing!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if not 0 <= int(train_targets) <= len(y_tr):
            raise ValueError(f"train_targets must be in [0, {len(y_tr)}], got {train_targets}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be None or >= 1, got {threads}")
        if float(width) <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.lr, self.lr_peak_epoch = float(lr), float(lr_peak_epoch)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.weight_decay, self.label_smoothing = float(weight_decay), float(label_smoothing)
        self.crop, self.flip, self.cutout, self.tta = bool(crop), bool(flip), int(cutout), bool(tta)
        self.width, self.M = float(width), int(models_at_once)
        self.packing = packing
        self.device_name, self.dtype_name = str(device), dtype
        self.channels_last, self.compile = channels_last, bool(compile)
        self.deterministic, self.eval_batch_size = bool(deterministic), int(eval_batch_size)
        self.threads = None if threads is None else int(threads)
        self.train_targets = int(train_targets)
        self.preferred_block_size = self.M * max(1, -(-8 // self.M))

        self.x_train, self.y_train = x_tr, y_tr
        k = self.train_targets
        self.x_target = np.concatenate([x_te, x_tr[:k]])
        self.y_target = np.concatenate([y_te, y_tr[:k]]).astype(np.int64)
        self.n_train, self.n_test, self.n_target = len(y_tr), len(y_te), len(self.y_target)
        self._target_train_index = np.concatenate(
            [np.full(len(y_te), -1, np.int64), np.arange(k, dtype=np.int64)])
        # ids number the 60,000 CIFAR-10 images: training images 0.., then test images.
        self._target_id = np.concatenate([self.n_train + np.arange(len(y_te)), np.arange(k)])
        self._state = None  # device tensors and the network, built on first use

    # -- interface --------------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "train_label": self.y_train.copy(),
            "target_label": self.y_target.copy(),
            "target_train_index": self._target_train_index.copy(),
            "train_id": np.arange(self.n_train, dtype=np.int64),
            "target_id": self._target_id.astype(np.int64),
        }

    def train_block(self, masks, seeds, train_labels=None):
        """float32 ``[B, n_target]`` correct-class margins of ``B`` freshly trained models."""
        return margins_from_logits(self.logits(masks, seeds, train_labels), self.y_target)

    def logits(self, masks, seeds, train_labels=None) -> np.ndarray:
        """float32 ``[B, n_target, 10]`` target logits (flip-averaged when ``tta``) of ``B``
        freshly trained models: what :meth:`train_block` takes margins of."""
        masks, seeds, labels = self._check(masks, seeds, train_labels)
        B = masks.shape[0]
        out = np.empty((B, self.n_target, N_CLASSES), np.float32)
        with torch_threads(self.threads):
            st = self._setup()
            for s in range(0, B, self.M):
                e = min(B, s + self.M)
                pad = self.M - (e - s)
                m = np.concatenate([masks[s:e], np.zeros((pad, self.n_train), bool)])
                sd = np.concatenate([seeds[s:e], np.zeros(pad, np.uint64)])
                lb = np.concatenate([labels[s:e], np.zeros((pad, self.n_train), np.int64)])
                out[s:e] = self._train_chunk(st, m, sd, lb)[: e - s]
        return out

    def examples(self, which: str, index) -> np.ndarray:
        """The images of training examples or targets at store positions ``index``: uint8
        ``[n, 32, 32, 3]`` RGB, as stored (no augmentation, no normalisation)."""
        idx = check_examples(which, index, self.n_train, self.n_target)
        x = self.x_train if which == "train" else self.x_target
        return np.ascontiguousarray(x[idx].transpose(0, 2, 3, 1))

    # -- checks -----------------------------------------------------------------------------
    def _check(self, masks, seeds, train_labels):
        return check_block(masks, seeds, train_labels, self.y_train, N_CLASSES)

    # -- device state -----------------------------------------------------------------------
    def _setup(self):
        if self._state is not None:
            return self._state
        import torch

        from ._cifar_net import PackedResNet9, PackedSGD

        name = self.device_name
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(name)
        cuda = dev.type == "cuda"
        dt = self.dtype_name if self.dtype_name != "auto" else ("bf16" if cuda else "fp32")
        amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dt]
        cl = self.channels_last if self.channels_last is not None else cuda
        if cuda:
            torch.backends.cudnn.benchmark = not self.deterministic
            torch.backends.cudnn.deterministic = self.deterministic
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        packing = self.packing if self.packing != "auto" else ("grouped" if cuda else "separate")
        net = PackedResNet9(self.M, self.width, N_CLASSES, separate=packing == "separate",
                            channels_last=cl).to(dev)
        if cl:
            net = net.to(memory_format=torch.channels_last)
        fwd = torch.compile(net) if self.compile else net
        st = {
            "torch": torch, "dev": dev, "cuda": cuda, "amp": amp, "dtype": dt, "cl": cl,
            "packing": packing,
            "net": net, "fwd": fwd,
            "opt": PackedSGD(net.parameters(), self.M, self.momentum, self.weight_decay,
                             self.nesterov),
            "padded": torch.from_numpy(cdata.reflect_pad(self.x_train)).to(dev),
            "target": torch.from_numpy(np.ascontiguousarray(self.x_target)).to(dev),
            "mean": torch.tensor(cdata.MEAN, device=dev).view(1, 3, 1, 1),
            "std": torch.tensor(cdata.STD, device=dev).view(1, 3, 1, 1),
        }
        self._state = st
        return st

    @property
    def device(self) -> str:
        return str(self._setup()["dev"])

    # -- one chunk of M models --------------------------------------------------------------
    def plan(self, masks: np.ndarray, seeds: np.ndarray):
        """Host-side schedule of a chunk: ``(index [T, bs, M] int32, aug [T, bs, M, 5] uint8,
        lr [T, M] float32, active [T, M] bool, steps [M])``, all drawn with NumPy from each
        model's seed (so identical on every device)."""
        M, bs, E = masks.shape[0], self.batch_size, self.epochs
        counts = masks.sum(axis=1)
        steps = np.array([math.ceil(E * int(c) / bs) for c in counts], np.int64)
        T = int(steps.max()) if M else 0
        index = np.zeros((T, bs, M), np.int32)
        aug = np.zeros((T, bs, M, 5), np.uint8)
        aug[..., 0:2] = cdata.PAD
        lr = np.zeros((T, M), np.float32)
        for m in range(M):
            Tm = int(steps[m])
            if Tm == 0:
                continue
            rng = np.random.default_rng(np.random.SeedSequence(int(seeds[m]), spawn_key=(2,)))
            sel = np.flatnonzero(masks[m])
            need = Tm * bs
            reps = -(-need // sel.size)
            stream = np.concatenate([sel[rng.permutation(sel.size)] for _ in range(reps)])[:need]
            index[:Tm, :, m] = stream.reshape(Tm, bs)
            aug[:Tm, :, m] = cdata.draw_augmentation(
                rng, need, crop=self.crop, flip=self.flip, cutout=self.cutout).reshape(Tm, bs, 5)
            lr[:Tm, m] = self.lr * lr_triangle(np.arange(Tm), Tm, self.lr_peak_epoch / E)
        active = np.arange(T)[:, None] < steps[None, :]
        return index, aug, lr, active, steps

    def _train_chunk(self, st, masks, seeds, labels) -> np.ndarray:
        torch = st["torch"]
        F = torch.nn.functional
        dev, net, fwd, opt, M, bs = st["dev"], st["net"], st["fwd"], st["opt"], self.M, self.batch_size
        index, aug, lr, active, _ = self.plan(masks, seeds)
        T = index.shape[0]
        net.reset(seeds)
        opt.zero()
        index_d = torch.from_numpy(index).to(dev)
        aug_d = torch.from_numpy(aug).to(dev)
        lr_d = torch.from_numpy(lr).to(dev)
        labels_d = torch.from_numpy(labels).to(dev)
        rows = torch.arange(M, device=dev)[None, :]
        bns = [cb.bn for cb in net.convbns()]
        scale = FP16_LOSS_SCALE if st["amp"] is torch.float16 else 1.0
        net.train()
        for t in range(T):
            idx = index_d[t].long()  # [bs, M], example-major like the packed channels
            x = cdata.augment_batch(st["padded"], idx.reshape(-1), aug_d[t].reshape(-1, 5),
                                    st["mean"], st["std"], cutout=self.cutout)
            x = x.view(bs, M * 3, 32, 32)
            if st["cl"]:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels_d[rows, idx].reshape(-1)
            idle = not active[t].all()
            if idle:  # keep finished models' BatchNorm running statistics as they are
                saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
            with torch.autocast(dev.type, dtype=st["amp"], enabled=st["amp"] is not None):
                z = fwd(x)
            loss = F.cross_entropy(z.reshape(bs * M, N_CLASSES).float(), y, reduction="sum",
                                   label_smoothing=self.label_smoothing) / bs
            (loss * scale).backward()
            if idle:
                keep = torch.from_numpy(~active[t]).to(dev)
                for bn, (rm, rv) in zip(bns, saved, strict=True):
                    k = keep.repeat_interleave(bn.num_features // M)
                    bn.running_mean.copy_(torch.where(k, rm, bn.running_mean))
                    bn.running_var.copy_(torch.where(k, rv, bn.running_var))
            opt.step(lr_d[t], grad_scale=1.0 / scale)
        return self._evaluate(st)

    def _evaluate(self, st) -> np.ndarray:
        """Target logits ``[M, n_target, 10]`` of the packed models (flip-averaged if tta)."""
        torch = st["torch"]
        net, fwd, M = st["net"], st["fwd"], self.M
        net.eval()
        out = torch.empty((self.n_target, M, N_CLASSES), dtype=torch.float32, device=st["dev"])
        with torch.no_grad(), torch.autocast(st["dev"].type, dtype=st["amp"],
                                             enabled=st["amp"] is not None):
            for s in range(0, self.n_target, self.eval_batch_size):
                xb = cdata.normalise(st["target"][s:s + self.eval_batch_size], st["mean"],
                                     st["std"])
                views = [xb, xb.flip(-1)] if self.tta else [xb]
                acc = 0.0
                for v in views:
                    v = v.repeat(1, M, 1, 1)
                    if st["cl"]:
                        v = v.contiguous(memory_format=torch.channels_last)
                    acc = acc + fwd(v).float()
                out[s:s + xb.shape[0]] = acc / len(views)
        net.train()
        return out.permute(1, 0, 2).cpu().numpy()
