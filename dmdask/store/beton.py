"""FFCV ``.beton`` files: MadryLab's regression data in and out, CIFAR images and labels in.

A ``.beton`` (FFCV, the loader of MadryLab's pipeline) is a header, a table of named, typed
fields, one fixed-size metadata record per sample, and a data region of pages that the
records point into. MadryLab's ``datamodels/regression/write_dataset.py`` writes one row per
trained model with three fields, which ``compute_datamodels.py`` (fast_l1) reads back:

* ``mask``     ``NDArrayField(bool, (n_train,))``: the model's training subset;
* ``targets``  ``NDArrayField(float32, (n_targets,))``: its margins;
* ``idx``      ``IntField``: the row's index in the ``.npy`` layout (fast_l1 keys its SAGA
  table by it, so it must be ``0 .. n-1``).

FFCV's CIFAR example (``examples/cifar/write_datasets.py``) writes ``image``
(``RGBImageField``: raw HWC uint8 pixels, or JPEG) and ``label`` (``IntField``).

Reading uses FFCV's own :class:`ffcv.reader.Reader` for the header, field table and
metadata, and plain positioned reads of each sample's bytes (what FFCV's decoders copy), so
nothing is compiled and rows stream one block at a time: memory depends on the block size,
not on the number of rows. Writing uses FFCV's :class:`ffcv.writer.DatasetWriter` with the
field types above, so the file is FFCV's own. Both need the ``ffcv`` extra.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from .. import optional
from ..errors import InputError, StoreError
from .madrylab import _fill, _tqdm, check_heldout_rows, import_options
from .runstore import (
    KIND_CODE,
    KINDS,
    _build_store,
    _meta_of,
    _open_group,
    building,
    jobless_description,
)

__all__ = ["BetonFile", "export_beton", "import_beton", "read_image_beton",
           "write_image_beton", "REGRESSION_FIELDS"]

REGRESSION_FIELDS = ("mask", "targets", "idx")
_JPG, _RAW = 0, 1  # FFCV's RGBImageField modes


def _ffcv():
    return optional.ffcv()


class BetonFile:
    """An FFCV ``.beton`` opened for positioned reads of its samples' fields.

    ``fields``: name -> FFCV field handler; ``metadata(name)``: that field's per-sample
    metadata column (a pointer for arrays and images, the value for ints and floats).
    """

    def __init__(self, path: str | os.PathLike):
        _ffcv()
        from ffcv.reader import Reader

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise InputError(f"{self.path}: no such .beton file")
        try:
            r = Reader(self.path)
        except Exception as e:  # a short or foreign file fails in numpy or an assert
            raise InputError(f"{self.path}: not an FFCV .beton file ({type(e).__name__}: "
                             f"{e})") from None
        self.n = int(r.num_samples)
        self.fields = dict(r.handlers)
        self._meta = r.metadata
        self._col = {name: f"f{i}" for i, name in enumerate(r.field_names)}
        alloc = np.asarray(r.alloc_table)
        order = np.argsort(alloc["ptr"], kind="stable")
        self._alloc_ptr = np.asarray(alloc["ptr"][order], np.uint64)
        self._alloc_size = np.asarray(alloc["size"][order], np.uint64)
        self._f = open(self.path, "rb")  # closed in close()

    def __enter__(self) -> BetonFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def kind(self, name: str) -> str:
        return type(self.fields[name]).__name__

    def metadata(self, name: str) -> np.ndarray:
        return self._meta[self._col[name]]

    def describe(self) -> str:
        parts = []
        for name, h in self.fields.items():
            k = type(h).__name__
            if k == "NDArrayField":
                k += f"({h.dtype}, {tuple(int(s) for s in h.shape)})"
            parts.append(f"{name}: {k}")
        return ", ".join(parts) or "no fields"

    def _read_at(self, ptr: int, out: np.ndarray, what: str) -> None:
        self._f.seek(int(ptr))
        got = self._f.readinto(out.reshape(-1).view(np.uint8))
        if got != out.nbytes:
            raise InputError(f"{self.path}: truncated ({what} is cut off)")

    def read_array(self, name: str, rows: np.ndarray) -> np.ndarray:
        """An ``NDArrayField``'s values at sample positions ``rows``: ``[len(rows), *shape]``."""
        h = self.fields[name]
        shape = tuple(int(s) for s in h.shape)
        out = np.empty((len(rows),) + shape, h.dtype)
        ptrs = self.metadata(name)[np.asarray(rows, np.int64)]
        for k, ptr in enumerate(ptrs):
            self._read_at(ptr, out[k], f"sample {int(rows[k])}'s {name}")
        return out

    def _size_at(self, ptr: int) -> int:
        i = int(np.searchsorted(self._alloc_ptr, np.uint64(ptr)))
        if i >= self._alloc_ptr.size or int(self._alloc_ptr[i]) != int(ptr):
            raise InputError(f"{self.path}: no allocation at {ptr} (a damaged file)")
        return int(self._alloc_size[i])

    def read_image(self, name: str, row: int) -> np.ndarray:
        """An ``RGBImageField``'s image at sample ``row``: uint8 ``[H, W, 3]`` (RGB)."""
        m = self.metadata(name)[int(row)]
        h, w, mode = int(m["height"]), int(m["width"]), int(m["mode"])
        if mode == _RAW:
            img = np.empty((h, w, 3), np.uint8)
            self._read_at(m["data_ptr"], img, f"sample {row}'s {name}")
            return img
        if mode != _JPG:
            raise InputError(f"{self.path}: sample {row}'s {name} has unknown image mode {mode}")
        buf = np.empty(self._size_at(int(m["data_ptr"])), np.uint8)
        self._read_at(m["data_ptr"], buf, f"sample {row}'s {name}")
        from ffcv.libffcv import imdecode  # FFCV's own (libjpeg-turbo) decoder, as its loader

        img = np.empty((h, w, 3), np.uint8)
        if imdecode(buf, img, h, w, h, w, 0, 0, 1, 1, False, False) != 0:
            raise InputError(f"{self.path}: sample {row}'s {name} is not a decodable JPEG")
        return img


