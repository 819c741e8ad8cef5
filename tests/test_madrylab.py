"""MadryLab datamodels layout: import into a run store and export back (real files on disk)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from killpoints import KILL_AT_WRITE

import dmdask
from dmdask.errors import InputError, StoreError
from dmdask.store.madrylab import export_madrylab, import_madrylab

FILES = ("masks.npy", "margins.npy", "_completed.npy")


def make_layout(src, n_models, n_train, n_target, *, dtype=np.float16, seed=0, p=0.4,
                p_done=0.8, key="margins", fixed=False):
    """Write a MadryLab-layout directory the way MadryLab does (``open_memmap``, zero-filled;
    incomplete rows are never written). Returns (masks, margins, completed) as written."""
    rng = np.random.default_rng(seed)
    os.makedirs(src, exist_ok=True)
    if fixed:
        k = max(1, int(round(p * n_train)))
        masks = np.zeros((n_models, n_train), bool)
        for i in range(n_models):
            masks[i, rng.choice(n_train, k, replace=False)] = True
    else:
        masks = rng.random((n_models, n_train)) < p
    done = rng.random(n_models) < p_done
    margins = np.zeros((n_models, n_target), dtype)
    margins[done] = (rng.standard_normal((int(done.sum()), n_target)) * 3).astype(dtype)
    fmt = np.lib.format
    m = fmt.open_memmap(os.path.join(src, "masks.npy"), "w+", bool, masks.shape)
    m[:] = masks
    g = fmt.open_memmap(os.path.join(src, f"{key}.npy"), "w+", dtype, margins.shape)
    g[done] = margins[done]
    c = fmt.open_memmap(os.path.join(src, "_completed.npy"), "w+", bool, done.shape)
    c[:] = done
    del m, g, c
    return masks, margins, done


def assert_same_layout(a, b, key="margins"):
    for f in ("masks.npy", f"{key}.npy", "_completed.npy"):
        x, y = np.load(os.path.join(a, f)), np.load(os.path.join(b, f))
        assert x.dtype == y.dtype and x.shape == y.shape, f
        assert x.tobytes() == y.tobytes(), f
        with open(os.path.join(a, f), "rb") as fa, open(os.path.join(b, f), "rb") as fb:
            assert fa.read() == fb.read(), f"{f}: files differ"


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("n_models,block", [(1, 4), (37, 8), (50, 1), (129, 64), (0, 16)])
def test_round_trip_identical(tmp_path, dtype, n_models, block):
    src, store, out = tmp_path / "src", tmp_path / "s.zarr", tmp_path / "out"
    make_layout(src, n_models, 23, 7, dtype=dtype, seed=n_models)
    assert import_madrylab(src, store, block_size=block, progress=False) == str(store)
    assert export_madrylab(store, out, progress=False) == str(out)
    assert sorted(os.listdir(out)) == sorted(FILES)
    assert_same_layout(src, out)


def test_imported_store(tmp_path):
    src, store = tmp_path / "src", tmp_path / "s.zarr"
    masks, margins, done = make_layout(src, 45, 30, 6, seed=1, p=0.3, p_done=0.7)
    assert not done.all() and done.any()
    import_madrylab(src, store, block_size=16, progress=False)
    ds = dmdask.open_store(store)
    assert ds.sizes == {"model": 45, "train": 30, "target": 6}
    assert (ds.kind.values == "random").all()
    density = masks.mean()
    np.testing.assert_allclose(ds.alpha.values, density, rtol=1e-6)
    meta = ds.attrs["dmdask"]
    assert meta["job"] is None
    assert meta["alpha"] == pytest.approx(density)
    assert meta["sampling"] == "bernoulli"  # masks of varying size
    assert meta["source"]["format"] == "madrylab"
    assert meta["source"]["dir"] == os.path.abspath(src)
    assert meta["source"]["margin_dtype"] == "float16"
    assert meta["source"]["margins_key"] == "margins"
    np.testing.assert_array_equal(ds.mask.values, masks)
    np.testing.assert_array_equal(ds.completed.values, done)
    mg = ds.margin.values
    assert mg.dtype == np.float32
    assert np.isnan(mg[~done]).all()
    np.testing.assert_array_equal(mg[done], margins[done].astype(np.float32))
    assert (ds.replicate_of.values == -1).all()
    info = dmdask.store_info(store)
    rk = info["kinds"]["random"]
    assert (rk["models"], rk["done"], rk["pending"]) == (45, done.sum(), (~done).sum())
    assert len(rk["alphas"]) == 1 and rk["alphas"][0] == pytest.approx(density, abs=1e-6)
    with pytest.raises(StoreError, match="has no job"):
        dmdask.train(store, progress=False)
    # a jobless imported store still grows with the store's default alpha
    new = dmdask.add_models(store, "heldout", n=3)
    assert new.tolist() == [45, 46, 47]


def test_alpha_override_and_fixed_sampling(tmp_path):
    src, store = tmp_path / "src", tmp_path / "s.zarr"
    masks, _, _ = make_layout(src, 20, 40, 3, fixed=True, p=0.25)
    with pytest.raises(InputError, match="alpha"):
        import_madrylab(src, store, alpha=1.5, progress=False)
    assert not store.exists()
    import_madrylab(src, store, alpha=0.3, progress=False)
    ds = dmdask.open_store(store)
    np.testing.assert_allclose(ds.alpha.values, 0.3)
    assert ds.attrs["dmdask"]["alpha"] == pytest.approx(0.3)
    assert ds.attrs["dmdask"]["sampling"] == "fixed"  # every mask has the same size
    assert ds.attrs["dmdask"]["source"]["density"] == pytest.approx(masks.mean())


def test_lazy_package_attributes():
    assert dmdask.import_madrylab is import_madrylab
    assert dmdask.export_madrylab is export_madrylab


def test_progress_bar(tmp_path, capsys):
    src = tmp_path / "src"
    make_layout(src, 10, 5, 2)
    import_madrylab(src, tmp_path / "s.zarr", block_size=4, progress=True)
    export_madrylab(tmp_path / "s.zarr", tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "import" in err and "export" in err and "10/10" in err


def test_other_margins_key_and_int_masks(tmp_path):
    src, store, out = tmp_path / "src", tmp_path / "s.zarr", tmp_path / "out"
    masks, margins, done = make_layout(src, 12, 9, 4, dtype=np.float32, key="logits")
    np.save(src / "other.npy", np.ones((12, 2)))  # other keys are ignored
    with pytest.raises(InputError, match=r"missing margins\.npy"):
        import_madrylab(src, store, progress=False)
    # 0/1 integer masks are accepted (and exported as bool)
    np.save(src / "masks.npy", masks.astype(np.uint8))
    import_madrylab(src, store, margins_key="logits", block_size=5, progress=False)
    assert dmdask.open_store(store).attrs["dmdask"]["source"]["margins_key"] == "logits"
    export_madrylab(store, out, progress=False)  # key recorded at import
    assert sorted(os.listdir(out)) == ["_completed.npy", "logits.npy", "masks.npy"]
    np.testing.assert_array_equal(np.load(out / "masks.npy"), masks)
    assert np.load(out / "masks.npy").dtype == bool
    np.testing.assert_array_equal(np.load(out / "logits.npy"), margins)
    export_madrylab(store, tmp_path / "out2", margins_key="margins", progress=False)
    assert (tmp_path / "out2" / "margins.npy").exists()


# --------------------------------------------------------------------------- export


def test_export_of_a_store_that_was_not_imported(tmp_path):
    store, out = tmp_path / "s.zarr", tmp_path / "out"
    dmdask.create_jobless_store(store, 10, 3, block_size=4, alpha=0.5)
    dmdask.add_models(store, "random", n=8)
    dmdask.add_models(store, "heldout", n=4)
    rng = np.random.default_rng(0)
    written = {b: rng.standard_normal((4, 3)).astype(np.float32) for b in (0, 2)}
    for b, m in written.items():
        dmdask.write_block(store, b, m)
    with pytest.warns(UserWarning, match="4 heldout"):
        export_madrylab(store, out, progress=False)
    ds = dmdask.open_store(store)
    np.testing.assert_array_equal(np.load(out / "masks.npy"), ds.mask.values)
    mg = np.load(out / "margins.npy")
    assert mg.dtype == np.float32 and mg.shape == (12, 3)
    np.testing.assert_array_equal(mg[:4], written[0])
    np.testing.assert_array_equal(mg[8:], written[2])
    assert (mg[4:8] == 0).all()  # incomplete: zeros, as MadryLab's memmaps
    np.testing.assert_array_equal(np.load(out / "_completed.npy"), [1] * 4 + [0] * 4 + [1] * 4)


def test_export_destination(tmp_path):
    src, store = tmp_path / "src", tmp_path / "s.zarr"
    make_layout(src, 5, 4, 2)
    import_madrylab(src, store, progress=False)
    with pytest.raises(InputError, match="not empty"):
        export_madrylab(store, src, progress=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        export_madrylab(store, tmp_path / "f", progress=False)
    (tmp_path / "empty").mkdir()
    export_madrylab(store, tmp_path / "empty", progress=False)
    assert_same_layout(src, tmp_path / "empty")
    with pytest.raises(StoreError, match="no such run store"):
        export_madrylab(tmp_path / "nope.zarr", tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- refusals


def refused(tmp_path, src, match, **kw):
    store = tmp_path / "s.zarr"
    with pytest.raises(InputError, match=match) as ei:
        import_madrylab(src, store, progress=False, **kw)
    assert not store.exists(), "a refused import left a store behind"
    return str(ei.value)


def test_mismatched_row_counts(tmp_path):
    src = tmp_path / "src"
    make_layout(src, 30, 8, 3, dtype=np.float32)
    np.save(src / "margins.npy", np.zeros((28, 3), np.float32))
    msg = refused(tmp_path, src, "row counts")
    assert "masks.npy has 30 rows" in msg and "margins.npy has 28 rows" in msg
    assert "_completed.npy has 30 rows" in msg and str(src) in msg
    make_layout(src, 30, 8, 3, dtype=np.float32)
    np.save(src / "_completed.npy", np.ones(31, bool))
    msg = refused(tmp_path, src, "row counts")
    assert "_completed.npy has 31 rows" in msg


def test_bad_masks(tmp_path):
    src = tmp_path / "src"
    masks, _, _ = make_layout(src, 40, 8, 3)
    bad = masks.astype(np.int8)
    bad[33, 2] = 2  # late in the file: earlier blocks are written before it is found
    np.save(src / "masks.npy", bad)
    msg = refused(tmp_path, src, "must be bool or 0/1", block_size=8)
    assert "masks.npy" in msg and "row 33" in msg
    np.save(src / "masks.npy", masks[:, :, None])
    refused(tmp_path, src, r"masks\.npy: must be 2-d .*\(40, 8, 1\)")
    np.save(src / "masks.npy", masks.astype("U1"))
    refused(tmp_path, src, "must be bool")
    np.save(src / "masks.npy", np.array([{"a": 1}] * 40, dtype=object))
    refused(tmp_path, src, "not a readable .npy")


def test_bad_margins(tmp_path):
    src = tmp_path / "src"
    masks, margins, done = make_layout(src, 40, 8, 3, dtype=np.float32, p_done=1.0)
    done[5] = False
    np.save(src / "_completed.npy", done)
    margins[5, 0] = np.nan  # incomplete row: ignored
    margins[37, 1] = np.inf  # completed row: refused
    np.save(src / "margins.npy", margins)
    msg = refused(tmp_path, src, "NaN or inf", block_size=8)
    assert "margins.npy" in msg and "rows 37" in msg
    margins[37, 1] = 1.0
    np.save(src / "margins.npy", margins.astype(np.float64) * 1e300)
    refused(tmp_path, src, "beyond the float32 range")
    np.save(src / "margins.npy", np.zeros(margins.shape, np.int32))
    refused(tmp_path, src, "must be float16 or float32")
    np.save(src / "margins.npy", margins[:, 0])
    refused(tmp_path, src, r"must be 2-d \[models, targets\]")
    np.save(src / "margins.npy", margins)
    np.save(src / "_completed.npy", done.astype(np.float32))
    refused(tmp_path, src, r"_completed\.npy: must be bool")
    np.save(src / "_completed.npy", done.astype(np.int64) * 3)
    refused(tmp_path, src, r"_completed\.npy: must be bool or 0/1, but row 0")
    np.save(src / "_completed.npy", done)
    store = tmp_path / "s.zarr"
    import_madrylab(src, store, progress=False)  # now fine: NaN only in an incomplete row
    assert np.isnan(dmdask.open_store(store).margin.values[5]).all()


def test_missing_inputs_and_existing_target(tmp_path):
    refused(tmp_path, tmp_path / "nope", "no such directory")
    src = tmp_path / "src"
    make_layout(src, 5, 4, 2)
    os.remove(src / "_completed.npy")
    refused(tmp_path, src, r"missing _completed\.npy \(found: margins\.npy, masks\.npy\)")
    make_layout(src, 5, 4, 2)
    (src / "masks.npy").write_bytes(b"not an npy file")
    refused(tmp_path, src, r"masks\.npy: not a readable \.npy")
    make_layout(src, 5, 4, 2)
    refused(tmp_path, src, "block_size must be positive", block_size=-1)
    with pytest.raises(InputError, match="margins_key"):
        import_madrylab(src, tmp_path / "x.zarr", margins_key="masks", progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        import_madrylab(src, tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "keep").read_text() == "mine"  # never removed


# --------------------------------------------------------------------------- killed import

_IMPORT_KILLED = KILL_AT_WRITE.replace("KILL_AT", "int(sys.argv[3])") + """
from dmdask.cli.commands import main
main(["import", sys.argv[1], sys.argv[2], "--block-size", "4", "--no-progress"])
"""


def _store_arrays(path):
    ds = dmdask.open_store(path)
    return {v: ds[v].values for v in ("mask", "margin", "completed", "seed", "kind", "alpha",
                                      "replicate_of")}, ds.attrs["dmdask"]


def test_a_killed_import_leaves_nothing_and_a_rerun_finishes_it(tmp_path, monkeypatch):
    import zarr.storage
    from click.testing import CliRunner

    from dmdask.cli.commands import main

    src = tmp_path / "src"
    make_layout(src, 10, 6, 3)
    calls = [0]
    orig = zarr.storage.LocalStore.set

    async def counting_set(self, key, value):
        calls[0] += 1
        return await orig(self, key, value)

    with monkeypatch.context() as m:  # count the writes of a whole import
        m.setattr(zarr.storage.LocalStore, "set", counting_set)
        import_madrylab(src, tmp_path / "ref.zarr", block_size=4, progress=False)
    writes = calls[0]
    ref, ref_meta = _store_arrays(tmp_path / "ref.zarr")
    # kill points: amid the empty arrays, amid the rows, and at the commit (the last write)
    for k in (writes // 4, writes // 2 + 1, writes):
        store = tmp_path / f"k{k}.zarr"
        r = subprocess.run([sys.executable, "-c", _IMPORT_KILLED, str(src), str(store), str(k)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == -9, (k, r.stderr)
        assert not os.path.lexists(store), f"a half-made store at {store} (killed at write {k})"
        assert list(tmp_path.glob(f"k{k}.zarr.creating-*")), k  # the draft it was building
        r = CliRunner().invoke(main, ["import", str(src), str(store), "--block-size", "4",
                                      "--no-progress"])
        assert r.exit_code == 0, r.output
        got, meta = _store_arrays(store)
        for v, a in ref.items():
            np.testing.assert_array_equal(got[v], a, err_msg=f"{v} (killed at write {k})")
        drop = ("created", "path")
        assert ({x: y for x, y in meta.items() if x not in drop}
                == {x: y for x, y in ref_meta.items() if x not in drop})
        assert not list(tmp_path.glob(f"k{k}.zarr.creating-*")), k  # the dead draft is gone


# --------------------------------------------------------------------------- property


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    n_models=st.integers(0, 20),
    n_train=st.integers(1, 12),
    n_target=st.integers(1, 5),
    block=st.integers(1, 9),
    dtype=st.sampled_from([np.float16, np.float32]),
    seed=st.integers(0, 2**16),
    p=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    p_done=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_round_trip_property(n_models, n_train, n_target, block, dtype, seed, p, p_done):
    with tempfile.TemporaryDirectory() as d:
        src, store, out = (os.path.join(d, x) for x in ("src", "s.zarr", "out"))
        masks, margins, done = make_layout(src, n_models, n_train, n_target, dtype=dtype,
                                           seed=seed, p=p, p_done=p_done)
        import_madrylab(src, store, block_size=block, progress=False)
        ds = dmdask.open_store(store)
        np.testing.assert_array_equal(ds.completed.values, done)
        if n_models:
            np.testing.assert_allclose(ds.alpha.values, masks.mean(), rtol=1e-6)
        export_madrylab(store, out, progress=False)
        assert_same_layout(src, out)


# --------------------------------------------------------------------------- memory

# Peak RSS of the child alone: VmHWM is per address space and starts afresh at exec, whereas
# getrusage's ru_maxrss survives fork+exec and so would report the (larger) pytest parent.
_CHILD = textwrap.dedent("""
    import json, resource, sys
    from dmdask.store.madrylab import export_madrylab, import_madrylab
    mode, a, b = sys.argv[1:4]
    (import_madrylab if mode == "import" else export_madrylab)(a, b, progress=False)
    try:
        with open("/proc/self/status") as f:
            kb = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"maxrss_kb": kb}))
