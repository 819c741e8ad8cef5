"""What every counterfactual analysis starts from: a run store with a job, datamodels fitted
on it, the targets, and the scores of any baseline estimators (checked, one line each)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..errors import InputError

__all__ = ["Inputs", "baseline_scores", "check_estimators", "check_runs", "choose_targets",
           "job_class",
           "open_inputs", "weights_of"]


@dataclass
class Inputs:
    path: str
    ds: xr.Dataset  # the run store
    dm: xr.Dataset  # datamodels (weight, bias) on some of its targets
    meta: dict


def _open_datamodels(dm) -> xr.Dataset:
    if isinstance(dm, xr.Dataset):
        out = dm
    else:
        p = os.fspath(dm)
        if not os.path.exists(p):
            raise InputError(f"{p}: no such datamodels store")
        out = xr.open_zarr(p)
    if "weight" not in out or "bias" not in out:
        raise InputError("the datamodels Dataset has no weight/bias variables (fit them with "
                         "`dmdask fit`)")
    return out


def open_inputs(store, datamodels) -> Inputs:
    """Open the store and the datamodels and check that the datamodels belong to the store:
    same training set and targets (sizes, labels) and, where the fit recorded them, the same
    job fingerprint and store seed."""
    from ..store.runstore import open_store, read_meta

    path = os.path.abspath(os.fspath(store))
    if not os.path.exists(path):
        raise InputError(f"{path}: no such run store")
    meta = read_meta(path)
    ds = open_store(path)
    dm = _open_datamodels(datamodels)
    where = f"datamodels vs {path}"
    if dm.sizes.get("train") != ds.sizes["train"]:
        raise InputError(f"{where}: {dm.sizes.get('train')} training columns against the "
                         f"store's {ds.sizes['train']}: they were fitted on another store")
    tpos = np.asarray(dm["target"].values, np.int64)
    if tpos.size == 0 or tpos.min() < 0 or tpos.max() >= ds.sizes["target"]:
        raise InputError(f"{where}: targets outside the store's [0, {ds.sizes['target']})")
    for c, dim in (("train_label", "train"), ("target_label", "target")):
        if c in dm.coords and c in ds.coords:
            mine = np.asarray(ds[c].values)
            if dim == "target":
                mine = mine[tpos]
            if not np.array_equal(np.asarray(dm[c].values), mine):
                raise InputError(f"{where}: {c} differs: they were fitted on another store")
    for attr, key in (("store_fingerprint", "fingerprint"), ("store_seed", "seed")):
        got = dm.attrs.get(attr)
        if got is not None and meta.get(key) is not None and str(got) != str(meta[key]):
            raise InputError(f"{where}: fitted on a store with {key} {got}, this one has "
                             f"{meta[key]}: they were fitted on another store")
    return Inputs(path, ds, dm, meta)


def choose_targets(inp: Inputs, n: int | None = None, indices=None, seed: int = 0) -> np.ndarray:
    """Store target positions: ``indices`` as given (each must have a datamodel), else ``n``
    targets drawn class-balanced (⌊n/C⌋ per class, the remainder to the classes with the most
    targets left) among the targets with datamodels, by ``numpy.random.default_rng(seed)``."""
    have = np.asarray(inp.dm["target"].values, np.int64)
    if indices is not None:
        idx = np.asarray(indices).astype(np.int64).ravel()
        missing = np.setdiff1d(idx, have)
        if missing.size:
            raise InputError(f"targets {missing[:5].tolist()} do not exist among the "
                             f"{have.size} targets with datamodels (store positions)")
        if np.unique(idx).size != idx.size:
            raise InputError("targets are repeated")
        return idx
    if n is None or int(n) < 1:
        raise InputError("give the number of targets (>= 1) or explicit target indices")
    n = int(n)
    if n > have.size:
        raise InputError(f"{n} targets asked for, the datamodels have {have.size}")
    lab = np.asarray(inp.ds["target_label"].values)[have]
    rng = np.random.default_rng(seed)
    classes = np.unique(lab)
    pools = {c: list(rng.permutation(have[lab == c])) for c in classes}
    out: list[int] = []
    while len(out) < n:  # round robin over classes: balanced, remainder to the larger pools
        for c in sorted(classes, key=lambda c: -len(pools[c])):
            if len(out) < n and pools[c]:
                out.append(int(pools[c].pop(0)))
    return np.sort(np.asarray(out, np.int64))


def weights_of(inp: Inputs, tpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Datamodel weights ``[T, N]`` and biases ``[T]`` of store targets ``tpos``."""
    have = np.asarray(inp.dm["target"].values, np.int64)
    row = {int(t): i for i, t in enumerate(have)}
    sel = [row[int(t)] for t in tpos]
    w = np.asarray(inp.dm["weight"].isel(target=sel).values, np.float64)
    b = np.asarray(inp.dm["bias"].isel(target=sel).values, np.float64)
    return w, b


