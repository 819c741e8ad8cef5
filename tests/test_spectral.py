"""Spectral clustering of datamodel embeddings (dmdask.similarity.spectral / .clusters):
against scikit-learn's ``spectral_embedding`` and ``SpectralClustering``, Nyström with every
point a landmark against the exact embedding, out of core under a check that fails when the
n × n affinity or the whole input is ever materialised, bad input one line each."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from dask.callbacks import Callback
from scipy.linalg import eigh, subspace_angles
from scipy.sparse import csgraph
from sklearn.cluster import SpectralClustering
from sklearn.manifold import spectral_embedding
from sklearn.metrics import adjusted_rand_score as ari
from sklearn.metrics.pairwise import rbf_kernel

from dmdask.errors import InputError
from dmdask.similarity import cluster, spectral_clusters
from dmdask.similarity.nystrom import nystrom_embedding, sign_flip
from dmdask.similarity.spectral import exact_embedding


def _planted(n, p, c, noise, seed):
    """Points on the unit sphere around ``c`` random unit centres, and their planted labels."""
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(c, p))
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    lab = np.arange(n) % c
    rng.shuffle(lab)
    x = cent[lab] + noise * rng.normal(size=(n, p))
    return x / np.linalg.norm(x, axis=1, keepdims=True), lab


def _dm(w, labels=None):
    T, N = w.shape
    coords = {"target": np.arange(T), "train": np.arange(N)}
    if labels is not None:
        coords["target_label"] = ("target", np.asarray(labels))
    return xr.Dataset({"weight": (("target", "train"), w), "bias": ("target", np.zeros(T))},
                      coords=coords)


# ------------------------------------------------------------------ against scikit-learn
def test_exact_embedding_spans_sklearns_subspace():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    emb, lam = exact_embedding(x, 4, gamma=0.3)
    a = rbf_kernel(x, gamma=0.3)
    ref = spectral_embedding(a, n_components=4, drop_first=False, random_state=0)
    assert subspace_angles(emb, ref).max() < 1e-8
    # eigenvalues: 1 − the smallest of scipy's normalised Laplacian (diagonal ignored)
    lap = csgraph.laplacian(a, normed=True)
    np.testing.assert_allclose(lam, 1 - eigh(lap, eigvals_only=True)[:4], atol=1e-10)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # well-separated clusters
def test_planted_clusters_as_well_as_sklearn_and_the_three_methods_agree():
    x, lab = _planted(240, 16, 4, 0.15, seed=1)
    got = {m: spectral_clusters(x, 4, method=m, gamma=1.0, n_landmarks=40).labels
           for m in ("exact", "nystrom", "knn")}
    sk = SpectralClustering(4, gamma=1.0, random_state=0).fit(x).labels_
    sk_knn = SpectralClustering(4, affinity="nearest_neighbors", random_state=0).fit(x).labels_
    for m, lbl in got.items():
        assert ari(lab, lbl) >= max(ari(lab, sk), ari(lab, sk_knn)), m
        assert ari(got["exact"], lbl) == 1.0, m
    assert ari(got["exact"], sk) == 1.0


def test_nystrom_with_every_point_a_landmark_is_exact():
    # K̂ = C W⁺ Cᵀ = K when L = n: the exact embedding of the affinity with its self-loops
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 5))
    want, lam = exact_embedding(x, 4, gamma=0.5, self_loops=True)
    r = nystrom_embedding(da.from_array(x, chunks=(13, 2)), 4, gamma=0.5, n_landmarks=70)
    np.testing.assert_allclose(r.eigenvalues, lam, atol=1e-8)
    np.testing.assert_allclose(r.embedding, want, atol=1e-7)
    np.testing.assert_allclose(r.degrees, rbf_kernel(x, gamma=0.5).sum(1), rtol=1e-8)


def test_knn_embedding_spans_sklearns_on_the_same_graph():
    from sklearn.neighbors import kneighbors_graph

    from dmdask.similarity.spectral import knn_embedding

    x = np.random.default_rng(15).normal(size=(150, 5))
    conn = kneighbors_graph(x, 10, include_self=True)
    ref = spectral_embedding(0.5 * (conn + conn.T), n_components=4, drop_first=False,
                             random_state=0)
    emb, lam = knn_embedding(da.from_array(x, chunks=(40, 2)), 4, n_neighbors=10)
    assert subspace_angles(emb, ref).max() < 1e-6
    assert lam[0] == pytest.approx(1.0)  # a connected graph: the trivial eigenvalue once


@pytest.mark.parametrize("chunks", [(50, 3), (17, 7), (230, 7)])
def test_blockwise_neighbours_equal_sklearns(chunks):
    from sklearn.neighbors import NearestNeighbors

    from dmdask.similarity.knn_graph import nearest_k

    x = np.random.default_rng(14).normal(size=(230, 7))
    idx, d2 = nearest_k(da.from_array(x, chunks=chunks), 6)
    dist, want = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(d2, dist ** 2, atol=1e-12)


# ------------------------------------------------------------------ out of core
class MaterialisationCheck(Callback):
    """Fails a computation whose task returns an n × n array (the affinity) or one holding
    every row and every column of the (n × p) input."""

    def __init__(self, n, p):
        super().__init__()
        self.n, self.p, self.tasks, self.largest = n, p, 0, 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.tasks += 1
        for a in (result if isinstance(result, (tuple, list)) else (result,)):
            if not isinstance(a, np.ndarray) or a.ndim != 2:
                continue
            self.largest = max(self.largest, a.size)
            if a.size >= self.n * self.n or (a.shape[0] >= self.n and a.shape[1] >= self.p):
                raise AssertionError(f"task {key!r} materialised a {a.shape} array")


@pytest.fixture
def chunked(tmp_path):
    """Planted clusters in a Zarr array read as dask chunks along both axes."""
    import zarr

    x, lab = _planted(400, 48, 3, 0.2, seed=4)
    z = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=x.shape, chunks=(80, 12),
                        dtype="f8")
    z[:] = x
    return da.from_zarr(str(tmp_path / "x.zarr")), lab


# low-level fusion would hide an intermediate inside one task: off, every array a task makes
# is a task result the check sees
UNFUSED = {"optimization.fuse.active": False, "scheduler": "threads"}


def test_runs_out_of_core_without_the_affinity_or_the_input_whole(chunked):
    x, lab = chunked
    assert x.numblocks == (5, 4)
    with dask.config.set(UNFUSED):
        for m, kw in (("nystrom", {"n_landmarks": 60}), ("knn", {"n_neighbors": 10})):
            chk = MaterialisationCheck(*x.shape)
            with chk:
                r = spectral_clusters(x, 3, method=m, gamma=1.0, **kw)
            # the largest: a block of d² or C (80 × 80), or kNN's candidates of one row block
            # (80 rows × 5 column blocks × k indices and k distances)
            assert chk.tasks > 20 and 0 < chk.largest <= max(80 * 80, 80 * 5 * 2 * 10)
            assert ari(lab, r.labels) == 1.0, m


def test_the_check_catches_a_materialisation(chunked):
    x, _ = chunked
    with dask.config.set(UNFUSED):
        with pytest.raises(AssertionError, match="materialised a \\(400, 48\\)"):
            with MaterialisationCheck(*x.shape):
                x.rechunk(-1).sum().compute()
        with pytest.raises(AssertionError, match="materialised"):  # the dense method does
            with MaterialisationCheck(*x.shape):
                spectral_clusters(x, 3, method="exact")


# ------------------------------------------------------------------ datasets
def test_cluster_of_datamodels_purity_and_per_class():
    x, lab = _planted(90, 30, 3, 0.1, seed=5)
    w = x * np.random.default_rng(6).uniform(0.5, 2.0, size=(90, 1))  # scale: normalised away
    w[[4, 17]] = 0.0
    cls = np.arange(90) % 2
    clu = cluster(_dm(da.from_array(w, chunks=(30, 10)), cls), 3, method="exact")
    keep = np.setdiff1d(np.arange(90), [4, 17])
    assert clu.attrs["n_zero"] == 2
    np.testing.assert_array_equal(clu.target.values, keep)
    assert ari(lab[keep], clu.cluster.values) == 1.0
    for c in range(3):  # purity by brute force
        mem = cls[keep][clu.cluster.values == c]
        share = np.bincount(mem).max() / mem.size
        assert clu.purity.values[c] == pytest.approx(share)
        assert clu["size"].values[c] == mem.size
    pc = cluster(_dm(w, cls), 3, method="exact", per_class=True)
    assert pc.sizes["cluster_id"] == 6 and (pc.purity.values == 1.0).all()
    for g in (0, 1):  # within a class: the planted clusters, ids offset by the class
        rows = pc.target_label.values == g
        assert set(pc.cluster.values[rows]) <= set(range(3 * g, 3 * g + 3))
        assert ari(lab[keep][rows], pc.cluster.values[rows]) == 1.0


def test_cluster_of_an_embeddings_dataset():
    x, lab = _planted(60, 8, 2, 0.1, seed=7)
    proj = x * 3.0
    proj[5] = 0.0
    emb = xr.Dataset({"projection": (("target", "component"), proj)},
                     coords={"target": np.arange(60), "component": np.arange(8)},
                     attrs={"dmdask_embeddings": 1})
    clu = cluster(emb, 2, method="exact")
    assert clu.attrs["source"] == "embeddings" and clu.attrs["n_zero"] == 1
    want = spectral_clusters(np.delete(x, 5, axis=0), 2, method="exact").labels
    np.testing.assert_array_equal(clu.cluster.values, want)


def test_bad_input_one_clear_line_each(tmp_path):
    x, _ = _planted(20, 5, 2, 0.1, seed=8)
    with pytest.raises(InputError, match="30 clusters for 20 points"):
        spectral_clusters(x, 30)
    w = x.copy()
    w[3, 2] = np.nan
    with pytest.raises(InputError, match=r"NaN weights .* targets \[3\]"):
        cluster(_dm(w), 2)
    xn = x.copy()
    xn[0, 0] = np.nan
    for m in ("exact", "nystrom", "knn"):
        with pytest.raises(InputError, match="NaN"):
            spectral_clusters(xn, 2, method=m, n_landmarks=10)
    w = x.copy()
    w[:3] = 0.0
    with pytest.raises(InputError, match=r"18 clusters for 17 points \(3 all-zero"):
        cluster(_dm(w), 18)
    with pytest.raises(InputError, match="per-class clustering needs"):
        cluster(_dm(x), 2, per_class=True)
    with pytest.raises(InputError, match="4 clusters for the 3 points of class 1"):
        cluster(_dm(x, [0] * 17 + [1] * 3), 4, per_class=True, method="exact")
    with pytest.raises(InputError, match="method must be"):
        spectral_clusters(x, 2, method="dense")
    from dmdask.cli import main

    p = tmp_path / "dm.zarr"
    _dm(x).to_zarr(p)
    r = CliRunner().invoke(main, ["cluster", str(p), "--clusters", "21"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("dmdask: error: 21 clusters for 20")


def test_cli_writes_the_clusters(tmp_path):
    from dmdask.cli import main

    x, lab = _planted(60, 10, 3, 0.1, seed=9)
    p, out = tmp_path / "dm.zarr", tmp_path / "c.zarr"
    _dm(x, lab).to_zarr(p)
    h = CliRunner().invoke(main, ["cluster", "--help"])
    assert h.exit_code == 0 and "--landmarks" in h.output
    r = CliRunner().invoke(main, ["cluster", str(p), "--clusters", "3", "--method", "knn",
                                  "--neighbors", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "purity 1.000" in r.output
    got = xr.open_zarr(out, consolidated=False)
    assert got.attrs["method"] == "knn" and ari(lab, got.cluster.values) == 1.0


# ------------------------------------------------------------------ representation
@pytest.mark.torch
def test_representation_clustering_beside_the_datamodels(tmp_path):
    import dmdask
    from jobs.digits import DigitsLogistic

    p = str(tmp_path / "s.zarr")
    dmdask.create_store(p, job="jobs.digits:DigitsLogistic", n_models=8, alpha=0.5,
                        block_size=8)
    ds = dmdask.open_store(p)
    tg = np.arange(0, 120, 2)
    rng = np.random.default_rng(10)
    dm = _dm(rng.normal(size=(tg.size, ds.sizes["train"])),
             ds.target_label.values[tg]).assign_coords(target=tg)
    dm = dm.assign_coords(train_label=("train", ds.train_label.values))
    clu = cluster(dm, 4, method="exact", store=p, representation=True)
    # the digits job's "penultimate layer" is its input: the same clustering of the pixels
    xt = DigitsLogistic().x_target[tg].astype(np.float64)
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    want = spectral_clusters(xt, 4, method="exact").labels
    np.testing.assert_array_equal(clu.representation_cluster.values, want)
    assert clu.attrs["ari"] == pytest.approx(ari(clu.cluster.values, want))
    assert 0 <= clu.attrs["representation_purity_overall"] <= 1


# ------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_nystrom_on_cupy_chunks_matches_numpy():
    from dmdask.backend import dask_to_backend, expect_chunks

    x, lab = _planted(300, 24, 3, 0.2, seed=11)
    want = nystrom_embedding(da.from_array(x, chunks=(60, 8)), 3, n_landmarks=50)
    with dask.config.set({"dmdask.array.backend": "cupy"}):
        xc = dask_to_backend(da.from_array(x, chunks=(60, 8)))
        with expect_chunks("cupy"):
            got = nystrom_embedding(xc, 3, n_landmarks=50)
    np.testing.assert_allclose(got.eigenvalues, want.eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-8)


# ------------------------------------------------------------------ report
@pytest.mark.viz
def test_report_section():
    from dmdask.report.clusters import sec_clusters

    x, lab = _planted(40, 6, 2, 0.1, seed=12)
    clu = cluster(_dm(x, lab), 2, method="exact")
    imgs = np.random.default_rng(13).integers(0, 255, size=(40, 8, 8), dtype=np.uint8)
    html = sec_clusters(clu, None, (imgs[:5], imgs))
    for fid in ("fig-clusters-purity", "fig-clusters-embedding", "fig-clusters-images"):
        assert f'id="{fid}"' in html
    assert html.count("<tr>") == 1 + 2 and "purity 1.000" in html
    assert "No clusters given" in sec_clusters(None)
    assert "switched off" in sec_clusters(clu, None, False)


# ------------------------------------------------------------------ review fixes
def test_cli_refuses_an_out_that_is_its_input(tmp_path, monkeypatch):
    # `--out` over PATH used to replace the datamodels with the clusters (the result is
    # computed in memory first, then written with overwrite)
    from dmdask.cli import main

    x, lab = _planted(30, 6, 3, 0.1, seed=16)
    p = tmp_path / "dm.zarr"
    _dm(x, lab).to_zarr(p)
    monkeypatch.chdir(tmp_path)
    for out in (str(p), "dm.zarr", "./dm.zarr/"):
        r = CliRunner().invoke(main, ["cluster", str(p), "--clusters", "3", "--out", out])
        assert r.exit_code == 2, r.output
        assert r.output.strip().splitlines()[-1].startswith(
            f"dmdask: error: --out {out} is the input")
    np.testing.assert_array_equal(xr.open_zarr(p, consolidated=False).weight.values, x)


class InputCheck(MaterialisationCheck):
    """Fails only a task result holding the whole (n × p) input."""

    def _posttask(self, key, result, dsk, state, worker_id):
        for a in (result if isinstance(result, (tuple, list)) else (result,)):
            if isinstance(a, np.ndarray) and a.ndim == 2 and a.shape == (self.n, self.p):
                raise AssertionError(f"task {key!r} gathered the input {a.shape}")


def test_exact_gathers_the_gram_not_the_input(chunked):
    # the dense method needs n × n, but it used to compute the whole n × features input
    # first (5,000 targets × 50,000 training examples: 2 GB) on the coordinator
    x, lab = chunked
    with dask.config.set(UNFUSED):
        with pytest.raises(AssertionError, match="gathered the input"):  # the check works
            with InputCheck(*x.shape):
                x.rechunk(-1).compute()
        with InputCheck(*x.shape):
            r = spectral_clusters(x, 3, method="exact", gamma=1.0)
    want = spectral_clusters(x.compute(), 3, method="exact", gamma=1.0)
    np.testing.assert_allclose(r.embedding, want.embedding, atol=1e-10)
    assert ari(lab, r.labels) == 1.0


def test_nystrom_with_fewer_landmarks_equals_the_dense_nystrom_matrix():
    # with L = n, K̂ = K and C1 = K1, so the L = n test cannot tell the Nyström degrees
    # C W⁺ Cᵀ1 from plain row sums of C; with L < n the reference is K̂ = C W⁺ Cᵀ formed
    # densely, its degrees as Fowlkes et al. (2004) write them — [a_r + b_r; b_c + Bᵀ A⁻¹ b_r]
    # — and the eigenvectors of D^{-1/2} K̂ D^{-1/2} by a full eigh
    rng = np.random.default_rng(17)
    x = rng.normal(size=(90, 5))
    r = nystrom_embedding(da.from_array(x, chunks=(20, 3)), 3, gamma=0.3, n_landmarks=25,
                          seed=2)
    k = rbf_kernel(x, gamma=0.3)
    land = r.landmarks
    rest = np.setdiff1d(np.arange(90), land)
    a, b = k[np.ix_(land, land)], k[np.ix_(land, rest)]
    d = np.empty(90)
    d[land] = a.sum(1) + b.sum(1)
    d[rest] = b.sum(0) + b.T @ np.linalg.solve(a, b.sum(1))
    np.testing.assert_allclose(r.degrees, d, rtol=1e-8)
    kh = k[:, land] @ np.linalg.pinv(a) @ k[land]
    np.testing.assert_allclose(kh.sum(1), d, rtol=1e-8)
    lam, u = np.linalg.eigh(kh / np.sqrt(np.outer(d, d)))
    np.testing.assert_allclose(r.eigenvalues, lam[::-1][:3], atol=1e-8)
    want = sign_flip(u[:, ::-1][:, :3] / np.sqrt(d)[:, None])
    np.testing.assert_allclose(r.embedding, want, atol=1e-8)


def test_embeddings_equal_sklearns_entry_by_entry():
    # principal angles cannot see a column's sign or a rescaling within the subspace; with
    # distinct eigenvalues the D^{-1/2} scaling and the sign convention make the embedding
    # unique, so it must equal scikit-learn's entry by entry
    from sklearn.neighbors import kneighbors_graph

    from dmdask.similarity.spectral import knn_embedding

    x = np.random.default_rng(0).normal(size=(80, 6))
    emb, lam = exact_embedding(x, 4, gamma=0.3)
    assert (np.diff(lam) < -1e-3).all()
    ref = spectral_embedding(rbf_kernel(x, gamma=0.3), n_components=4, drop_first=False,
                             random_state=0)
    np.testing.assert_allclose(emb, ref, atol=1e-10)
    x = np.random.default_rng(15).normal(size=(150, 5))
    conn = kneighbors_graph(x, 10, include_self=True)
    emb, lam = knn_embedding(da.from_array(x, chunks=(40, 2)), 4, n_neighbors=10)
    assert (np.diff(lam) < -1e-3).all()
    ref = spectral_embedding(0.5 * (conn + conn.T), n_components=4, drop_first=False,
                             random_state=0)
    np.testing.assert_allclose(emb, ref, atol=1e-10)
