"""The run store: one Zarr v3 group of models × examples, read lazily as an ``xarray.Dataset``.

Layout (dims ``model``, ``train``, ``target``):

==================  ==============  ========  ==============================================
variable            dims            dtype     notes
==================  ==============  ========  ==============================================
mask                model, train    bool      1 = example in the model's subset; Blosc zstd +
                                              bitshuffle (about 1 bit per entry)
margin              model, target   float32   correct-class margin; NaN = not trained yet
completed           model           bool      the commit mark of a block, written last
seed                model           uint64    training seed
kind                model           int8      code into :data:`KINDS` (decoded to str on open)
alpha               model           float32   subset fraction drawn with (NaN: hand-made)
replicate_of        model           int64     model whose mask this one repeats, or -1
train_label_override model, train   int16     (only if label-flip models exist) -1 = keep
train_label         train           int64     coordinate
target_label        target          int64     coordinate
target_train_index  target          int64     coordinate; -1 if the target is not a train example
==================  ==============  ========  ==============================================

Every array along ``model`` is chunked by ``block_size`` models: a *block* is one chunk, the
unit of training and of writing.

Write protocol. Only the coordinator (:func:`create_store`, :func:`add_models`,
:func:`dmdask.madrylab.import_madrylab`) resizes arrays and writes masks; growth holds the
store's *grow* lease (:mod:`dmdask.store.lease`), so two growths never interleave. It commits
growth by updating ``attrs["dmdask"]["n_models"]`` last, so a killed ``add_models`` leaves rows
that nothing reads and the next call overwrites. Growth never writes ``margin`` or
``completed``: rows past ``n_models`` keep their fill values (NaN, false) because nothing writes
there, so growth is safe beside a running training. Training holds the *train* lease (one
training of a store at a time); each task trains the rows of its block that are not completed,
writes their margins and then their ``completed``: a committed row is never retrained, and its
bytes are carried over unchanged when a grown block's chunk is rewritten. :func:`write_block`
(hand-made stores) writes a whole block, margins first, ``completed`` last, and refuses to
rewrite completed rows unless told to overwrite them. A rerun
trains exactly the rows not completed. Local chunk writes are atomic from zarr 3.1.3 on (zarr
writes a temporary file and renames it), so a killed writer never leaves a torn chunk, only
that temporary file: :func:`store_info` does not count it, and the next growth or training
(holding its lease) removes those older than the lease timeout. A
killed creation leaves nothing at the store's path (the store is built beside it and renamed
into place). Margins that are NaN/inf, of the wrong shape or dtype, or a misaligned or partial
block are refused before anything is written.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from .. import config
from ..errors import InputError, StoreError, WriteRefused
from . import jobspec, lease
from .sampling import SAMPLING_SCHEMES, check_alpha, model_seeds, sample_masks

SCHEMA_VERSION = 1
# Codes are what the store holds: append new kinds, never reorder. control: full-data models;
# counterfactual/flip/selected: models of a counterfactual training set; verify: a verifier's own.
KINDS = ("random", "heldout", "replicate", "counterfactual", "flip", "custom", "control",
         "selected", "verify")
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
COORDS = ("train_label", "target_label", "target_train_index", "train_id", "target_id")
MODEL_ARRAYS = ("mask", "margin", "completed", "seed", "kind", "alpha", "replicate_of")

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "add_models",
    "block_range",
    "create_jobless_store",
    "create_store",
    "incomplete_blocks",
    "open_store",
    "read_meta",
    "remove_stale_partials",
    "store_info",
    "write_block",
]


# --------------------------------------------------------------------------- helpers


def _path(path: str | os.PathLike) -> str:
    return os.fspath(path)


def _open_group(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    p = _path(path)
    if not os.path.exists(p):
        raise StoreError(f"{p}: no such run store")
    try:
        return zarr.open_group(p, mode=mode, zarr_format=3)
    except Exception as e:
        raise StoreError(f"{p}: not a Zarr v3 group ({e})") from e


def _meta_of(group: zarr.Group, path: str) -> dict[str, Any]:
    meta = group.attrs.get("dmdask")
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: not a dmdask run store (no 'dmdask' attributes)")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: run store schema version {version!r}, this dmdask reads version "
            f"{SCHEMA_VERSION}; refusing to guess"
        )
    return dict(meta)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The store's ``dmdask`` root attributes (schema, job, sampling, seed, sizes)."""
    return _meta_of(_open_group(path), _path(path))


