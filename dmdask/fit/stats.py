"""Sufficient statistics of the LASSO problems that share one design (REFERENCE.md §1.4).

One pass over row blocks of the masks ``X`` (n × d, 0/1) and outputs ``Y`` (n × T) gives, per
contiguous group of rows (a holdout split or the K folds of cross-validation):

    n,  G = XᵀX,  s = Xᵀ1,  C = XᵀY,  Σy,  Σy²

Statistics are additive (``a + b``, ``total - fold``), so any union of groups costs nothing
more and the masks are read exactly once. Exactness: 0/1 masks make every entry of ``XᵀX`` an
integer ≤ rows. Two routes form it, both exact (setting ``dmdask.solve.stats-gram``):

* ``int8``: on NumPy chunks of 0/1 uint8/bool masks, int8 × int8 → int32 GEMMs
  (``torch._int_mm``, exact below 2^31 rows, kept as int32 counts). Fast only where the CPU
  has VNNI instructions (AVX-512 VNNI, AVX-VNNI); elsewhere many times *slower* than float32.
  ``auto`` therefore takes it only where a one-time measurement in the process that runs
  the pass (:func:`gram_route_probe`: one small tile each way, one thread, cached) found it
  clearly faster — never because torch happens to be installed.
* ``float32``: rank-k updates, exact while an accumulator holds ≤ 2^24 rows (products are
  0/1, every partial sum an integer < 2^24): each accumulation chain adds its blocks into one
  float32 accumulator (BLAS ``ssyrk`` with β = 1 on NumPy), moving to float64 (exact to 2^53)
  only beyond 2^24 rows and at the end.

``C``, ``Σy``, ``Σy²`` are accumulated in float64 (setting ``dmdask.solve.stats-c-dtype``:
``float32`` makes the ``XᵀY`` GEMM several times faster — y is shifted by its block mean before
the float32 GEMM and the shift added back in float64, so each column of the centred ``XᵀY``
keeps float32 relative accuracy at its own scale; the Gram solver uses it when its tolerance
is ≥ 1e-7). Centring ``G − s sᵀ/n`` happens in float64.

The pass runs on dask, group after group, each group's blocks accumulated in place along
``lanes`` chains: one per worker thread of a ``distributed.Client``; one on the local
scheduler, whose BLAS then uses every core (see :func:`dmdask.scheduling.lanes`; ``dmdask.solve.stats-lanes``
overrides). NumPy or CuPy chunks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from .. import config
from ..backend import dask_to_backend, get_namespace, to_numpy
from ..errors import DmdaskError, InputError, UnsupportedTargets
from ..scheduling import Deferred, blas_per_lane, compute
from ..scheduling import lanes as n_lanes

__all__ = ["SufficientStats", "compute_stats", "group_bounds_for"]

_EXACT_ROWS = 2**24


@dataclass
class SufficientStats:
    """Statistics of one group of rows: ``n`` rows, ``G`` [d, d], ``s`` [d], ``C`` [d, T],
    ``sy`` [T], ``syy`` [T] (NumPy or CuPy). All float64 except ``G``, which holds exact
    integer counts: float64, or int32/int64 where the int8 route formed it (half the memory,
    and no conversion pass; sums move to int64 before they could pass 2^31 − 1).
    ``nonfinite`` [T] bool marks targets with a NaN/inf output in these rows (their target
    statistics are then NaN; the others are unaffected), or is None where the pass raised
    on such outputs instead (``compute_stats(..., nonfinite="raise")``)."""

    n: int
    G: object
    s: object
    C: object
    sy: object
    syy: object
    nonfinite: object = None

    # ----------------------------------------------------------------- algebra
    def __add__(self, other: SufficientStats) -> SufficientStats:
        return SufficientStats(
            self.n + other.n,
            None if self.G is None or other.G is None
            else _wide(self.G, self.n + other.n) + other.G,
            self.s + other.s,
            self.C + other.C,
            self.sy + other.sy,
            self.syy + other.syy,
            _either(self.nonfinite, other.nonfinite),
        )

    def __sub__(self, other: SufficientStats) -> SufficientStats:
        return SufficientStats(
            self.n - other.n,
            None if self.G is None or other.G is None else self.G - other.G,
            self.s - other.s,
            self.C - other.C,
            self.sy - other.sy,
            self.syy - other.syy,
            _either(self.nonfinite, other.nonfinite),
        )

    @staticmethod
    def sum(parts) -> SufficientStats:
        parts = list(parts)
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out

    @property
    def xp(self):
        return get_namespace(self.G)

    @property
    def d(self) -> int:
        return self.G.shape[0]

    @property
    def n_targets(self) -> int:
        return self.C.shape[1]

    def take_targets(self, index) -> SufficientStats:
        """Statistics of a subset of the targets (``G``, ``s`` shared, not copied)."""
        return SufficientStats(self.n, self.G, self.s, self.C[:, index], self.sy[index],
                               self.syy[index],
                               None if self.nonfinite is None else self.nonfinite[index])

    def to_numpy(self) -> SufficientStats:
        return SufficientStats(self.n, *(to_numpy(a) for a in
                                         (self.G, self.s, self.C, self.sy, self.syy)),
                               None if self.nonfinite is None else to_numpy(self.nonfinite))

    # ------------------------------------------------------------- derived
    @property
    def mu(self):
        return self.s / self.n

    @property
    def ybar(self):
        return self.sy / self.n

    @property
    def sigma(self):
        """σ_j = sqrt(mean(X_j²) − μ_j²) (1/n), from diag(G); 0 for constant columns."""
        xp = self.xp
        var = xp.diagonal(self.G) / self.n - self.mu**2
        return xp.sqrt(xp.maximum(var, 0.0))

    def add_(self, other: SufficientStats) -> SufficientStats:
        """Add ``other``'s statistics to these in place (statistics are additive over rows)."""
        self.n += other.n
        G = _wide(self.G, self.n)
        if G is self.G and np.result_type(G.dtype, other.G.dtype) == G.dtype:
            self.G += other.G
        else:
            self.G = G + other.G
        self.s += other.s
        self.C += other.C
        self.sy += other.sy
        self.syy += other.syy
        self.nonfinite = _either(self.nonfinite, other.nonfinite)
        return self


