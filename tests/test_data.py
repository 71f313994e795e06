"""Tests for jaxnet.data: digits, splits, preprocessing, augmentation, CIFAR-10 loaders."""

from __future__ import annotations

import os
import pickle
import tarfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxnet.data import (
    Dataset,
    augment,
    channel_stats,
    cifar,
    fit_normalizer,
    kfold_indices,
    load_cifar10,
    load_cifar10_python,
    load_digits,
    load_image_folder,
    load_image_tarball,
    mean_image,
    normalize_dataset,
    pca_fit,
    pca_transform,
    random_crop,
    random_flip,
    split_indices,
    subsample,
    to_float,
    train_val_test_split,
    whiten,
)
from cifar_copy import cifar10_or_skip

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
REPO = Path(__file__).resolve().parents[1]
_REAL_ENV = os.environ.get("JAXNET_CIFAR10_DIR")  # read before the autouse fixture clears it


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


@pytest.fixture(autouse=True)
def _hermetic_env(tmp_path, monkeypatch):
    """Every test gets its own cache dir and no ambient CIFAR location."""
    monkeypatch.setenv("JAXNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXNET_CIFAR10_DIR", raising=False)


# ---------------------------------------------------------------- digits + splits

def test_digits_shapes_dtypes_ranges(digits):
    assert (digits.name, digits.classes) == ("digits", tuple("0123456789"))
    assert digits.num_classes == 10 and digits.input_shape == (8, 8, 1)
    sizes = [len(digits.x_train), len(digits.x_val), len(digits.x_test)]
    assert sum(sizes) == 1797 and sizes == [1257, 270, 270]
    for x, y in [(digits.x_train, digits.y_train), (digits.x_val, digits.y_val), (digits.x_test, digits.y_test)]:
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape[1:] == (8, 8, 1) and y.shape == (len(x),)
        assert x.min() >= 0.0 and x.max() <= 1.0 and set(np.unique(y)) == set(range(10))
    assert digits.x_train.max() == 1.0  # pixel 16 / 16


def test_digits_deterministic_and_seed_dependent(digits):
    again, other = load_digits(seed=0), load_digits(seed=1)
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(digits, f), getattr(again, f))
    assert not np.array_equal(digits.y_test, other.y_test)


def test_digits_splits_disjoint_and_stratified(digits):
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    # sklearn's digits has a few exact duplicate images; compare against the full set
    from sklearn.datasets import load_digits as sk
    n_unique = len(rows((sk().images / 16.0).astype(np.float32)[..., None]))
    assert len(rows(digits.x_train) | rows(digits.x_val) | rows(digits.x_test)) == n_unique
    full = np.bincount(np.concatenate([digits.y_train, digits.y_val, digits.y_test])) / 1797
    for y in (digits.y_train, digits.y_val, digits.y_test):
        np.testing.assert_allclose(np.bincount(y, minlength=10) / len(y), full, atol=0.01)


