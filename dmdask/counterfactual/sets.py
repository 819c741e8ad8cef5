"""The counterfactual as a first-class object: a training set defined against the full
training set, measured on one target.

:class:`Counterfactual` is one of: ``remove`` (train without R; kind ``counterfactual``),
``relabel`` (train on everything with the examples F relabelled, ``{index: class}``; kind
``flip``) or ``keep_only`` (train on S alone; kind ``selected``). :func:`measure` trains
``runs`` models of each (replicate seeds) and ``control_runs`` full-data models through the run
store and the cluster (resumable, shared with every other analysis of the store) and returns
per counterfactual the datamodel-predicted effect, the actual effect and its standard error.
Effects are margin drops from the full-data control: Δ̂ = Σ_{j∈R} w_j (R = the removed
examples, the complement of S for ``keep_only``; no linear prediction for a relabelling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ..errors import InputError
from ..outputs import portable_attrs
from .grid import control_models
from .inputs import check_runs, choose_targets, job_class, open_inputs, weights_of
from .removal import check_indices
from .summary import correlation, run_stats
from .training import Trainer, full_mask

__all__ = ["Counterfactual", "measure"]


@dataclass(frozen=True)
class Counterfactual:
    """One counterfactual training set and the target it is measured on (store position)."""

    target: int
    remove: Sequence[int] | None = None
    relabel: Mapping[int, int] | None = None
    keep_only: Sequence[int] | None = None
    name: str = field(default="")

    def resolve(self, n_train: int, train_label: np.ndarray, n_classes: int):
        """(kind, mask, labels or None, removed indices or None), validated."""
        given = [x is not None for x in (self.remove, self.relabel, self.keep_only)]
        where = f"counterfactual {self.name or self.target}"
        if sum(given) != 1:
            raise InputError(f"{where}: give exactly one of remove, relabel, keep_only")
        if self.remove is not None:
            r = check_indices(self.remove, n_train, f"{where}: remove")
            return "counterfactual", full_mask(n_train, r), None, r
        if self.keep_only is not None:
            s = check_indices(self.keep_only, n_train, f"{where}: keep_only")
            if s.size == 0:
                raise InputError(f"{where}: keep_only is empty")
            mask = np.zeros(n_train, bool)
            mask[s] = True
            return "selected", mask, None, np.flatnonzero(~mask)
        idx = check_indices(list(self.relabel), n_train, f"{where}: relabel")
        cls = np.asarray(list(self.relabel.values()), np.int64)
        if cls.size and (cls.min() < 0 or cls.max() >= n_classes):
            raise InputError(f"{where}: relabel classes must be in [0, {n_classes})")
        labels = np.asarray(train_label, np.int64).copy()
        labels[idx] = cls
        return "flip", np.ones(n_train, bool), labels, None


def measure(store, datamodels, counterfactuals: Sequence[Counterfactual], *, runs: int = 5,
            control_runs: int | None = None, client=None, scheduler: str | None = None,
            workers: int | None = None, progress: bool = True) -> xr.Dataset:
    """Train and measure ``counterfactuals`` (see the module docstring). Returns a Dataset
    over ``counterfactual`` with ``target``, ``kind``, ``predicted``, ``actual``,
    ``actual_se``, ``cf_mean``, ``n_runs``, ``models(counterfactual, run)`` and the control's
    ``control_mean``/``control_se``, plus Pearson and Spearman of predicted vs actual."""
    inp = open_inputs(store, datamodels)
    cfs = list(counterfactuals)
    if not cfs:
        raise InputError("no counterfactuals given")
    runs, control_runs = check_runs(runs, control_runs)
    n_train = inp.ds.sizes["train"]
    trl = np.asarray(inp.ds["train_label"].values, np.int64)
    n_classes = int(max(trl.max(), np.asarray(inp.ds["target_label"].values).max())) + 1
    tpos = choose_targets(inp, indices=sorted({int(c.target) for c in cfs}))
    resolved = [c.resolve(n_train, trl, n_classes) for c in cfs]
    job_class(inp, relabel=any(r[0] == "flip" for r in resolved))
    col = {int(t): i for i, t in enumerate(tpos)}
    W, _ = weights_of(inp, tpos)
    pred = np.array([np.nan if r[3] is None else W[col[int(c.target)], r[3]].sum()
                     for c, r in zip(cfs, resolved, strict=True)])
    models = np.full((len(cfs), runs), -1, np.int64)
    with Trainer(inp.path, client=client, scheduler=scheduler, workers=workers,
                 progress=progress) as tr:
        ctrl_idx = control_models(tr, n_train, control_runs)
        for kind in ("counterfactual", "flip", "selected"):
            sel = [i for i, r in enumerate(resolved) if r[0] == kind]
            if not sel:
                continue
            labels = (np.stack([resolved[i][2] for i in sel]) if kind == "flip" else None)
            models[sel] = tr.models(np.stack([resolved[i][1] for i in sel]), kind=kind,
                                    runs=runs, labels=labels)
        tr.train()
        cm, cse, cn = run_stats(tr.margins(ctrl_idx, tpos), axis=0)
        mg = tr.margins(models, tpos)  # [n_cf, runs, T]
        tcol = np.array([col[int(c.target)] for c in cfs])
        own = mg[np.arange(len(cfs)), :, tcol]
        trained = tr.trained
    mean, se, n = run_stats(own, axis=-1)
    actual = cm[tcol] - mean
    with np.errstate(invalid="ignore"):
        actual_se = np.sqrt(se**2 + cse[tcol] ** 2)
    ds = xr.Dataset(
        {
            "target": ("counterfactual", tpos[tcol]),
            "kind": ("counterfactual", np.asarray([r[0] for r in resolved], dtype=object)),
            "predicted": ("counterfactual", pred),
            "actual": ("counterfactual", actual),
            "actual_se": ("counterfactual", actual_se),
            "cf_mean": ("counterfactual", mean),
            "n_runs": ("counterfactual", n.astype(np.int64)),
            "models": (("counterfactual", "run"), models),
            "control_mean": ("counterfactual", cm[tcol]),
            "control_se": ("counterfactual", cse[tcol]),
            "n_control": ("counterfactual", cn[tcol].astype(np.int64)),
        },
        coords={"counterfactual": np.asarray([c.name or str(i) for i, c in enumerate(cfs)],
                                             dtype=object)},
    )
    p, s = (correlation(pred, actual, method=m) for m in ("pearson", "spearman"))
    ds.attrs.update(portable_attrs({
        "dmdask_counterfactuals": 1, "store": inp.path, "runs": runs,
        "control_runs": control_runs, "models_trained": trained,
        "pearson_overall": p["r"], "spearman_overall": s["r"],
    }))
    return ds
