"""The CIFAR-10 ResNet-9 job on tiny synthetic data (CPU), and the same checks on a GPU.

Every CPU job here uses ``threads=1``: bit-for-bit results are promised for a fixed thread
count, and one thread is also the fastest on a small shared CI machine.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from dmdask.store import jobspec

pytestmark = pytest.mark.torch

N_TRAIN, N_TEST = 96, 40
TINY = dict(synthetic={"n_train": N_TRAIN, "n_test": N_TEST, "seed": 0}, width=1 / 16, epochs=3,
            batch_size=16, lr=0.4, lr_peak_epoch=1.0, threads=1, device="cpu")


def _job(**kw):
    from jobs.cifar10 import CIFAR10ResNet9

    return CIFAR10ResNet9(**{**TINY, **kw})


def _masks(seed, n=N_TRAIN, fracs=(0.5,)):
    rng = np.random.default_rng(seed)
    return np.stack([rng.random(n) < f for f in fracs])


def _margins_by_hand(z, labels):
    """Independent margins: for each model and target, correct logit minus the largest of the
    other nine, by deleting the correct column."""
    out = np.empty(z.shape[:2], np.float32)
    for b in range(z.shape[0]):
        for i, y in enumerate(labels):
            out[b, i] = z[b, i, y] - np.delete(z[b, i], y).max()
    return out


@pytest.fixture(scope="module")
def job2():
    return _job(models_at_once=2)


def test_resolves_as_a_job_and_constructs_from_json_params():
    cls = jobspec.resolve_job_class("jobs.cifar10:CIFAR10ResNet9")
    params = {**TINY, "synthetic": dict(TINY["synthetic"])}
    job = jobspec.construct_job("jobs.cifar10:CIFAR10ResNet9", params)
    assert isinstance(job, cls)
    desc = jobspec.validate_description(job.describe(), "cifar")
    assert desc["train_label"].shape == (N_TRAIN,)
    assert desc["target_label"].shape == (N_TEST,)
    assert (desc["target_train_index"] == -1).all()
    assert len(set(desc["target_id"]) | set(desc["train_id"])) == N_TRAIN + N_TEST
    assert job.preferred_block_size % job.M == 0


def test_train_targets_describe():
    job = _job(train_targets=5)
    d = jobspec.validate_description(job.describe())
    assert d["target_label"].shape == (N_TEST + 5,)
    np.testing.assert_array_equal(d["target_train_index"][N_TEST:], np.arange(5))
    np.testing.assert_array_equal(d["target_label"][N_TEST:], d["train_label"][:5])
    np.testing.assert_array_equal(d["target_id"][N_TEST:], d["train_id"][:5])


def test_shapes_dtypes_and_margins_match_logits(job2):
    masks = _masks(0, fracs=(0.5, 0.7, 0.3))  # 3 models, M = 2: the last chunk is padded
    seeds = np.array([11, 12, 13], np.uint64)
    z = job2.logits(masks, seeds)
    assert z.shape == (3, N_TEST, 10) and z.dtype == np.float32
    assert np.isfinite(z).all()
    m = job2.train_block(masks, seeds)
    assert m.shape == (3, N_TEST) and m.dtype == np.float32
    assert np.isfinite(m).all()
    labels = job2.describe()["target_label"]
    # train_block retrains the same models: bit-identical on the CPU, so compare exactly
    np.testing.assert_array_equal(m, _margins_by_hand(z, labels))


def test_train_targets_margins():
    job = _job(train_targets=4, epochs=1)
    m = job.train_block(_masks(1), np.array([3]))
    assert m.shape == (1, N_TEST + 4) and np.isfinite(m).all()


def test_deterministic_on_cpu_and_seed_matters(job2):
    masks = _masks(2, fracs=(0.5, 0.6))
    a = job2.train_block(masks, np.array([1, 2]))
    b = job2.train_block(masks, np.array([1, 2]))
    np.testing.assert_array_equal(a, b)
    c = job2.train_block(masks, np.array([1, 3]))
    np.testing.assert_array_equal(a[0], c[0])  # a chunk-mate's seed changes nothing
    assert not np.array_equal(a[1], c[1])


def test_independent_of_chunk_mates_and_position(job2):
    """The CPU default (separate packing): a model's margins do not depend on the other models
    in its chunk, their subset sizes (which leave models idle for the last steps), its position
    or the number of models packed with it, bit for bit: it runs the kernels it would run
    alone, on any CPU."""
    assert job2._setup()["packing"] == "separate"
    rng = np.random.default_rng(3)
    A, B, C = rng.random(N_TRAIN) < 0.5, rng.random(N_TRAIN) < 0.9, rng.random(N_TRAIN) < 0.1
    r1 = job2.train_block(np.stack([A, B]), np.array([5, 6]))
    r2 = job2.train_block(np.stack([C, A]), np.array([7, 5]))
    np.testing.assert_array_equal(r1[0], r2[1])
    alone = _job(models_at_once=1).train_block(A[None], np.array([5]))
    np.testing.assert_array_equal(alone[0], r1[0])
    three = _job(models_at_once=3).train_block(np.stack([C, B, A]), np.array([7, 6, 5]))
    np.testing.assert_array_equal(three[2], r1[0])
    np.testing.assert_array_equal(three[1], r1[1])


def test_grouped_packing_is_deterministic_at_the_same_packing():
    """Grouped packing promises only what its kernels guarantee: the same packing gives the
    same margins, and a chunk-mate's data cannot reach a model."""
    job = _job(models_at_once=2, packing="grouped")
    assert job._setup()["packing"] == "grouped"
    masks = _masks(2, fracs=(0.5, 0.6))
    a = job.train_block(masks, np.array([1, 2]))
    np.testing.assert_array_equal(a, job.train_block(masks, np.array([1, 2])))
    other = masks.copy()
    other[1] = ~other[1]
    b = job.train_block(other, np.array([1, 3]))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])