def test_train_val_test_split_indices_partition():
    x = np.arange(200)[:, None, None, None].astype(np.float32)
    y = (np.arange(200) % 4).astype(np.int32)
    xtr, ytr, xva, yva, xte, yte = train_val_test_split(x, y, val_fraction=0.2, test_fraction=0.1, seed=3)
    ids = np.concatenate([xtr, xva, xte]).ravel()
    assert sorted(ids.tolist()) == list(range(200))
    assert (len(xtr), len(xva), len(xte)) == (140, 40, 20)
    assert np.bincount(yva).tolist() == [10] * 4 and np.bincount(yte).tolist() == [5] * 4
    np.testing.assert_array_equal(y[xva.ravel().astype(int)], yva)  # labels follow images
    # a split smaller than the number of classes still spreads over distinct classes
    _, va, te = split_indices(y, val_fraction=3, test_fraction=0, seed=0)
    assert len(va) == 3 and len(set(y[va])) == 3 and len(te) == 0
    # zero-sized splits are allowed, bad fractions are not
    assert len(train_val_test_split(x, y, val_fraction=0.0, test_fraction=0.0, seed=0)[2]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_test_split(x, y, val_fraction=1.5, test_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match=r"x \(200, 1, 1, 1\) and y \(199,\)"):
        train_val_test_split(x, y[:-1], val_fraction=0.1, test_fraction=0.1, seed=0)


def test_kfold_covers_every_index_once():
    folds = kfold_indices(23, 5, seed=0)
    assert len(folds) == 5
    val = np.concatenate([va for _, va in folds])
    assert sorted(val.tolist()) == list(range(23))
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == 23 and len(va) in (4, 5)
    assert [va.tolist() for _, va in kfold_indices(23, 5, seed=0)] == [va.tolist() for _, va in folds]
    with pytest.raises(ValueError, match="k=1"):
        kfold_indices(10, 1, seed=0)


def test_subsample():
    x, y = np.arange(50).reshape(50, 1, 1, 1), np.arange(50) % 5
    xs, ys = subsample(x, y, 10, seed=0)
    assert xs.shape == (10, 1, 1, 1) and len(set(xs.ravel())) == 10
    np.testing.assert_array_equal(ys, xs.ravel() % 5)
    np.testing.assert_array_equal(subsample(x, y, 10, seed=0)[0], xs)
    with pytest.raises(ValueError, match="n=51"):
        subsample(x, y, 51, seed=0)


def test_dataset_validates_shapes():
    x, y = np.zeros((4, 2, 2, 1), np.float32), np.zeros(4, np.int32)
    with pytest.raises(ValueError, match=r"x_val must be .*\(3, 2, 2, 1\)"):
        Dataset(x, y, x[:3], y, x, y, classes=("a",), name="bad")


# ---------------------------------------------------------------- preprocessing

def test_channel_normalizer_uses_train_stats_only(digits):
    rng = np.random.default_rng(0)
    x_train = rng.normal([1.0, -2.0, 5.0], [2.0, 0.5, 3.0], size=(500, 4, 4, 3)).astype(np.float32)
    x_val = x_train[:50] + 10.0
    norm = fit_normalizer(x_train, mode="channel")
    z = norm.apply(x_train)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    mean, std = channel_stats(x_train)
    np.testing.assert_allclose(norm.apply(x_val), (x_val - mean) / std, rtol=1e-6)  # train stats, not val's
    assert abs(norm.apply(x_val).mean()) > 1.0
    np.testing.assert_allclose(norm.invert(z), x_train, atol=1e-5)
    # works on jax arrays too (e.g. inside a jitted step)
    np.testing.assert_allclose(np.asarray(jax.jit(norm.apply)(jnp.asarray(x_val))), norm.apply(x_val), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 4, 4, 1\)"):
        norm.apply(np.zeros((2, 4, 4, 1)))


def test_normalize_dataset_both_modes(digits):
    ds = normalize_dataset(digits, "channel")
    assert ds.x_train.dtype == np.float32 and ds.x_val.shape == digits.x_val.shape
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-5
    mean, std = channel_stats(digits.x_train)
    np.testing.assert_allclose(ds.x_test, (digits.x_test - mean) / std, rtol=1e-5, atol=1e-6)
    mi = normalize_dataset(digits, "mean_image")
    np.testing.assert_allclose(mi.x_train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(mi.x_val, digits.x_val - mean_image(digits.x_train), atol=1e-6)
    assert mean_image(digits.x_train).shape == (8, 8, 1)
    with pytest.raises(ValueError, match="fit_normalizer.*'pixel'"):
        normalize_dataset(digits, "pixel")


def test_to_float():
    x = np.array([0, 128, 255], np.uint8).reshape(1, 1, 3, 1)
    np.testing.assert_allclose(to_float(x).ravel(), [0.0, 128 / 255, 1.0])
    assert to_float(x).dtype == np.float32 and to_float(x.astype(np.float64)).dtype == np.float32


def test_pca_and_whitening(digits):
    k = 20
    pca = pca_fit(digits.x_train, k)
    assert pca.mean.shape == (64,) and pca.components.shape == (64, k) and pca.eigenvalues.shape == (k,)
    assert np.all(np.diff(pca.eigenvalues) <= 0)
    np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(k), atol=1e-8)
    rot = pca_transform(digits.x_train, pca)
    np.testing.assert_allclose(np.cov(rot, rowvar=False, bias=True), np.diag(pca.eigenvalues), atol=1e-5)
    white = whiten(digits.x_train, pca, eps=1e-5)
    assert white.shape == (len(digits.x_train), k) and white.dtype == np.float32
    np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(k), atol=2e-3)
    # a held-out split uses the training mean/basis: roughly, not exactly, white
    val_cov = np.cov(whiten(digits.x_val, pca), rowvar=False, bias=True)
    assert 0.5 < np.mean(np.diag(val_cov)) < 1.5 and not np.allclose(val_cov, np.eye(k), atol=2e-3)
    with pytest.raises(ValueError, match="D=64"):
        pca_transform(np.zeros((3, 9)), pca)
    with pytest.raises(ValueError, match="k=65"):
        pca_fit(digits.x_train, 65)