def _need_fields(bf: BetonFile, want: dict[str, str], what: str) -> None:
    """Refuse (one line) a file whose fields are missing or of another FFCV type."""
    missing = [n for n in want if n not in bf.fields]
    wrong = [f"{n} is {bf.kind(n)}, not {k}" for n, k in want.items()
             if n in bf.fields and bf.kind(n) != k]
    if missing or wrong:
        detail = "; ".join(([f"no field {', '.join(repr(m) for m in missing)}"] if missing else [])
                           + wrong)
        raise InputError(f"{bf.path}: not {what} ({detail}; the file has {bf.describe()})")


# --------------------------------------------------------------------------- regression in


class _BetonRows:
    """Row blocks of one ``NDArrayField``, in model order (the interface of madrylab's rows)."""

    def __init__(self, bf: BetonFile, name: str, order: np.ndarray):
        h = bf.fields[name]
        self.bf, self.name, self.order = bf, name, order
        self.path = f"{bf.path} (field {name!r})"
        self.dtype = np.dtype(h.dtype)
        self.shape = (bf.n,) + tuple(int(s) for s in h.shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.bf.read_array(self.name, self.order[start:stop])


class _AllDone:
    """Completion flags of a ``.beton``: every row was written, so every row is complete."""

    dtype = np.dtype(bool)
    path = "(all rows complete)"

    def __init__(self, n: int):
        self.shape = (n,)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ones(stop - start, bool)


def _open_regression(path: str) -> tuple[BetonFile, np.ndarray]:
    bf = BetonFile(path)
    try:
        _need_fields(bf, {"mask": "NDArrayField", "targets": "NDArrayField", "idx": "IntField"},
                     "a MadryLab regression .beton (fields mask, targets, idx as "
                     "datamodels/regression/write_dataset.py writes them)")
        m, t = bf.fields["mask"], bf.fields["targets"]
        if len(m.shape) != 1 or (m.dtype != bool and m.dtype.kind not in "iu"):
            raise InputError(f"{path}: field 'mask' must be a 1-d bool array per row, got "
                             f"{m.dtype} {tuple(m.shape)}")
        if len(t.shape) != 1 or t.dtype.name not in ("float16", "float32", "float64"):
            raise InputError(f"{path}: field 'targets' must be a 1-d float array per row, got "
                             f"{t.dtype} {tuple(t.shape)}")
        if int(m.shape[0]) < 1 or int(t.shape[0]) < 1:
            raise InputError(f"{path}: empty rows (mask {tuple(m.shape)}, targets "
                             f"{tuple(t.shape)})")
        idx = np.asarray(bf.metadata("idx"), np.int64)
        order = np.argsort(idx, kind="stable")
        if not np.array_equal(idx[order], np.arange(bf.n)):
            dup = np.unique(idx[order][np.flatnonzero(idx[order] != np.arange(bf.n))[:1]])
            raise InputError(f"{path}: field 'idx' must number the rows 0..{bf.n - 1} once each "
                             f"(as write_dataset.py does); found {dup.tolist()} out of place")
    except BaseException:
        bf.close()
        raise
    return bf, order


def import_beton(
    beton: str | os.PathLike,
    store_path: str | os.PathLike,
    *,
    alpha: float | None = None,
    block_size: int | None = None,
    heldout_rows: int = 0,
    progress: bool = True,
) -> str:
    """Stream a MadryLab regression ``.beton`` into a new run store (no job); return its path.

    Row ``idx = i`` becomes model ``i`` (a ``"random"`` model; the last ``heldout_rows`` are
    ``"heldout"``), its ``mask`` the model's mask and its ``targets`` its margins (float32).
    A ``.beton`` has no completion flags, so every row is complete. α and ``sampling`` are
    recorded as :func:`dmdask.store.madrylab.import_madrylab` does. Rows are read one block at
    a time. Refuses a missing or foreign file, missing or mistyped fields, ``idx`` that is not
    ``0..n-1``, non-finite targets, an existing ``store_path``; a failed import leaves nothing.
    """
    src = os.path.abspath(os.fspath(beton))
    path, alpha, block = import_options(store_path, alpha, block_size)
    bf, order = _open_regression(src)
    try:
        heldout_rows = check_heldout_rows(heldout_rows, bf.n, src)
        masks = _BetonRows(bf, "mask", order)
        margins = _BetonRows(bf, "targets", order)
        n_train, n_target = masks.shape[1], margins.shape[1]
        source = {"format": "ffcv", "file": src, "margin_dtype": margins.dtype.name,
                  "heldout_rows": int(heldout_rows)}
        with building(path) as draft:
            _build_store(draft, jobless_description(path, n_train, n_target), job=None, seed=0,
                         sampling="fixed", alpha=alpha, block=block, source=source,
                         creation=None)
            _fill(draft, masks, margins, _AllDone(bf.n), alpha=alpha, block=block,
                  source=source, progress=progress, heldout_rows=heldout_rows)
    finally:
        bf.close()
    return path


# --------------------------------------------------------------------------- regression out


def _page_size(row_bytes: int) -> int:
    """FFCV's default page (8 MiB), or the next power of two that holds one whole row."""
    page = 1 << 23
    while page < row_bytes + 64:
        page <<= 1
    return page


class _StoreRows:
    """A run store's chosen models as FFCV samples ``(mask, targets, idx)``; reads one zarr
    block at a time and keeps it while consecutive rows fall in it (FFCV asks in order)."""

    def __init__(self, store: str, models: np.ndarray, block: int):
        self.store, self.models, self.block = store, models, block
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.models.size)

    def __getitem__(self, i: int):
        m = int(self.models[i])
        b = m // self.block
        if self._cached is None or self._cached[0] != b:
            g = _open_group(self.store)
            s, e = b * self.block, (b + 1) * self.block
            self._cached = (b, np.asarray(g["mask"][s:e], bool),
                            np.asarray(g["margin"][s:e], np.float32))
        _, mk, mg = self._cached
        r = m - b * self.block
        return mk[r], mg[r], int(i)


