"""PCA of datamodel embeddings (dmdask.similarity.pca): against a dense NumPy SVD and
scikit-learn's PCA, a planted component recovered, fit-then-project, out of core on a Zarr
matrix chunked along both axes under a check that fails if the matrix is ever held whole, bad
input one line each, the penultimate-layer spectrum beside it, and CuPy chunks."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from scipy.linalg import subspace_angles

from dmdask.errors import InputError
from dmdask.outputs import write_zarr
from dmdask.similarity import pca
from dmdask.similarity.pca import effective_dimensionality


def _dm(w, tti=None, chunks=None):
    T, N = w.shape
    coords = {"target": np.arange(T), "train": np.arange(N),
              "target_label": ("target", np.arange(T) % 3)}
    if tti is not None:
        coords["target_train_index"] = ("target", np.asarray(tti))
    data = w if chunks is None else da.from_array(w, chunks=chunks)
    return xr.Dataset({"weight": (("target", "train"), data), "bias": ("target", np.zeros(T))},
                      coords=coords)


def _unit(w):
    w = w[np.abs(w).sum(axis=1) > 0]
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def _decaying(m, n, seed, decay=0.7):
    """A matrix with singular values decay**i: randomized SVD converges to machine precision."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.normal(size=(m, r)))
    v, _ = np.linalg.qr(rng.normal(size=(n, r)))
    return (u * decay ** np.arange(r)) @ v.T + 0.3 * rng.normal(size=(m, 1)) @ rng.normal(
        size=(1, n))


def _same_up_to_sign(a, b, rtol=1e-7, atol=1e-9):
    """Columns of a equal columns of b up to one sign per column."""
    s = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a * s, b, rtol=rtol, atol=atol)


def test_matches_a_dense_numpy_svd():
    w = _decaying(150, 90, seed=0)
    K = 6
    out = pca(_dm(w, chunks=(40, 25)), K, n_power_iter=6)
    e = _unit(w)
    mu = e.mean(axis=0)
    c = e - mu
    u, s, vt = np.linalg.svd(c, full_matrices=False)
    ang = subspace_angles(out.components.values.T, vt[:K].T)
    assert ang.max() < 1e-6
    np.testing.assert_allclose(out.singular_values.values, s[:K], rtol=1e-8)
    ev = s**2 / (e.shape[0] - 1)
    np.testing.assert_allclose(out.explained_variance.values, ev[:K], rtol=1e-8)
    np.testing.assert_allclose(out.explained_variance_ratio.values, ev[:K] / ev.sum(),
                               rtol=1e-8)
    np.testing.assert_allclose(out["mean"].values, mu, atol=1e-12)
    _same_up_to_sign(out.projection.values, u[:, :K] * s[:K])
    _same_up_to_sign(out.components.values.T, vt[:K].T)
    # unit rows, orthogonal; signs as sklearn's: each row's largest |entry| is positive
    V = out.components.values
    np.testing.assert_allclose(V @ V.T, np.eye(K), atol=1e-10)
    assert (V[np.arange(K), np.abs(V).argmax(axis=1)] > 0).all()


def test_a_planted_component_is_recovered():
    rng = np.random.default_rng(3)
    T, N = 120, 400
    v = rng.normal(size=N)
    v /= np.linalg.norm(v)
    # half the targets lean on +v, half on -v: the top axis of variance is v
    w = np.sign(rng.normal(size=(T, 1))) * 3 * v[None] + rng.normal(size=(T, N)) / np.sqrt(N)
    out = pca(_dm(w, chunks=(50, 128)), 3, n_power_iter=2)
    assert abs(out.components.values[0] @ v) > 0.99
    assert out.explained_variance_ratio.values[0] > 5 * out.explained_variance_ratio.values[1]


def test_fit_then_project_reproduces_sklearn():
    from sklearn.decomposition import PCA

    w = _decaying(140, 70, seed=1)
    tti = np.where(np.arange(140) < 100, np.arange(140), -1)  # first 100: training examples
    K = 5
    out = pca(_dm(w, tti=tti, chunks=(30, 20)), K, n_power_iter=6)
    assert out.attrs["fit_on"] == "train" and out.attrs["n_fit"] == 100
    np.testing.assert_array_equal(out.fitted.values, tti >= 0)
    e = _unit(w)
    sk = PCA(K, svd_solver="full")
    z_fit = sk.fit_transform(e[:100])
    _same_up_to_sign(out.projection.values[:100], z_fit)
    _same_up_to_sign(out.projection.values[100:], sk.transform(e[100:]))
    np.testing.assert_allclose(out.explained_variance_ratio.values,
                               sk.explained_variance_ratio_, rtol=1e-8)
    # fitting on the other targets gives another mean
    other = pca(_dm(w, tti=tti), K, fit_on="targets", n_power_iter=6)
    np.testing.assert_allclose(other["mean"].values, e[100:].mean(axis=0), atol=1e-12)
    # extremes per component: the largest and smallest projections
    z = out.projection.values
    for c in range(K):
        np.testing.assert_array_equal(out.top_targets.values[c], np.argsort(-z[:, c])[:10])
        np.testing.assert_array_equal(out.bottom_targets.values[c], np.argsort(z[:, c])[:10])


