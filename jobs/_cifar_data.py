"""CIFAR-10 data for :mod:`jobs.cifar10`: the python pickle batches, a synthetic stand-in,
and batched on-device augmentation (no torchvision).

* :func:`load_cifar10` reads the standard "CIFAR-10 python version" directory
  (``data_batch_1`` .. ``data_batch_5`` and ``test_batch``: pickled dicts whose ``data`` is
  uint8 ``[10000, 3072]``, each row the 1024 red, then green, then blue pixels of a 32x32 image
  in row-major order, and ``labels`` a list of ints), or FFCV's ``cifar_train.beton`` and
  ``cifar_test.beton`` as FFCV's (and MadryLab's) CIFAR example writes them (``image``:
  ``RGBImageField``, HWC uint8, raw or JPEG; ``label``: ``IntField``), read with
  :func:`dmdask.store.beton.read_image_beton` (the ``ffcv`` extra). Nothing is ever downloaded.
* :func:`synthetic_cifar` makes a deterministic CIFAR-shaped dataset with class structure that
  a small convnet learns in a few epochs (a class colour, a class grating, random shifts and
  noise), for CPU tests and for GPU throughput runs where the real data is absent.
* :func:`augment_batch` does 4-pixel random crops of reflection-padded images, horizontal
  flips and Cutout for a whole batch of images in one gather, from per-image parameters that
  the caller draws (on the CPU, with NumPy, so they are the same on every device).
"""

from __future__ import annotations

import os
import pickle

import numpy as np

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BETON_FILES = ("cifar_train.beton", "cifar_test.beton")
# Per-channel mean/std of the CIFAR-10 training images, on the 0..255 scale.
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32) * 255
STD = np.array([0.2470, 0.2435, 0.2616], np.float32) * 255
PAD = 4


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (no 'data'/'labels')")
    x = np.asarray(d["data"], np.uint8)
    y = np.asarray(d["labels"], np.int64)
    if x.ndim != 2 or x.shape[1] != 3072 or y.shape != (x.shape[0],):
        raise ValueError(f"{path}: data {x.shape} / labels {y.shape} are not CIFAR-10 shaped")
    return x.reshape(-1, 3, 32, 32), y


def load_cifar10_beton(data_dir: str):
    """``(x_train, y_train, x_test, y_test)`` from FFCV's ``cifar_train.beton`` and
    ``cifar_test.beton`` in ``data_dir``."""
    from dmdask.store.beton import read_image_beton

    out = []
    for name in BETON_FILES:
        x, y = read_image_beton(os.path.join(data_dir, name))
        if x.shape[1:] != (3, 32, 32):
            raise ValueError(f"{os.path.join(data_dir, name)}: images are {x.shape[2:]}, "
                             "not CIFAR-10's 32x32")
        out += [x, y]
    for y in (out[1], out[3]):
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{data_dir}: labels outside 0..9")
    return tuple(out)


def load_cifar10(data_dir: str):
    """``(x_train uint8 [n,3,32,32], y_train int64 [n], x_test, y_test)`` from ``data_dir``:
    the python batches, else FFCV's ``cifar_train.beton`` + ``cifar_test.beton``."""
    data_dir = os.path.expanduser(str(data_dir))
    if os.path.isdir(os.path.join(data_dir, "cifar-10-batches-py")):
        data_dir = os.path.join(data_dir, "cifar-10-batches-py")
    has_batches = any(os.path.isfile(os.path.join(data_dir, f)) for f in TRAIN_FILES)
    if not has_batches and all(os.path.isfile(os.path.join(data_dir, f)) for f in BETON_FILES):
        return load_cifar10_beton(data_dir)
    missing = [f for f in TRAIN_FILES + (TEST_FILE,) if not os.path.isfile(os.path.join(data_dir, f))]
    if missing:
        raise FileNotFoundError(
            f"{data_dir!r} is not a CIFAR-10 python directory: missing {', '.join(missing)} "
            "(dmdask never downloads data; point data_dir at an extracted cifar-10-python.tar.gz, "
            f"or at a directory with FFCV's {' and '.join(BETON_FILES)})")
    parts = [_read_batch(os.path.join(data_dir, f)) for f in TRAIN_FILES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_batch(os.path.join(data_dir, TEST_FILE))
    for y in (y_train, y_test):
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{data_dir}: labels outside 0..9")
    return x_train, y_train, x_test, y_test


def write_cifar10_batches(data_dir: str, x_train, y_train, x_test, y_test) -> None:
    """Write arrays in the CIFAR-10 python format (5 training batches + ``test_batch``)."""
    os.makedirs(data_dir, exist_ok=True)
    chunks = np.array_split(np.arange(len(x_train)), 5)
    files = [(f, x_train[c], y_train[c]) for f, c in zip(TRAIN_FILES, chunks, strict=True)]
    for name, x, y in files + [(TEST_FILE, x_test, y_test)]:
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in y],
             b"data": np.ascontiguousarray(x, np.uint8).reshape(len(x), 3072),
             b"filenames": [f"{name}_{i}.png".encode() for i in range(len(x))]}
        with open(os.path.join(data_dir, name), "wb") as f:
            pickle.dump(d, f, protocol=2)


