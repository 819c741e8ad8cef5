"""FFCV ``.beton`` files: MadryLab's regression rows in and out (checked against FFCV's own
Loader with compute_datamodels.py's pipelines), CIFAR-format images and labels, and the
CIFAR-10 job trained from a tiny synthetic ``.beton``."""

from __future__ import annotations

import os

import hypothesis  # noqa: F401  (see below)
import numpy as np
import pytest
from click.testing import CliRunner

from dmdask.errors import InputError

# FFCV's Loader compiles its pipelines with numba in background threads that change the
# recursion limit; an ast.parse in the main thread meanwhile (pytest's hypothesis plugin
# importing hypothesis at the summary when this file runs alone) fails on CPython 3.11 with
# "AST constructor recursion depth mismatch", hence the import above. Its memory manager's
# finalizers also raise ignored KeyErrors at garbage collection.
pytestmark = [pytest.mark.ffcv,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def _load_with_ffcv(path, n, batch):
    """All rows of a regression .beton through FFCV's Loader, with the pipelines of
    MadryLab's compute_datamodels.py (less its ToDevice(cuda)): what fast_l1 gets."""
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor

    loader = Loader(path, batch_size=batch, num_workers=1, order=OrderOption.SEQUENTIAL,
                    indices=np.arange(n), drop_last=True, os_cache=True, recompile=False,
                    pipelines={"mask": [NDArrayDecoder(), ToTensor()],
                               "targets": [NDArrayDecoder(), ToTensor()],
                               "idx": [IntDecoder(), ToTensor(), Squeeze()]})
    parts = [[t.numpy().copy() for t in batch_] for batch_ in loader]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def _write_like_madrylab(path, masks, margins):
    """A .beton written as datamodels/regression/write_dataset.py writes it."""
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    class Rows:
        def __len__(self):
            return len(masks)

        def __getitem__(self, i):
            return masks[i], margins[i].astype("float32"), i

    DatasetWriter(str(path), {"mask": NDArrayField(dtype=np.dtype("bool"),
                                                   shape=(masks.shape[1],)),
                              "targets": NDArrayField(dtype=np.dtype("float32"),
                                                      shape=(margins.shape[1],)),
                              "idx": IntField()}, num_workers=1).from_indexed_dataset(Rows())


def _npy_dir(d, n=50, n_train=20, n_target=6, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, n_train)) < 0.5
    margins = rng.standard_normal((n, n_target)).astype(np.float16)
    done = np.ones(n, bool)
    done[[3, 17]] = False
    margins[~done] = 0
    os.makedirs(d)
    for k, v in (("masks", masks), ("margins", margins), ("_completed", done)):
        np.save(os.path.join(d, f"{k}.npy"), v)
    return masks, margins, done


def test_regression_round_trip_and_compute_datamodels_reads_export(tmp_path):
    from ffcv.reader import Reader

    from dmdask.store import open_store
    from dmdask.store.beton import export_beton, import_beton
    from dmdask.store.madrylab import import_madrylab

    masks, margins, done = _npy_dir(tmp_path / "npy")
    import_madrylab(tmp_path / "npy", tmp_path / "s", progress=False, block_size=16,
                    heldout_rows=8)
    with pytest.warns(UserWarning, match="8 heldout"):
        info = export_beton(tmp_path / "s", tmp_path / "out.beton", progress=False)
    keep = np.flatnonzero(done)
    assert info["n_models"] == keep.size and info["kinds"] == {"random": 40, "heldout": 8}
    # the field names, types and shapes of write_dataset.py
    r = Reader(str(tmp_path / "out.beton"))
    assert r.field_names == ["mask", "targets", "idx"]
    h = r.handlers
    assert (h["mask"].dtype, tuple(h["mask"].shape)) == (np.dtype(bool), (20,))
    assert (h["targets"].dtype, tuple(h["targets"].shape)) == (np.dtype("float32"), (6,))
    assert type(h["idx"]).__name__ == "IntField"
    # FFCV's Loader, as compute_datamodels.py drives it, reads the completed models
    m, y, idx = _load_with_ffcv(str(tmp_path / "out.beton"), keep.size, batch=8)
    np.testing.assert_array_equal(m, masks[keep])
    np.testing.assert_array_equal(y, margins[keep].astype(np.float32))
    np.testing.assert_array_equal(idx, np.arange(keep.size))
    # and it comes back in as the same models
    import_beton(tmp_path / "out.beton", tmp_path / "s2", progress=False, block_size=16,
                 heldout_rows=8)
    a, b = open_store(tmp_path / "s"), open_store(tmp_path / "s2")
    np.testing.assert_array_equal(b.mask.values, a.mask.values[keep])
    np.testing.assert_array_equal(b.margin.values, a.margin.values[keep])
    np.testing.assert_array_equal(b.kind.values, a.kind.values[keep])
    assert b.completed.values.all()


