"""MadryLab's released datamodels (datamodels.pt) in: the weight space detected on held-out
models, converted to raw-mask space, shapes checked against the store."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from dmdask.errors import InputError
from tests.formats_data import linear_store

pytestmark = pytest.mark.torch


def _save(path, weight, bias, lam):
    import torch

    torch.save({"weight": torch.as_tensor(weight, dtype=torch.float32),
                "bias": torch.as_tensor(bias, dtype=torch.float32),
                "lam": torch.as_tensor(lam, dtype=torch.float32)}, path)
    return str(path)


def _standardised(W, b, fit_masks):
    """fast_l1's reading: x = (mask - mean) / std (population std over the fitting models)."""
    mu = fit_masks.mean(axis=0)
    sd = fit_masks.std(axis=0)
    return (W * sd).T, b + (W * mu).sum(axis=1), mu, sd


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return linear_store(str(tmp_path_factory.mktemp("rel")))


def test_raw_weights_detected_and_kept(data, tmp_path):
    from dmdask.fit.released import import_datamodels

    store, W, b, masks, _ = data
    pt = _save(tmp_path / "datamodels.pt", W.T, b, np.full(W.shape[0], 0.01))
    dm = import_datamodels(pt, store)
    assert dm.attrs["imported_space"] == "raw"
    assert dm.attrs["space_targets_raw_better"] == W.shape[0]
    np.testing.assert_allclose(dm["weight"].values, W, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dm["bias"].values, b, rtol=1e-6, atol=1e-6)
    assert dm["weight"].dims == ("target", "train") and dm["lam"].shape == (W.shape[0],)


def test_standardised_weights_detected_and_converted(data, tmp_path):
    from dmdask.fit.released import import_datamodels

    store, W, b, masks, _ = data
    n_fit = 300
    w_std, b_std, mu, sd = _standardised(W, b, masks[:n_fit].astype(np.float64))
    pt = _save(tmp_path / "datamodels.pt", w_std, b_std, np.full(W.shape[0], 0.01))
    dm = import_datamodels(pt, store, out=str(tmp_path / "dm.zarr"))
    assert dm.attrs["imported_space"] == "standardised"
    assert dm.attrs["space_targets_standardised_better"] == W.shape[0]
    # the raw weights predict exactly what fast_l1's standardised reading predicts
    held = masks[n_fit:].astype(np.float64)
    want = ((held - mu) / sd) @ w_std.astype(np.float32).astype(np.float64) + \
        b_std.astype(np.float32)
    got = held @ dm["weight"].values.T.astype(np.float64) + dm["bias"].values
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dm["weight"].values, W, rtol=1e-4, atol=1e-4)
    # the imported store and Dataset evaluate as a fitted one does
    import dmdask

    ev = dmdask.evaluate(store, str(tmp_path / "dm.zarr"))
    assert ev.attrs["lds_mean"] > 0.9


def test_explicit_space_and_undecidable_refusal(data, tmp_path):
    from dmdask.fit.released import import_datamodels

    store, W, b, masks, margins = data
    pt = _save(tmp_path / "datamodels.pt", W.T, b, np.zeros(W.shape[0]))
    dm = import_datamodels(pt, store, space="raw")
    assert dm.attrs["imported_space"] == "raw" and "space_p_value" not in dm.attrs
    # weights far below the noise: neither reading predicts the held-out margins better
    tiny = _save(tmp_path / "tiny.pt", 1e-7 * W.T, margins[:300].mean(axis=0),
                 np.zeros(W.shape[0]))
    with pytest.raises(InputError, match="cannot tell the weight space.*--space raw or"):
        import_datamodels(tiny, store)


def test_no_heldout_models_needs_space(tmp_path):
    from dmdask.fit.released import import_datamodels

    store, W, b, *_ = linear_store(str(tmp_path), n_fit=40, n_held=0, n_target=4,
                                   heldout=False)
    pt = _save(tmp_path / "datamodels.pt", W.T, b, np.zeros(4))
    with pytest.raises(InputError, match="no completed held-out models.*--space"):
        import_datamodels(pt, store)
    assert import_datamodels(pt, store, space="standardised").attrs["imported_space"] == \
        "standardised"


def test_fast_l1_output_dir_and_cli(data, tmp_path):
    from dmdask.cli import main

    store, W, b, *_ = data
    out_dir = tmp_path / "fast_l1_out"
    out_dir.mkdir()
    _save(out_dir / "datamodels.pt", W.T, b, np.zeros(W.shape[0]))
    r = CliRunner().invoke(main, ["import-datamodels", str(out_dir), "--store", store,
                                  "--out", str(tmp_path / "dm.zarr")])
    assert r.exit_code == 0, r.output
    assert "space     raw" in r.output
    # a .pt whose shapes disagree with the store: one line, exit 2, nothing written
    bad = _save(tmp_path / "bad.pt", np.zeros((W.shape[1] + 1, W.shape[0])), b,
                np.zeros(W.shape[0]))
    r = CliRunner().invoke(main, ["import-datamodels", bad, "--store", store, "--out",
                                  str(tmp_path / "bad.zarr")])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "weight is [n_train=25, n_targets=16]" in r.output
    assert "24 training examples and 16 targets" in r.output
    assert not (tmp_path / "bad.zarr").exists()
    r = CliRunner().invoke(main, ["import-datamodels", str(out_dir), "--store", store,
                                  "--out", str(tmp_path / "dm.zarr")])
    assert r.exit_code == 2 and "already exists" in r.output


def test_out_over_the_store_refused_even_with_overwrite(data, tmp_path):
    # --overwrite is for a previous import; the store is the input (it was replaced)
    from dmdask.fit.released import import_datamodels
    from dmdask.store import open_store

    store, W, b, *_ = data
    pt = _save(tmp_path / "datamodels.pt", W.T, b, np.zeros(W.shape[0]))
    with pytest.raises(InputError, match="is the run store"):
        import_datamodels(pt, store, space="raw", out=store, overwrite=True)
    assert open_store(store).sizes["train"] == W.shape[1]
