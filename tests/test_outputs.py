"""Every output dmdask writes opens with ``xr.open_zarr(path)`` without a warning, and every
Dataset it returns saves with ``to_netcdf`` and reads back (issue 15, item 16).

The outputs are produced by the CLI (``fit``, ``evaluate``, ``compare``,
``sample-complexity`` with ``--out``), as a user would, on a small planted store. netCDF is
written with the default engine of this environment: scipy's netCDF-3 writer, the strictest
(no dict or string-list attributes, no 64-bit integers), when netCDF4/h5netcdf are absent.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import dmdask
from dmdask.cli import main
from dmdask.outputs import portable_attrs


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    from test_evaluate import make_store

    d = tmp_path_factory.mktemp("outputs")
    store = str(d / "s.zarr")
    make_store(store, N=16, T=4, n_fit=240, n_held=24, R=2)
    ds = dmdask.open_store(store)
    dm = dmdask.fit_datamodels(ds)
    paths = {k: str(d / f"{k}.zarr") for k in ("dm", "ev", "cmp", "sc")}
    run = CliRunner().invoke
    for args in (["fit", store, "--out", paths["dm"], "--no-progress"],
                 ["evaluate", store, paths["dm"], "--out", paths["ev"]],
                 ["compare", store, "--row", "lasso", "--row", "dom_margin", "--out",
                  paths["cmp"], "--no-progress"],
                 ["sample-complexity", store, "--sizes", "120,240", "--out", paths["sc"],
                  "--no-progress"]):
        r = run(main, args)
        assert r.exit_code == 0, (args, r.output)
    from dmdask.analysis.compare import compare
    from dmdask.analysis.complexity import sample_complexity

    returned = {"dm": dm, "ev": dmdask.evaluate(ds, dm),
                "cmp": compare(store, [("lasso", 240, "margin"), ("dom_margin", 240, "margin")],
                               datamodels=dm,
                               progress=False),
                "sc": sample_complexity(store, sizes=(120, 240))}
    return paths, returned


@pytest.mark.parametrize("kind", ["dm", "ev", "cmp", "sc"])
def test_written_outputs_open_with_open_zarr_without_a_warning(outputs, kind):
    paths, returned = outputs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opened = xr.open_zarr(paths[kind]).load()
    assert set(returned[kind].data_vars) <= set(opened.data_vars) | set(opened.coords)
    if kind == "dm":
        np.testing.assert_allclose(opened["weight"].values, returned["dm"]["weight"].values)
        assert json.loads(opened.attrs["versions"])["dmdask"] == dmdask.__version__


@pytest.mark.parametrize("kind", ["dm", "ev", "cmp", "sc"])
def test_returned_datasets_save_with_to_netcdf(outputs, kind, tmp_path):
    _, returned = outputs
    ds = returned[kind]
    ds.to_netcdf(tmp_path / "x.nc")
    back = xr.load_dataset(tmp_path / "x.nc")
    for name, var in ds.data_vars.items():
        a, b = np.asarray(var.values), np.asarray(back[name].values)
        if a.dtype.kind in "biuf":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert [str(x) for x in a.ravel()] == [str(x) for x in b.ravel()], name
    for key, value in ds.attrs.items():
        got = back.attrs[key]
        if isinstance(value, (list, np.ndarray)):
            np.testing.assert_array_equal(np.atleast_1d(got), value, err_msg=key)
        elif isinstance(value, float) and np.isnan(value):
            assert np.isnan(got), key
        else:
            assert got == value, key


def test_portable_attrs_encodings_round_trip():
    attrs = {"versions": {"numpy": "2.0", "dmdask": "0.1"}, "names": ["gram", "saga"],
             "sizes": [1, 2, 3], "x": np.float32(0.5), "n": np.int64(7), "flag": True,
             "none": None, "text": "a b", "mixed": ["a b", 1]}
    out = portable_attrs(attrs)
    assert json.loads(out["versions"]) == attrs["versions"]
    assert out["names"].split() == attrs["names"]
    assert out["sizes"] == [1, 2, 3] and out["x"] == 0.5 and out["n"] == 7
    assert "none" not in out and out["text"] == "a b"
    assert json.loads(out["mixed"]) == ["a b", 1]
    # what netCDF-3 (scipy) accepts, the strictest writer of all
    xr.Dataset(attrs=out).to_netcdf(engine="scipy")