def test_import_a_madrylab_beton_cli(tmp_path):
    from dmdask.cli import main
    from dmdask.store import open_store

    rng = np.random.default_rng(3)
    masks = rng.random((37, 15)) < 0.3
    margins = rng.standard_normal((37, 4)).astype(np.float32)
    _write_like_madrylab(tmp_path / "regression_data.beton", masks, margins)
    run = CliRunner().invoke
    r = run(main, ["import", str(tmp_path / "regression_data.beton"), str(tmp_path / "s"),
                   "--heldout-rows", "5", "--block-size", "8", "--no-progress"])
    assert r.exit_code == 0, r.output
    ds = open_store(tmp_path / "s")
    np.testing.assert_array_equal(ds.mask.values, masks)
    np.testing.assert_array_equal(ds.margin.values, margins)
    assert list(ds.kind.values).count("heldout") == 5 and all(ds.kind.values[-5:] == "heldout")
    assert ds.alpha.values[0] == pytest.approx(masks.mean())
    # export --format beton, then refuse to overwrite it (one line, file untouched)
    out = tmp_path / "back.beton"
    r = run(main, ["export", str(tmp_path / "s"), str(out), "--format", "beton", "--kind",
                   "random", "--no-progress"])
    assert r.exit_code == 0, r.output
    m, y, _ = _load_with_ffcv(str(out), 32, batch=8)
    np.testing.assert_array_equal(m, masks[:32])
    np.testing.assert_array_equal(y, margins[:32])
    before = out.read_bytes()
    r = run(main, ["export", str(tmp_path / "s"), str(out), "--format", "beton",
                   "--no-progress"])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "already exists; refusing to overwrite" in r.output
    assert out.read_bytes() == before


def test_beton_without_the_fields_refused(tmp_path):
    from dmdask.cli import main
    from dmdask.store.beton import import_beton, read_image_beton, write_image_beton

    x = np.zeros((3, 3, 32, 32), np.uint8)
    write_image_beton(tmp_path / "img.beton", x, np.arange(3))
    with pytest.raises(InputError, match=r"no field 'mask', 'targets', 'idx'.*image: "
                                         r"RGBImageField, label: IntField"):
        import_beton(tmp_path / "img.beton", tmp_path / "s", progress=False)
    r = CliRunner().invoke(main, ["import", str(tmp_path / "img.beton"), str(tmp_path / "s")])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "not a MadryLab regression .beton" in r.output
    assert not (tmp_path / "s").exists()
    (tmp_path / "junk.beton").write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match="not an FFCV .beton"):
        import_beton(tmp_path / "junk.beton", tmp_path / "s", progress=False)
    with pytest.raises(InputError, match="no field 'image'"):
        rng = np.random.default_rng(0)
        _write_like_madrylab(tmp_path / "r.beton", rng.random((4, 3)) < .5, np.zeros((4, 2)))
        read_image_beton(tmp_path / "r.beton")