def _either(a, b):
    """Elementwise OR of two optional [T] masks (None: no mark)."""
    if a is None:
        return b
    return a if b is None else a | b


def _wide(G, rows: int):
    """``G`` as int64 where it is an int32 count matrix that ``rows`` rows could overflow."""
    dt = getattr(G, "dtype", None)
    if dt is not None and dt == np.int32 and rows > np.iinfo(np.int32).max:
        return G.astype(np.int64)
    return G


# ------------------------------------------------------------------ the pass
def _check_finite(sy, xp):
    if not bool(xp.isfinite(sy).all()):

        raise UnsupportedTargets("outputs contain NaN/inf: targets with missing rows cannot use the "
                         "shared-design statistics (route them to a per-target-rows solver)")


class _LaneAcc:
    """One accumulation chain's running statistics.

    ``XᵀX`` of 0/1 (bool/integer) blocks is accumulated in **float32** while the chain has at
    most 2^24 rows (every entry is an integer ≤ rows: exact), by a rank-k update into the
    accumulator (NumPy: BLAS ``ssyrk`` with β = 1, upper triangle, no d × d temporary per
    block), and moved to a float64 accumulator beyond that; each block is cast once into a
    reusable float32 buffer. ``s`` comes with the ``XᵀY`` GEMM (a column of ones appended to
    y: exact integer sums). :meth:`finish` symmetrises and returns the statistics (float64;
    ``G`` as exact int32 counts on the int8 route)."""

    def __init__(self, gram: str = "float32"):
        self.gram = gram  # "int8": XᵀX by exact int8 GEMMs (:class:`_Int8Gram`)
        self.gi = None
        self.n = 0
        self.rows32 = 0  # rows in G32 since the last flush
        self.G32 = None  # float32 (upper triangle only when ``tri``)
        self.G64 = None
        self.tri = False
        self.s = None
        self.C = None
        self.sy = None
        self.syy = None
        self.buf = None
        self.shifts = []  # (s_b, c_b) of float32-C blocks: C misses Σ_b s_b c_bᵀ
        self.nonfinite = None  # [T] targets with NaN/inf outputs (``mark`` mode)

    def __getstate__(self):
        # the cast buffer is a cache of one row block (row-block-size × d): a chain's
        # accumulator sent to another worker for the merge travels without it
        state = dict(self.__dict__)
        state["buf"] = None
        return state

    # ---------------------------------------------------------------- blocks
    def _cast(self, xb, xp, dtype):
        """The block as a contiguous ``dtype`` array (in the reusable buffer when float32)."""
        nb, d = xb.shape
        if dtype != xp.float32:
            return xp.asarray(xb, dtype=dtype)
        if self.buf is None or self.buf.shape[0] < nb or self.buf.shape[1] != d:
            self.buf = xp.empty((nb, d), dtype=xp.float32)
        out = self.buf[:nb]
        out[...] = xb
        return out

    def add(self, xb, yb, c_dtype: str, mark: bool = False):
        """Add one row block; NaN/inf outputs raise, or with ``mark`` flag their targets
        (whose statistics become NaN; GEMM columns do not mix, so the others stay exact)."""
        xp = get_namespace(xb, yb)
        nb, d = xb.shape
        exact_int = xb.dtype == bool or np.issubdtype(xb.dtype, np.integer)  # host dtype test
        f32 = exact_int and nb <= _EXACT_ROWS
        xf = self._cast(xb, xp, xp.float32 if f32 else xp.float64)
        y64 = yb.astype(xp.float64)
        sy = y64.sum(axis=0)
        if mark:
            self.nonfinite = _either(self.nonfinite, ~xp.isfinite(sy))
        else:
            _check_finite(sy, xp)
        x8 = _as_int8_01(xb) if self.gram == "int8" and xp is np else None
        if x8 is not None and self.gi is None:
            try:
                self.gi = _Int8Gram(d)
            except DmdaskError:  # a worker without torch: the float32 route, still exact
                self.gram, x8 = "float32", None
        if self.gram == "none":
            pass  # target statistics only: the Gram comes from a pass of its own
        elif x8 is not None:
            if self.gi.rows + nb > _Int8Gram._MAX_ROWS:
                self._flush_int8()
            self.gi.add(x8)
        elif f32:
            if self.rows32 + nb > _EXACT_ROWS:
                self._flush(xp)
            self._syrk32(xf, xp)
            self.rows32 += nb
        else:
            self._flush(xp)
            G = xf.T @ xf
            self._add64(G, self.n + nb)
        T = yb.shape[1]
        if c_dtype == "float32" and f32:
            # shift y by its block mean so the float32 GEMM sees centred values (no
            # cancellation against s·ȳ later); the shift is added back exactly in float64. The
            # appended column of ones gives the block's column sums (exact integers).
            c = y64.mean(axis=0)
            ya = xp.empty((nb, T + 1), dtype=xp.float32)
            xp.subtract(y64, c, out=ya[:, :T], casting="same_kind")  # no n × T temporary
            ya[:, T] = 1.0
            M = (xf.T @ ya).astype(xp.float64)
            s = M[:, T].copy()
            C = M[:, :T]
            # the shifts s·cᵀ are added back at the end, as one product over the blocks
            self.shifts.append((s, c))
        else:
            x64 = xf if xf.dtype == xp.float64 else xf.astype(xp.float64)
            s = x64.sum(axis=0)
            C = x64.T @ y64
        syy = xp.einsum("ij,ij->j", y64, y64)
        if self.s is None:
            self.s, self.C, self.sy, self.syy = s.copy(), C, sy, syy
        else:
            self.s += s
            self.C += C
            self.sy += sy
            self.syy += syy
        self.n += int(nb)
        return self

    def _syrk32(self, xf, xp):
        d = xf.shape[1]
        if xp is np:
            from scipy.linalg.blas import ssyrk

            if self.G32 is None:
                self.G32 = np.zeros((d, d), dtype=np.float32, order="F")
                self.tri = True
            # C-order xf is the F-order xfᵀ: G32 += xfᵀ·xf in place (upper triangle)
            out = ssyrk(1.0, xf.T, beta=1.0, c=self.G32, trans=0, lower=0, overwrite_c=1)
            if out is not self.G32:  # pragma: no cover - the wrapper copied
                self.G32 = out
        else:
            G = xf.T @ xf
            if self.G32 is None:
                self.G32 = G
            else:
                self.G32 += G

    def _sym32(self, xp):
        """G32 with both triangles, float64 (the lower triangle copied from the upper one
        tile by tile: a plain transposed add is ~3× slower)."""
        G = self.G32.astype(xp.float64)
        if self.tri:
            d = G.shape[0]
            tile = 256
            for i0 in range(0, d, tile):
                i1 = min(i0 + tile, d)
                for j0 in range(i1, d, tile):
                    j1 = min(j0 + tile, d)
                    G[j0:j1, i0:i1] = G[i0:i1, j0:j1].T
                t = G[i0:i1, i0:i1]
                G[i0:i1, i0:i1] = xp.triu(t) + xp.triu(t, 1).T
        return G

    def _flush(self, xp):
        self._flush_int8()
        if self.G32 is None or self.rows32 == 0:
            return
        G = self._sym32(xp)
        self._add64(G, self.n)
        self.G32 = None
        self.tri = False
        self.rows32 = 0

    def merge(self, other: _LaneAcc) -> _LaneAcc:
        """Add ``other``'s statistics (float32 Grams summed in float32 while exact)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        xp = get_namespace(other.C)
        other._flush_int8()
        if (other.G32 is not None and self.G32 is not None and other.tri == self.tri
                and self.rows32 + other.rows32 <= _EXACT_ROWS):
            self.G32 += other.G32
            self.rows32 += other.rows32
        else:
            other._flush(xp)
        if other.G64 is not None:
            self._add64(other.G64, self.n + other.n)
        self.shifts += other.shifts
        self.nonfinite = _either(self.nonfinite, other.nonfinite)
        self.n += other.n
        self.s += other.s
        self.C += other.C
        self.sy += other.sy
        self.syy += other.syy
        return self

    def _add64(self, G, rows: int):
        """Add an exact Gram (float64, or int32 counts) to the accumulator, which then
        holds ``rows`` rows."""
        self.G64 = G if self.G64 is None else _wide(self.G64, rows) + G

    def _flush_int8(self):
        if self.gi is not None and self.gi.rows:
            G = self.gi.pop()
            self._add64(G, self.n)

    def finish(self) -> SufficientStats:
        xp = get_namespace(self.C)
        self._flush(xp)
        self.buf = None
        if self.shifts:
            S = xp.stack([a for a, _ in self.shifts], axis=1)
            M = xp.stack([b for _, b in self.shifts], axis=0)
            self.C += S @ M
            self.shifts = []
        return SufficientStats(self.n, self.G64, self.s, self.C, self.sy, self.syy,
                               self.nonfinite)


def _as_int8_01(xb):
    """A NumPy 0/1 block (bool/uint8/int8) as an int8 view, else None (other values or
    dtypes take the float32 route, which is exact for any small integers)."""
    if xb.dtype == bool:
        xb = xb.view(np.uint8)
    if xb.dtype not in (np.uint8, np.int8) or xb.ndim != 2:
        return None
    xb = np.ascontiguousarray(xb)
    if xb.size and (xb.max() > 1 or (xb.dtype == np.int8 and xb.min() < 0)):
        return None
    return xb.view(np.int8)


class _Int8Gram:
    """XᵀX of 0/1 blocks by int8 × int8 → int32 GEMMs (``torch._int_mm``: VNNI on x86).

    Exact: every product is 0/1 and int32 holds any count below 2^31 rows (handed to the
    lane's accumulator before that, which widens to int64 where a sum could overflow). Only
    the upper triangle is computed, as ``p(p+1)/2`` tile GEMMs over ``p`` column parts (a full
    GEMM does twice the syrk's work; 4 parts measured fastest, benchmarks/RESULTS.md)."""

    _PARTS = 4
    _MAX_ROWS = 2**31 - 1

    def __init__(self, d: int):
        from .. import optional

        self.torch = optional.torch()
        p = max(1, min(self._PARTS, d // 256))
        self.cuts = [(k * d) // p for k in range(p)] + [d]
        self.d = d
        self.acc = None
        self.rows = 0

    def add(self, x8):
        torch = self.torch
        if self.acc is None:
            self.acc = torch.zeros((self.d, self.d), dtype=torch.int32)
        X = torch.from_numpy(x8)
        Xt = X.T
        c = self.cuts
        for i in range(len(c) - 1):
            for j in range(i, len(c) - 1):
                self.acc[c[i]:c[i + 1], c[j]:c[j + 1]] += torch._int_mm(
                    Xt[c[i]:c[i + 1]], X[:, c[j]:c[j + 1]])
        self.rows += x8.shape[0]

    def pop(self):
        """The accumulated XᵀX (int32 counts, both triangles): the accumulator itself, handed
        over without a copy or a float64 conversion (a fresh d × d float64 array cost ~0.3 s
        at d = 5,000, mostly first touches of new pages); the next block starts a new one."""
        G = self.acc.numpy()
        c = self.cuts
        # diagonal tiles are whole (symmetric) products; tiles below them were never filled
        for i in range(len(c) - 1):
            for j in range(i + 1, len(c) - 1):
                G[c[j]:c[j + 1], c[i]:c[i + 1]] = G[c[i]:c[i + 1], c[j]:c[j + 1]].T
        self.acc = None
        self.rows = 0
        return G


def _gram_kind(X, n: int, d: int, client=None) -> str:
    """How the statistics pass forms XᵀX: ``int8`` (exact int8 GEMMs through torch) or
    ``float32`` (BLAS ssyrk; CuPy's GEMM on a GPU). Setting ``dmdask.solve.stats-gram``:
    auto | int8 | float32. ``auto`` takes int8 only for 0/1 NumPy uint8/bool/int8 blocks, where
    the work amortises torch's import (~1 s) and where int8 GEMMs *measured* faster on the
    machines that run the pass (:func:`gram_route_probe`; ``client``'s workers where given):
    they are fast with VNNI instructions and many times slower than float32 without them."""
    import sys

    kind = config.get("solve.stats-gram", "auto")
    if kind not in ("auto", "int8", "float32"):
        raise InputError(f"dmdask.solve.stats-gram must be auto, int8 or float32, not {kind!r}")
    meta = getattr(X, "_meta", None)
    numpy_chunks = isinstance(meta, np.ndarray)
    int_mask = X.dtype == bool or X.dtype in (np.uint8, np.int8)
    if kind == "float32" or not (numpy_chunks and int_mask):
        return "float32"
    if kind == "int8":
        from .. import optional

        optional.torch()  # a clear error naming the extra
        return "int8"
    if "torch" not in sys.modules and n * d * d < 2e11:
        return "float32"  # ≲ 1 s of ssyrk: not worth importing torch and measuring
    if client is None:
        return gram_route_probe()["route"]
    try:
        votes = client.run(_probe_route)
    except Exception:  # a worker that cannot answer: the route that is never a cliff
        return "float32"
    return "int8" if votes and all(v == "int8" for v in votes.values()) else "float32"


# int8 must measure at least this much faster than float32 to be chosen: where the two are
# close, float32 (no torch, no private API) is the safer route
_INT8_MARGIN = 1.5
# the probe tile: large enough for BLAS-level kernels on both routes (two column parts on
# the int8 route, as in production), small enough to cost little where int8 is slow
_PROBE_SHAPE = (1024, 512)
_probe_lock = threading.Lock()
_probe_result: dict | None = None


def choose_gram_route(t_int8: float | None, t_float32: float,
                      margin: float = _INT8_MARGIN) -> str:
    """``"int8"`` where one tile's XᵀX by int8 GEMMs took at most ``1/margin`` of its float32
    time, else ``"float32"`` (also where int8 could not run: ``t_int8`` None)."""
    if t_int8 is None or not np.isfinite(t_int8) or not np.isfinite(t_float32):
        return "float32"
    return "int8" if t_int8 * margin <= t_float32 else "float32"


def time_gram_routes(shape: tuple[int, int] = _PROBE_SHAPE, repeats: int = 5
                     ) -> tuple[float | None, float]:
    """Best-of-``repeats`` seconds of one 0/1 tile's XᵀX by each route of the pass, int8
    (None where torch or ``torch._int_mm`` is unusable) and float32: the production kernels
    (:class:`_Int8Gram`, :meth:`_LaneAcc._syrk32`) on one thread each, so that the comparison
    is of the core's instructions, not of how busy the other cores are."""
    x = (np.random.default_rng(0).random(shape) < 0.5).astype(np.uint8)

    def f32():
        acc = _LaneAcc("float32")
        t0 = time.perf_counter()
        acc._syrk32(acc._cast(x, np, np.float32), np)
        return time.perf_counter() - t0

    def i8(tile):
        gi = _Int8Gram(tile.shape[1])
        t0 = time.perf_counter()
        gi.add(_as_int8_01(tile))
        return time.perf_counter() - t0

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        f32()  # first touches, BLAS start-up
        tf = min(f32() for _ in range(2))
        if not _int_mm_works():
            return None, tf
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            i8(x[:64, :64])  # kernel start-up, at no cost where int8 is slow
            t8 = float("inf")
            for i in range(repeats):
                t8 = min(t8, i8(x))
                tf = min(tf, f32())
                if i and t8 > 2 * tf:  # slower twice over: no more runs of a slow route
                    break
        finally:
            torch.set_num_threads(threads)
    return t8, tf


def gram_route_probe() -> dict:
    """The route ``stats-gram: auto`` takes in this process, from a one-time measurement
    (cached): ``{"route", "int8_s", "float32_s"}`` (seconds per probe tile)."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            t8, tf = time_gram_routes()
            _probe_result = {"route": choose_gram_route(t8, tf), "int8_s": t8, "float32_s": tf}
        return dict(_probe_result)


def _probe_route() -> str:
    """:func:`gram_route_probe`'s route (run on a dask worker by ``client.run``)."""
    return gram_route_probe()["route"]


def _int_mm_works() -> bool:
    """torch imports and ``torch._int_mm`` (a private API) is exact on a small 0/1 product."""
    try:
        import torch

        x = np.random.default_rng(0).integers(0, 2, (37, 19)).astype(np.int8)
        g = torch._int_mm(torch.from_numpy(x).T, torch.from_numpy(x)).numpy()
        return bool((g == x.astype(np.int64).T @ x).all())
    except Exception:
        return False


def _finish_lanes(*lanes: _LaneAcc) -> SufficientStats:
    """Merge the lanes' accumulators of one group and return its float64 statistics."""
    acc = lanes[0]
    for other in lanes[1:]:
        acc = acc.merge(other)
    return acc.finish()


def group_bounds_for(n: int, split) -> np.ndarray:
    """Row boundaries of the groups a :class:`~dmdask.fit.solve.base.Split` needs: holdout →
    ``[0, n_val, n]`` (group 0 validates), cv → the K fold boundaries."""
    from .splits import fold_bounds, holdout_size

    if split.kind == "holdout":
        return np.array([0, holdout_size(n, split.val_fraction), n])
    return fold_bounds(n, split.folds)


def compute_stats(
    X,
    Y,
    bounds=None,
    *,
    row_block_size: int | None = None,
    client=None,
    c_dtype: str | None = None,
    backend: str | None = None,
    progress: bool = False,
    nonfinite: str = "raise",
    gram: bool = True,
) -> list[SufficientStats]:
    """One pass over row blocks of ``X`` (n × d, 0/1) and ``Y`` (n × T): the statistics of
    each contiguous group of rows ``[bounds[g], bounds[g+1])`` (default: one group, all rows).

    ``X``/``Y``: NumPy or dask arrays (e.g. ``ds.mask.data``); read once, block by block, in
    parallel (local dask scheduler, or ``client``'s workers). Memory: a few blocks of
    ``row_block_size`` rows (setting ``dmdask.solve.row-block-size``) plus one float64 d × d
    accumulator per group in flight. ``nonfinite``: NaN/inf outputs raise
    :class:`~dmdask.errors.UnsupportedTargets` (``"raise"``) or are marked in each
    group's ``nonfinite`` (``"mark"``), so one pass both finds and serves the finite targets.
    ``gram=False``: the target statistics only (``G`` is None): a blockwise fit forms the
    Gram once and the ``XᵀY`` of each target block in a pass of its own.
    """
    if nonfinite not in ("raise", "mark"):
        raise InputError(f"nonfinite must be 'raise' or 'mark', not {nonfinite!r}")
    row_block = int(row_block_size or config.get("solve.row-block-size", 8192))
    if row_block < 1 or row_block > _EXACT_ROWS:
        raise InputError(f"row_block_size must lie in [1, 2^24], not {row_block}")
    c_dtype = c_dtype or config.get("solve.stats-c-dtype", "float64")
    if c_dtype not in ("float64", "float32"):
        raise InputError(f"stats C dtype must be float64 or float32, not {c_dtype!r}")
    X = da.asarray(X)
    Y = da.asarray(Y)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise InputError(f"X {X.shape} and Y {Y.shape} must be 2-d with the same rows")
    n = X.shape[0]
    bounds = np.asarray([0, n] if bounds is None else bounds, dtype=np.int64)
    if bounds[0] != 0 or bounds[-1] != n or np.any(np.diff(bounds) <= 0):
        raise InputError(f"group bounds {bounds.tolist()} must increase from 0 to {n}")
    X = dask_to_backend(X, backend)
    Y = dask_to_backend(Y, backend)
    # Each group is reduced by `lanes` chains that accumulate block statistics in place (one
    # d × d accumulator per lane), and the groups are computed one after another: peak
    # memory is ~lanes accumulators plus the blocks in flight, whatever the number of blocks
    # or groups (a tree reduction kept many d × d partial sums alive at once). Every group is
    # cut into a multiple of `lanes` blocks of equal size, so all lanes work on every group
    # (a 10% holdout group is as parallel as the training group).
    lanes = n_lanes(client)
    gram = _gram_kind(X, n, X.shape[1], client) if gram else "none"
    align = int(X.chunks[0][0]) if X.numblocks[0] > 1 else 1
    out = []
    ngroups = len(bounds) - 1
    with blas_per_lane(client, lanes):
        for g in range(ngroups):
            out.append(_group_stats(X, Y, bounds, g, row_block, lanes, align, c_dtype, client,
                                    progress, gram, nonfinite == "mark"))
    return out


def _group_stats(X, Y, bounds, g, row_block, lanes, align, c_dtype, client, progress,
                 gram="float32", mark=False):
    """The statistics of group ``g``: ``lanes`` accumulation chains over its blocks."""
    acc_fn = dask.delayed(_accumulate, pure=False)
    sum_fn = dask.delayed(_finish_lanes, pure=True)
    ngroups = len(bounds) - 1
    cuts = _group_blocks(int(bounds[g]), int(bounds[g + 1]), row_block, lanes, align)
    nblk = len(cuts) - 1
    chains = []
    for lane in range(min(lanes, nblk)):
        acc = None
        for i in range(lane, nblk, lanes):
            sl = slice(cuts[i], cuts[i + 1])
            acc = acc_fn(acc, Deferred(X[sl]), Deferred(Y[sl]), c_dtype, gram, mark)
        chains.append(acc)
    desc = "statistics" if ngroups == 1 else f"statistics {g + 1}/{ngroups}"
    return compute([sum_fn(*chains)], client=client, progress=progress, desc=desc)[0]


def _group_blocks(a: int, b: int, row_block: int, lanes: int, align: int) -> list[int]:
    """Cuts of rows [a, b) into a multiple of ``lanes`` blocks of ≤ ``row_block`` rows and
    nearly equal size, snapped to multiples of ``align`` (the input's row chunk) where that
    moves a cut by at most 1/8 of a block."""
    rows = b - a
    nb = min(rows, lanes * -(-rows // (lanes * row_block)))
    cuts = [a]
    for k in range(1, nb):
        c = a + (k * rows) // nb
        if align > 1:
            snap = int(round(c / align)) * align
            if abs(snap - c) * 8 <= rows // nb:
                c = snap
        c = min(c, cuts[-1] + row_block)
        if c > cuts[-1] and b - c <= (nb - k) * row_block:
            cuts.append(c)
    cuts.append(b)
    return cuts


def _accumulate(acc: _LaneAcc | None, xb: Deferred, yb: Deferred, c_dtype: str,
                gram: str = "float32", mark: bool = False) -> _LaneAcc:
    """Load one row block and add its statistics to ``acc`` in place (a chain's running sum;
    a fresh accumulator when ``acc`` is None)."""
    if acc is None:
        acc = _LaneAcc(gram)
    if not mark:
        return acc.add(xb.load(), yb.load(), c_dtype)
    # marked targets' NaN/inf flow through their own columns only: no warnings for them
    with np.errstate(invalid="ignore", over="ignore"):
        return acc.add(xb.load(), yb.load(), c_dtype, mark)
