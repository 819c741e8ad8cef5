"""Scores out: TRAK's scores memmap read back by dmdask evaluate and by traker's reader
conventions; dattri's tensor scored by dattri's own ``lds`` against dmdask's LDS."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from dmdask.errors import InputError
from tests.formats_data import linear_store


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A store from a known linear model and noisy 'datamodels' of it (weights + noise),
    saved as a datamodels-like Zarr, with weights exactly representable in float32."""
    from dmdask.outputs import write_zarr
    from dmdask.store import open_store

    tmp = tmp_path_factory.mktemp("exp")
    store, W, b, masks, margins = linear_store(str(tmp), n_target=12)
    rng = np.random.default_rng(1)
    weight = (W + 0.5 * rng.standard_normal(W.shape)).astype(np.float32).astype(np.float64)
    ds = open_store(store)
    dm = xr.Dataset({"weight": (("target", "train"), weight), "bias": ("target", b)},
                    coords={"target": ds["target"].values, "train": ds["train"].values})
    path = str(tmp / "dm.zarr")
    write_zarr(dm, path)
    return store, path, weight, masks, margins


def test_trak_memmap_traker_conventions_and_evaluate(fitted, tmp_path):
    import dmdask
    from dmdask.analysis.export_scores import export_scores

    store, dm_path, weight, *_ = fitted
    n_target, n_train = weight.shape
    out = export_scores(dm_path, tmp_path / "trak", format="trak", experiment="cifar")
    assert out == str(tmp_path / "trak" / "scores" / "cifar.mmap")
    # what traker's MmapSaver does: open_memmap(path, mode, shape=(train_set_size,
    # num_targets), dtype=float32), num_targets from experiments.json
    exps = json.loads((tmp_path / "trak" / "experiments.json").read_text())
    assert exps["cifar"]["num_targets"] == n_target and exps["cifar"]["scores_finalized"] == 1
    mm = np.lib.format.open_memmap(out, mode="r", shape=(n_train, n_target), dtype=np.float32)
    np.testing.assert_array_equal(mm, weight.T.astype(np.float32))
    # dmdask evaluate reads it (TRAK layout, no bias) and scores it as the Dataset itself
    ev_mm = dmdask.evaluate(store, out)
    ev_dm = dmdask.evaluate(store, dm_path, calibrate=True)
    np.testing.assert_allclose(ev_mm["lds"].values, ev_dm["lds"].values, atol=1e-12)
    # and the CLI reads TRAK's save dir by experiment name
    from dmdask.cli import main

    r = CliRunner().invoke(main, ["evaluate", store, str(tmp_path / "trak"), "--exp-name",
                                  "cifar", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output[r.output.index("{"):])
    assert float(got["lds_mean"]) == pytest.approx(float(ev_dm.attrs["lds_mean"]), abs=1e-12)


def test_dattri_tensor_read_by_dattri_lds(fitted, tmp_path):
    torch = pytest.importorskip("torch")
    dattri_metric = pytest.importorskip("dattri.metric")
    from dmdask.analysis import metrics as M
    from dmdask.analysis.export_scores import export_scores

    store, dm_path, weight, masks, margins = fitted
    pt = export_scores(dm_path, tmp_path / "scores.pt", format="dattri")
    npy = export_scores(dm_path, tmp_path / "scores.npy", format="dattri", dtype="float64")
    score = torch.load(pt)
    assert tuple(score.shape) == (weight.shape[1], weight.shape[0])  # train x test
    np.testing.assert_array_equal(np.load(npy), weight.T)
    held = slice(300, None)  # the store's held-out models
    idx = torch.as_tensor(np.stack([np.flatnonzero(r) for r in masks[held]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corr, _ = dattri_metric.lds(score.double(), (torch.as_tensor(margins[held],
                                                                     dtype=torch.float64), idx))
    ours = M.lds(weight, masks[held], margins[held].astype(np.float64))
    np.testing.assert_allclose(corr.numpy(), ours.per_target, atol=1e-10)


def test_refuses_to_overwrite(fitted, tmp_path):
    from dmdask.analysis.export_scores import export_scores
    from dmdask.cli import main

    _, dm_path, *_ = fitted
    out = tmp_path / "s.mmap"
    r = CliRunner().invoke(main, ["export-scores", dm_path, "--format", "trak", "--out",
                                  str(out)])
    assert r.exit_code == 0, r.output
    before = out.read_bytes()
    r = CliRunner().invoke(main, ["export-scores", dm_path, "--format", "trak", "--out",
                                  str(out)])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "already exists; refusing to overwrite" in r.output and "--overwrite" in r.output
    assert out.read_bytes() == before
    r = CliRunner().invoke(main, ["export-scores", dm_path, "--format", "trak", "--out",
                                  str(out), "--overwrite", "--dtype", "float16"])
    assert r.exit_code == 0 and np.load(out).dtype == np.float16
    with pytest.raises(InputError, match="already exists"):
        export_scores(dm_path, tmp_path / "s.mmap", format="trak")
    with pytest.raises(InputError, match=r"\.pt \(torch\) or \.npy"):
        export_scores(dm_path, tmp_path / "s.bin", format="dattri")


def test_refusals_leave_nothing_behind(fitted, tmp_path):
    # a NaN target used to leave SAVE_DIR/scores/ behind, and a broken experiments.json
    # was only found (as a JSONDecodeError traceback) after the memmap was in place
    from dmdask.analysis.export_scores import export_scores
    from dmdask.outputs import write_zarr

    _, dm_path, weight, *_ = fitted
    ds = xr.open_zarr(dm_path).load()
    ds["weight"][2, 3] = np.nan
    bad = str(tmp_path / "nan.zarr")
    write_zarr(ds, bad)
    with pytest.raises(InputError, match="target position 2 hold NaN"):
        export_scores(bad, tmp_path / "trak", format="trak")
    assert not (tmp_path / "trak").exists()
    save = tmp_path / "save"
    save.mkdir()
    (save / "experiments.json").write_text("{not json")
    with pytest.raises(InputError, match="experiments.json"):
        export_scores(dm_path, save, format="trak")
    assert sorted(p.name for p in save.iterdir()) == ["experiments.json"]


def test_a_trak_memmap_exported_again_keeps_its_orientation(fitted, tmp_path):
    # a TRAK .mmap is [n_train, n_targets]; it was read as [targets, train], so exporting it
    # to dattri's layout wrote the transpose
    from dmdask.analysis.export_scores import export_scores

    _, dm_path, weight, *_ = fitted
    mm = export_scores(dm_path, tmp_path / "trak", format="trak", experiment="e")
    out = export_scores(mm, tmp_path / "again.npy", format="dattri", dtype="float64")
    np.testing.assert_array_equal(np.load(out), weight.T)
    back = export_scores(mm, tmp_path / "again.mmap", format="trak")
    np.testing.assert_array_equal(np.load(back), np.load(mm))