def _set_meta(group: zarr.Group, meta: dict[str, Any]) -> None:
    group.attrs["dmdask"] = meta


def block_range(meta: dict[str, Any], block: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of block ``block`` among the committed models."""
    b, n = int(meta["block_size"]), int(meta["n_models"])
    start = block * b
    if block < 0 or start >= n:
        raise WriteRefused(f"block {block} does not exist (store has {n} models in blocks of {b})")
    return start, min(start + b, n)


def _mask_codec() -> BloscCodec:
    return BloscCodec(
        cname="zstd", clevel=int(config.get("store.mask-clevel", 5)), shuffle="bitshuffle",
        typesize=1,
    )


def _model_array(group, name, width, dtype, fill, block, dims, compressors="auto"):
    shape = (0,) if width is None else (0, width)
    chunks = (block,) if width is None else (block, max(width, 1))
    return group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
        dimension_names=dims, compressors=compressors,
    )


# --------------------------------------------------------------------------- creation


def _init_store(
    path: str,
    desc: dict[str, np.ndarray],
    *,
    job: dict[str, Any] | None,
    seed: int,
    sampling: str,
    alpha: float | None,
    block_size: int | None,
    source: dict[str, Any] | None = None,
    creation: dict[str, Any] | None = None,
) -> None:
    """Build the empty store beside ``path`` and rename it into place, so a killed creation
    never leaves a store without its attributes at ``path``."""
    if sampling not in SAMPLING_SCHEMES:
        raise InputError(f"sampling must be one of {SAMPLING_SCHEMES}, got {sampling!r}")
    block = int(block_size or config.get("store.block-size", 256))
    if block < 1:
        raise InputError(f"block_size must be positive, got {block}")
    with building(path) as draft:
        _build_store(draft, desc, job=job, seed=seed, sampling=sampling, alpha=alpha,
                     block=block, source=source, creation=creation)


@contextlib.contextmanager
def building(path: str) -> Iterator[str]:
    """A draft directory beside ``path`` for the ``with`` body to build a store in; renamed
    to ``path`` when the body succeeds, removed otherwise.

    A killed builder leaves only its draft (removed by the next build of ``path`` on this
    host), never a half-made store at ``path``. Raises :class:`StoreError` if ``path``
    appeared meanwhile.
    """
    _remove_dead_drafts(path)
    draft = f"{path}.creating-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(draft, ignore_errors=True)
    try:
        yield draft
        try:
            os.rename(draft, path)
        except OSError:
            raise StoreError(f"{path}: already exists; refusing to overwrite it") from None
    finally:
        shutil.rmtree(draft, ignore_errors=True)


def _remove_dead_drafts(path: str) -> None:
    """Remove drafts of ``path`` left by killed creations on this host."""
    host = socket.gethostname()
    for d in glob.glob(glob.escape(path) + f".creating-{glob.escape(host)}-*"):
        pid = d.rsplit("-", 1)[-1]
        if pid.isdigit() and not lease._pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _build_store(path, desc, *, job, seed, sampling, alpha, block, source, creation) -> None:
    n_train, n_target = desc["train_label"].size, desc["target_label"].size
    group = zarr.open_group(path, mode="w-", zarr_format=3)
    _model_array(group, "mask", n_train, "bool", False, block, ("model", "train"),
                 compressors=_mask_codec())
    _model_array(group, "margin", n_target, "float32", np.nan, block, ("model", "target"))
    _model_array(group, "completed", None, "bool", False, block, ("model",))
    _model_array(group, "seed", None, "uint64", 0, block, ("model",))
    kind = _model_array(group, "kind", None, "int8", -1, block, ("model",))
    kind.attrs.update({"flag_values": list(range(len(KINDS))), "flag_meanings": " ".join(KINDS)})
    _model_array(group, "alpha", None, "float32", np.nan, block, ("model",))
    _model_array(group, "replicate_of", None, "int64", -1, block, ("model",))
    for name, arr in desc.items():
        dim = "train" if name.startswith("train_") else "target"
        if arr.dtype.kind == "U":
            arr = arr.astype(object)
            a = group.create_array(name, shape=arr.shape, dtype=str, dimension_names=(dim,))
        else:
            a = group.create_array(name, shape=arr.shape, dtype=arr.dtype, dimension_names=(dim,))
        a[...] = arr
    meta = {
        "schema_version": SCHEMA_VERSION,
        "job": job,
        "fingerprint": jobspec.fingerprint(desc),
        "sampling": sampling,
        "seed": int(seed),
        "alpha": None if alpha is None else float(alpha),
        "block_size": block,
        "n_models": 0,
        "n_train": int(n_train),
        "n_target": int(n_target),
        "additions": [],
        "source": source,
        "creation": creation,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "created_by": _version(),
    }
    _set_meta(group, meta)


def _version() -> str:
    from ..version import __version__

    return f"dmdask {__version__}"


def create_store(
    path: str | os.PathLike,
    job: str,
    n_models: int,
    alpha: float = 0.5,
    *,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    sampling: str = "fixed",
    block_size: int | None = None,
) -> str:
    """Create a run store for ``job`` with ``n_models`` random α-subset models; return its path.

    ``job`` is an import path ``"module:Class"`` and ``params`` its keyword arguments. The
    class is checked for the job interface before it is constructed (to read its dataset
    description). Masks and seeds are written now; margins come from :func:`dmdask.train`.
    If ``path`` already holds a store made with the same arguments, it is returned (first
    finishing a creation that was interrupted before its models were committed); a store made
    with other arguments (job, params, n_models, alpha, seed, sampling, an explicit
    ``block_size``) is refused, naming what differs.
    """
    path = _path(path)
    cls = jobspec.resolve_named_job(job)  # the user chose it: trust it here from now on
    params = jobspec.check_params(cls, params or {}, job)
    spec = {"path": job, "params": params}
    check_alpha(alpha)
    if int(n_models) < 0:
        raise InputError(f"n_models must be >= 0, got {n_models}")
    if block_size is not None and int(block_size) < 1:
        raise InputError(f"block_size must be positive, got {block_size}")
    request = {"job": spec, "n_models": int(n_models), "alpha": float(alpha), "seed": int(seed),
               "sampling": sampling}
    if not os.path.exists(path):
        job_obj = cls(**params)
        if block_size is None:
            block_size = getattr(job_obj, "preferred_block_size", None)
        desc = jobspec.validate_description(job_obj.describe(), job)
        with contextlib.suppress(StoreError):  # made meanwhile by another call: compared below
            _init_store(path, desc, job=spec, seed=seed, sampling=sampling, alpha=alpha,
                        block_size=block_size, creation=request)
    _check_creation(path, read_meta(path), request, block_size)
    with lease.hold(path, "grow", "creating the store", refuse="cannot finish creating it"):
        group = _open_group(path, "r+")
        meta = _meta_of(group, path)
        if request["n_models"] and not meta.get("additions"):
            _add_models(path, group, meta, "random", n=request["n_models"], alpha=alpha)
    return path


def _check_creation(path: str, meta: dict[str, Any], request: dict[str, Any],
                    block_size: int | None) -> None:
    made = meta.get("creation")
    if made is None:  # stores made before the request was recorded: what the store says
        first = (meta.get("additions") or [None])[0]
        n = first["stop"] if first and first["start"] == 0 and first["kind"] == "random" else None
        made = {"job": meta["job"], "n_models": n, "alpha": meta.get("alpha"),
                "seed": meta["seed"], "sampling": meta["sampling"]}
    made = {**made, "block_size": meta["block_size"]}
    request = {**request, "block_size": None if block_size is None else int(block_size)}
    diffs = []
    for k in ("job", "n_models", "alpha", "seed", "sampling", "block_size"):
        have, want = made.get(k), request[k]
        if k == "job":
            if have is None:
                diffs.append("no job (an imported or hand-made store)")
            elif have["path"] != want["path"]:
                diffs.append(f"job {have['path']} (not {want['path']})")
            elif have.get("params") != want.get("params"):
                diffs.append(f"params {have.get('params')} (not {want.get('params')})")
            continue
        if have is not None and want is not None and have != want:
            diffs.append(f"{k} {have!r} (not {want!r})")
    if diffs:
        raise StoreError(f"{path}: a run store already exists here, made with "
                         f"{', '.join(diffs)}; refusing to reuse it (rerun with its arguments, "
                         f"or choose another path)")


def create_jobless_store(
    path: str | os.PathLike,
    n_train: int,
    n_target: int,
    *,
    block_size: int | None = None,
    seed: int = 0,
    sampling: str = "fixed",
    alpha: float | None = None,
    train_label: np.ndarray | None = None,
    target_label: np.ndarray | None = None,
    target_train_index: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
) -> str:
    """Create an empty run store with no job (imported or synthetic runs); return its path.

    Labels default to -1 (unknown) and ``target_train_index`` to -1 (no target is a training
    example). Models are added with :func:`add_models` and margins written with
    :func:`write_block`; :func:`dmdask.train` refuses such a store (there is nothing to run).
    """
    path = _path(path)
    if os.path.exists(path):
        raise StoreError(f"{path}: already exists; refusing to overwrite it")
    desc = jobless_description(path, n_train, n_target, train_label=train_label,
                               target_label=target_label, target_train_index=target_train_index)
    _init_store(path, desc, job=None, seed=seed, sampling=sampling, alpha=alpha,
                block_size=block_size, source=source)
    return path


def jobless_description(
    path: str,
    n_train: int,
    n_target: int,
    *,
    train_label: np.ndarray | None = None,
    target_label: np.ndarray | None = None,
    target_train_index: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The dataset description of a store without a job (unknown labels are -1)."""

    def arr(a, n):
        return np.full(n, -1, np.int64) if a is None else np.asarray(a)

    desc = jobspec.validate_description(
        {
            "train_label": arr(train_label, n_train),
            "target_label": arr(target_label, n_target),
            "target_train_index": arr(target_train_index, n_target),
        },
        path,
    )
    if desc["train_label"].size != n_train or desc["target_label"].size != n_target:
        raise InputError(f"{path}: label arrays do not match n_train={n_train}, n_target={n_target}")
    return desc


# --------------------------------------------------------------------------- growth


def _model_dim_arrays(group: zarr.Group) -> list[zarr.Array]:
    out = []
    for _, a in group.arrays():
        dims = a.metadata.dimension_names
        if dims and dims[0] == "model":
            out.append(a)
    return out


def _resize_models(group: zarr.Group, n: int) -> None:
    for a in _model_dim_arrays(group):
        if a.shape[0] != n:
            a.resize((n,) + a.shape[1:])


def _block_pieces(start: int, stop: int, block: int):
    """Split [start, stop) at block boundaries: each piece lies in one chunk."""
    s = start
    while s < stop:
        e = min(stop, (s // block + 1) * block)
        yield s, e
        s = e


def add_models(
    path: str | os.PathLike,
    kind: str,
    *,
    n: int | None = None,
    alpha: float | None = None,
    masks: np.ndarray | None = None,
    replicate_of: np.ndarray | list[int] | None = None,
    train_labels: np.ndarray | None = None,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Append models of ``kind`` to the store and return their model indices.

    Exactly one way of giving masks:

    * ``n`` (and ``alpha``, default the store's): fresh random α-subsets (``"random"``
      models to fit on, ``"heldout"`` models to evaluate on), a pure function of
      (store seed, model index);
    * ``replicate_of``: indices of existing models whose masks are repeated with new seeds
      (noise floor, averaged counterfactuals); ``kind`` is usually ``"replicate"``;
    * ``masks``: hand-made bool masks ``[m, n_train]`` (counterfactuals and the like;
      their ``alpha`` is NaN).

    ``train_labels`` (int ``[m, n_train]`` or ``[n_train]``) replaces the labels these models
    train on. ``seeds`` (uint64 ``[m]``, with ``masks``) gives their training seeds instead of
    the store's (a verifier retraining a prover's models with the prover's seeds). Safe beside a running :func:`dmdask.train` (growth never writes margins); two
    growths of one store do not run at once (the second is refused, naming the first).
    """
    path = _path(path)
    if kind not in KIND_CODE:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    group = _open_group(path, "r+")
    _meta_of(group, path)
    with lease.hold(path, "grow", f"adding {kind} models", refuse="cannot add models"):
        return _add_models(path, group, _meta_of(group, path), kind, n=n, alpha=alpha,
                           masks=masks, replicate_of=replicate_of, train_labels=train_labels,
                           seeds=seeds)


# zarr's LocalStore writes ``<key>`` as ``<key with its suffix replaced by .<uuid4 hex>.partial>``
# and renames it into place (zarr.storage._local._atomic_write): a killed write leaves that file.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _is_partial(name: str) -> bool:
    return _PARTIAL.search(name) is not None


def remove_stale_partials(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files of chunk and metadata writes killed midway; return them.

    Only files older than ``dmdask.store.lease-timeout`` go: a younger one may be the write
    in flight of a training or growth running beside the caller. Call it only while holding
    the store's train or grow lease, so that no other cleaner runs at once.
    """
    cutoff = time.time() - lease._seconds("store.lease-timeout", "60s")
    removed = []
    for root, _, files in os.walk(_path(path)):
        for f in files:
            if not _is_partial(f):
                continue
            fn = os.path.join(root, f)
            with contextlib.suppress(OSError):
                if os.path.getmtime(fn) < cutoff:
                    os.remove(fn)
                    removed.append(fn)
    return removed


def _remove_torn_metadata(path: str) -> None:
    """Drop temporary files that a killed metadata write left at the root (zarr would warn
    about them); only the holder of the grow lease writes root metadata."""
    for f in glob.glob(os.path.join(glob.escape(path), "zarr.*.partial")):
        with contextlib.suppress(OSError):
            os.remove(f)


def _add_models(path, group, meta, kind, *, n=None, alpha=None, masks=None, replicate_of=None,
                train_labels=None, seeds=None) -> np.ndarray:
    _remove_torn_metadata(path)
    remove_stale_partials(path)
    n_train, block = meta["n_train"], meta["block_size"]
    start = int(meta["n_models"])
    given = [x is not None for x in (masks, replicate_of)]
    if sum(given) > 1:
        raise InputError("give masks or replicate_of, not both")

    rep = None
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 2 or masks.shape[1] != n_train:
            raise InputError(f"{path}: masks have shape {masks.shape}, expected (m, {n_train})")
        if masks.dtype != bool:
            if not np.isin(masks, (0, 1)).all():
                raise InputError(f"{path}: masks must be bool or 0/1, got values outside 0/1")
            masks = masks.astype(bool)
        m = masks.shape[0]
        alphas = np.full(m, np.nan if alpha is None else check_alpha(alpha), np.float32)
    elif replicate_of is not None:
        rep = np.asarray(replicate_of, dtype=np.int64).ravel()
        if rep.size and ((rep < 0) | (rep >= start)).any():
            raise InputError(f"{path}: replicate_of must index existing models [0, {start})")
        m = rep.size
        alphas = group["alpha"][:][rep] if m else np.zeros(0, np.float32)
    else:
        if n is None or int(n) < 0:
            raise InputError("give n (number of models), masks, or replicate_of")
        m = int(n)
        a = meta.get("alpha") if alpha is None else alpha
        if a is None:
            raise InputError(f"{path}: the store has no default alpha; pass alpha=")
        alpha = check_alpha(a)
        alphas = np.full(m, alpha, np.float32)
    if n is not None and int(n) != m:
        raise InputError(f"n={n} disagrees with the {m} masks given")

    if train_labels is not None:
        tl = np.asarray(train_labels)
        if tl.ndim == 1:
            tl = np.broadcast_to(tl, (m, tl.size))
        if tl.shape != (m, n_train) or not np.issubdtype(tl.dtype, np.integer):
            raise InputError(f"{path}: train_labels must be int [{m}, {n_train}], got "
                             f"{tl.dtype} {tl.shape}")
        if tl.size and (tl.min() < 0 or tl.max() > np.iinfo(np.int16).max):
            raise InputError(f"{path}: train_labels must be in [0, 32767]")
        if "train_label_override" not in group:
            a = _model_array(group, "train_label_override", n_train, "int16", -1, block,
                             ("model", "train"))
            a.resize((start, n_train))
    else:
        tl = None
    if seeds is not None:
        if masks is None:
            raise InputError("seeds are given only with hand-made masks")
        seeds = np.asarray(seeds)
        if seeds.shape != (m,) or not np.issubdtype(seeds.dtype, np.integer) or (
                seeds.size and seeds.min() < 0):
            raise InputError(f"{path}: seeds must be {m} non-negative integers, got "
                             f"{seeds.dtype} {seeds.shape}")
        seeds = seeds.astype(np.uint64)
    if m == 0:
        return np.zeros(0, np.int64)

    stop = start + m
    _resize_models(group, stop)
    code = KIND_CODE[kind]
    has_override = "train_label_override" in group

    def write_piece(piece: tuple[int, int]) -> None:
        s, e = piece
        r = slice(s - start, e - start)
        idx = np.arange(s, e)
        if masks is not None:
            mk = masks[r]
        elif rep is not None:
            mk = group["mask"].get_orthogonal_selection((rep[r], slice(None)))
        else:
            mk = sample_masks(meta["seed"], idx, n_train, alpha, meta["sampling"])
        group["mask"][s:e] = mk
        group["seed"][s:e] = seeds[r] if seeds is not None else model_seeds(meta["seed"], idx)
        group["alpha"][s:e] = alphas[r]
        group["replicate_of"][s:e] = rep[r] if rep is not None else -1
        if has_override:
            group["train_label_override"][s:e] = tl[r] if tl is not None else -1
        group["kind"][s:e] = code

    # Each piece lies in its own chunk of every array, so pieces can be written concurrently.
    pieces = list(_block_pieces(start, stop, block))
    if len(pieces) > 1:
        with ThreadPoolExecutor(max_workers=min(len(pieces), os.cpu_count() or 1)) as pool:
            list(pool.map(write_piece, pieces))
    elif pieces:
        write_piece(pieces[0])
    # commit: the rows exist for readers only once n_models says so
    meta["n_models"] = stop
    meta["additions"] = list(meta.get("additions", [])) + [
        {"kind": kind, "start": start, "stop": stop,
         "alpha": None if not np.isfinite(alphas[0]) else float(alphas[0]),
         "source": "masks" if masks is not None else "replicate" if rep is not None else "sampled"}
    ]
    _set_meta(group, meta)
    return np.arange(start, stop)


# --------------------------------------------------------------------------- writing


def write_block(
    path: str | os.PathLike,
    block: int,
    margins: np.ndarray,
    *,
    job: dict[str, Any] | None = None,
    start: int | None = None,
    allow_missing: bool = False,
    overwrite: bool = False,
) -> None:
    """Write the margins of one whole block, then mark its models completed.

    ``margins`` must be float32 ``[rows of the block, n_target]`` and finite. With
    ``allow_missing=True`` (imports and synthetic data, never training), NaN records a margin
    that is missing for that (model, target) — the solvers skip it for that target — while
    inf is still refused. If ``start`` is
    given it must equal the block's first row (a check against misaligned writers); if
    ``job`` is given it must equal the store's job spec. Rows already completed are committed
    results: rewriting them is refused unless ``overwrite=True``. Any violation raises
    :class:`WriteRefused` naming the store and block, and nothing is written.
    """
    path = _path(path)
    group = _open_group(path, "r+")
    _write_block_to(group, _meta_of(group, path), path, block, margins, job=job, start=start,
                    allow_missing=allow_missing, overwrite=overwrite)


def _write_block_to(group, meta, path, block, margins, *, job=None, start=None,
                    allow_missing=False, overwrite=False) -> None:
    where = f"{path} block {block}"
    if not isinstance(block, (int, np.integer)):
        raise WriteRefused(f"{path}: block index must be an int, got {block!r}")
    try:
        s, e = block_range(meta, int(block))
    except WriteRefused as err:
        raise WriteRefused(f"{path}: {err}") from None
    if start is not None and int(start) != s:
        raise WriteRefused(f"{where}: misaligned write at row {start}; the block starts at row {s}"
                           f" (blocks are {meta['block_size']} models)")
    if job is not None and job != meta["job"]:
        raise WriteRefused(f"{where}: written by job {job}, but the store belongs to {meta['job']}")
    margins = np.asarray(margins)
    expect = (e - s, meta["n_target"])
    if margins.shape != expect:
        kind = "partial" if margins.ndim == 2 and margins.shape[0] < expect[0] else "wrong-shape"
        raise WriteRefused(f"{where}: {kind} write of shape {margins.shape}; a block write must "
                           f"cover rows {s}..{e - 1} with shape {expect}")
    if margins.dtype != np.float32:
        raise WriteRefused(f"{where}: margins have dtype {margins.dtype}, expected float32")
    bad = np.isinf(margins) if allow_missing else ~np.isfinite(margins)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0]) + s
        raise WriteRefused(f"{where}: {int(bad.sum())} margins are NaN or inf (models "
                           f"{_fmt_rows(rows)}); nothing written")
    if not overwrite:
        done = np.nonzero(np.asarray(group["completed"][s:e], bool))[0]
        if done.size:
            raise WriteRefused(f"{where}: models {_fmt_rows(done + s)} are already completed; "
                               f"refusing to rewrite committed margins (pass overwrite=True to "
                               f"replace them); nothing written")
    group["margin"][s:e] = margins
    group["completed"][s:e] = True


def _write_rows_to(group, meta, path, block, rows, margins, *, job) -> None:
    """Write the margins of ``rows`` (model indices inside ``block``), then their commit mark.

    Training writes only the rows it trained: the other rows of the chunk are carried over
    as they are, so a grown block never rewrites what was committed before it grew.
    """
    where = f"{path} block {block}"
    s, e = block_range(meta, int(block))
    rows = np.asarray(rows, np.int64)
    if rows.size == 0 or rows.min() < s or rows.max() >= e or (np.diff(rows) <= 0).any():
        raise WriteRefused(f"{where}: rows {_fmt_rows(rows)} are not increasing rows of the "
                           f"block ({s}..{e - 1})")
    if job != meta["job"]:
        raise WriteRefused(f"{where}: written by job {job}, but the store belongs to {meta['job']}")
    margins = np.asarray(margins)
    expect = (rows.size, meta["n_target"])
    if margins.shape != expect or margins.dtype != np.float32:
        raise WriteRefused(f"{where}: margins of {margins.dtype} {margins.shape}; expected "
                           f"float32 {expect} for models {_fmt_rows(rows)}")
    bad = ~np.isfinite(margins)
    if bad.any():
        raise WriteRefused(f"{where}: {int(bad.sum())} margins are NaN or inf (models "
                           f"{_fmt_rows(rows[np.unique(np.nonzero(bad)[0])])}); nothing written")
    if rows.size == rows[-1] - rows[0] + 1:
        sel: Any = slice(int(rows[0]), int(rows[-1]) + 1)
        group["margin"][sel] = margins
        group["completed"][sel] = True
    else:
        group["margin"].set_orthogonal_selection((rows, slice(None)), margins)
        group["completed"].set_orthogonal_selection((rows,), True)


def _fmt_rows(rows: np.ndarray, k: int = 6) -> str:
    rows = list(map(int, rows))
    return ", ".join(map(str, rows[:k])) + (f", … ({len(rows)} in all)" if len(rows) > k else "")


def incomplete_blocks(path: str | os.PathLike) -> list[int]:
    """Blocks holding at least one committed model that is not completed."""
    group = _open_group(path)
    meta = _meta_of(group, _path(path))
    n, b = meta["n_models"], meta["block_size"]
    if n == 0:
        return []
    done = group["completed"][:n]
    nb = -(-n // b)
    pad = np.ones(nb * b, bool)
    pad[:n] = done
    return [int(i) for i in np.nonzero(~pad.reshape(nb, b).all(axis=1))[0]]


# --------------------------------------------------------------------------- reading


def _decode_kind(codes: np.ndarray) -> np.ndarray:
    table = np.array(list(KINDS) + ["unset"], dtype="<U14")
    c = np.asarray(codes).astype(np.int64)
    return table[np.where((c >= 0) & (c < len(KINDS)), c, len(KINDS))]


def open_store(path: str | os.PathLike) -> xr.Dataset:
    """Open a run store as a dask-backed ``xarray.Dataset`` (nothing is loaded eagerly).

    Only committed models are visible. ``kind`` is decoded to strings lazily; the coordinate
    ``model`` holds the model indices, so they survive selections such as
    ``ds.sel(model=ds.kind == "heldout")``.
    """
    path = _path(path)
    meta = read_meta(path)
    with warnings.catch_warnings():
        # the temporary file of a metadata write killed midway (removed by the next growth)
        warnings.filterwarnings("ignore", message=r"Object at zarr\.\w+\.partial is not recog")
        ds = xr.open_zarr(path, consolidated=False, chunks={}, mask_and_scale=False,
                          zarr_format=3)
    n = int(meta["n_models"])
    ds = ds.isel(model=slice(0, n))
    ds = ds.set_coords([c for c in COORDS if c in ds.variables])
    ds = ds.assign_coords(
        model=np.arange(n), train=np.arange(meta["n_train"]), target=np.arange(meta["n_target"])
    )
    kind = ds["kind"]
    ds["kind"] = kind.copy(data=kind.data.map_blocks(_decode_kind, dtype="<U14"))
    ds["kind"].attrs = {"description": "model kind: " + ", ".join(KINDS)}
    for v in ds.variables.values():
        v.encoding.pop("_FillValue", None)
    ds.attrs = {"dmdask": {**meta, "path": os.path.abspath(path)}}
    return ds


def _du(path: str) -> int:
    """Bytes of the files under ``path``, leaving out what killed writes left behind."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            if not _is_partial(f):
                with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
                    total += os.path.getsize(os.path.join(root, f))
    return total


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a store: models done/pending per kind, α values, bytes on disk per array,
    and stored bits per mask entry."""
    path = _path(path)
    group = _open_group(path)
    meta = _meta_of(group, path)
    n = meta["n_models"]
    kinds = _decode_kind(group["kind"][:n]) if n else np.zeros(0, "<U14")
    done = group["completed"][:n] if n else np.zeros(0, bool)
    alphas = group["alpha"][:n] if n else np.zeros(0, np.float32)
    per_kind = {}
    for k in KINDS:
        sel = kinds == k
        if sel.any():
            a = np.unique(alphas[sel][np.isfinite(alphas[sel])]).round(6).tolist()
            per_kind[k] = {"models": int(sel.sum()), "done": int(done[sel].sum()),
                           "pending": int((~done[sel]).sum()), "alphas": a}
    sizes = {name: _du(os.path.join(path, name)) for name, _ in group.arrays()}
    mask_chunks = _du(os.path.join(path, "mask", "c"))  # chunk data only, not metadata
    entries = n * meta["n_train"]
    return {
        "path": os.path.abspath(path),
        "job": meta["job"],
        "sampling": meta["sampling"],
        "seed": meta["seed"],
        "block_size": meta["block_size"],
        "n_models": n,
        "n_train": meta["n_train"],
        "n_target": meta["n_target"],
        "done": int(done.sum()),
        "pending": int(n - done.sum()),
        "kinds": per_kind,
        "bytes": sizes,
        "bytes_total": _du(path),
        "mask_bits_per_entry": (8 * mask_chunks / entries) if entries else float("nan"),
    }
