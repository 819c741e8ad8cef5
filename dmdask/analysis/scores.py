"""Attribution matrices from anywhere, in one schema.

**The schema.** An ``xarray.DataArray`` named ``"score"`` with dims ``("target", "train")``,
float64, one row per target example and one column per training example, in **raw-mask
space**: the attribution's linear prediction for a subset S′ is
``Σ_{j∈S′} score[x, j]`` (+ ``bias[x]`` when there is one). Optional coordinate
``bias(target)``: present only for scores that are a calibrated predictor of the margin
(datamodels, OLS, ridge, difference of means on margins); scores without one (TRAK,
influence functions, anything scale-free) are calibrated by :func:`dmdask.evaluate`.
``attrs``: ``estimator`` (a name), ``source`` (where it came from), ``output``
(``"margin"`` or ``"correctness"``: what the bias predicts), ``layout`` (how it was read).

**Sign convention** (REFERENCE §0): ``score[x, j] > 0`` means that *the presence* of training
example j raises the output (margin) of target x. Datamodel weights, difference of means, TRAK
and TracInCP follow it natively; loss-based influence functions must be negated first
(τ = −I_up,loss). :func:`load_scores` cannot detect a flipped sign; LDS will be negative.

**Accepted inputs** (:func:`load_scores`):

==========================================  ==============================================
input                                        read as
==========================================  ==============================================
datamodels ``xr.Dataset`` (``weight``,       ``score = weight``, ``bias = bias``
``bias``) — e.g. ``fit_datamodels``, or
its Zarr path
``xr.Dataset`` with a ``score`` variable     that variable (+ ``bias`` if present)
``xr.DataArray`` with dims                   transposed to ``(target, train)``
``(target, train)`` or ``(train, target)``
2-d NumPy array / unnamed DataArray /        ``[n_target, n_train]`` ("target_train") or
Zarr array / ``.npy``                        ``[n_train, n_target]`` ("train_target"),
                                             told by ``layout=`` or detected from the
                                             store's sizes
TRAK ``scores/<exp>.mmap``, or a TRAK        ``[n_train, n_targets]`` float32/float16
``save_dir`` with ``exp_name=``              (TRAK's layout, i.e. transposed): read as
                                             ``"train_target"`` unless told otherwise
==========================================  ==============================================

**Lazy where the input is.** A Dataset variable backed by dask (a datamodels Zarr opened
lazily), a Zarr array, a memmap (``.npy``, TRAK ``.mmap``) or a dask array gives a dask-backed
``score`` chunked by blocks of targets (:func:`block_targets`; float64 per chunk when read):
nothing of the whole ``[n_target, n_train]`` size is read here. In-memory arrays stay NumPy.

**Shape detection** (``layout="auto"``) needs the run store (``ds``) to know ``n_train`` and
``n_target``: a ``[n_target, n_train]`` array is read as is, ``[n_train, n_target]`` is
transposed, and a square array (``n_train == n_target``) is refused as ambiguous unless
``layout=`` says which — except TRAK memmaps, whose layout is documented as
``[n_train, n_targets]`` and is assumed. Any other shape is an error that names both
expected shapes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .. import config
from ..errors import InputError

__all__ = ["LAYOUTS", "block_targets", "load_scores", "make_scores", "read_trak_scores"]

LAYOUTS = ("auto", "target_train", "train_target")


def make_scores(score, *, bias=None, estimator: str = "custom", source: str = "array",
                output: str = "margin", ds: xr.Dataset | None = None, attrs=None,
                layout: str = "target_train") -> xr.DataArray:
    """Wrap a ``[n_target, n_train]`` array (and optional ``bias [n_target]``) in the score
    schema; with ``ds`` the store's ``target``/``train`` coordinates are attached. A dask
    array stays lazy (cast to float64 chunk by chunk when read)."""
    score = _float64(score)
    if score.ndim != 2:
        raise InputError(f"scores must be 2-d, got shape {score.shape}")
    coords = {}
    if ds is not None:
        coords = {"target": ds["target"].values, "train": ds["train"].values}
        for c in ("target_label", "target_train_index"):
            if c in ds.coords:
                coords[c] = ("target", np.asarray(ds[c].values))
        if "train_label" in ds.coords:
            coords["train_label"] = ("train", np.asarray(ds["train_label"].values))
    else:
        coords = {"target": np.arange(score.shape[0]), "train": np.arange(score.shape[1])}
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64).ravel()
        if bias.shape != (score.shape[0],):
            raise InputError(f"bias has shape {bias.shape}, expected ({score.shape[0]},)")
        coords["bias"] = ("target", bias)
    if output not in ("margin", "correctness"):
        raise InputError(f"output must be 'margin' or 'correctness', not {output!r}")
    a = {"estimator": estimator, "source": source, "output": output, "layout": layout,
         "sign": "score > 0: presence of the training example raises the target's output"}
    a.update(attrs or {})
    return xr.DataArray(score, dims=("target", "train"), coords=coords, name="score", attrs=a)


def _orient(arr, *, ds, layout, what: str, square_ok_as: str | None = None):
    """Return ``(array [n_target, n_train], layout used)``."""
    shape = tuple(arr.shape)
    if len(shape) != 2:
        raise InputError(f"{what}: scores must be 2-d, got shape {shape}")
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if ds is None:
        if layout == "auto":
            if square_ok_as is None:
                raise InputError(f"{what}: cannot detect the layout of a {shape} array without "
                                 "the run store; pass ds= or layout='target_train'/'train_target'")
            layout = square_ok_as
        return (arr if layout == "target_train" else arr.T), layout
    n_train, n_target = ds.sizes["train"], ds.sizes["target"]
    tt, tr = (n_target, n_train), (n_train, n_target)
    if layout == "auto":
        if tt == tr and shape == tt:
            if square_ok_as is None:
                raise InputError(
                    f"{what}: a square {shape} array is ambiguous (n_train = n_target = "
                    f"{n_train}); pass layout='target_train' ([n_target, n_train]) or "
                    "layout='train_target' ([n_train, n_target], TRAK's)")
            layout = square_ok_as
        elif shape == tt:
            layout = "target_train"
        elif shape == tr:
            layout = "train_target"
        else:
            raise InputError(
                f"{what}: scores of shape {shape} fit neither [n_target, n_train] = {tt} nor "
                f"[n_train, n_target] = {tr} of the run store")
    want = tt if layout == "target_train" else tr
    if shape != want:
        raise InputError(f"{what}: layout {layout!r} expects shape {want} for this store, got "
                         f"{shape}")
    return (arr if layout == "target_train" else arr.T), layout


def read_trak_scores(path, *, exp_name: str | None = None, n_train: int | None = None,
                     n_targets: int | None = None) -> np.ndarray:
    """TRAK's scores as a NumPy memmap ``[n_train, n_targets]`` (TRAK's own layout).

    ``path``: the ``scores/<exp>.mmap`` file, or TRAK's ``save_dir`` with ``exp_name``. TRAK
    (v0.3) writes it with ``numpy.lib.format.open_memmap`` (an ``.npy`` file with a header,
    float32, or float16 with ``use_half_precision``). A header-less raw memmap is accepted
    when ``n_train`` and ``n_targets`` are given (float32 or float16, told by the file size).
    A save dir's ``experiments.json`` is checked for ``scores_finalized``.
    """
    p = Path(path)
    if p.is_dir():
        if exp_name is None:
            names = sorted(q.stem for q in (p / "scores").glob("*.mmap"))
            raise InputError(f"{p}: a TRAK save dir; pass exp_name= (found: {names})")
        exp_file = p / "experiments.json"
        if exp_file.exists():
            info = json.loads(exp_file.read_text()).get(exp_name)
            if info is not None and not info.get("scores_finalized", 1):
                raise InputError(f"{p}: TRAK experiment {exp_name!r} has scores_finalized = 0 "
                                 "(run finalize_scores first)")
            if info is not None and n_targets is None:
                n_targets = info.get("num_targets")
        p = p / "scores" / f"{exp_name}.mmap"
    if not p.exists():
        raise InputError(f"{p}: no such TRAK scores file")
    try:
        return np.load(p, mmap_mode="r")
    except ValueError:
        pass  # no .npy header: a raw memmap
    if n_train is None or n_targets is None:
        raise InputError(f"{p}: not an .npy-format memmap; give n_train and n_targets (or ds=) "
                         "to read a raw one")
    size = os.path.getsize(p)
    per = n_train * n_targets
    dtypes = {4: np.float32, 2: np.float16, 8: np.float64}
    if per == 0 or size % per or size // per not in dtypes:
        raise InputError(f"{p}: {size} bytes is not [n_train={n_train}, n_targets={n_targets}] "
                         "of float16/32/64")
    return np.memmap(p, dtype=dtypes[size // per], mode="r", shape=(n_train, n_targets))


def load_scores(obj, *, ds: xr.Dataset | None = None, layout: str = "auto",
                bias=None, estimator: str | None = None, exp_name: str | None = None,
                output: str | None = None, variable: str | None = None) -> xr.DataArray:
    """Read an attribution matrix into the score schema (see the module docstring).

    ``obj``: a datamodels/score ``xr.Dataset``, an ``xr.DataArray``, a NumPy array, a zarr
    array, or a path (``.npy``, TRAK ``.mmap`` or save dir, a Zarr store). ``ds``: the run
    store the scores refer to (detects the layout, checks sizes, attaches coordinates).
    ``bias``: a bias to attach to a plain array (else none). ``variable``: which variable of a
    Dataset/Zarr group to read (default ``weight``, then ``score``).
    """
    src = type(obj).__name__
    trak = False
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        src = str(p)
        if not p.exists():
            raise InputError(f"{p}: no such scores file or directory")
        if p.suffix == ".npy":
            obj = np.load(p, mmap_mode="r")
        elif p.suffix == ".mmap" or (p.is_dir() and (p / "scores").is_dir()):
            kw = {}
            if ds is not None:
                kw = {"n_train": ds.sizes["train"], "n_targets": ds.sizes["target"]}
            obj = read_trak_scores(p, exp_name=exp_name, **kw)
            trak = True
        elif p.is_dir():
            obj = _open_zarr_any(p)
        else:
            raise InputError(f"{p}: unknown scores format (expected .npy, TRAK .mmap or save "
                             "dir, or a Zarr store)")
    if isinstance(obj, xr.Dataset):
        name = variable or ("weight" if "weight" in obj else "score" if "score" in obj else None)
        if name is None or name not in obj:
            raise InputError(f"{src}: Dataset has no 'weight' or 'score' variable "
                             f"(variables: {list(obj.data_vars)})")
        b = obj["bias"] if ("bias" in obj and bias is None) else bias
        est = estimator or obj.attrs.get("estimator") or (
            "datamodels" if name == "weight" else "custom")
        var = obj[name]
        if isinstance(b, xr.DataArray):
            b = b.values
        out = load_scores(var, ds=ds, layout=layout, bias=b, estimator=est,
                          output=output or obj.attrs.get("output", "margin"))
        out.attrs["source"] = src if src != "Dataset" else out.attrs["source"]
        return out
    if isinstance(obj, xr.DataArray):
        dims = set(obj.dims)
        if dims == {"target", "train"}:
            arr = obj.transpose("target", "train")
            if bias is None and "bias" in arr.coords:
                bias = arr.coords["bias"].values
            a = dict(obj.attrs)
            est = estimator or a.pop("estimator", "custom")
            out_kind = output or a.pop("output", "margin")
            for k in ("source", "layout", "sign"):
                a.pop(k, None)
            values = _float64(arr.data)  # lazy stays lazy: read by target blocks
            sub = ds
            if ds is not None:
                if values.shape[1] != ds.sizes["train"]:
                    raise InputError(f"{src}: {values.shape[1]} training columns, the run store "
                                     f"has {ds.sizes['train']}")
                if values.shape[0] != ds.sizes["target"]:
                    # a subset of the targets: its coordinate says which
                    t = np.asarray(arr["target"].values, dtype=np.int64)
                    if t.min(initial=0) < 0 or t.max(initial=0) >= ds.sizes["target"]:
                        raise InputError(f"{src}: target coordinate outside the store's "
                                         f"[0, {ds.sizes['target']})")
                    sub = ds.isel(target=t)
            return make_scores(values, bias=bias, estimator=est, source=src, output=out_kind,
                               ds=sub, attrs=a, layout="target_train")
        obj = obj.values
    lazy = isinstance(obj, (np.memmap, da.Array)) or (
        hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, np.ndarray))
    arr = obj if lazy else np.asarray(obj)
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{src}: scores must be numeric, got dtype {arr.dtype}")
    # the layout from the shape alone (a zero-stride stand-in: nothing is read)
    shape = tuple(arr.shape)
    stand_in = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape, (0,) * len(shape))
    _, used = _orient(stand_in, ds=ds, layout=layout, what=src,
                      square_ok_as="train_target" if trak else None)
    if lazy:
        # a memmap, a Zarr array or a dask array is read later, by blocks of targets
        t_ax = 0 if used == "target_train" else 1
        step = block_targets(shape[1 - t_ax])
        arr = (arr.rechunk({t_ax: step, 1 - t_ax: -1}) if isinstance(arr, da.Array)
               else da.from_array(arr, chunks={t_ax: step, 1 - t_ax: -1}, asarray=True))
    arr = arr if used == "target_train" else arr.T
    return make_scores(arr, bias=bias,
                       estimator=estimator or ("trak" if trak else "custom"), source=src,
                       output=output or "margin", ds=ds, layout=used)


def _open_zarr_any(p: Path):
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as e:
        raise InputError(f"{p}: not a Zarr store ({e})") from e
    if isinstance(node, zarr.Array):
        return node
    return xr.open_zarr(str(p), consolidated=False)


def block_targets(n_train: int) -> int:
    """Targets per block when a lazy score matrix is read (setting
    ``dmdask.evaluate.block-targets``; ``null``: as many as fit in
    ``dmdask.evaluate.block-bytes`` of float64 rows of ``n_train`` columns)."""
    n = config.get("evaluate.block-targets", None)
    if n is None:
        n = int(config.get("evaluate.block-bytes", 256 * 2**20)) // max(8 * int(n_train), 1)
    n = int(n)
    if n < 1:
        raise InputError(f"dmdask.evaluate.block-targets must be >= 1, not {n}")
    return n


def _float64(a):
    """float64 view of scores: lazily for a dask array, else as a NumPy array."""
    if isinstance(a, da.Array):
        return a if a.dtype == np.float64 else a.astype(np.float64)
    return np.asarray(a, dtype=np.float64)