""")


def _write_big(src, n_models, n_train=2000, n_target=16, chunk=4096):
    os.makedirs(src)
    rng = np.random.default_rng(n_models)
    fmt = np.lib.format
    m = fmt.open_memmap(os.path.join(src, "masks.npy"), "w+", bool, (n_models, n_train))
    g = fmt.open_memmap(os.path.join(src, "margins.npy"), "w+", np.float16,
                        (n_models, n_target))
    c = fmt.open_memmap(os.path.join(src, "_completed.npy"), "w+", bool, (n_models,))
    for s in range(0, n_models, chunk):
        e = min(n_models, s + chunk)
        bits = rng.integers(0, 256, (e - s, n_train // 8), dtype=np.uint8)
        m[s:e] = np.unpackbits(bits, axis=1).astype(bool)
        done = rng.random(e - s) < 0.9
        x = rng.standard_normal((e - s, n_target), dtype=np.float32)
        g[s:e] = np.where(done[:, None], x, 0)  # never-written rows stay +0
        c[s:e] = done
        m.flush()
    del m, g, c


def _peak_mb(*args):
    r = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024


@pytest.mark.slow
def test_peak_memory_independent_of_models(tmp_path):
    peaks = {}
    for n in (20_000, 80_000):
        src, store = tmp_path / f"src{n}", tmp_path / f"s{n}.zarr"
        _write_big(src, n)
        peaks["import", n] = _peak_mb("import", src, store)
        peaks["export", n] = _peak_mb("export", store, tmp_path / f"out{n}")
    for op in ("import", "export"):
        small, big = peaks[op, 20_000], peaks[op, 80_000]
        # the 80k masks alone are 160 MB: a whole load (or resident memmap pages) shows
        assert big < 1.3 * small + 30, f"{op}: peak RSS {small:.0f} MB -> {big:.0f} MB"
    print({f"{op} {n}": f"{mb:.0f} MB" for (op, n), mb in peaks.items()})
    out, src = tmp_path / "out80000", tmp_path / "src80000"
    assert_same_layout(src, out)


def test_import_heldout_rows(tmp_path):
    """--heldout-rows N: the release's trailing evaluation models become 'heldout'."""
    from click.testing import CliRunner

    from dmdask.cli import main
    from dmdask.store import open_store

    rng = np.random.default_rng(7)
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "masks.npy", rng.random((10, 6)) < 0.5)
    np.save(src / "margins.npy", rng.standard_normal((10, 3)).astype(np.float32))
    np.save(src / "_completed.npy", np.ones(10, bool))
    r = CliRunner().invoke(main, ["import", str(src), str(tmp_path / "s"), "--heldout-rows",
                                  "4", "--no-progress"])
    assert r.exit_code == 0, r.output
    ds = open_store(tmp_path / "s")
    assert list(ds.kind.values) == ["random"] * 6 + ["heldout"] * 4
    for bad in ("10", "-1"):
        r = CliRunner().invoke(main, ["import", str(src), str(tmp_path / f"b{bad}"),
                                      "--heldout-rows", bad])
        assert r.exit_code == 2 and "heldout_rows" in r.output
        assert not (tmp_path / f"b{bad}").exists()
