"""Jobs: the learning algorithm and dataset a run store trains.

A job is a class named by an import path ``"module:Class"``, constructed with keyword
parameters. It must define two methods on the class itself:

``describe() -> dict``
    ``train_label`` (int [n_train]), ``target_label`` (int [n_target]) and
    ``target_train_index`` (int [n_target], -1 where the target is not a training example);
    optionally ``train_id`` / ``target_id`` (str or int arrays).
``train_block(masks, seeds, train_labels=None) -> float32 [B, n_target]``
    The correct-class margin of B models, model b trained on the training examples selected
    by the bool row ``masks[b]`` with seed ``seeds[b]``; ``train_labels`` ([B, n_train] int,
    or None) replaces the labels the models train on (label-flip experiments).

**Optional counterfactual hooks** (used by :mod:`dmdask.counterfactual`):

``supports_train_labels = True`` (class attribute)
    The job honours ``train_labels``; label-flip counterfactuals (mislabel brittleness)
    refuse a job without it.
``train_logits(masks, seeds, train_labels=None) -> float [B, n_target, n_classes]``
    The logits of the models :meth:`train_block` trains; the mislabel search takes each
    target's most confused class from the full-data models' mean logits.

**Optional report hook** (used by :mod:`dmdask.report` to draw training images and targets;
a job without it gets a report whose images section says so):

``examples(which, index) -> uint8 [n, H, W] or [n, H, W, C]``
    The inputs of the training examples (``which="train"``) or targets (``"target"``) at
    positions ``index`` (int [n]) of the store's ``train``/``target`` axis: grey images
    ``[n, H, W]`` or colour ``[n, H, W, 3|4]``, 0..255.

**Optional model hooks** (used only by the model-based estimators of
:mod:`dmdask.analysis.estimators.model`; a job without them trains stores as before, and those
estimators refuse it with a :class:`JobError` naming the missing hook). For torch jobs;
``params`` is a dict of named tensors, batched (leading dim ``B``) where returned by a
training hook and one model's slice (``{k: v[b]}``) where passed to ``features``/``head``:

``model_inputs() -> dict``
    ``x_train`` [n_train, ...], ``x_target`` [n_target, ...] (float tensors, the inputs the
    models see, in the dtype they train in) and ``y_train``/``y_target`` (int64 labels).
``train_params(masks, seeds, train_labels=None) -> dict[str, Tensor [B, ...]]``
    Final parameters of the models :meth:`train_block` trains on the same arguments (the
    same training: DigitsMLP's are bit for bit those whose margins the store holds).
``train_checkpoints(masks, seeds, train_labels=None) -> (list[dict], lr)``
    Parameters at the end of every epoch (the last is the final model) and ``lr`` float64
    [B, epochs], the learning rate in effect over the epoch each checkpoint closes
    (TracInCP's η_c). Optional even among the hooks (a convex solver has none).
``features(params, x) -> Tensor [m, H]``
    Penultimate activations of one model (a linear model: the inputs).
``head(params, h) -> Tensor [m, C]``
    Logits from penultimate activations, affine in the parameters named by ``last_layer``:
    ``head(params, features(params, x))`` is the model. Both are pure torch functions,
    usable under ``torch.func`` (``grad``, ``vmap``, ``hessian``) for gradients of the loss
    or of TRAK's output f = log p_y − log(1 − p_y) w.r.t. all parameters or the last layer.
``last_layer: tuple[str, ...]``
    The names of the last (linear) layer's parameters.
``l2_penalty(params) -> dict[str, Tensor]``
    Optional: per-entry c of the training objective's (c/2)·θ² (weight decay), added to the
    last-layer Hessian of the influence function.

**Trust.** A store is data, not code. Importing a module runs its top-level code, so a job
module is imported only if it is trusted on this machine (:func:`trusted_modules`): the
bundled ``jobs`` package, the modules of the setting ``dmdask.jobs.trusted``, and the modules
recorded in this machine's trust file (:func:`trust_file`) — the module of every store created
here (:func:`resolve_named_job`) and every module given to ``dmdask train/init --trust-job`` or
``dmdask.train(..., trust_job=...)``. Trusting a module trusts its submodules (``jobs`` covers
``jobs.digits``); ``pkg.sub`` does not cover ``pkg`` or ``pkg.other``. A store naming any other
module is refused before the import, in one line saying how to trust it. The trust is never
read from a store. Once imported, the class is checked for the job interface *before* it is
constructed (:func:`resolve_job_class`), so neither a caller nor an edited store can make
dmdask construct or run a class that is not a job.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import os
import warnings
from collections.abc import Iterable
from typing import Any

import dask.config
import numpy as np
import yaml

from .. import config
from ..errors import JobError

REQUIRED_METHODS = ("describe", "train_block")

#: the job package shipped with dmdask, trusted everywhere
BUNDLED = ("jobs",)
TRUST_FILE_NAME = "dmdask-trusted-jobs.yaml"


class UntrustedJobError(JobError):
    """A store names a job module that is not trusted on this machine (nothing was imported)."""


class Job:
    """Optional base class for jobs: documents the interface; subclassing is not required."""

    def describe(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def train_block(self, masks, seeds, train_labels=None):  # pragma: no cover - interface
        raise NotImplementedError


def parse_job_path(path: str) -> tuple[str, str]:
    """Split ``"module:Class"`` into its parts, refusing anything else."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise JobError(f"job {path!r} is not an import path of the form 'module:Class'")
    module, name = path.split(":")
    ident = all(p.isidentifier() for p in module.split(".")) and name.isidentifier()
    if not ident:
        raise JobError(f"job {path!r} is not an import path of the form 'module:Class'")
    return module, name