# ---------------------------------------------------------------- augmentation

def _images(n=16, h=6, w=5, c=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(1, 2, size=(n, h, w, c)).astype(np.float32))


def test_random_flip_jit_and_involution():
    x, key = _images(), jax.random.key(0)
    y = jax.jit(random_flip)(key, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(random_flip(key, y), x)
    flipped = [not np.array_equal(y[i], x[i]) for i in range(len(x))]
    for i, f in enumerate(flipped):
        np.testing.assert_array_equal(y[i], x[i, :, ::-1] if f else x[i])
    assert 0 < sum(flipped) < len(x)


def test_random_crop_is_shifted_window_with_per_image_offsets():
    p, x = 2, _images(n=24)
    padded = np.pad(np.asarray(x), ((0, 0), (p, p), (p, p), (0, 0)))
    y = np.asarray(jax.jit(random_crop, static_argnames="padding")(jax.random.key(1), x, padding=p))
    assert y.shape == x.shape and y.dtype == x.dtype
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if np.array_equal(y[i], padded[i, dy:dy + 6, dx:dx + 5])]
        assert len(hits) == 1, f"image {i}: crop is not a window of the padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 5
    # the same image repeated gets different crops; padding=0 is the identity
    same = np.asarray(random_crop(jax.random.key(2), jnp.repeat(x[:1], 8, axis=0), padding=p))
    assert len({im.tobytes() for im in same}) > 1
    np.testing.assert_array_equal(random_crop(jax.random.key(2), x, padding=0), x)
    with pytest.raises(ValueError, match=r"random_crop.*\(6, 5, 2\)"):
        random_crop(jax.random.key(0), x[0], padding=p)


def test_augment_composes_under_jit():
    x = jnp.asarray(np.random.default_rng(0).integers(1, 255, (8, 8, 8, 3), dtype=np.uint8))
    f = jax.jit(augment, static_argnames=("crop_padding", "flip"))
    y = f(jax.random.key(3), x, crop_padding=2, flip=True)
    assert y.shape == x.shape and y.dtype == jnp.uint8
    np.testing.assert_array_equal(y, f(jax.random.key(3), x, crop_padding=2, flip=True))
    assert not np.array_equal(y, f(jax.random.key(4), x, crop_padding=2, flip=True))
    np.testing.assert_array_equal(f(jax.random.key(3), x, crop_padding=0, flip=False), x)
    assert int((y == 0).sum()) > 0  # some zero padding came in


# ---------------------------------------------------------------- official CIFAR-10 pickles

