"""Array backend: NumPy or CuPy chunks, chosen by the setting ``dmdask.array.backend``.

Array code in dmdask asks the chunk it holds for its namespace (:func:`get_namespace`), the
``array_api_compat`` way, so one function runs on NumPy and CuPy chunks. Moving data to the
chosen backend is explicit (:func:`to_backend`, :func:`dask_to_backend`); a CuPy backend that
cannot be had is an error, never a silent NumPy fallback.
"""

from __future__ import annotations

import types

import numpy as np
from dask.callbacks import Callback

from . import config, optional
from .errors import DmdaskError

BACKENDS = ("numpy", "cupy")


def backend_name(name: str | None = None) -> str:
    """The backend in force: ``name`` if given, else the setting ``dmdask.array.backend``."""
    name = name or config.get("array.backend", "numpy")
    if name not in BACKENDS:
        raise DmdaskError(f"dmdask.array.backend must be one of {BACKENDS}, not {name!r}")
    return name


def namespace(name: str | None = None):
    """The array module of a backend (``numpy`` or ``cupy``; CuPy must be importable)."""
    name = backend_name(name)
    if name == "numpy":
        return np
    cp = optional.cupy()
    if not optional.has_gpu():
        raise DmdaskError("dmdask.array.backend is 'cupy' but CuPy sees no CUDA device")
    return cp


def is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def get_namespace(*arrays):
    """The array module of the given arrays (CuPy if any is a CuPy array, else NumPy)."""
    for a in arrays:
        if is_cupy(a):
            import cupy

            return cupy
    return np


def to_backend(x, name: str | None = None):
    """``x`` as an array of the backend (a copy to the device for CuPy)."""
    return namespace(name).asarray(x)