# --------------------------------------------------------------------------- trust


def trust_file() -> str:
    """The YAML file where this machine's recorded job trust lives.

    The setting ``dmdask.jobs.trust-file``, or ``dmdask-trusted-jobs.yaml`` in dask's config
    directory (``$DASK_CONFIG``, else ``~/.config/dask``), so dask also loads it as config.
    """
    path = config.get("jobs.trust-file")
    if path:
        return os.path.abspath(os.path.expanduser(os.fspath(path)))
    # read $DASK_CONFIG now, not at import: dask.config.PATH froze it when dask was imported
    return os.path.join(os.environ.get("DASK_CONFIG") or dask.config.PATH, TRUST_FILE_NAME)


def _module_list(value: Any, where: str) -> list[str]:
    """Module names from a setting: a list, or one comma-separated string (an env variable)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise JobError(f"{where} must be a list of module names, got {value!r}")
    out = []
    for m in value:
        if not (isinstance(m, str) and m and all(p.isidentifier() for p in m.split("."))):
            raise JobError(f"{where}: {m!r} is not a module name like 'pkg' or 'pkg.module'")
        out.append(m)
    return out


def _names(modules: str | Iterable[str]) -> str | list[str]:
    return modules if isinstance(modules, str) else list(modules)


def _read_recorded(path: str) -> list[str]:
    """The modules recorded in the trust file ``path`` ([] if it does not exist)."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (OSError, yaml.YAMLError) as e:
        raise JobError(f"trust file {path} cannot be read ({e}); fix or delete it") from e
    value = doc
    for key in ("dmdask", "jobs", "recorded"):
        value = value.get(key) if isinstance(value, dict) else None
    return _module_list(value, f"trust file {path}: dmdask.jobs.recorded")


