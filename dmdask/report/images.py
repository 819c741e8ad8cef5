"""Where the report's images come from: given by the caller, or the store's job.

The report knows no job. A job that can show its examples implements the optional hook
``examples(which, index) -> uint8 [n, H, W(, C)]`` (:mod:`dmdask.store.jobspec`); the report
resolves the store's job through :func:`dmdask.store.jobspec.resolve_job_class` (so a job
module is imported only where that resolver allows it), checks the hook on the class before
constructing anything, checks that the job still describes the store's dataset, and asks for
only the images it draws. Whatever stands in the way (no job, a job without the hook, a job
that cannot be constructed on this machine, a changed dataset) becomes a note in the images
section, never an error of the page.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DmdaskError, InputError
from .inputs import store_and_path

__all__ = ["ImageSource", "ImagesArg", "image_source", "resolve_images"]

ImagesArg = (tuple | list | Mapping | Callable[[xr.Dataset], Any] | bool | None)


@dataclass(frozen=True)
class ImageSource:
    """Images by store position: ``get(which, index)`` with ``which`` ``"train"`` or
    ``"target"`` returns ``[n, H, W]`` or ``[n, H, W, 3|4]``; ``n_target`` is None when only
    training images are known."""

    get: Callable[[str, np.ndarray], np.ndarray]
    n_train: int
    n_target: int | None
    source: str


def _check_images(name: str, a: np.ndarray, n: int | None) -> np.ndarray:
    a = np.asarray(a)
    if not (a.ndim == 3 or (a.ndim == 4 and a.shape[-1] in (3, 4))):
        raise InputError(f"{name} images must be (n, H, W) or (n, H, W, 3|4), got shape "
                         f"{a.shape}")
    if n is not None and a.shape[0] != n:
        raise InputError(f"{a.shape[0]} {name} images where {n} were asked for")
    return a


def _store_meta(ds: xr.Dataset | None) -> dict:
    meta = ds.attrs.get("dmdask", {}) if ds is not None else {}
    return meta if isinstance(meta, dict) else {}


def _from_arrays(ds: xr.Dataset | None, tr, tg, source: str) -> ImageSource:
    tr = _check_images("train", tr, None)
    tg = None if tg is None else _check_images("target", tg, None)
    if ds is not None:
        if tr.shape[0] != ds.sizes["train"]:
            raise InputError(f"{tr.shape[0]} training images for a store of "
                             f"{ds.sizes['train']} training examples")
        if tg is not None and tg.shape[0] != ds.sizes["target"]:
            raise InputError(f"{tg.shape[0]} target images for a store of "
                             f"{ds.sizes['target']} targets")
    arrays = {"train": tr, "target": tg}
    return ImageSource(lambda which, idx: arrays[which][np.asarray(idx, np.int64)],
                       int(tr.shape[0]), None if tg is None else int(tg.shape[0]), source)


def _from_job(ds: xr.Dataset | None) -> tuple[ImageSource | None, str]:
    """The store's job as an image source, or None and the reason why not."""
    from ..store import jobspec

    how = ("pass <code>images=(train_images, target_images)</code> or a callable "
           "<code>f(store) → (train_images, target_images)</code>")
    if ds is None:
        return None, "No run store given: the images come from the store's job. Or " + how + "."
    meta = _store_meta(ds)
    job = meta.get("job")
    if not isinstance(job, dict) or not job.get("path"):
        return None, ("The store has no job (its runs were imported, e.g. from the MadryLab "
                      "layout, or written by hand), so nothing here knows its images: " + how
                      + ".")
    path, params = str(job["path"]), job.get("params") or {}
    code = f"<code>{html.escape(path)}</code>"
    try:
        cls = jobspec.resolve_job_class(path)
    except DmdaskError as e:
        return None, f"The store's job cannot be used here: {html.escape(str(e))}"
    if not callable(getattr(cls, "examples", None)):
        return None, (f"The store's job {code} has no <code>examples(which, "
                      "index)</code> method (the optional image hook of "
                      "<code>dmdask.store.jobspec</code>): " + how + ".")
    try:  # a job's constructor may need data this machine lacks: a note, not a crash
        inst = cls(**jobspec.check_params(cls, params, path))
        desc = jobspec.validate_description(inst.describe(), path)
    except Exception as e:  # noqa: BLE001 - any failure of the job's own code
        return None, (f"The store's job {code} cannot be constructed here "
                      f"({html.escape(f'{type(e).__name__}: {e}')}), so its images are not "
                      "drawn.")
    want = meta.get("fingerprint")
    if want is not None and jobspec.fingerprint(desc) != want:
        return None, (f"The store's job {code} now describes a different dataset "
                      "than the store was made with (fingerprint "
                      f"{jobspec.fingerprint(desc)} ≠ {want}): its images would not be the "
                      "store's examples.")

    def get(which: str, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        return _check_images(which, inst.examples(which, idx), idx.size)

    return ImageSource(get, int(desc["train_label"].size), int(desc["target_label"].size),
                       f"the job's examples() ({path})"), ""


def image_source(store, images: ImagesArg = None) -> tuple[ImageSource | None, str]:
    """``(source, note)``: where the images section gets its images, or None and why not
    (``note`` is HTML).

    ``images``: ``(train, target)`` arrays (``target`` may be None), a mapping with keys
    ``train``/``target``, a callable ``f(store_dataset)`` returning either, None (the store's
    job, through its optional ``examples`` hook) or False (no images). Images are
    ``(n, H, W)`` grey or ``(n, H, W, 3|4)`` colour. Raises :class:`InputError` for given
    images of the wrong shape or number.
    """
    ds, _ = store_and_path(store)
    if images is False:
        return None, "Images were switched off (<code>images=False</code>)."
    if images is None:
        return _from_job(ds)
    source = "given"
    if callable(images):
        images = images(ds)
        source = "images callable"
    if isinstance(images, Mapping):
        tr, tg = images.get("train"), images.get("target")
    elif isinstance(images, (tuple, list)) and len(images) == 2:
        tr, tg = images
    else:
        raise InputError("images must be (train_images, target_images), a mapping with "
                         "keys 'train'/'target', a callable returning one, None or False")
    return _from_arrays(ds, tr, tg, source), ""


def usable_images(store, images: ImagesArg = None, *, n_train: int | None = None
                  ) -> tuple[ImageSource | None, str]:
    """``(source, note HTML)`` for a report section: None and why where images are switched
    off (``images=False``), refused, unavailable or for another number of training examples
    than ``n_train``."""
    if images is False:
        return None, "Images were switched off (<code>images=False</code>)."
    try:
        src, note = image_source(store, images)
    except InputError as e:
        return None, html.escape(str(e), quote=True)
    if src is not None and n_train is not None and src.n_train != n_train:
        return None, (f"{src.n_train} training images for datamodels of "
                      f"{n_train} training examples.")
    return src, note


def resolve_images(store, images: ImagesArg = None
                   ) -> tuple[np.ndarray, np.ndarray | None, str] | None:
    """``(train_images, target_images, source)``: every image of the store, or None where
    there are none (see :func:`image_source` for ``images`` and the reasons). The report
    itself loads only the images it draws."""
    src, _ = image_source(store, images)
    if src is None:
        return None
    tr = src.get("train", np.arange(src.n_train))
    tg = None if src.n_target is None else src.get("target", np.arange(src.n_target))
    return tr, tg, src.source
