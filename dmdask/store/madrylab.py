"""Import and export of the MadryLab datamodels layout.

MadryLab/datamodels (``write_datasets`` / ``initialize_store``) keeps a training run as a
directory with one ``.npy`` per key, each made with ``np.lib.format.open_memmap``:

* ``masks.npy``       bool ``[models, train]``: the training subset of each model;
* ``margins.npy``     float16 or float32 ``[models, targets]`` (other keys may sit beside it;
  ``margins_key`` picks the one to use);
* ``_completed.npy``  bool ``[models]``: rows whose ``_completed`` is false were never written
  (their margins are the memmap's zeros).

:func:`import_madrylab` turns such a directory into a run store without a job
(:func:`dmdask.create_jobless_store`): every row becomes a ``"random"`` model, incomplete rows
stay incomplete (``completed`` false, margins NaN). :func:`export_madrylab` writes the layout
back; a directory imported and exported is byte-identical to the original (margins in their
original dtype, incomplete rows' margins zero).

Both stream one block of rows at a time: the ``.npy`` headers are read with
``np.load(..., mmap_mode="r")`` and the rows with plain positioned reads and writes at the
data offset, so neither the arrays nor their pages (which a memmap would keep resident, and
count in the process's RSS) accumulate: peak memory depends on the block size and the row
widths, not on the number of models.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any

import numpy as np

from .. import config
from ..errors import InputError, StoreError
from .runstore import (
    KIND_CODE,
    KINDS,
    _block_pieces,
    _build_store,
    _meta_of,
    _open_group,
    _resize_models,
    _set_meta,
    building,
    jobless_description,
)
from .sampling import check_alpha

__all__ = ["export_madrylab", "import_madrylab"]

MASKS, COMPLETED = "masks", "_completed"
_MARGIN_DTYPES = ("float16", "float32", "float64")


class _NpyRows:
    """Row blocks of a C-ordered ``.npy`` file read by positioned reads (no mapping kept)."""

    def __init__(self, path: str, what: str):
        self.path, self.name = path, os.path.basename(path)
        if not os.path.isfile(path):
            raise InputError(f"{path}: missing ({what} of the MadryLab layout)")
        try:
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise InputError(f"{path}: not a readable .npy array ({e})") from None
        if not isinstance(mm, np.ndarray):
            raise InputError(f"{path}: not a single .npy array")
        self.shape, self.dtype = tuple(mm.shape), mm.dtype
        if self.dtype.hasobject or self.dtype.fields is not None or self.dtype.subdtype:
            raise InputError(f"{path}: unsupported dtype {self.dtype}")
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        self.row_bytes = self.row_items * self.dtype.itemsize
        contiguous = mm.ndim < 2 or mm.flags.c_contiguous or mm.size == 0
        # Fortran-ordered files (MadryLab never writes them) are sliced through the memmap.
        self._mm = None if contiguous else mm
        self.offset = int(getattr(mm, "offset", 0))
        self._f = open(path, "rb") if contiguous else None  # closed in close()
        del mm

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        shape = (stop - start,) + self.shape[1:]
        if self._mm is not None:
            return np.array(self._mm[start:stop])
        out = np.empty(shape, self.dtype)
        if out.size:
            self._f.seek(self.offset + start * self.row_bytes)
            got = self._f.readinto(out.reshape(-1).view(np.uint8))
            if got != out.nbytes:
                raise InputError(f"{self.path}: truncated (rows {start}..{stop - 1} are cut off)")
        return out

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        self._mm = None


def _bool_rows(a: np.ndarray, src: _NpyRows, start: int) -> np.ndarray:
    """``a`` as bool, refusing values other than 0/1 (naming the file and first bad row)."""
    if a.dtype == bool:
        return a
    ok = (a == 0) | (a == 1)
    if not ok.all():
        bad = np.argwhere(~ok)[0]
        raise InputError(
            f"{src.path}: must be bool or 0/1, but row {start + int(bad[0])} holds "
            f"{a[tuple(bad)]!r} (dtype {src.dtype})"
        )
    return a.astype(bool)


def _tqdm(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="model", desc=desc, disable=not progress, smoothing=0.1)


def _fmt_rows(rows: np.ndarray, k: int = 6) -> str:
    rows = [int(r) for r in rows]
    return ", ".join(map(str, rows[:k])) + (f", … ({len(rows)} in all)" if len(rows) > k else "")


# --------------------------------------------------------------------------- import


def _open_source(src: str, margins_key: str) -> tuple[_NpyRows, _NpyRows, _NpyRows]:
    if not os.path.isdir(src):
        raise InputError(f"{src}: no such directory (expected a MadryLab datamodels directory "
                         f"with {MASKS}.npy, {margins_key}.npy and {COMPLETED}.npy)")
    if not isinstance(margins_key, str) or not margins_key or margins_key in (MASKS, COMPLETED):
        raise InputError(f"margins_key must name the margins array, got {margins_key!r}")
    names = {MASKS: "masks", margins_key: "margins", COMPLETED: "completion flags"}
    missing = [f"{k}.npy" for k in names if not os.path.isfile(os.path.join(src, f"{k}.npy"))]
    if missing:
        present = sorted(f for f in os.listdir(src) if f.endswith(".npy"))
        raise InputError(f"{src}: missing {', '.join(missing)} (found: "
                         f"{', '.join(present) or 'no .npy files'})")
    opened: list[_NpyRows] = []
    try:
        for k, what in names.items():
            opened.append(_NpyRows(os.path.join(src, f"{k}.npy"), what))
        masks, margins, completed = opened
        if len(masks.shape) != 2:
            raise InputError(f"{masks.path}: must be 2-d [models, train], got shape {masks.shape}")
        if masks.dtype != bool and masks.dtype.kind not in "iuf":
            raise InputError(f"{masks.path}: must be bool (or 0/1), got dtype {masks.dtype}")
        if len(margins.shape) != 2:
            raise InputError(f"{margins.path}: must be 2-d [models, targets], got shape "
                             f"{margins.shape}")
        if margins.dtype.name not in _MARGIN_DTYPES:
            raise InputError(f"{margins.path}: margins must be float16 or float32, got dtype "
                             f"{margins.dtype}")
        if len(completed.shape) != 1:
            raise InputError(f"{completed.path}: must be 1-d [models], got shape "
                             f"{completed.shape}")
        if completed.dtype != bool and completed.dtype.kind not in "iu":
            raise InputError(f"{completed.path}: must be bool, got dtype {completed.dtype}")
        rows = {a.name: len(a) for a in opened}
        if len(set(rows.values())) != 1:
            detail = ", ".join(f"{n} has {r} rows" for n, r in rows.items())
            raise InputError(f"{src}: row counts (models) disagree: {detail}; every array of "
                             f"the layout must have one row per model")
        if masks.shape[1] < 1 or margins.shape[1] < 1:
            raise InputError(f"{src}: empty rows ({masks.name} {masks.shape}, {margins.name} "
                             f"{margins.shape}); need at least one train example and target")
    except BaseException:
        for a in opened:
            a.close()
        raise
    return masks, margins, completed


def import_options(store_path, alpha: float | None, block_size: int | None
                   ) -> tuple[str, float | None, int]:
    """The checked options of an import into a new store: its path (refused if anything is
    there), α and the block size (default the setting ``dmdask.store.block-size``)."""
    path = os.fspath(store_path)
    if os.path.lexists(path):
        raise InputError(f"{path}: already exists; refusing to import over it")
    if alpha is not None:
        alpha = check_alpha(alpha)
    block = int(block_size or config.get("store.block-size", 256))
    if block < 1:
        raise InputError(f"block_size must be positive, got {block}")
    return path, alpha, block


def import_madrylab(
    src_dir: str | os.PathLike,
    store_path: str | os.PathLike,
    *,
    alpha: float | None = None,
    block_size: int | None = None,
    margins_key: str = "margins",
    heldout_rows: int = 0,
    progress: bool = True,
) -> str:
    """Turn a MadryLab datamodels directory into a run store without a job; return its path.

    Reads ``masks.npy``, ``<margins_key>.npy`` and ``_completed.npy`` one block of rows at a
    time (memory independent of the number of models). Every row becomes a ``"random"`` model
    whose ``alpha`` is the masks' overall density (over all rows), or ``alpha`` if given;
    that value is also the store's default α (unless the density is 0 or 1, which no α-subset
    sampler can draw: then the store has no default α). ``sampling`` is recorded as ``"fixed"`` when
    every mask has the same number of ones, else ``"bernoulli"``. Rows whose ``_completed`` is
    false stay incomplete (``completed`` false, margins NaN); completed rows' margins are stored
    as float32. Seeds are 0 (unknown). ``source`` in the store's attributes records the
    directory, the margins key and their dtype (so :func:`export_madrylab` restores it).
    ``heldout_rows = N`` marks the last N rows as ``"heldout"`` models (MadryLab's releases
    append their evaluation models to every matrix), so the store can be evaluated.

    Refuses (:class:`InputError`, before or instead of leaving any store behind): a missing
    directory or file, masks that are not 2-d bool/0-1, margins that are not 2-d float, row
    counts that disagree, NaN/inf margins in completed rows, an existing ``store_path``.
    The store is built beside ``store_path`` and renamed into place when complete, so an
    import that is killed leaves nothing there, and rerunning it does the import afresh.
    """
    src = os.path.abspath(os.fspath(src_dir))
    path, alpha, block = import_options(store_path, alpha, block_size)
    masks, margins, completed = _open_source(src, margins_key)
    n, n_train = masks.shape
    try:
        heldout_rows = check_heldout_rows(heldout_rows, n, src)
    except InputError:
        for arr in (masks, margins, completed):
            arr.close()
        raise
    n_target = margins.shape[1]
    source = {"format": "madrylab", "dir": src, "margin_dtype": margins.dtype.name,
              "margins_key": margins_key}
    try:
        # built beside its path and renamed into place: a killed import leaves no store there
        with building(path) as draft:
            _build_store(draft, jobless_description(path, n_train, n_target), job=None, seed=0,
                         sampling="fixed", alpha=alpha, block=block, source=source,
                         creation=None)
            _fill(draft, masks, margins, completed, alpha=alpha, block=block, source=source,
                  progress=progress, heldout_rows=heldout_rows)
    finally:
        for arr in (masks, margins, completed):
            arr.close()
    return path


def check_heldout_rows(heldout_rows, n: int, where: str) -> int:
    """``heldout_rows`` as an int in ``[0, n)``, or an InputError naming ``where``."""
    try:
        h = int(heldout_rows or 0)
    except (TypeError, ValueError):
        raise InputError(f"heldout_rows must be an integer, got {heldout_rows!r}") from None
    if h < 0 or (h and h >= n):
        raise InputError(f"{where}: heldout_rows={h} must be >= 0 and leave at least one of "
                         f"the {n} rows as a fitting ('random') model")
    return h


def _fill(draft: str, masks, margins, completed, *,
          alpha: float | None, block: int, source: dict[str, Any], progress: bool,
          heldout_rows: int = 0) -> None:
    """Copy the layout's rows into the empty store ``draft``, then commit its models.

    ``masks``/``margins``/``completed`` are row sources like :class:`_NpyRows` (``shape``,
    ``dtype``, ``path``, ``read(start, stop)``); the last ``heldout_rows`` rows become
    ``"heldout"`` models, the others ``"random"``."""
    n, n_train = masks.shape
    first_heldout = n - heldout_rows
    group = _open_group(draft, "r+")
    meta = _meta_of(group, draft)
    _resize_models(group, n)
    # fetch the arrays after resizing: a zarr.Array keeps the shape it was opened with
    arrays = {k: group[k] for k in ("mask", "margin", "completed", "seed", "kind", "alpha",
                                    "replicate_of")}
    if any(a.shape[0] != n for a in arrays.values()):
        raise StoreError(f"{draft}: resizing to {n} models failed")
    ones, row_min, row_max = 0, n_train + 1, -1
    with _tqdm(n, "import", progress) as bar:
        for s, e in _block_pieces(0, n, block):
            mk = _bool_rows(masks.read(s, e), masks, s)
            done = _bool_rows(completed.read(s, e), completed, s)
            mg = margins.read(s, e)
            with np.errstate(over="ignore", invalid="ignore"):
                mg32 = mg.astype(np.float32)
            bad = ~np.isfinite(mg32) & done[:, None]
            if bad.any():
                rows = np.unique(np.nonzero(bad)[0]) + s
                what = "NaN or inf"
                if np.isfinite(mg[bad]).all():  # finite float64 that overflow float32
                    what = "beyond the float32 range"
                raise InputError(
                    f"{margins.path}: {int(bad.sum())} margins of completed models are "
                    f"{what} (rows {_fmt_rows(rows)}); {COMPLETED}.npy marks them done"
                )
            mg32[~done] = np.nan
            sums = mk.sum(axis=1)
            if sums.size:
                ones += int(sums.sum())
                row_min, row_max = min(row_min, int(sums.min())), max(row_max, int(sums.max()))
            m = e - s
            arrays["mask"][s:e] = mk
            arrays["seed"][s:e] = np.zeros(m, np.uint64)
            arrays["kind"][s:e] = np.where(np.arange(s, e) >= first_heldout,
                                           KIND_CODE["heldout"], KIND_CODE["random"]).astype(np.int8)
            arrays["replicate_of"][s:e] = np.full(m, -1, np.int64)
            if alpha is not None:
                arrays["alpha"][s:e] = np.full(m, alpha, np.float32)
            arrays["margin"][s:e] = mg32
            arrays["completed"][s:e] = done
            bar.update(m)
    density = ones / (n * n_train) if n else None
    a = alpha if alpha is not None else density
    if alpha is None and density is not None:
        for s, e in _block_pieces(0, n, block):
            arrays["alpha"][s:e] = np.full(e - s, density, np.float32)
    meta["alpha"] = a if a is not None and 0.0 < a < 1.0 else None
    meta["sampling"] = "fixed" if n == 0 or row_min == row_max else "bernoulli"
    meta["source"] = {**source, "density": density}
    meta["n_models"] = n
    fmt = source.get("format", "madrylab")
    meta["additions"] = [{"kind": k, "start": s, "stop": e,
                          "alpha": None if a is None else float(a), "source": fmt}
                         for k, s, e in (("random", 0, first_heldout), ("heldout", first_heldout, n))
                         if e > s or (k == "random" and n == 0)]
    _set_meta(group, meta)


# --------------------------------------------------------------------------- export


def _new_npy(path: str, dtype, shape: tuple[int, ...]):
    """Create ``path`` as MadryLab does (``open_memmap``) and return (file, data offset)."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    offset = int(mm.offset)
    del mm
    return open(path, "r+b"), offset  # closed by the caller