def to_numpy(x) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array (host transfer for CuPy)."""
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def dask_to_backend(arr, name: str | None = None):
    """A dask array whose chunks are of the chosen backend."""
    name = backend_name(name)
    if name == "numpy":
        return arr
    cp = namespace(name)
    return arr.map_blocks(cp.asarray, dtype=arr.dtype, meta=cp.empty((0,) * arr.ndim, arr.dtype))


# ---------------------------------------------------------------------------------- guard
# "No code path silently falls back to NumPy": :func:`expect_chunks` watches every task of the
# dask computations run inside it and fails when an array *computation* yields a chunk of the
# wrong type (e.g. a NumPy ndarray where CuPy is expected).

# Layers that only read, slice, regroup or gather data: their chunks may be host arrays (zarr
# reads land in host memory; moving them to the device is the next layer's job). Matched
# against the words of dask's ``key_split`` name of a task (a fused task's name joins the
# names of the layers it fused, so a fused read + compute task is *not* data movement).
_MOVE_PREFIXES = ("open_dataset", "original-", "from-zarr", "from-value", "array-original")
_MOVE_WORDS = frozenset({
    "getitem", "shuffle", "split", "rechunk", "merge", "p2p", "finalize",
    "hlgfinalizecompute", "concatenate", "stack", "array", "from", "zarr", "take", "store",
})


# Tasks that return host results by design: a solver's target block ends with its weights
# gathered to the host as the fit's output (``dmdask.fit.solve.gram.block._solve_block``).
HOST_BY_DESIGN = ("_solve_block",)


class ChunkTypeError(DmdaskError):
    """An array task produced a chunk of the wrong array type (see :func:`expect_chunks`)."""


def _kind_of(kind):
    """(name, predicate) for an expected chunk kind: ``"cupy"``, ``"numpy"`` or a class."""
    if isinstance(kind, type):
        return kind.__module__ + "." + kind.__qualname__, lambda a: isinstance(a, kind)
    if kind == "cupy":
        return "cupy.ndarray", is_cupy
    if kind == "numpy":
        return "numpy.ndarray", lambda a: isinstance(a, np.ndarray)
    raise DmdaskError(f"expected chunk kind must be 'cupy', 'numpy' or a class, not {kind!r}")


def _is_arraylike(x) -> bool:
    if isinstance(x, (type, np.generic, types.ModuleType)) or hasattr(x, "dask"):
        return False  # classes, scalars, modules (numpy has .shape/.dtype/.ndim), lazy arrays
    if callable(x):
        return False
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")


def _arrays_in(obj, depth: int = 3):
    """The array-likes in a task result: itself, or inside tuples/lists/dicts and the fields
    of plain objects (dataclasses such as ``SufficientStats``), ``depth`` levels deep."""
    if _is_arraylike(obj):
        yield obj
        return
    if depth <= 0 or isinstance(obj, (str, bytes, int, float, complex, bool, type(None),
                                      types.ModuleType)):
        return
    if isinstance(obj, (tuple, list)):
        items = obj
    elif isinstance(obj, dict):
        items = obj.values()
    elif hasattr(obj, "__dict__") and not callable(obj) and type(obj).__module__ != "builtins":
        items = vars(obj).values()
    else:
        return
    for it in items:
        yield from _arrays_in(it, depth - 1)


def _is_data_movement(key) -> bool:
    from dask.utils import key_split

    name = key_split(key)
    if name.startswith(_MOVE_PREFIXES):
        return True
    return all(w in _MOVE_WORDS for w in name.split("-"))


class _Ledger:
    """What one computation's tasks produced; decides which host chunks are violations.

    Per task: ``"dev"`` (a chunk of the expected kind, and none of another), ``"host"`` (a
    counted chunk of another kind), or nothing (no counted array). A host chunk is allowed
    when its task only moves data (:data:`_MOVE_WORDS`), matches ``allow``, or feeds the
    device (some task downstream of it, through host tasks only, produced the expected kind:
    host-side staging before the upload). A host chunk from a task with a device input is a
    fallback at once."""

    def __init__(self, name, pred, allow, min_size):
        self.name, self.pred, self.min_size = name, pred, min_size
        self.allow = tuple(allow) + HOST_BY_DESIGN
        self.cls: dict = {}
        self.desc: dict = {}
        self.deps: dict = {}

    def classify(self, result):
        bad, good = [], False
        for a in _arrays_in(result):
            dt = getattr(a, "dtype", None)
            if getattr(dt, "kind", "O") not in "biufc":  # strings/objects: metadata
                continue
            if int(getattr(a, "size", 0)) < self.min_size:  # scalars, tiny values
                continue
            if self.pred(a):
                good = True
            else:
                bad.append(f"{type(a).__module__}.{type(a).__qualname__}"
                           f"{tuple(a.shape)} {a.dtype}")
        if bad:
            return "host", "; ".join(bad[:3])
        return ("dev" if good else None), ""

    def allowed(self, key) -> bool:
        from dask.utils import key_split

        name = key_split(key)
        return any(p in name for p in self.allow)

    def add(self, key, result, deps) -> str | None:
        """Record a finished task; return an error message for an immediate fallback."""
        cls, desc = self.classify(result)
        self.cls[key], self.desc[key], self.deps[key] = cls, desc, tuple(deps)
        if cls == "host" and not self.allowed(key):
            dev_in = [d for d in deps if self.cls.get(d) == "dev"]
            if dev_in:
                return (f"task {key!r} turned a {self.name} chunk (from {dev_in[0]!r}) into "
                        f"{desc}: a silent fallback off the expected array type")
        return None

    def violations(self) -> list:
        """Host chunks that are neither data movement, allowed, nor staging for the device."""
        fed = set()
        # a host task feeds the device if a dependent is "dev", or is a host task that does
        stack = [d for k, c in self.cls.items() if c == "dev" for d in self.deps[k]]
        while stack:
            k = stack.pop()
            if k in fed or self.cls.get(k) != "host":
                continue
            fed.add(k)
            stack.extend(self.deps.get(k, ()))
        bad = [k for k, c in self.cls.items() if c == "host" and k not in fed
               and not _is_data_movement(k) and not self.allowed(k)]
        # where the host computation begins first (no offending input of its own)
        bad_set = set(bad)
        bad.sort(key=lambda k: any(d in bad_set for d in self.deps.get(k, ())))
        return bad

    def message(self, bad) -> str:
        shown = "; ".join(f"{k!r} -> {self.desc[k]}" for k in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        return (f"{len(bad)} array task(s) computed chunks that are not {self.name} and never "
                f"reached it: {shown}{more}")


class _GuardCallback(Callback):
    """Local-scheduler half of :func:`expect_chunks` (one ledger per running computation:
    computations started from several threads at once are kept apart)."""

    def __init__(self, name, pred, allow, min_size):
        super().__init__()
        self._args = (name, pred, allow, min_size)
        self._ledgers: dict = {}
        import threading

        self._lock = threading.Lock()
        self.n_tasks = 0

    def _ledger(self, state):
        with self._lock:
            led = self._ledgers.get(id(state))
            if led is None:
                led = self._ledgers[id(state)] = _Ledger(*self._args)
            return led

    def _start_state(self, dsk, state):
        self._ledger(state)

    def _posttask(self, key, result, dsk, state, worker_id):
        self.n_tasks += 1
        deps = state.get("dependencies", {}).get(key, ())
        msg = self._ledger(state).add(key, result, deps)
        if msg:
            raise ChunkTypeError(msg)

    def _finish(self, dsk, state, errored):
        with self._lock:
            led = self._ledgers.pop(id(state), None)
        if led is None or errored:
            return
        bad = led.violations()
        if bad:
            raise ChunkTypeError(led.message(bad))


class _GuardWorkerPlugin:
    """Distributed half of :func:`expect_chunks`: every worker records, for each task it
    computes, the kind of its result and its dependencies; the client reads the records back
    and judges them with the same rules as the local scheduler."""

    def __init__(self, kind, allow, min_size, plugin_name):
        self.args = (kind, allow, min_size)  # picklable: the predicate is rebuilt there
        self.name = plugin_name
        self.records: list = []
        self.worker = None

    def setup(self, worker):
        self.worker = worker
        self.records = []
        kind, allow, min_size = self.args
        self._led = _Ledger(*_kind_of(kind), allow, min_size)

    def teardown(self, worker):
        pass

    def transition(self, key, start, finish, **kwargs):
        if finish != "memory" or start not in ("executing", "long-running"):
            return
        try:
            value = self.worker.data[key]
            ts = self.worker.state.tasks.get(key)
            deps = tuple(d.key for d in ts.dependencies) if ts is not None else ()
        except Exception:  # never disturb the worker
            return
        cls, desc = self._led.classify(value)
        self.records.append((key, cls, desc, deps))


def _plugin_class():
    """``ExpectChunksPlugin``: the worker plugin, a ``distributed`` ``WorkerPlugin`` built on
    first use (distributed is imported only when a guard meets a client). It is a module
    attribute (module ``__getattr__``), so workers unpickle it by reference."""
    cls = globals().get("ExpectChunksPlugin")
    if cls is None:
        from distributed.diagnostics.plugin import WorkerPlugin

        cls = type("ExpectChunksPlugin", (_GuardWorkerPlugin, WorkerPlugin),
                   {"__module__": __name__, "__qualname__": "ExpectChunksPlugin"})
        globals()["ExpectChunksPlugin"] = cls
    return cls


def __getattr__(name):
    if name == "ExpectChunksPlugin":
        return _plugin_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _collect_records(dask_worker, name):
    plugin = dask_worker.plugins.get(name)
    return [] if plugin is None else list(plugin.records)


class expect_chunks:  # noqa: N801 - used as a context manager, like dask.config.set
    """Fail when a dask computation inside the block yields array chunks of the wrong kind.

    ``kind``: ``"cupy"`` (the GPU path: no NumPy chunk may come out of an array
    computation), ``"numpy"``, or any class (``isinstance``; the CPU tests use a NumPy
    subclass as a stand-in for a device array). Every finished task's result is checked —
    an array, or the arrays inside a tuple/list/dict or an object's fields (one level of
    dataclasses such as ``SufficientStats``) — ignoring non-numeric arrays (metadata) and
    arrays of fewer than ``min_size`` elements (scalars).

    A chunk of another kind raises :class:`ChunkTypeError` naming the task key: at once when
    the task had an input of the expected kind (a fallback, e.g. ``.get()`` or
    ``np.asarray`` on a device chunk), or when the computation ends for chunks that never
    reached the expected kind (an array computation run on NumPy), except tasks that only
    move data (zarr reads, slicing, rechunking, concatenation: host I/O), tasks whose host
    result feeds a task of the expected kind (staging before the upload), and tasks whose
    dask name contains one of ``allow`` or of :data:`HOST_BY_DESIGN` (solver blocks, whose
    output is the weights on the host).

    Local scheduler: a ``dask.callbacks.Callback`` (``_posttask``). Distributed: pass
    ``client`` (or have a default client): a worker plugin records every computed task and
    the block's exit judges the records (raising there). ``.n_tasks`` counts the tasks seen.
    """

    def __init__(self, kind="cupy", *, client=None, allow=(), min_size: int = 2):
        self.kind = kind
        self.name, self.pred = _kind_of(kind)
        self.allow = tuple(allow)
        self.min_size = int(min_size)
        self.client = client
        self._cb = None
        self._plugin_name = None

    @property
    def n_tasks(self) -> int:
        return (self._cb.n_tasks if self._cb is not None else 0) + getattr(self, "_n_dist", 0)

    def __enter__(self):
        self._cb = _GuardCallback(self.name, self.pred, self.allow, self.min_size)
        self._cb.__enter__()
        client = self.client
        if client is None:
            try:
                from distributed import default_client

                client = default_client()
            except Exception:
                client = None
        self._client = client
        if client is not None:
            import uuid

            self._plugin_name = f"dmdask-expect-chunks-{uuid.uuid4().hex[:8]}"
            plugin = _plugin_class()(self.kind, self.allow, self.min_size, self._plugin_name)
            client.register_plugin(plugin, name=self._plugin_name)
        return self

    def __exit__(self, *exc):
        self._cb.__exit__(*exc)
        if self._client is None:
            return False
        name = self._plugin_name
        try:
            per_worker = self._client.run(_collect_records, name=name)
        finally:
            try:
                self._client.unregister_worker_plugin(name)
            except Exception:
                pass
        if exc[0] is not None:
            return False
        led = _Ledger(self.name, self.pred, self.allow, self.min_size)
        recs = [r for rs in per_worker.values() for r in rs]
        self._n_dist = len(recs)
        for key, cls, desc, deps in recs:
            led.cls[key], led.desc[key], led.deps[key] = cls, desc, deps
        for key, cls, desc, deps in recs:
            if cls == "host" and not led.allowed(key):
                dev_in = [d for d in deps if led.cls.get(d) == "dev"]
                if dev_in:
                    raise ChunkTypeError(
                        f"task {key!r} turned a {self.name} chunk (from {dev_in[0]!r}) into "
                        f"{desc}: a silent fallback off the expected array type")
        bad = led.violations()
        if bad:
            raise ChunkTypeError(led.message(bad))
        return False


def check_chunks(obj, kind="cupy", *, what: str = "result", min_size: int = 2) -> None:
    """Raise :class:`ChunkTypeError` if a computed result (an array, or arrays inside
    containers/objects) holds an array not of ``kind`` (the check on gathered results)."""
    name, pred = _kind_of(kind)
    cls, desc = _Ledger(name, pred, (), min_size).classify(obj)
    if cls == "host":
        raise ChunkTypeError(f"{what} holds {desc}, not {name}")