def _write_pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _official_tree(root: Path, rows=(2, 1, 3, 2, 1), n_test=3, seed=0):
    """A tiny cifar-10-batches-py under root; returns the HWC images and labels written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _write_pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR_CLASSES]})
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, list(rows) + [n_test]):
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        rows_chw = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # official layout: R plane, G, B
        _write_pickle(folder / name, {b"data": rows_chw, b"labels": labels, b"batch_label": b"x"})
        written[name] = (hwc, np.asarray(labels))
    return folder, written


def test_cifar_python_round_trip(tmp_path):
    folder, written = _official_tree(tmp_path)
    for root in (tmp_path, folder):  # the folder itself or its parent
        x_tr, y_tr, x_te, y_te, classes = load_cifar10_python(root)
        assert classes == CIFAR_CLASSES
        assert x_tr.shape == (9, 32, 32, 3) and x_tr.dtype == np.uint8 and y_tr.dtype == np.int32
        np.testing.assert_array_equal(x_tr, np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)]))
        np.testing.assert_array_equal(y_tr, np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)]))
        np.testing.assert_array_equal(x_te, written["test_batch"][0])
        np.testing.assert_array_equal(y_te, written["test_batch"][1])
    # a known pixel: row[c * 1024 + i * 32 + j] is channel c at (i, j)
    raw = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")[b"data"]
    assert x_tr[0, 3, 7, 2] == raw[0, 2 * 1024 + 3 * 32 + 7]


def test_cifar_python_missing_file(tmp_path):
    folder, _ = _official_tree(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10_python(tmp_path)


def test_cifar_python_truncated_pickle(tmp_path):
    folder, _ = _official_tree(tmp_path)
    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="data_batch_2"):
        load_cifar10_python(tmp_path)


def test_cifar_python_bad_row_width(tmp_path):
    folder, _ = _official_tree(tmp_path)
    _write_pickle(folder / "data_batch_4", {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"data_batch_4.*\(2, 3000\).*3072"):
        load_cifar10_python(tmp_path)


def test_cifar_python_label_count_mismatch(tmp_path):
    folder, _ = _official_tree(tmp_path)
    _write_pickle(folder / "test_batch", {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"test_batch.*3 images.*\(3, 3072\).*\(2,\)"):
        load_cifar10_python(tmp_path)


# ---------------------------------------------------------------- image folders

def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _image_tree(root: Path, classes=("zebra", "apple", "mango"), per_class=(2, 3, 1), size=(4, 5), seed=0):
    """PNG tree root/{train,test}/<class>/NNN.png; returns {split: {class: [arrays]}}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test"):
        out[split] = {}
        for c, n in zip(classes, per_class):
            out[split][c] = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
            for i, a in enumerate(out[split][c]):
                _png(root / split / c / f"{i:03d}.png", a)
    return out


def test_image_folder_alphabetical_classes_and_pixels(tmp_path):
    written = _image_tree(tmp_path)
    (tmp_path / "train" / "apple" / ".DS_Store").write_bytes(b"junk")  # hidden and junk files are ignored
    (tmp_path / "train" / "apple" / "Thumbs.db").write_bytes(b"junk")
    x, y, classes = load_image_folder(tmp_path, "train")
    assert classes == ("apple", "mango", "zebra")
    assert x.shape == (6, 4, 5, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    assert y.tolist() == [0, 0, 0, 1, 2, 2]
    expected = written["train"]["apple"] + written["train"]["mango"] + written["train"]["zebra"]
    np.testing.assert_array_equal(x, np.stack(expected))  # PNG is lossless


def test_image_folder_errors(tmp_path):
    _image_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match="valid"):
        load_image_folder(tmp_path, "valid")
    (tmp_path / "train" / "empty_class").mkdir()
    with pytest.raises(ValueError, match="empty_class"):
        load_image_folder(tmp_path, "train")
    (tmp_path / "test" / "apple" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path, "test")
    (tmp_path / "test" / "apple" / "broken.png").unlink()
    _png(tmp_path / "test" / "mango" / "big.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"big.png.*\(8, 8, 3\)"):
        load_image_folder(tmp_path, "test")


def test_image_tarball_matches_folder(tmp_path):
    _image_tree(tmp_path / "tree")
    tarball = tmp_path / "imgs.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(tmp_path / "tree" / "train", arcname="top/train")
        tf.add(tmp_path / "tree" / "test", arcname="top/test")
    got = load_image_tarball(tarball)
    for split in ("train", "test"):
        for a, b in zip(got[split], load_image_folder(tmp_path / "tree", split)):
            np.testing.assert_array_equal(a, b)
    (tmp_path / "cut.tar.gz").write_bytes(tarball.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.tar.gz"):
        load_image_tarball(tmp_path / "cut.tar.gz")


# ---------------------------------------------------------------- load_cifar10 + cache

def test_load_cifar10_requires_a_location():
    with pytest.raises(FileNotFoundError, match="JAXNET_CIFAR10_DIR"):
        load_cifar10()


def test_load_cifar10_rejects_unknown_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNET_CIFAR10_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="JAXNET_CIFAR10_DIR.*cifar-10-batches-py"):
        load_cifar10()


def test_load_cifar10_python_source_and_cache(tmp_path, monkeypatch):
    _, written = _official_tree(tmp_path / "src", rows=(4, 4, 4, 4, 4), n_test=5)
    monkeypatch.setenv("JAXNET_CIFAR10_DIR", str(tmp_path / "src"))
    first = load_cifar10(val_size=2, seed=0)
    assert first.classes == CIFAR_CLASSES and first.x_train.dtype == np.uint8
    assert (len(first.x_train), len(first.x_val), len(first.x_test)) == (18, 2, 5)
    np.testing.assert_array_equal(first.x_test, written["test_batch"][0])
    cache_files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cache_files) == 1 and cache_files[0].endswith(".npz")  # no temp file left behind

    def fail(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cifar, "load_cifar10_python", fail)
    second = load_cifar10(val_size=2, seed=0)
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, f), getattr(second, f))
    assert second.classes == first.classes