def export_madrylab(
    store_path: str | os.PathLike,
    dst_dir: str | os.PathLike,
    *,
    margins_key: str | None = None,
    progress: bool = True,
) -> str:
    """Write a run store's committed models as a MadryLab datamodels directory; return it.

    Writes ``masks.npy`` (bool), ``<margins_key>.npy`` and ``_completed.npy``, one block of
    models at a time, in model order. ``margins_key`` defaults to the key recorded at import
    (else ``"margins"``); margins are written in the dtype recorded at import (float32 for a
    store that was not imported); incomplete models' margins are written as 0, as in
    MadryLab's zero-filled memmaps. MadryLab has no model kinds: every model is exported, and
    a :class:`UserWarning` says so if the store holds kinds other than ``"random"``.

    Refuses an existing non-empty ``dst_dir``; on failure the files written are removed.
    """
    store = os.fspath(store_path)
    dst = os.fspath(dst_dir)
    group = _open_group(store)
    meta = _meta_of(group, store)
    src = meta.get("source") or {}
    imported = isinstance(src, dict) and src.get("format") == "madrylab"
    key = margins_key or (src.get("margins_key") if imported else None) or "margins"
    if key in (MASKS, COMPLETED) or os.sep in key or key.startswith("."):
        raise InputError(f"margins_key must name the margins array, got {key!r}")
    dtype = np.dtype(src.get("margin_dtype", "float32") if imported else "float32")
    if os.path.exists(dst):
        if not os.path.isdir(dst):
            raise InputError(f"{dst}: exists and is not a directory; refusing to export into it")
        if os.listdir(dst):
            raise InputError(f"{dst}: exists and is not empty; refusing to export into it")
        made_dir = False
    else:
        os.makedirs(dst)
        made_dir = True

    n, n_train, n_target, block = (int(meta[k]) for k in ("n_models", "n_train", "n_target",
                                                           "block_size"))
    arrays = {k: group[k] for k in ("mask", "margin", "completed", "kind")}
    files: dict[str, tuple[Any, int]] = {}
    written: list[str] = []
    kinds = np.zeros(len(KINDS) + 1, np.int64)
    try:
        for name, dt, shape in ((MASKS, bool, (n, n_train)), (key, dtype, (n, n_target)),
                                (COMPLETED, bool, (n,))):
            fn = os.path.join(dst, f"{name}.npy")
            written.append(fn)
            files[name] = _new_npy(fn, dt, shape)

        def put(name: str, start: int, a: np.ndarray) -> None:
            f, off = files[name]
            row_bytes = a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
            f.seek(off + start * row_bytes)
            f.write(np.ascontiguousarray(a).data)

        with _tqdm(n, "export", progress) as bar:
            for s, e in _block_pieces(0, n, block):
                done = np.asarray(arrays["completed"][s:e], bool)
                mg = np.asarray(arrays["margin"][s:e], np.float32)
                mg[~done] = 0
                with np.errstate(over="ignore"):
                    out = mg.astype(dtype)
                if not np.isfinite(out).all():
                    rows = np.unique(np.nonzero(~np.isfinite(out))[0]) + s
                    raise StoreError(f"{store}: margins of models {_fmt_rows(rows)} are not "
                                     f"finite in {dtype.name} (the dtype recorded at import); "
                                     f"nothing exported")
                codes = np.asarray(arrays["kind"][s:e]).astype(np.int64)
                kinds += np.bincount(np.where((codes >= 0) & (codes < len(KINDS)), codes,
                                              len(KINDS)), minlength=len(KINDS) + 1)
                put(MASKS, s, np.asarray(arrays["mask"][s:e], bool))
                put(key, s, out)
                put(COMPLETED, s, done)
                bar.update(e - s)
        for f, _ in files.values():
            f.close()
    except BaseException:
        for f, _ in files.values():
            f.close()
        for fn in written:
            if os.path.exists(fn):
                os.remove(fn)
        if made_dir:
            shutil.rmtree(dst, ignore_errors=True)
        raise
    other = {k: int(c) for k, c in zip(KINDS + ("unset",), kinds, strict=True) if c and k != "random"}
    if other:
        detail = ", ".join(f"{c} {k}" for k, c in other.items())
        warnings.warn(
            f"{store}: exported all {n} models, but {detail} of them are not 'random' "
            f"α-subset models; the MadryLab layout has no kinds, so {dst} does not tell them "
            f"apart (select models by kind before fitting on it)",
            UserWarning, stacklevel=2,
        )
    return dst