def export_beton(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    kinds: tuple[str, ...] | None = None,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a run store's completed models as a MadryLab regression ``.beton``.

    One sample per completed model (of ``kinds``, default all), in model order, with the
    fields of ``write_dataset.py``: ``mask`` (bool ``[n_train]``), ``targets`` (float32
    ``[n_target]``) and ``idx`` (the sample's position, 0..k-1, as fast_l1 needs).
    ``compute_datamodels.py`` fits on the first ``num_train`` samples and validates on the
    next ``num_val``, so put the models in that order (``kinds=("random",)`` for the fitting
    models only). Written by FFCV's ``DatasetWriter`` (``workers`` processes) to a temporary
    file renamed into place. Refuses an existing ``out`` unless ``overwrite``. Returns
    ``{"path", "n_models", "models", "kinds"}``.
    """
    _ffcv()
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    store = os.fspath(store_path)
    dst = os.fspath(out)
    if os.path.isdir(dst):  # --overwrite replaces a file; a folder (the store itself?) never
        raise InputError(f"{dst}: is a directory; a .beton is one file")
    if os.path.lexists(dst) and not overwrite:
        raise InputError(f"{dst}: already exists; refusing to overwrite it (pass overwrite / "
                         f"--overwrite)")
    if kinds is not None:
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise InputError(f"unknown model kinds {bad}; kinds are {', '.join(KINDS)}")
    group = _open_group(store)
    meta = _meta_of(group, store)
    n, n_train, n_target, block = (int(meta[k]) for k in ("n_models", "n_train", "n_target",
                                                           "block_size"))
    done = np.asarray(group["completed"][:n], bool)
    codes = np.asarray(group["kind"][:n]).astype(np.int64)
    keep = done.copy()
    if kinds is not None:
        keep &= np.isin(codes, [KIND_CODE[k] for k in kinds])
    models = np.flatnonzero(keep)
    if models.size == 0:
        raise StoreError(f"{store}: no completed models"
                         + (f" of kinds {', '.join(kinds)}" if kinds else "") + " to export")
    counts = {KINDS[c] if 0 <= c < len(KINDS) else "unset": int(k)
              for c, k in zip(*np.unique(codes[models], return_counts=True), strict=True)}
    fields = {"mask": NDArrayField(dtype=np.dtype("bool"), shape=(n_train,)),
              "targets": NDArrayField(dtype=np.dtype("float32"), shape=(n_target,)),
              "idx": IntField()}
    tmp = f"{dst}.writing-{os.getpid()}"
    try:
        writer = DatasetWriter(tmp, fields, page_size=_page_size(n_train + 4 * n_target),
                               num_workers=max(1, int(workers)))
        if not progress:
            with _quiet_tqdm():
                writer.from_indexed_dataset(_StoreRows(store, models, block), chunksize=block)
        else:
            writer.from_indexed_dataset(_StoreRows(store, models, block), chunksize=block)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    other = {k: c for k, c in counts.items() if k != "random"}
    if other:
        detail = ", ".join(f"{c} {k}" for k, c in other.items())
        warnings.warn(f"{store}: {detail} of the {models.size} exported models are not "
                      f"'random' α-subset models; a .beton has no kinds (order them, or pass "
                      f"kinds=('random',) / --kind random)", UserWarning, stacklevel=2)
    return {"path": dst, "n_models": int(models.size), "models": models, "kinds": counts}


class _quiet_tqdm:
    """Silence the progress bar DatasetWriter draws (it has no option for it)."""

    def __enter__(self):
        import ffcv.writer as w

        self.w, self.orig = w, w.tqdm
        w.tqdm = lambda *a, **k: self.orig(*a, **{**k, "disable": True})

    def __exit__(self, *exc):
        self.w.tqdm = self.orig


# --------------------------------------------------------------------------- images


def read_image_beton(path: str | os.PathLike, *, image: str = "image", label: str = "label",
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of an FFCV image ``.beton`` (FFCV's CIFAR example layout):
    ``(x uint8 [n, 3, H, W], y int64 [n])``. Every image must have the same size; raw and
    JPEG samples are both read (JPEG by FFCV's own libjpeg-turbo decoder)."""
    with BetonFile(path) as bf:
        _need_fields(bf, {image: "RGBImageField", label: "IntField"},
                     f"an image .beton (fields {image!r}: RGBImageField and {label!r}: "
                     "IntField, as FFCV's CIFAR example writes them)")
        md = bf.metadata(image)
        hs, ws = np.unique(md["height"]), np.unique(md["width"])
        if bf.n and (hs.size != 1 or ws.size != 1):
            raise InputError(f"{bf.path}: images of several sizes (heights {hs[:5].tolist()}, "
                             f"widths {ws[:5].tolist()}); need one size")
        h, w = (int(hs[0]), int(ws[0])) if bf.n else (0, 0)
        x = np.empty((bf.n, 3, h, w), np.uint8)
        with _tqdm(bf.n, "read", progress) as bar:
            for i in range(bf.n):
                x[i] = bf.read_image(image, i).transpose(2, 0, 1)
                bar.update(1)
        y = np.asarray(bf.metadata(label), np.int64).copy()
    return x, y


class _Images:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return np.ascontiguousarray(self.x[i].transpose(1, 2, 0)), int(self.y[i])


def write_image_beton(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, *,
                      write_mode: str = "raw", jpeg_quality: int = 90,
                      overwrite: bool = False, workers: int = 1) -> str:
    """Write images ``x`` (uint8 ``[n, 3, H, W]``) and labels ``y`` as FFCV's CIFAR example
    does (``image``: ``RGBImageField(write_mode)``, ``label``: ``IntField``)."""
    _ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    dst = os.fspath(path)
    if os.path.lexists(dst) and not overwrite:
        raise InputError(f"{dst}: already exists; refusing to overwrite it")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or y.shape != (x.shape[0],):
        raise InputError(f"images must be uint8 [n, 3, H, W] with labels [n], got {x.dtype} "
                         f"{x.shape} and {y.shape}")
    tmp = f"{dst}.writing-{os.getpid()}"
    try:
        DatasetWriter(tmp, {"image": RGBImageField(write_mode=write_mode,
                                                    jpeg_quality=jpeg_quality),
                            "label": IntField()}, num_workers=max(1, int(workers))
                      ).from_indexed_dataset(_Images(x, y))
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dst
