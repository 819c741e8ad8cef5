"""``compare``: many attribution estimators on the same run store, evaluated the same way —
the paper's Table 5 (App. K.2, REFERENCE.md §2.2) for any store.

A comparison is a list of **rows** ``(estimator, n_models, output)``:

* ``estimator``: ``"lasso"`` (LASSO datamodels, :func:`dmdask.fit.fit_datamodels`) or any
  name in :data:`dmdask.analysis.estimators.ESTIMATORS` (difference of means on margins or
  correctness, OLS, ridge, and the model-based estimators where the store's job has the
  hooks they need);
* ``n_models``: how many models the estimator uses — for store estimators and LASSO the
  first ``n_models`` fitting models (``kind == "random"``) by model index, for model-based
  estimators the number of models they train themselves;
* ``output``: what it models (``margin`` or ``correctness``), implied by the estimator.

Every row is scored by :func:`dmdask.evaluate` on the same held-out models (and their
replicates), so the numbers are comparable:

* **against the output it models**: margin rows against every held-out run's margin,
  correctness rows against its correctness 1[margin > 0] (the ``output`` coordinate says
  which; MSE and R² of the two are in different units);
* **over the same targets**: for each metric, every row's mean (and CI) is over the targets
  on which *every* row defines it (``targets="common"``, default; a constant output or
  prediction leaves a target undefined for a row, e.g. a target whose correctness never
  varies for ``dom_correctness``); the count is ``<metric>_n_used`` and is printed by
  :func:`format_table`. ``targets="row"`` uses each row's own defined targets instead;
* **calibrated like with like**: rows without a bias for their output (the model-based
  estimators) get the best per-target affine map with slope ≥ 0 on the row's own number of
  fitting models (the first ``n_models``, at least 2, at most all) before MSE and R²
  (``calibrated`` = True); Pearson, Spearman, AUC and LDS are computed on the raw scores,
  never calibrated.

Statistics passes are shared between store estimators of the same (n_models, output).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs

__all__ = ["compare", "default_rows", "format_table", "parse_rows", "under_determined"]

SUMMARY = ("spearman", "pearson", "r2", "mse", "excess_mse", "auc", "lds")


def _open(ds):
    from ..fit.datamodels import _open as open_ds

    return open_ds(ds)


def _output_of(name: str) -> str:
    if name == "lasso":
        return "margin"
    from .estimators import ESTIMATORS

    if name not in ESTIMATORS:
        raise InputError(f"unknown estimator {name!r}; known: lasso, {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name].output


# estimators computed from the store's statistics (they accept ``stats=``); every other
# registered estimator trains models of the store's job itself
STORE_BASED = ("dom_margin", "dom_correctness", "ols", "ridge")


def _is_model_based(name: str) -> bool:
    return name != "lasso" and name not in STORE_BASED


def under_determined(n_models: int, n_train: int) -> int:
    """The first axis of Table 5: fewer models than training examples. The paper's first row
    uses 25,000 models for 50,000 examples, so N/2 here; never more than a quarter of the
    store's fitting models (so it stays the smaller of the two rows), never below 2."""
    return max(2, min(int(n_train) // 2, int(n_models) // 4))


def default_rows(ds, *, include_model_based: bool = True,
                 model_based_models: int | None = None) -> list[tuple[str, int, str]]:
    """Table 5's rows for this store, then the other estimators. With n fitting models and
    N training examples, m = :func:`under_determined` (n, N) (N/2, the paper's
    under-determined regime): difference of means on correctness with m and n models, on
    margins with n, LASSO with n, OLS and ridge with n; then the under-determined regime of
    the margin estimators (difference of means, LASSO, OLS, ridge with m); then
    (``include_model_based``) every model-based estimator whose hooks the store's job has,
    with its default number of models (or ``model_based_models``)."""
    from ..fit.datamodels import select_models
    from .estimators import ESTIMATORS

    ds = _open(ds)
    n = select_models(ds)[0].size
    m = under_determined(n, ds.sizes["train"])
    rows = [("dom_correctness", m, "correctness"),
            ("dom_correctness", n, "correctness"),
            ("dom_margin", n, "margin"),
            ("lasso", n, "margin"),
            ("ols", n, "margin"),
            ("ridge", n, "margin")]
    if m < n:
        rows += [("dom_margin", m, "margin"), ("lasso", m, "margin"), ("ols", m, "margin"),
                 ("ridge", m, "margin")]
    if include_model_based:
        for name, est in ESTIMATORS.items():
            if not _is_model_based(name) or not est.default_row or not _job_supports(ds, name):
                continue
            rows.append((name, int(model_based_models or _default_models(name)), est.output))
    return rows


# optional libraries a model-based estimator needs (import names)
_NEEDS = {"trak": "trak"}


def _default_models(name: str) -> int:
    """The ``n_models`` default of a model-based estimator's function."""
    import inspect

    from .estimators import ESTIMATORS

    p = inspect.signature(ESTIMATORS[name].fn).parameters.get("n_models")
    return int(p.default) if p is not None and isinstance(p.default, int) else 10


def _job_supports(ds, name: str) -> bool:
    """Whether the store's job class has the model hooks estimator ``name`` needs (checked
    on the class: nothing is constructed)."""
    from .. import optional
    from ..store import jobspec
    from .estimators.model import MODEL_HOOKS

    meta = ds.attrs.get("dmdask") or {}
    spec = meta.get("job") if isinstance(meta, dict) else None
    if not spec:
        return False
    try:
        cls = jobspec.resolve_job_class(spec["path"])
    except jobspec.UntrustedJobError as e:  # say why the model-based rows are missing
        warnings.warn(f"model-based rows skipped: {e}", stacklevel=3)
        return False
    except Exception:
        return False
    from .estimators import ESTIMATORS

    hooks = ESTIMATORS[name].hooks
    if hooks is None:
        hooks = MODEL_HOOKS + (("train_checkpoints",) if name == "tracincp" else ())
    if name in _NEEDS and not optional.has(_NEEDS[name]):
        return False  # its optional library is not installed (the `model` extra)
    return all(getattr(cls, h, None) is not None for h in hooks)


def parse_rows(specs: Iterable[str], ds) -> list[tuple[str, int, str]]:
    """Rows from strings ``NAME`` or ``NAME:N`` (N models; default all fitting models, or the
    estimator's default for model-based ones)."""
    from ..fit.datamodels import select_models

    ds = _open(ds)
    n_all = select_models(ds)[0].size
    rows = []
    for spec in specs:
        name, _, k = spec.partition(":")
        name = name.strip()
        out = _output_of(name)
        if k:
            try:
                n = int(k)
            except ValueError:
                raise InputError(f"row {spec!r}: the number of models must be an integer") \
                    from None
        elif _is_model_based(name):

            n = _default_models(name)
        else:
            n = n_all
        rows.append((name, n, out))
    return rows


def compare(ds, rows: Sequence[tuple[str, int, str]] | None = None, *, datamodels=None,
            targets: str = "common", ci: str = "t", level: float = 0.95, client=None,
            progress: bool = False, on_row=None,
            estimator_options: dict | None = None) -> xr.Dataset:
    """Evaluate every row's attribution matrix on the store's held-out models.

    ``rows``: ``(estimator, n_models, output)`` triples (default :func:`default_rows`).
    ``datamodels``: an already fitted datamodels Dataset or Zarr path, used for the
    ``lasso`` row whose ``n_models`` equals its ``n_models`` attribute (saves a refit).
    ``targets``: ``"common"`` (each metric's means over the targets every row defines) or
    ``"row"`` (each row's own). ``estimator_options``: per-estimator keyword options, e.g.
    ``{"ridge": {"lam": 0.1}}``. ``on_row(i, row, seconds)`` is called after each row
    (progress for the CLI).

    Returns a Dataset with dim ``row`` (coords ``estimator``, ``n_models``, ``output``), the
    means over targets of ``spearman, pearson, r2, mse, excess_mse, auc, lds`` with
    ``<metric>_ci_low``/``_ci_high`` and ``<metric>_n_used``, ``calibrated``,
    ``calibration_models``, ``seconds``, per-target ``<metric>_target`` (row, target) and
    ``target_used`` (row, metric, target: which targets each mean is over); attrs give the
    target set, the OPT floor and the held-out counts.
    """
    from . import estimators as E
    from .estimators.store import ridge_folds
    from .evaluate import evaluate

    ds = _open(ds)
    from ..fit.datamodels import select_models

    rows = default_rows(ds) if rows is None else [tuple(r) for r in rows]
    if not rows:
        raise InputError("compare needs at least one row")
    if targets not in ("common", "row"):
        raise InputError(f"targets must be 'common' or 'row', not {targets!r}")
    n_fit = select_models(ds)[0].size
    for name, n, out in rows:
        if _output_of(name) != out:
            raise InputError(f"row {(name, n, out)}: {name} models {_output_of(name)}, not {out}")
    opts = estimator_options or {}
    dm_given = None
    if datamodels is not None:
        from .scores import load_scores

        dm_given = datamodels if isinstance(datamodels, xr.Dataset) else xr.open_zarr(
            str(datamodels), consolidated=False)
        load_scores(dm_given, ds=ds)  # shape check now, not after an hour of rows
    stats_cache: dict[tuple[int, str], object] = {}
    results = []
    for i, (name, n, out) in enumerate(rows):
        t0 = time.perf_counter()
        if name == "lasso":
            if dm_given is not None and int(dm_given.attrs.get("n_models", -1)) == int(n):
                scores = dm_given
            else:
                from ..fit.datamodels import fit_datamodels

                scores = fit_datamodels(ds, n_models=n, client=client, progress=progress,
                                        **opts.get("lasso", {}))
        elif _is_model_based(name):
            scores = E.compute(ds, name, n_models=n, **opts.get(name, {}))
        else:
            key = (int(n), out)
            if key not in stats_cache:
                # ridge's CV needs per-fold statistics: the same pass keeps them
                cv = any(r[0] == "ridge" and (int(r[1]), r[2]) == key for r in rows) \
                    and "lam" not in opts.get("ridge", {})
                stats_cache[key] = E.store_statistics(
                    ds, output=out, n_models=n, own_gram=True, client=client,
                    folds=ridge_folds(int(n)) if cv else None)
            scores = E.compute(ds, name, stats=stats_cache[key], **opts.get(name, {}))
        # calibrated (if at all) on as many fitting models as the row itself uses
        n_cal = min(max(int(n), 2), n_fit)
        ev = evaluate(ds, scores, output=out, calibration_models=n_cal, ci=ci, level=level,
                      client=client)
        sec = time.perf_counter() - t0
        results.append((ev, sec))
        if on_row is not None:
            on_row(i, (name, n, out), sec)
    return _assemble(ds, rows, results, targets=targets, ci=ci, level=level)


def _assemble(ds, rows, results, *, targets, ci, level) -> xr.Dataset:
    from .metrics import summarize

    ev0 = results[0][0]
    data: dict[str, tuple] = {}
    used = []
    for m in SUMMARY:
        per = np.stack([ev[m].values for ev, _ in results]).astype(np.float64)
        ok = np.isfinite(per)
        if targets == "common":
            ok = np.broadcast_to(ok.all(axis=0), ok.shape)
        used.append(ok)
        summ = [summarize(np.where(ok[i], per[i], np.nan), ci=ci, level=level)
                for i in range(len(results))]
        for var, key in ((m, "mean"), (f"{m}_ci_low", "ci_low"), (f"{m}_ci_high", "ci_high")):
            data[var] = ("row", np.array([s[key] for s in summ], np.float64))
        data[m + "_n_used"] = ("row", np.array([s["n_used"] for s in summ], np.int64))
        data[m + "_target"] = (("row", "target"), per)
    data["target_used"] = (("row", "metric", "target"), np.stack(used, axis=1))
    data["calibrated"] = ("row", np.array([bool(ev.attrs["calibrated"]) for ev, _ in results]))
    data["calibration_models"] = ("row", np.array(
        [int(np.max(ev["calib_n_models"].values, initial=0)) if ev.attrs["calibrated"] else 0
         for ev, _ in results], np.int64))
    data["seconds"] = ("row", np.array([s for _, s in results], np.float64))
    labels = [f"{name} | {n} | {out}" for name, n, out in rows]
    # object (variable-length) strings: Zarr v3 has a specified encoding for those only
    coords = {"row": np.array(labels, dtype=object),
              "estimator": ("row", np.array([r[0] for r in rows], dtype=object)),
              "n_models": ("row", np.array([int(r[1]) for r in rows], np.int64)),
              "output": ("row", np.array([r[2] for r in rows], dtype=object)),
              "metric": np.array(SUMMARY, dtype=object),
              "target": ev0["target"].values}
    # the noise floor and output variance of each output scored (margin rows give the
    # table's OPT; correctness rows have their own, in other units)
    floor = {}
    for (ev, _), r in zip(results, rows, strict=True):
        if r[2] not in floor:
            o, v = ev["opt"].values, ev["var_actual"].values
            floor[r[2]] = (float(np.nanmean(o)) if np.isfinite(o).any() else float("nan"),
                           float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"))
    nan2 = (float("nan"), float("nan"))
    src = ds.attrs.get("dmdask", {})
    attrs = {
        "store": str(src.get("path", "")) if isinstance(src, dict) else "",
        "n_heldout_subsets": int(ev0.attrs["n_heldout_subsets"]),
        "n_heldout_runs": int(ev0.attrs["n_heldout_runs"]),
        "n_replicate_runs": int(ev0.attrs["n_replicate_runs"]),
        "opt_mean": floor.get("margin", nan2)[0],
        "var_actual_mean": floor.get("margin", nan2)[1],
        "opt_mean_correctness": floor.get("correctness", nan2)[0],
        "var_actual_mean_correctness": floor.get("correctness", nan2)[1],
        "ci_method": str(ev0.attrs["ci_method"]),
        "ci_level": float(level),
        "target_set": str(targets),
        "target_set_definition": (
            "each metric's means are over the targets on which every row defines it"
            if targets == "common" else "each row's means are over its own defined targets"),
        "n_targets": int(ev0.sizes["target"]),
        "scored_against": "each row against its output: margin rows against the margin, "
                          "correctness rows against correctness 1[margin > 0]",
        "calibration": "rows with calibrated=True were scored after the best per-target "
                       "affine map with slope >= 0 on the row's own number of fitting models "
                       "(calibration_models; REFERENCE §2.6) before MSE and R²; Pearson, "
                       "Spearman, AUC and LDS are computed on the raw scores, never "
                       "calibrated",
        "lds_definition": str(ev0.attrs["lds_definition"]),
    }
    return xr.Dataset(data, coords=coords, attrs=portable_attrs(attrs))


def format_table(cmp: xr.Dataset, *, markdown: bool = True) -> str:
    """Table 5 as text: estimator, # models, output (= what it is scored against),
    Spearman, MSE, AUC, LDS (± CI half width); ``*`` marks calibrated rows' MSE; the number
    of targets each mean is over is printed below the table (common target set) or next to
    every value (per-row sets)."""
    head = ["estimator", "# models", "output", "Spearman", "MSE", "AUC", "LDS"]
    per_row = cmp.attrs.get("target_set", "common") == "row"

    def cnt(r, m):
        return f" ({int(r[m + '_n_used'])})" if per_row else ""

    lines = []
    for i in range(cmp.sizes["row"]):
        r = cmp.isel(row=i)
        half = (float(r.lds_ci_high) - float(r.lds_ci_low)) / 2
        cal = "*" if bool(r.calibrated) else ""
        lines.append([str(r.estimator.values), f"{int(r.n_models):,}", str(r.output.values),
                      f"{float(r.spearman):.3f}{cnt(r, 'spearman')}",
                      f"{float(r.mse):.3f}{cal}{cnt(r, 'mse')}",
                      f"{float(r.auc):.3f}{cnt(r, 'auc')}",
                      f"{float(r.lds):.3f} ± {half:.3f}{cnt(r, 'lds')}"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(x) + " |" for x in lines]
    else:
        w = [max(len(h), *(len(x[k]) for x in lines)) for k, h in enumerate(head)]
        out = ["  ".join(h.ljust(w[k]) for k, h in enumerate(head))]
        out += ["  ".join(x[k].ljust(w[k]) for k in range(len(head))) for x in lines]
    opt = cmp.attrs.get("opt_mean", float("nan"))
    n_t = cmp.attrs.get("n_targets", cmp.sizes.get("target", 0))
    out.append("")
    if per_row:
        out.append(f"(n) = targets each row's mean is over (its own defined targets, of {n_t})")
    else:
        k = {m: int(cmp[m + "_n_used"].values[0]) for m in ("spearman", "mse", "auc", "lds")}
        out.append(f"means over the targets every row defines: Spearman {k['spearman']}, "
                   f"MSE {k['mse']}, AUC {k['auc']}, LDS {k['lds']} of {n_t} targets")
    out.append("each row scored against its output (margin or correctness 1[margin > 0]); "
               "* calibrated (affine map, slope >= 0, on the row's number of fitting models) "
               f"before MSE; OPT noise floor (margin MSE) = {opt:.3f}; "
               f"{cmp.attrs.get('n_heldout_subsets')} held-out subsets, "
               f"{cmp.attrs.get('n_heldout_runs')} runs; ± = {cmp.attrs.get('ci_level', 0.95):.0%}"
               " CI over targets")
    return "\n".join(out)