def check_runs(runs, control_runs=None) -> tuple[int, int]:
    """(runs, control runs): models per counterfactual set (>= 1) and full-data controls
    (default max(runs, 10))."""
    runs = int(runs)
    control = max(runs, 10) if control_runs is None else int(control_runs)
    if runs < 1 or control < 1:
        raise InputError(f"runs and control runs must be >= 1, got {runs} and {control}")
    return runs, control


def check_estimators(names) -> list[str]:
    """Distinct registered estimator names, refusing unknown ones (before any work)."""
    from ..analysis.estimators import ESTIMATORS

    names = list(dict.fromkeys(names))
    for name in names:
        if name not in ESTIMATORS:
            raise InputError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return names


def baseline_scores(inp: Inputs, names, tpos: np.ndarray, *, client=None,
                    progress: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per estimator name: (scores ``[T, N]``, slope ``[T]``), so that the estimator's predicted
    margin drop for removing R is ``slope·Σ_{j∈R} score``. Scores with a bias are predictors
    already (slope 1); scale-free ones get the per-target slope (≥ 0) of the affine map fitted
    on the store's random models, as :func:`dmdask.evaluate` calibrates them."""
    from ..analysis.estimators import ESTIMATORS, compute
    from ..analysis.evaluate import calibration

    out = {}
    for name in check_estimators(names):
        est = ESTIMATORS[name]
        sc = compute(inp.ds, name, targets=tpos)
        have = np.asarray(sc["target"].values, np.int64)
        row = {int(t): i for i, t in enumerate(have)}
        missing = [int(t) for t in tpos if int(t) not in row]
        if missing:
            raise InputError(f"estimator {name} gave no scores for targets {missing[:5]}")
        tau = np.asarray(sc.transpose("target", "train").values, np.float64)
        # eq. 9 leaves a training-example target's own column undefined: it predicts nothing
        tau = np.nan_to_num(tau[[row[int(t)] for t in tpos]], nan=0.0)
        if est.has_bias and "bias" in sc.coords and est.output == "margin":
            slope = np.ones(tpos.size)
        else:
            slope, _, _ = calibration(inp.ds, tau, tpos, client=client)
        out[name] = (tau, np.asarray(slope, np.float64))
    return out


def job_class(inp: Inputs, *, relabel: bool = False) -> type:
    """The store's job class (trusted), refusing a store without a job, and with ``relabel``
    a job that does not declare ``supports_train_labels = True``."""
    from ..store import jobspec

    spec = inp.meta.get("job")
    if not spec:
        raise InputError(f"{inp.path}: the store has no job (imported or made by hand), so no "
                         "counterfactual models can be trained")
    cls = jobspec.resolve_job_class(spec["path"])
    if relabel and not getattr(cls, "supports_train_labels", False):
        raise InputError(f"{inp.path}: job {spec['path']} cannot train relabelled examples "
                         "(it does not declare supports_train_labels = True)")
    return cls