def synthetic_cifar(n_train: int = 256, n_test: int = 64, seed: int = 0, noise: float = 24.0):
    """A deterministic CIFAR-shaped dataset: ``(x_train, y_train, x_test, y_test)``.

    Class ``c`` has a mean colour (the 8 corners of the cube ``{60, 195}^3`` plus two mixed
    colours, assigned to classes by ``seed``) and an oriented sinusoidal grating of its own; an
    image is its class pattern at a random phase and a random brightness (+-10%), plus Gaussian
    noise (std ``noise`` on the 0..255 scale), as uint8. Labels cycle through the classes and
    are then permuted, so every class appears. The colours are far apart, so a small net
    learns the classes in a few epochs whatever the augmentation does.
    """
    rng = np.random.default_rng(seed)
    n = int(n_train) + int(n_test)
    corners = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], np.float32)
    palette = np.concatenate([60 + 135 * corners, [[128, 60, 128], [60, 128, 195]]])
    colours = palette[rng.permutation(10)].astype(np.float32)
    theta = rng.uniform(0, np.pi, size=10)
    freq = rng.uniform(0.15, 0.6, size=10)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    r, c = np.meshgrid(np.arange(32, dtype=np.float32), np.arange(32, dtype=np.float32),
                       indexing="ij")
    x = np.empty((n, 3, 32, 32), np.uint8)
    for s in range(0, n, 4096):
        yy = y[s:s + 4096]
        m = yy.size
        phase = rng.uniform(0, 2 * np.pi, size=(m, 1, 1)).astype(np.float32)
        proj = (np.cos(theta[yy])[:, None, None] * r + np.sin(theta[yy])[:, None, None] * c)
        grating = np.sin(freq[yy][:, None, None] * proj + phase).astype(np.float32)  # [m,32,32]
        bright = rng.uniform(0.9, 1.1, size=(m, 1, 1, 1)).astype(np.float32)
        img = colours[yy][:, :, None, None] * bright + 30.0 * grating[:, None]
        img += rng.standard_normal((m, 3, 32, 32), dtype=np.float32) * np.float32(noise)
        x[s:s + m] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def reflect_pad(x: np.ndarray, pad: int = PAD) -> np.ndarray:
    """Reflection-pad uint8 images [n, 3, 32, 32] by ``pad`` pixels on each side."""
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")


def draw_augmentation(rng: np.random.Generator, n: int, *, crop: bool = True,
                      flip: bool = True, cutout: int = 8) -> np.ndarray:
    """Per-image augmentation parameters, uint8 ``[n, 5]``: crop offsets (dy, dx) in
    ``[0, 2*PAD]``, flip bit, Cutout centre (cy, cx) in ``[0, 32)``."""
    a = np.empty((n, 5), np.uint8)
    a[:, 0:2] = rng.integers(0, 2 * PAD + 1, size=(n, 2)) if crop else PAD
    a[:, 2] = rng.integers(0, 2, size=n) if flip else 0
    a[:, 3:5] = rng.integers(0, 32, size=(n, 2)) if cutout > 0 else 0
    return a


def augment_batch(padded, index, params, mean, std, *, cutout: int = 8, dtype=None):
    """Augmented, normalised images ``[K, 3, 32, 32]`` for training.

    ``padded`` uint8 ``[n, 3, 40, 40]`` (the reflection-padded training set, on the device),
    ``index`` int64 ``[K]`` rows of it, ``params`` ``[K, 5]`` from :func:`draw_augmentation`
    (any integer dtype, same device), ``mean``/``std`` float tensors ``[1, 3, 1, 1]``. Crop and
    flip are one gather; Cutout zeroes a ``cutout`` x ``cutout`` square (clipped at the
    border) after normalisation, i.e. fills it with the mean colour.
    """
    import torch

    dev = padded.device
    p = params.long()
    ar = torch.arange(32, device=dev)
    rows = p[:, 0:1] + ar  # [K, 32]
    cols = torch.where(p[:, 2:3].bool(), p[:, 1:2] + 31 - ar, p[:, 1:2] + ar)
    ch = torch.arange(3, device=dev)
    x = padded[index[:, None, None, None], ch[None, :, None, None], rows[:, None, :, None],
               cols[:, None, None, :]]
    x = (x.to(torch.float32) - mean) / std
    if cutout > 0:
        lo_r = p[:, 3:4] - cutout // 2
        lo_c = p[:, 4:5] - cutout // 2
        in_r = (ar >= lo_r) & (ar < lo_r + cutout)  # [K, 32]
        in_c = (ar >= lo_c) & (ar < lo_c + cutout)
        hole = in_r[:, None, :, None] & in_c[:, None, None, :]
        x = x.masked_fill(hole, 0.0)
    return x if dtype is None else x.to(dtype)


def normalise(x_uint8, mean, std, dtype=None):
    """``(x - mean) / std`` of uint8 images on their device."""
    import torch

    x = (x_uint8.to(torch.float32) - mean) / std
    return x if dtype is None else x.to(dtype)