def trusted_modules(extra: Iterable[str] = ()) -> frozenset[str]:
    """The job modules trusted on this machine now, plus ``extra`` (trusted for one call).

    The bundled ``jobs``, the setting ``dmdask.jobs.trusted``, and the recorded modules: the
    setting ``dmdask.jobs.recorded`` and the trust file (read afresh, so trust recorded by
    another process counts). Never anything a store says.
    """
    out = set(BUNDLED)
    out.update(_module_list(config.get("jobs.trusted"), "setting dmdask.jobs.trusted"))
    out.update(_module_list(config.get("jobs.recorded"), "setting dmdask.jobs.recorded"))
    out.update(_read_recorded(trust_file()))
    out.update(_module_list(_names(extra), "trusted job modules"))
    return frozenset(out)


def is_trusted(module: str, trusted: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``trusted`` or a submodule of one (``jobs`` covers
    ``jobs.digits``, not ``jobsx``)."""
    return any(module == t or module.startswith(t + ".") for t in trusted)


def check_trusted(path: str, trust: Iterable[str] = (), store: str | None = None) -> str:
    """Refuse the job ``path`` unless its module is trusted (:func:`trusted_modules` plus
    ``trust``); nothing is imported. Returns the module name."""
    module, _ = parse_job_path(path)
    if not is_trusted(module, trusted_modules(trust)):
        named = f"store {store} names job {path!r}" if store else f"job {path!r}"
        raise UntrustedJobError(
            f"{named}, but its module {module!r} is not trusted on this machine and importing it "
            f"would run its code; if you trust it, run `dmdask train --trust-job {module} ...` "
            f"(or dmdask.train(..., trust_job=[{module!r}])) once, or add it to the setting "
            f"dmdask.jobs.trusted"
        )
    return module


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock beside ``path`` (POSIX; elsewhere no lock: a lost update only costs a
    later refusal that says how to trust)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record_trust(modules: Iterable[str]) -> str | None:
    """Record ``modules`` as trusted on this machine, in :func:`trust_file`; return its path.

    Never written to a store. If the file cannot be written, warn and return None: the
    modules are then trusted for this call only, and a later refusal says how to trust them.
    """
    modules = _module_list(_names(modules), "trusted job modules")
    path = trust_file()
    new = [m for m in modules if not is_trusted(m, BUNDLED)]
    if not new:
        return path
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _locked(path):
            recorded = _read_recorded(path)
            add = [m for m in dict.fromkeys(new) if m not in recorded]
            if not add:
                return path
            doc = {"dmdask": {"jobs": {"recorded": recorded + add}}}
            # not *.yaml while partial: dask reads every YAML file of its config directory
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write("# Job modules trusted on this machine: recorded by dmdask for the stores "
                        "created here and\n# for --trust-job. Importing a module runs its code; "
                        "delete an entry to revoke it.\n")
                yaml.safe_dump(doc, f, default_flow_style=False)
            os.replace(tmp, path)
    except (OSError, JobError) as e:
        warnings.warn(f"could not record trust in job module(s) {', '.join(new)} in {path} ({e}); "
                      f"they are trusted for this call only", stacklevel=2)
        return None
    return path


def resolve_named_job(path: str) -> type:
    """Resolve a job the user named (``create_store``): its module is trusted because the user
    chose it, and once the class passes the interface check that trust is recorded on this
    machine (:func:`record_trust`)."""
    module, _ = parse_job_path(path)
    cls = resolve_job_class(path, trust=(module,))
    record_trust([module])
    return cls


# --------------------------------------------------------------------------- resolving


def resolve_job_class(path: str, trust: Iterable[str] = (), store: str | None = None) -> type:
    """Import the class named by ``path`` and check it has the job interface.

    The module is imported only if trusted (:func:`check_trusted`; ``trust``: modules trusted
    for this call), and nothing is constructed. Raises :class:`UntrustedJobError` before any
    import, else :class:`JobError` if the module does not import, the name is not a class, or
    the class lacks ``describe``/``train_block`` with the right signatures.
    """
    module_name, name = parse_job_path(path)
    check_trusted(path, trust, store)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise JobError(f"job {path!r}: cannot import module {module_name!r} ({e})") from e
    obj = getattr(module, name, None)
    if obj is None:
        raise JobError(f"job {path!r}: module {module_name!r} has no attribute {name!r}")
    if not inspect.isclass(obj):
        raise JobError(f"job {path!r} names a {type(obj).__name__}, not a job class")
    for meth in REQUIRED_METHODS:
        fn = inspect.getattr_static(obj, meth, None)
        if fn is None or not callable(getattr(obj, meth, None)) or isinstance(fn, staticmethod):
            raise JobError(
                f"job {path!r} is not a job: class {obj.__qualname__} has no method {meth}() "
                f"(a job defines describe() and train_block(masks, seeds, train_labels=None))"
            )
    try:
        sig = inspect.signature(obj.train_block)
        sig.bind(None, np.zeros((1, 1), bool), np.zeros(1, np.uint64), train_labels=None)
        inspect.signature(obj.describe).bind(None)
    except (TypeError, ValueError) as e:
        raise JobError(
            f"job {path!r}: {obj.__qualname__}.train_block must accept "
            f"(masks, seeds, train_labels=None) and describe() no arguments ({e})"
        ) from e
    return obj


def check_params(cls: type, params: dict[str, Any], path: str) -> dict[str, Any]:
    """Check ``params`` are JSON-serialisable keywords that ``cls``'s constructor accepts."""
    params = dict(params or {})
    try:
        json.dumps(params, sort_keys=True)
    except TypeError as e:
        raise JobError(f"job {path!r}: parameters must be JSON-serialisable ({e})") from e
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as e:
        raise JobError(f"job {path!r}: parameters {params} do not fit its constructor ({e})") from e
    return params


def construct_job(path: str, params: dict[str, Any] | None = None, trust: Iterable[str] = ()):
    """Resolve (if trusted), check and only then construct the job ``path(**params)``."""
    cls = resolve_job_class(path, trust)
    params = check_params(cls, params or {}, path)
    return cls(**params)


def validate_description(desc: dict, path: str = "job") -> dict[str, np.ndarray]:
    """Normalise a job's ``describe()`` output into int64/str arrays, refusing bad shapes."""
    if not isinstance(desc, dict):
        raise JobError(f"{path}: describe() returned {type(desc).__name__}, not a dict")
    out: dict[str, np.ndarray] = {}
    for key in ("train_label", "target_label", "target_train_index"):
        if key not in desc:
            raise JobError(f"{path}: describe() lacks {key!r}")
        arr = np.asarray(desc[key])
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise JobError(f"{path}: describe()[{key!r}] must be a 1-d integer array, got "
                           f"{arr.dtype} with shape {arr.shape}")
        out[key] = arr.astype(np.int64)
    n_train, n_target = out["train_label"].size, out["target_label"].size
    if out["target_train_index"].size != n_target:
        raise JobError(f"{path}: target_train_index has {out['target_train_index'].size} entries "
                       f"for {n_target} targets")
    tti = out["target_train_index"]
    if ((tti < -1) | (tti >= n_train)).any():
        raise JobError(f"{path}: target_train_index must be -1 or in [0, {n_train})")
    for key, n in (("train_id", n_train), ("target_id", n_target)):
        if desc.get(key) is not None:
            arr = np.asarray(desc[key])
            if arr.shape != (n,):
                raise JobError(f"{path}: describe()[{key!r}] has shape {arr.shape}, expected ({n},)")
            out[key] = arr.astype(str) if arr.dtype.kind in "OUS" else arr.astype(np.int64)
    return out


def fingerprint(desc: dict[str, np.ndarray]) -> str:
    """A short hash of a job's description: detects a dataset that changed under a store."""
    h = hashlib.sha256()
    for key in sorted(desc):
        arr = np.ascontiguousarray(desc[key])
        h.update(key.encode())
        h.update(str(arr.dtype.str if arr.dtype.kind != "U" else "U").encode())
        h.update(arr.astype(str).tobytes() if arr.dtype.kind == "U" else arr.tobytes())
    return h.hexdigest()[:16]