def test_cifar_format_images_and_labels(tmp_path):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.writer import DatasetWriter
    from PIL import Image

    from dmdask.store.beton import read_image_beton, write_image_beton
    from jobs._cifar_data import synthetic_cifar

    x, y, _, _ = synthetic_cifar(n_train=24, n_test=1, seed=2)

    class PILRows:  # what FFCV's CIFAR example hands the writer (torchvision's CIFAR10)
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return Image.fromarray(x[i].transpose(1, 2, 0)), int(y[i])

    DatasetWriter(str(tmp_path / "ex.beton"), {"image": RGBImageField(), "label": IntField()},
                  num_workers=1).from_indexed_dataset(PILRows())
    xr_, yr = read_image_beton(tmp_path / "ex.beton")
    np.testing.assert_array_equal(xr_, x)
    np.testing.assert_array_equal(yr, y)
    # JPEG samples decode exactly as FFCV's own loader decodes them
    write_image_beton(tmp_path / "jpg.beton", x, y, write_mode="jpg", jpeg_quality=90)
    xj, yj = read_image_beton(tmp_path / "jpg.beton")
    loader = Loader(str(tmp_path / "jpg.beton"), batch_size=8, num_workers=1,
                    order=OrderOption.SEQUENTIAL, recompile=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    ref = np.concatenate([im.copy() for im, _ in loader]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(yj, y)
    np.testing.assert_array_equal(xj, ref)
    # lossy, but each decoded image is still nearest to its own original
    d = ((xj.reshape(24, 1, -1).astype(float) - x.reshape(1, 24, -1)) ** 2).sum(-1)
    assert (d.argmin(axis=1) == np.arange(24)).all() and not np.array_equal(xj, x)


@pytest.mark.torch
def test_cifar10_job_trains_on_a_synthetic_beton(tmp_path):
    from dmdask.store.beton import write_image_beton
    from jobs import _cifar_data as cd
    from jobs.cifar10 import CIFAR10ResNet9

    x, y, xt, yt = cd.synthetic_cifar(n_train=32, n_test=10, seed=0)
    os.makedirs(tmp_path / "b")
    write_image_beton(tmp_path / "b" / "cifar_train.beton", x, y)
    write_image_beton(tmp_path / "b" / "cifar_test.beton", xt, yt)
    cd.write_cifar10_batches(str(tmp_path / "p"), x, y, xt, yt)
    kw = dict(width=1 / 16, epochs=1, batch_size=8, threads=1, device="cpu")
    jb = CIFAR10ResNet9(data_dir=str(tmp_path / "b"), **kw)
    jp = CIFAR10ResNet9(data_dir=str(tmp_path / "p"), **kw)
    d = jb.describe()
    np.testing.assert_array_equal(d["train_label"], y)
    np.testing.assert_array_equal(d["target_label"], yt)
    masks = np.random.default_rng(0).random((2, 32)) < 0.5
    mb = jb.train_block(masks, np.array([5, 6]))
    assert mb.shape == (2, 10) and np.isfinite(mb).all()
    # the same data from the pickle batches trains the same networks, bit for bit
    np.testing.assert_array_equal(mb, jp.train_block(masks, np.array([5, 6])))


def test_export_over_a_directory_refused_in_one_line(tmp_path):
    # with --overwrite an existing folder (e.g. the store itself) ended in an
    # IsADirectoryError traceback after the whole .beton had been written
    from dmdask.cli import main
    from dmdask.store import open_store
    from dmdask.store.madrylab import import_madrylab

    _npy_dir(tmp_path / "npy")
    import_madrylab(tmp_path / "npy", tmp_path / "s", progress=False, block_size=16)
    r = CliRunner().invoke(main, ["export", str(tmp_path / "s"), str(tmp_path / "s"),
                                  "--format", "beton", "--overwrite", "--no-progress"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        f"dmdask: error: {tmp_path / 's'}: is a directory; a .beton is one file"]
    assert open_store(tmp_path / "s").sizes["model"] == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npy", "s"]