@pytest.mark.parametrize("channels_last", [False, True])
def test_grouped_and_separate_packings_compute_the_same_network(channels_last):
    """One forward and backward pass (no training to amplify round-off) of the same packed
    weights: grouped and separate packings give the same logits, gradients and BatchNorm
    running statistics to float32 round-off."""
    import torch

    from jobs._cifar_net import PackedResNet9

    M = 3
    nets = [PackedResNet9(M, 1 / 16, separate=sep, channels_last=channels_last)
            for sep in (False, True)]
    for net in nets:
        net.reset(np.array([4, 5, 6]))
        if channels_last:
            net.to(memory_format=torch.channels_last)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3 * M, 32, 32),
                                                                  dtype=np.float32))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    outs = []
    for net in nets:
        net.train()
        z = net(x)
        (z ** 2).sum().backward()
        net.eval()
        with torch.no_grad():
            ze = net(x)
        outs.append((z.detach(), ze, {k: p.grad for k, p in net.named_parameters()},
                     {k: b for k, b in net.named_buffers() if "running" in k}))
    (g_z, g_ze, g_grad, g_buf), (s_z, s_ze, s_grad, s_buf) = outs
    assert g_z.shape == (8, M, 10)

    def close(a, b):
        a, b = a.double().numpy(), b.double().numpy()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())

    close(g_z, s_z)
    close(g_ze, s_ze)
    for k in g_grad:
        close(g_grad[k], s_grad[k])
    for k in g_buf:
        close(g_buf[k], s_buf[k])


