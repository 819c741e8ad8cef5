"""dmdask.compare: every row equals evaluating that estimator directly; rows by number of
models use the first n fitting models; the table marks calibrated rows."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluate import make_store

import dmdask
from dmdask.analysis.compare import compare, default_rows, format_table, parse_rows
from dmdask.analysis.estimators import difference_of_means, ridge
from dmdask.errors import InputError
from dmdask.fit.datamodels import fit_datamodels, save_datamodels


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("cmp") / "s.zarr"
    make_store(p, N=20, T=4, n_fit=800, n_held=40, R=2, noise=0.4, block=100)
    return str(p)


def test_rows_equal_direct_evaluation(store, tmp_path):
    dm = fit_datamodels(store)
    save_datamodels(dm, tmp_path / "dm.zarr")
    rows = [("dom_correctness", 200, "correctness"), ("ridge", 800, "margin"),
            ("lasso", 800, "margin")]
    seen = []
    cmp = compare(store, rows, datamodels=tmp_path / "dm.zarr",
                  on_row=lambda i, r, s: seen.append(r))
    assert seen == rows
    assert list(cmp.estimator.values) == ["dom_correctness", "ridge", "lasso"]
    assert list(cmp.n_models.values) == [200, 800, 800]
    ds = dmdask.open_store(store)
    refs = [difference_of_means(ds, output="correctness", n_models=200), ridge(ds), dm]
    for i, sc in enumerate(refs):
        ev = dmdask.evaluate(store, sc)
        for m in ("mse", "lds", "spearman", "auc", "r2"):
            np.testing.assert_allclose(float(cmp[m][i]), ev.attrs[f"{m}_mean"], rtol=1e-9)
        np.testing.assert_allclose(cmp.lds_target[i].values, ev["lds"].values)
        assert bool(cmp.calibrated[i]) == bool(ev.attrs["calibrated"])
    # correctness scores are calibrated before MSE, margin models with a bias are not
    assert cmp.calibrated.values.tolist() == [True, False, False]
    assert cmp.attrs["n_heldout_subsets"] == 40 and cmp.attrs["n_replicate_runs"] == 40


def test_default_rows_follow_table5(store):
    rows = default_rows(store, include_model_based=False)
    assert rows[:4] == [("dom_correctness", 200, "correctness"),
                        ("dom_correctness", 800, "correctness"),
                        ("dom_margin", 800, "margin"), ("lasso", 800, "margin")]
    assert parse_rows(["ols", "dom_margin:400"], store) == [("ols", 800, "margin"),
                                                           ("dom_margin", 400, "margin")]


def test_table_text(store):
    cmp = compare(store, [("dom_correctness", 800, "correctness"), ("ols", 800, "margin")])
    text = format_table(cmp)
    lines = text.splitlines()
    assert lines[0].startswith("| estimator | # models | output")
    assert "| dom_correctness | 800 | correctness |" in lines[2]
    assert "*" in lines[2].split("|")[5] and "*" not in lines[3].split("|")[5]
    assert f"{cmp.attrs['opt_mean']:.3f}" in text
    plain = format_table(cmp, markdown=False)
    assert "|" not in plain.splitlines()[0]


def test_bad_rows(store):
    with pytest.raises(InputError, match="unknown estimator"):
        compare(store, [("nope", 10, "margin")])
    with pytest.raises(InputError, match="models margin, not correctness"):
        compare(store, [("ridge", 800, "correctness")])
    with pytest.raises(InputError, match="integer"):
        parse_rows(["ols:x"], store)
    with pytest.raises(InputError, match="n_models=5000"):
        compare(store, [("ols", 5000, "margin")])