class HeldBytes(Callback):
    """The largest single task result and the most bytes the local scheduler holds at once."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.held = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        def size(x):
            if isinstance(x, (tuple, list)):
                return sum(size(y) for y in x)
            return int(getattr(x, "nbytes", 0))

        self.largest = max(self.largest, size(result))
        self.held = max(self.held, sum(size(v) for v in state["cache"].values()))


@pytest.fixture(scope="module")
def zarr_dm(tmp_path_factory):
    """A 240 × 400 float64 weight matrix (768 kB) on disk, chunked 30 × 100."""
    p = str(tmp_path_factory.mktemp("pca") / "dm.zarr")
    w = _decaying(240, 400, seed=2, decay=0.9)
    ds = _dm(w).chunk({"target": 30, "train": 100})
    write_zarr(ds, p)
    return p, w


def test_out_of_core_never_holds_the_matrix(zarr_dm):
    p, w = zarr_dm
    full = w.nbytes
    X = xr.open_zarr(p)["weight"].data
    assert X.numblocks == (8, 4)
    # the check can fail: dask's own svd_compressed, built as one graph, holds every chunk
    # between its first and last product; a rechunk to one block makes one full-size result
    with dask.config.set(scheduler="sync"), HeldBytes() as cb:
        dask.compute(*da.linalg.svd_compressed(X, 5, iterator="QR", n_power_iter=2, seed=0))
    assert cb.held >= 0.9 * full
    with dask.config.set(scheduler="sync"), HeldBytes() as cb:
        X.rechunk(-1).compute()
    assert cb.largest >= full
    with dask.config.set(scheduler="threads", num_workers=2), HeldBytes() as cb:
        out = pca(p, 5, n_power_iter=3)
    assert cb.largest < full / 4 and cb.held < full / 2
    ref = pca(_dm(w), 5, n_power_iter=3)  # in memory: the same numbers
    np.testing.assert_allclose(out.projection.values, ref.projection.values, atol=1e-9)


def test_bad_input_one_line_each():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(8, 30))
    with pytest.raises(InputError, match="fewer targets than components: 8 .* 9 components"):
        pca(_dm(w), 9)
    w0 = w.copy()
    w0[[2, 5]] = 0.0
    with pytest.raises(InputError, match="fewer targets than components: 6 .*2 all-zero"):
        pca(_dm(w0), 7)
    out = pca(_dm(w0), 3)  # all-zero targets excluded and counted
    assert out.attrs["n_zero"] == 2 and list(out.attrs["excluded_targets"]) == [2, 5]
    np.testing.assert_array_equal(out.target.values, [0, 1, 3, 4, 6, 7])
    wn = w.copy()
    wn[4, 7] = np.nan
    with pytest.raises(InputError, match=r"NaN weights in the datamodels of targets \[4\]") as e:
        pca(_dm(wn), 2)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no training-example datamodels"):
        pca(_dm(w, tti=np.full(8, -1)), 2, fit_on="train")
    with pytest.raises(InputError, match="fit_on must be one of"):
        pca(_dm(w), 2, fit_on="test")
    with pytest.raises(InputError, match="n_components must be >= 1"):
        pca(_dm(w), 0)


def test_effective_dimensionality():
    d = effective_dimensionality(np.ones(4), 8.0)
    assert d == {"participation_ratio": 4.0, "n_components_50": 4, "n_components_90": -1}
    d = effective_dimensionality(np.array([6.0, 2.0, 1.0, 1.0]), 10.0)
    assert d["n_components_50"] == 1 and d["n_components_90"] == 3
    assert d["participation_ratio"] == pytest.approx(100 / 42)


@pytest.mark.torch
def test_representation_spectrum_is_the_features_pca(tmp_path):
    from sklearn.decomposition import PCA

    import dmdask
    from jobs.digits import DigitsLogistic

    p = str(tmp_path / "s.zarr")
    dmdask.create_store(p, job="jobs.digits:DigitsLogistic", n_models=8, alpha=0.5,
                        block_size=8)
    ds = dmdask.open_store(p)
    tg = np.arange(0, 360, 3)
    rng = np.random.default_rng(5)
    dm = _dm(rng.normal(size=(tg.size, ds.sizes["train"]))).assign_coords(
        target=tg, target_label=("target", ds.target_label.values[tg]),
        train_label=("train", ds.train_label.values))
    out = pca(dm, 4, store=p, representation=True)
    # the digits job's penultimate layer is its input: the spectrum is the pixels' PCA
    x = DigitsLogistic().x_target[tg].astype(np.float64)
    ref = PCA(svd_solver="full").fit(x).explained_variance_ratio_
    got = out.representation_explained_variance_ratio.values
    np.testing.assert_allclose(got[: ref.size], ref, rtol=1e-6, atol=1e-12)
    assert out.attrs["representation_n_components_90"] == int(
        np.searchsorted(np.cumsum(ref), 0.9 - 1e-12) + 1)


@pytest.mark.gpu
def test_cupy_chunks_match_numpy():
    w = _decaying(120, 200, seed=6)
    want = pca(_dm(w, chunks=(40, 50)), 4, n_power_iter=4)
    with dask.config.set({"dmdask.array.backend": "cupy"}):
        got = pca(_dm(w, chunks=(40, 50)), 4, n_power_iter=4)
    np.testing.assert_allclose(got.projection.values, want.projection.values, atol=1e-8)
    np.testing.assert_allclose(got.explained_variance_ratio.values,
                               want.explained_variance_ratio.values, rtol=1e-8)


def test_cli_embed_writes_the_dataset_and_refuses_in_one_line(zarr_dm, tmp_path):
    from click.testing import CliRunner

    from dmdask.cli import main

    p, w = zarr_dm
    out = str(tmp_path / "emb.zarr")
    r = CliRunner().invoke(main, ["embed", p, "--components", "4", "--power-iter", "3",
                                  "--no-progress", "--out", out])
    assert r.exit_code == 0, r.output
    assert "fitted on 240 targets (all)" in r.output and "participation ratio" in r.output
    got = xr.open_zarr(out)
    want = pca(p, 4, n_power_iter=3)
    np.testing.assert_allclose(got.projection.values, want.projection.values, atol=1e-12)
    assert got.attrs["n_power_iter"] == 3 and got.attrs["fit_on"] == "all"
    for cmd in ("embed", "faithfulness"):
        h = CliRunner().invoke(main, [cmd, "--help"])
        assert h.exit_code == 0 and len(h.output.split("Options:")[0].split()) > 12
    bad = CliRunner().invoke(main, ["embed", p, "--components", "500", "--no-progress"])
    assert bad.exit_code == 2
    err = bad.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dmdask: error: fewer targets than components")


@pytest.mark.viz
def test_report_section_draws_spectra_and_extreme_targets():
    from dmdask.report.embeddings import sec_embeddings

    rng = np.random.default_rng(7)
    w = _decaying(30, 40, seed=7)
    emb = pca(_dm(w), 3, top=4)
    emb = emb.assign(representation_explained_variance_ratio=(
        "rep_component", np.array([0.6, 0.3, 0.1])))
    emb.attrs.update(representation_dim=3, representation_n_components_50=1,
                     representation_n_components_90=2, representation_participation_ratio=2.2)
    imgs = (rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
            rng.integers(0, 255, (30, 8, 8), dtype=np.uint8))
    html = sec_embeddings(emb, None, imgs)
    assert 'id="fig-embeddings-spectrum"' in html and 'id="fig-embeddings-extremes"' in html
    assert "penultimate features" in html
    no_img = sec_embeddings(emb, None, False)
    assert "fig-embeddings-spectrum" in no_img and "switched off" in no_img
    assert "No embeddings given" in sec_embeddings(None, None, None)


def test_on_a_distributed_cluster_equals_the_local_scheduler(zarr_dm):
    from distributed import Client, LocalCluster

    p, w = zarr_dm
    want = pca(p, 4, n_power_iter=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0", silence_logs=40) as c, Client(c) as cl:
        got = pca(p, 4, n_power_iter=2, client=cl)
    np.testing.assert_allclose(got.projection.values, want.projection.values, atol=1e-10)
    np.testing.assert_allclose(got.components.values, want.components.values, atol=1e-10)