def test_load_cifar10_tarball_and_folder_sources(tmp_path, monkeypatch):
    _image_tree(tmp_path / "tree", per_class=(3, 3, 3), size=(32, 32))
    tarball = tmp_path / "dl" / "cifar10-jpeg.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(tmp_path / "tree" / split, arcname=split)
    from_folder = load_cifar10(tmp_path / "tree", cache=False, val_size=3)
    from_tar = load_cifar10(tmp_path / "dl", val_size=3)  # a folder holding the tarball
    assert from_tar.classes == ("apple", "mango", "zebra") and from_tar.input_shape == (32, 32, 3)
    assert np.bincount(from_tar.y_val).tolist() == [1, 1, 1]  # stratified val split
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(from_folder, f), getattr(from_tar, f))
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]  # only from the tarball load
    monkeypatch.setattr(cifar, "load_image_tarball", lambda *a, **k: pytest.fail("cache not used"))
    again = load_cifar10(tarball, val_size=3)
    np.testing.assert_array_equal(again.x_train, from_tar.x_train)


def test_corrupt_cache_is_rebuilt(tmp_path):
    _official_tree(tmp_path / "src")
    first = load_cifar10(tmp_path / "src", val_size=0)
    (npz,) = (tmp_path / "cache").iterdir()
    npz.write_bytes(b"garbage")
    again = load_cifar10(tmp_path / "src", val_size=0)
    np.testing.assert_array_equal(again.x_train, first.x_train)
    assert npz.stat().st_size > 1000


# ---------------------------------------------------------------- the real CIFAR-10 copy (optional)

def _real_cifar() -> Path:
    return Path(cifar10_or_skip())


def test_real_cifar_subset_decodes(tmp_path):
    """A few real JPEGs per class, copied out of the archive, through load_cifar10."""
    src = _real_cifar()
    tarball = src if src.is_file() else src / "cifar10-jpeg.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"CIFAR-10 subset test needs cifar10-jpeg.tar.gz, got {src}")
    want = {(s, c): 3 for s in ("train", "test") for c in CIFAR_CLASSES}
    with tarfile.open(tarball) as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and want.get((parts[0], parts[1]), 0) > 0:
                want[parts[0], parts[1]] -= 1
                dest = tmp_path / "subset" / m.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tf.extractfile(m).read())
                if not any(want.values()):
                    break
    ds = load_cifar10(tmp_path / "subset", val_size=10)
    assert ds.classes == CIFAR_CLASSES
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((20, 32, 32, 3), (10, 32, 32, 3), (30, 32, 32, 3))
    assert np.bincount(ds.y_test).tolist() == [3] * 10 and np.bincount(ds.y_val).tolist() == [1] * 10
    assert 60 < ds.x_train.mean() < 200 and ds.x_train.std() > 30  # real photos, not blank


@pytest.mark.slow
def test_real_cifar_full_load_and_cache():
    src = _real_cifar()
    t0 = time.perf_counter()
    ds = load_cifar10(src)
    first = time.perf_counter() - t0
    assert ds.classes == CIFAR_CLASSES and ds.input_shape == (32, 32, 3) and ds.x_train.dtype == np.uint8
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (49000, 1000, 10000)
    assert np.bincount(ds.y_train).tolist() == [4900] * 10
    assert np.bincount(ds.y_val).tolist() == [100] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    mean, _ = channel_stats(to_float(ds.x_train[::10]))  # sorted by class: stride
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=0.03)
    t0 = time.perf_counter()
    again = load_cifar10(src)
    second = time.perf_counter() - t0
    assert second < 2.0, f"cached load took {second:.2f}s (first {first:.2f}s)"
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)
