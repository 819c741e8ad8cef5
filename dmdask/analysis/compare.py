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
replicates), so the numbers are comparable: Spearman, Pearson, R², MSE, AUC and LDS as means
over targets with confidence intervals. Scores that are not a calibrated predictor of the
margin (no bias, or modelling correctness) get the best per-target affine map on the fitting
models before MSE/R²/Pearson/AUC (``calibrated`` = True marks those rows); Spearman and LDS
are rank metrics and need none. Statistics passes are shared between store estimators of the
same (n_models, output).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs

__all__ = ["compare", "default_rows", "format_table", "parse_rows"]

SUMMARY = ("spearman", "pearson", "r2", "mse", "excess_mse", "auc", "lds")
PER_TARGET = ("lds", "spearman", "mse")


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


def default_rows(ds, *, include_model_based: bool = True,
                 model_based_models: int | None = None) -> list[tuple[str, int, str]]:
    """Table 5's rows for this store, then the other estimators: difference of means on
    correctness with ¼ and all of the fitting models, on margins with all, LASSO with all,
    OLS and ridge with all, and (``include_model_based``) every model-based estimator whose
    hooks the store's job has, with its default number of models (or
    ``model_based_models``)."""
    from ..fit.datamodels import select_models
    from .estimators import ESTIMATORS

    ds = _open(ds)
    n = select_models(ds)[0].size
    rows = [("dom_correctness", max(2, n // 4), "correctness"),
            ("dom_correctness", n, "correctness"),
            ("dom_margin", n, "margin"),
            ("lasso", n, "margin"),
            ("ols", n, "margin"),
            ("ridge", n, "margin")]
    if include_model_based:
        for name, est in ESTIMATORS.items():
            if not _is_model_based(name) or not _job_supports(ds, name):
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
            ci: str = "t", level: float = 0.95, client=None, progress: bool = False,
            on_row=None, estimator_options: dict | None = None) -> xr.Dataset:
    """Evaluate every row's attribution matrix on the store's held-out models.

    ``rows``: ``(estimator, n_models, output)`` triples (default :func:`default_rows`).
    ``datamodels``: an already fitted datamodels Dataset or Zarr path, used for the
    ``lasso`` row whose ``n_models`` equals its ``n_models`` attribute (saves a refit).
    ``estimator_options``: per-estimator keyword options, e.g. ``{"ridge": {"lam": 0.1}}``.
    ``on_row(i, row, seconds)`` is called after each row (progress for the CLI).

    Returns a Dataset with dim ``row`` (coords ``estimator``, ``n_models``, ``output``), the
    means over targets of ``spearman, pearson, r2, mse, excess_mse, auc, lds`` with
    ``<metric>_ci_low``/``_ci_high``, ``calibrated``, ``seconds``, and per-target
    ``lds_target``, ``spearman_target``, ``mse_target`` (row, target); attrs give the OPT
    floor and the held-out counts.
    """
    from . import estimators as E
    from .evaluate import evaluate

    ds = _open(ds)
    rows = default_rows(ds) if rows is None else [tuple(r) for r in rows]
    if not rows:
        raise InputError("compare needs at least one row")
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
                stats_cache[key] = E.store_statistics(ds, output=out, n_models=n,
                                                      own_gram=True, client=client)
            scores = E.compute(ds, name, stats=stats_cache[key], **opts.get(name, {}))
        ev = evaluate(ds, scores, ci=ci, level=level, client=client)
        sec = time.perf_counter() - t0
        results.append((ev, sec))
        if on_row is not None:
            on_row(i, (name, n, out), sec)
    return _assemble(ds, rows, results, ci=ci, level=level)


def _assemble(ds, rows, results, *, ci, level) -> xr.Dataset:
    ev0 = results[0][0]
    data: dict[str, tuple] = {}
    for m in SUMMARY:
        for var, key in ((m, "mean"), (f"{m}_ci_low", "ci_low"), (f"{m}_ci_high", "ci_high")):
            data[var] = ("row", np.array([ev.attrs[f"{m}_{key}"] for ev, _ in results],
                                         np.float64))
        data[m + "_n_used"] = ("row", np.array([ev.attrs[f"{m}_n_used"] for ev, _ in results],
                                               np.int64))
    data["calibrated"] = ("row", np.array([bool(ev.attrs["calibrated"]) for ev, _ in results]))
    data["seconds"] = ("row", np.array([s for _, s in results], np.float64))
    for m in PER_TARGET:
        data[f"{m}_target"] = (("row", "target"), np.stack([ev[m].values for ev, _ in results]))
    labels = [f"{name} | {n} | {out}" for name, n, out in rows]
    # object (variable-length) strings: Zarr v3 has a specified encoding for those only
    coords = {"row": np.array(labels, dtype=object),
              "estimator": ("row", np.array([r[0] for r in rows], dtype=object)),
              "n_models": ("row", np.array([int(r[1]) for r in rows], np.int64)),
              "output": ("row", np.array([r[2] for r in rows], dtype=object)),
              "target": ev0["target"].values}
    opt = ev0["opt"].values
    src = ds.attrs.get("dmdask", {})
    attrs = {
        "store": str(src.get("path", "")) if isinstance(src, dict) else "",
        "n_heldout_subsets": int(ev0.attrs["n_heldout_subsets"]),
        "n_heldout_runs": int(ev0.attrs["n_heldout_runs"]),
        "n_replicate_runs": int(ev0.attrs["n_replicate_runs"]),
        "opt_mean": float(np.nanmean(opt)) if np.isfinite(opt).any() else float("nan"),
        "var_actual_mean": float(np.nanmean(ev0["var_actual"].values)),
        "ci_method": str(ev0.attrs["ci_method"]),
        "ci_level": float(level),
        "calibration": "rows with calibrated=True were scored after the best per-target "
                       "affine map on the fitting models (REFERENCE §2.6); Spearman and LDS "
                       "are rank metrics and never calibrated",
        "lds_definition": str(ev0.attrs["lds_definition"]),
    }
    return xr.Dataset(data, coords=coords, attrs=portable_attrs(attrs))


def format_table(cmp: xr.Dataset, *, markdown: bool = True) -> str:
    """Table 5 as text: estimator, # models, output, Spearman, MSE, AUC, LDS (± CI half
    width); ``*`` marks calibrated rows."""
    head = ["estimator", "# models", "output", "Spearman", "MSE", "AUC", "LDS"]
    lines = []
    for i in range(cmp.sizes["row"]):
        r = cmp.isel(row=i)
        half = (float(r.lds_ci_high) - float(r.lds_ci_low)) / 2
        cal = "*" if bool(r.calibrated) else ""
        lines.append([str(r.estimator.values), f"{int(r.n_models):,}", str(r.output.values),
                      f"{float(r.spearman):.3f}", f"{float(r.mse):.3f}{cal}",
                      f"{float(r.auc):.3f}{cal}", f"{float(r.lds):.3f} ± {half:.3f}"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(x) + " |" for x in lines]
    else:
        w = [max(len(h), *(len(x[k]) for x in lines)) for k, h in enumerate(head)]
        out = ["  ".join(h.ljust(w[k]) for k, h in enumerate(head))]
        out += ["  ".join(x[k].ljust(w[k]) for k in range(len(head))) for x in lines]
    opt = cmp.attrs.get("opt_mean", float("nan"))
    out.append("")
    out.append(f"* calibrated (best per-target affine map on the fitting models) before "
               f"MSE/AUC; OPT noise floor (MSE) = {opt:.3f}; "
               f"{cmp.attrs.get('n_heldout_subsets')} held-out subsets, "
               f"{cmp.attrs.get('n_heldout_runs')} runs; ± = {cmp.attrs.get('ci_level', 0.95):.0%}"
               " CI over targets")
    return "\n".join(out)