def test_masks_select_exactly_the_examples_trained_on(job2):
    masks = _masks(4, fracs=(0.5, 0.4))
    seeds = np.array([21, 22])
    y = job2.describe()["train_label"]
    base = job2.train_block(masks, seeds)
    flipped = np.tile(y, (2, 1))
    flipped[~masks] = (flipped[~masks] + 1) % 10  # relabel everything outside the masks
    np.testing.assert_array_equal(job2.train_block(masks, seeds, train_labels=flipped), base)
    inside = np.tile(y, (2, 1))
    inside[0, np.flatnonzero(masks[0])[:8]] += 1
    inside %= 10
    out = job2.train_block(masks, seeds, train_labels=inside)
    assert not np.array_equal(out[0], base[0])  # labels inside the mask do matter
    np.testing.assert_array_equal(out[1], base[1])
    # the schedule only ever indexes selected examples while a model is active
    index, _, _, active, steps = job2.plan(masks, seeds)
    for m in range(2):
        used = np.unique(index[active[:, m], :, m])
        assert set(used) == set(np.flatnonzero(masks[m]))
        assert steps[m] == -(-job2.epochs * masks[m].sum() // job2.batch_size)


def test_empty_mask_and_tiny_subsets(job2):
    masks = np.zeros((3, N_TRAIN), bool)
    masks[1, 7] = True  # one example, repeated to fill every batch
    m = job2.train_block(masks, np.array([1, 2, 3]))
    assert m.shape == (3, N_TEST) and np.isfinite(m).all()
    empty = job2.train_block(np.zeros((0, N_TRAIN), bool), np.zeros(0, np.uint64))
    assert empty.shape == (0, N_TEST)


def test_bad_arguments(job2):
    from jobs.cifar10 import CIFAR10ResNet9

    with pytest.raises(ValueError, match="exactly one"):
        CIFAR10ResNet9()
    with pytest.raises(ValueError, match="masks"):
        job2.train_block(np.ones((1, 5), bool), np.array([1]))
    with pytest.raises(ValueError, match="seeds"):
        job2.train_block(np.ones((2, N_TRAIN), bool), np.array([1]))
    with pytest.raises(ValueError, match="train_labels"):
        job2.train_block(np.ones((1, N_TRAIN), bool), np.array([1]),
                         train_labels=np.full((1, N_TRAIN), 10))
    with pytest.raises(ValueError, match="dtype"):
        _job(dtype="fp8")
    with pytest.raises(ValueError, match="packing"):
        _job(packing="stacked")


def test_learns_the_synthetic_classes():
    """Clearly above chance (10%) after a dozen epochs on 128 images."""
    job = _job(synthetic={"n_train": 128, "n_test": 200, "seed": 1}, width=1 / 8,
               batch_size=32, epochs=12, lr_peak_epoch=3.0)
    m = job.train_block(np.ones((2, 128), bool), np.array([1, 2]))
    acc = (m > 0).mean(axis=1)
    assert acc.min() > 0.4, acc


def test_lr_triangle():
    from jobs.cifar10 import lr_triangle

    f = lr_triangle(np.arange(100), 100, 5 / 24)
    assert f.argmax() in (20, 21) and f.max() > 0.97
    assert 0 < f[0] < 0.05 and 0 < f[-1] < 0.01
    assert (np.diff(f[:20]) > 0).all() and (np.diff(f[22:]) < 0).all()


def test_augment_batch_crop_flip_cutout():
    import torch

    from jobs import _cifar_data as cd

    x = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    padded = torch.from_numpy(cd.reflect_pad(x))
    mean = torch.zeros(1, 3, 1, 1)
    std = torch.ones(1, 3, 1, 1)
    idx = torch.tensor([0, 1, 2, 2])
    p = torch.tensor([[4, 4, 0, 0, 0], [4, 4, 1, 0, 0], [0, 8, 0, 0, 0], [4, 4, 0, 10, 20]],
                     dtype=torch.uint8)
    out = cd.augment_batch(padded, idx, p, mean, std, cutout=0).numpy()
    np.testing.assert_array_equal(out[0], x[0])  # centred crop, no flip: the image
    np.testing.assert_array_equal(out[1], x[1][..., ::-1])  # mirrored
    np.testing.assert_array_equal(out[2], cd.reflect_pad(x)[2, :, 0:32, 8:40])  # shifted
    cut = cd.augment_batch(padded, idx, p, mean, std, cutout=8).numpy()
    hole = np.zeros((32, 32), bool)
    hole[6:14, 16:24] = True
    assert (cut[3][:, hole] == 0).all()
    np.testing.assert_array_equal(cut[3][:, ~hole], x[2][:, ~hole])
    # reflection padding mirrors without repeating the edge pixel
    np.testing.assert_array_equal(cd.reflect_pad(x)[0, :, 4, 3], x[0, :, 0, 1])


def _write_fake_cifar(d, rng, n_per_batch=6, n_test=7):
    """The CIFAR-10 python format, written by hand: pickled dicts with bytes keys."""
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        xs.append(x)
        ys += y
        with open(os.path.join(d, f"data_batch_{i}"), "wb") as f:
            pickle.dump({b"batch_label": f"training batch {i} of 5".encode(), b"labels": y,
                         b"data": x, b"filenames": [b"x.png"] * n_per_batch}, f, protocol=2)
    xt = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = [int(v) for v in rng.integers(0, 10, n_test)]
    with open(os.path.join(d, "test_batch"), "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": yt, b"data": xt,
                     b"filenames": [b"t.png"] * n_test}, f, protocol=2)
    return np.concatenate(xs), np.array(ys), xt, np.array(yt)


def test_reads_the_cifar10_pickle_format(tmp_path):
    from jobs import _cifar_data as cd
    from jobs.cifar10 import CIFAR10ResNet9

    x, y, xt, yt = _write_fake_cifar(tmp_path, np.random.default_rng(0))
    x_tr, y_tr, x_te, y_te = cd.load_cifar10(str(tmp_path))
    assert x_tr.shape == (30, 3, 32, 32) and x_tr.dtype == np.uint8
    np.testing.assert_array_equal(x_tr.reshape(30, -1), x)  # R plane, then G, then B
    np.testing.assert_array_equal(x_tr[3, 1, 2, 5], x[3, 1024 + 2 * 32 + 5])
    np.testing.assert_array_equal(y_tr, y)
    np.testing.assert_array_equal(x_te.reshape(7, -1), xt)
    np.testing.assert_array_equal(y_te, yt)
    job = CIFAR10ResNet9(data_dir=str(tmp_path), width=1 / 16, epochs=1, batch_size=8,
                         threads=1, device="cpu")
    d = job.describe()
    np.testing.assert_array_equal(d["train_label"], y)
    np.testing.assert_array_equal(d["target_label"], yt)
    np.testing.assert_array_equal(d["target_id"], 30 + np.arange(7))
    m = job.train_block(np.ones((1, 30), bool), np.array([0]))
    assert m.shape == (1, 7) and np.isfinite(m).all()
    # the writer round-trips, and a directory without the batches is refused clearly
    cd.write_cifar10_batches(str(tmp_path / "rt"), x_tr, y_tr, x_te, y_te)
    for a, b in zip(cd.load_cifar10(str(tmp_path / "rt")), (x_tr, y_tr, x_te, y_te),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CIFAR10ResNet9(data_dir=str(tmp_path))


# -- GPU: the same checks on cuda with bf16 autocast ------------------------------------------

def _gpu_job(**kw):
    return _job(**{"device": "cuda", "dtype": "bf16", "deterministic": True, "threads": None,
                   **kw})


@pytest.mark.gpu
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA device")
def test_gpu_shapes_margins_determinism_masks():
    job = _gpu_job(models_at_once=2)
    assert job.device.startswith("cuda")
    masks = _masks(0, fracs=(0.5, 0.7, 0.3))
    seeds = np.array([11, 12, 13])
    z = job.logits(masks, seeds)
    assert z.shape == (3, N_TEST, 10) and z.dtype == np.float32 and np.isfinite(z).all()
    m = job.train_block(masks, seeds)
    assert m.shape == (3, N_TEST) and m.dtype == np.float32
    labels = job.describe()["target_label"]
    # bf16 on a GPU: reproducible with deterministic cuDNN kernels, to a tolerance
    tol = 1e-2 * max(1.0, float(np.abs(m).max()))
    np.testing.assert_allclose(m, _margins_by_hand(z, labels), atol=tol)
    y = job.describe()["train_label"]
    flipped = np.tile(y, (3, 1))
    flipped[~masks] = (flipped[~masks] + 1) % 10
    np.testing.assert_allclose(job.train_block(masks, seeds, train_labels=flipped), m, atol=tol)
    e = job.train_block(np.zeros((1, N_TRAIN), bool), np.array([0]))
    assert np.isfinite(e).all()


@pytest.mark.gpu
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no CUDA device")
@pytest.mark.parametrize("compile", [False, True])
def test_gpu_learns(compile):
    job = _gpu_job(synthetic={"n_train": 512, "n_test": 500, "seed": 1}, width=0.5,
                   batch_size=64, epochs=12, lr_peak_epoch=3.0, models_at_once=4,
                   compile=compile, deterministic=False)
    m = job.train_block(np.ones((4, 512), bool), np.arange(4))
    acc = (m > 0).mean(axis=1)
    assert acc.min() > 0.6, acc


def test_gpu_benchmark_cpu_smoke():
    """The GPU benchmark's --cpu-smoke runs end to end here and writes no RESULTS.md."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = os.path.join(root, "benchmarks", "RESULTS.md")
    before = open(results).read() if os.path.exists(results) else None
    r = subprocess.run([sys.executable, "benchmarks/bench_cifar10_gpu.py", "--cpu-smoke"],
                       cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": root})
    assert r.returncode == 0, r.stderr
    assert "models/day" in r.stdout and "device: cpu" in r.stdout
    after = open(results).read() if os.path.exists(results) else None
    assert before == after


def test_through_a_run_store(tmp_path):
    """Blocks trained by dmdask's block task land in the store exactly as train_block gives."""
    import dmdask
    from dmdask.store.runstore import read_meta
    from dmdask.train import train_block_task

    params = {**TINY, "synthetic": dict(TINY["synthetic"]), "epochs": 1, "models_at_once": 2}
    path = dmdask.create_store(tmp_path / "c.zarr", "jobs.cifar10:CIFAR10ResNet9", n_models=3,
                               alpha=0.5, params=params, seed=1, block_size=2)
    spec = read_meta(path)["job"]
    for block in range(2):
        train_block_task(str(path), block, spec)
    ds = dmdask.open_store(path)
    assert ds.completed.values.all()
    job = _job(epochs=1, models_at_once=2)
    np.testing.assert_array_equal(
        ds.margin.values, job.train_block(ds.mask.values, ds.seed.values))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_gpu_code_paths_run_on_cpu(dtype):
    """The GPU's settings (autocast, channels-last weights through the packed SGD) on the CPU."""
    job = _job(epochs=1, dtype=dtype, channels_last=True, models_at_once=2)
    m = job.train_block(_masks(5, fracs=(0.5, 0.9)), np.array([1, 2]))
    assert m.shape == (2, N_TEST) and np.isfinite(m).all()
