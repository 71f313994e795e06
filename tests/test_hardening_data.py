"""Hostile and bad input for the data loaders and the Dataset container: every fault is a
DataError with a one-line message naming the file (or split), and nothing in a file runs."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxnet.data import DataError, DataNotFoundError, Dataset, load_cifar10, load_cifar10_python, \
    load_image_folder, load_image_tarball

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def _hermetic_env(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXNET_CIFAR10_DIR", raising=False)


# ---------------------------------------------------------------- builders

def _pickle(path: Path, obj, protocol=2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _batch(n, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).tolist() if labels is None else labels
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels, b"batch_label": b"b"}


def _official(root: Path, n=2, protocol=2) -> Path:
    """A tiny cifar-10-batches-py under root; returns that folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, protocol)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        _pickle(folder / name, _batch(n, seed=i), protocol)
    return folder


def _png(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def _tree(root: Path, classes=("apple", "mango", "zebra"), n=2, size=32, seed=0) -> Path:
    """root/{train,test}/<class>/NNN.png with random size x size RGB images."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            for i in range(n):
                _png(root / split / c / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return root


def _tar(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(src / split, arcname=split)
    return dest


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height RGB pixels (a decompression bomb's
    header; the pixel data are a stub, so nothing big is ever written here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _one_line(err: BaseException, *names: str) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    for name in names:
        assert name in msg, f"{name!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- hostile pickles

class _Payload:
    """Unpickling this calls `call(*args)`: what a hostile batch file would do."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _payloads(marker: Path):
    return {
        "os.system": _Payload(os.system, (f"touch {marker}",)),
        "builtins.exec": _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.call": _Payload(subprocess.call, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.call"])
@pytest.mark.parametrize("victim", ["batches.meta", "data_batch_1", "test_batch"])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, victim, payload):
    folder = _official(tmp_path / "src")
    marker = tmp_path / "pwned"
    evil = _payloads(marker)[payload]
    obj = {b"label_names": [evil]} if victim == "batches.meta" else {b"data": evil, b"labels": [0]}
    _pickle(folder / victim, obj)
    for load in (lambda: load_cifar10_python(folder), lambda: load_cifar10(tmp_path / "src", cache=False)):
        with pytest.raises(DataError, match=r"refused to load .* asks for the global '[\w.]+'") as info:
            load()
        msg = _one_line(info.value, victim, "load_cifar10_python: refused to load")
        assert "which a CIFAR-10 batch file never contains" in msg
        assert not marker.exists(), "the pickle ran code"


def test_object_array_in_a_batch_is_refused(tmp_path):
    folder = _official(tmp_path)
    _pickle(folder / "data_batch_3", {b"data": np.array([1, "x", None], dtype=object), b"labels": [0]})
    with pytest.raises(DataError, match=r"data_batch_3.*dtype object, not numeric") as info:
        load_cifar10_python(folder)
    _one_line(info.value, "data_batch_3")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_of_the_official_structure_still_load(tmp_path, protocol):
    folder = _official(tmp_path, protocol=protocol)
    _pickle(folder / "data_batch_2", {**_batch(2, seed=9), b"labels": np.array([3, 4], np.int64)}, protocol)
    x_tr, y_tr, x_te, y_te, classes = load_cifar10_python(folder)
    assert classes == CLASSES and x_tr.shape == (10, 32, 32, 3) and y_tr.dtype == np.int32
    assert y_tr[2:4].tolist() == [3, 4]


def test_python2_style_pickles_load(tmp_path):
    """The official files are Python 2 pickles: numpy 1's module name and str for bytes."""
    folder = _official(tmp_path)
    blob = pickle.dumps(_batch(3, seed=5), protocol=2)
    (folder / "data_batch_5").write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    names = "".join(f"S'{c}'\np{i + 2}\na" for i, c in enumerate(CLASSES))
    (folder / "batches.meta").write_bytes(f"(dp0\nS'label_names'\np1\n(l{names}s.".encode())
    x_tr, _, _, _, classes = load_cifar10_python(folder)
    assert classes == CLASSES
    raw = _batch(3, seed=5)[b"data"]
    np.testing.assert_array_equal(x_tr[-3:], raw.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- image headers

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns on open, at 89M pixels
def test_huge_image_refused_from_its_header(tmp_path):
    _png_header_only(tmp_path / "train" / "cat" / "bomb.png", 12000, 12000)
    with pytest.raises(DataError, match=r"bomb.png declares 12000x12000 pixels.*not decoded") as info:
        load_image_folder(tmp_path, "train")
    _one_line(info.value, "bomb.png")
    _tree(tmp_path / "c", classes=("cat",), n=1)
    _png_header_only(tmp_path / "c" / "train" / "cat" / "bomb.png", 12000, 12000)
    with pytest.raises(DataError, match=r"bomb.png has shape \(12000, 12000, 3\), expected \(32, 32, 3\)"):
        load_cifar10(tmp_path / "c")


def test_loader_size_is_enforced(tmp_path):
    _tree(tmp_path, size=8)
    assert load_image_folder(tmp_path, "train")[0].shape == (6, 8, 8, 3)  # any one size when not told
    with pytest.raises(DataError, match=r"000.png has shape \(8, 8, 3\), expected \(32, 32, 3\)"):
        load_image_folder(tmp_path, "train", image_size=(32, 32))
    with pytest.raises(DataError, match=r"load_cifar10|load_image_folder"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------- one exception type

def _jpeg_bytes(seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _case_fake_tarball(t):
    (t / "fake.tar.gz").write_bytes(b"this is not an archive" * 10)
    return lambda: load_cifar10(t / "fake.tar.gz"), "fake.tar.gz"


def _case_truncated_tarball(t):
    blob = _tar(_tree(t / "tree"), t / "whole.tar.gz").read_bytes()
    (t / "cut.tar.gz").write_bytes(blob[: len(blob) // 2])
    return lambda: load_image_tarball(t / "cut.tar.gz"), "cut.tar.gz"


def _case_tarball_non_image(t):
    _tree(t / "tree")
    (t / "tree" / "train" / "apple" / "readme.txt").write_text("hello")
    _tar(t / "tree", t / "c.tar.gz")
    return lambda: load_cifar10(t / "c.tar.gz"), "readme.txt"


def _case_tarball_wrong_size(t):
    _tree(t / "tree")
    _png(t / "tree" / "test" / "mango" / "tiny.png", np.zeros((4, 4, 3), np.uint8))
    _tar(t / "tree", t / "c.tar.gz")
    return lambda: load_cifar10(t / "c.tar.gz"), "tiny.png"


def _case_corrupt_jpeg(t):
    _tree(t)
    (t / "train" / "apple" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage, not a JPEG")
    return lambda: load_cifar10(t), "bad.jpg"


def _case_truncated_jpeg(t):
    _tree(t)
    blob = _jpeg_bytes()
    (t / "test" / "zebra" / "cut.jpg").write_bytes(blob[: len(blob) // 2])
    return lambda: load_cifar10(t), "cut.jpg"


def _case_disguised_format(t):
    _tree(t)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(t / "train" / "apple" / "anim.png", format="GIF")
    return lambda: load_cifar10(t), "anim.png"


def _case_wrong_size(t):
    _tree(t)
    _png(t / "train" / "mango" / "small.png", np.zeros((8, 8, 3), np.uint8))
    return lambda: load_cifar10(t), "small.png"


def _case_wrong_mode(t):
    _tree(t)
    _png(t / "train" / "mango" / "alpha.png", np.zeros((32, 32, 4), np.uint8))
    return lambda: load_cifar10(t), "alpha.png"


def _case_sixteen_bit(t):
    _tree(t)
    _png(t / "test" / "apple" / "deep.png", np.zeros((32, 32), np.uint16))
    return lambda: load_cifar10(t), "deep.png"


def _case_empty_class(t):
    _tree(t)
    (t / "train" / "empty_class").mkdir()
    (t / "train" / "empty_class" / ".DS_Store").write_bytes(b"junk")
    return lambda: load_cifar10(t), "empty_class"


def _case_non_image_file(t):
    _tree(t)
    (t / "train" / "apple" / "notes.txt").write_text("not an image")
    return lambda: load_image_folder(t, "train"), "notes.txt"


def _case_class_mismatch(t):
    _tree(t)
    (t / "test" / "zebra").rename(t / "test" / "zebras")
    return lambda: load_cifar10(t), str(t)


def _case_count_mismatch(t):
    folder = _official(t)
    _pickle(folder / "test_batch", {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]})
    return lambda: load_cifar10(t), "test_batch"


def _case_label_out_of_range(t):
    folder = _official(t)
    _pickle(folder / "data_batch_2", _batch(2, labels=[0, 10]))
    return lambda: load_cifar10(t), "data_batch_2"


def _case_float_labels(t):
    folder = _official(t)
    _pickle(folder / "data_batch_1", _batch(2, labels=[0.0, 1.5]))
    return lambda: load_cifar10_python(t), "data_batch_1"


def _case_truncated_pickle(t):
    folder = _official(t)
    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[: len(blob) // 2])
    return lambda: load_cifar10(t), "data_batch_2"


def _case_float_data(t):
    folder = _official(t)
    _pickle(folder / "data_batch_4", {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]})
    return lambda: load_cifar10(t), "data_batch_4"


def _case_meta_without_names(t):
    folder = _official(t)
    _pickle(folder / "batches.meta", {b"num_vis": 3072})
    return lambda: load_cifar10(t), "batches.meta"


def _case_not_a_dict(t):
    folder = _official(t)
    _pickle(folder / "data_batch_3", [1, 2, 3])
    return lambda: load_cifar10(t), "data_batch_3"


def _case_hostile_pickle(t):
    folder = _official(t)
    _pickle(folder / "batches.meta", _Payload(os.system, (f"touch {t / 'pwned'}",)))
    return lambda: load_cifar10(t), "batches.meta"


def _case_too_few_images(t):
    _official(t, n=1)
    return lambda: load_cifar10(t, val_size=100), "cifar-10-batches-py"


def _case_missing_file(t):
    folder = _official(t)
    (folder / "data_batch_3").unlink()
    return lambda: load_cifar10(t), "data_batch_3"


def _case_missing_folder(t):
    return lambda: load_cifar10(t / "nowhere"), "nowhere"


def _case_missing_split(t):
    _tree(t)
    return lambda: load_image_folder(t, "valid"), "valid"


CASES = {f.__name__[len("_case_"):]: f for f in [
    _case_fake_tarball, _case_truncated_tarball, _case_tarball_non_image, _case_tarball_wrong_size,
    _case_corrupt_jpeg, _case_truncated_jpeg, _case_disguised_format, _case_wrong_size, _case_wrong_mode,
    _case_sixteen_bit, _case_empty_class, _case_non_image_file, _case_class_mismatch, _case_count_mismatch,
    _case_label_out_of_range, _case_float_labels, _case_truncated_pickle, _case_float_data,
    _case_meta_without_names, _case_not_a_dict, _case_hostile_pickle, _case_too_few_images,
    _case_missing_file, _case_missing_folder, _case_missing_split,
]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_bad_input_is_one_data_error(tmp_path, case):
    load, name = CASES[case](tmp_path)
    with pytest.raises(DataError) as info:
        load()
    msg = _one_line(info.value, name)
    assert msg.startswith(("load_cifar10", "load_image_folder", "load_image_tarball")), msg
    assert isinstance(info.value, ValueError)
    if case.startswith("missing"):  # still a FileNotFoundError for callers that catch that
        assert isinstance(info.value, (DataNotFoundError, FileNotFoundError))
    assert not (tmp_path / "pwned").exists()


def test_data_error_folds_newlines():
    assert str(DataError("load_x: a\nb\n  c")) == "load_x: a b c"
    err = DataNotFoundError("load_x: missing\nfile")
    assert isinstance(err, FileNotFoundError) and isinstance(err, ValueError) and str(err) == "load_x: missing file"


# ---------------------------------------------------------------- labels and pixels entering a Dataset

def _ds(**changes):
    x, y = np.zeros((4, 2, 2, 3), np.float32), np.array([0, 1, 2, 1], np.int32)
    fields = dict(x_train=x, y_train=y, x_val=x[:2], y_val=y[:2], x_test=x[:1], y_test=y[:1],
                  classes=("a", "b", "c"), name="toy")
    return Dataset(**{**fields, **changes})


def _nan_at(index, value=np.nan):
    x = np.zeros((2, 2, 2, 3), np.float32)
    x[index] = value
    return x


@pytest.mark.parametrize("changes, pattern", [
    (dict(y_train=np.array([0, 1, 3, 1], np.int32)), r"y_train holds label 3, but num_classes is 3"),
    (dict(y_val=np.array([-1, 0], np.int64)), r"y_val holds label -1, but num_classes is 3"),
    (dict(y_test=np.array([1.0], np.float32)), r"y_test has dtype float32; labels must be integers"),
    (dict(y_test=np.array([True])), r"y_test has dtype bool; labels must be integers"),
    (dict(y_train=np.array([0, 1, 2], np.int32)), r"x_train .* y_train \(3,\)"),
    (dict(x_val=_nan_at((1, 0, 1, 2))), r"x_val holds 1 non-finite value\(s\) .* at index \(1, 0, 1, 2\)"),
    (dict(x_test=_nan_at((0, 1, 1, 0), np.inf)[:1]), r"x_test holds 1 non-finite value\(s\) .* index \(0, 1, 1, 0\)"),
    (dict(classes=("a", "b")), r"y_train holds label 2, but num_classes is 2"),
])
def test_dataset_refuses_bad_labels_and_pixels(changes, pattern):
    with pytest.raises(DataError, match=r"Dataset\('toy'\): " + pattern) as info:
        _ds(**changes)
    _one_line(info.value)
    with pytest.raises(DataError, match=pattern):  # replace() checks again
        _ds().replace(**changes)


def test_dataset_accepts_good_data():
    ds = _ds(y_train=np.array([0, 1, 2, 2], np.int64), x_test=np.full((1, 2, 2, 3), 255, np.uint8)[:0],
             y_test=np.zeros(0, np.int32))
    assert ds.num_classes == 3 and len(ds.x_test) == 0
    assert _ds(x_train=np.full((4, 2, 2, 3), 7, np.uint8), x_val=np.zeros((2, 2, 2, 3), np.uint8),
               x_test=np.zeros((1, 2, 2, 3), np.uint8)).x_train.dtype == np.uint8


# ---------------------------------------------------------------- the cache notices every file

def _touch_later(path: Path, before_ns: int) -> None:
    """Make sure a rewrite shows in mtime even on a file system with a coarse clock."""
    st = path.stat()
    if st.st_mtime_ns == before_ns:
        os.utime(path, ns=(st.st_atime_ns, before_ns + 1_000_000))


def test_cache_notices_an_image_rewritten_in_place_or_deleted(tmp_path):
    root = _tree(tmp_path / "src", n=3)
    first = load_cifar10(root, val_size=0)
    target = root / "train" / "mango" / "001.png"
    before = target.stat().st_mtime_ns
    new_pixels = np.full((32, 32, 3), 17, np.uint8)
    _png(target, new_pixels)  # same name, different pixels
    _touch_later(target, before)
    again = load_cifar10(root, val_size=0)
    assert not np.array_equal(again.x_train, first.x_train)
    assert any(np.array_equal(im, new_pixels) for im in again.x_train)
    (root / "test" / "apple" / "002.png").unlink()
    fewer = load_cifar10(root, val_size=0)
    assert len(fewer.x_test) == len(first.x_test) - 1


def test_cache_notices_a_batch_rewritten_in_place(tmp_path):
    folder = _official(tmp_path / "src")
    first = load_cifar10(tmp_path / "src", val_size=0)
    before = (folder / "test_batch").stat().st_mtime_ns
    _pickle(folder / "test_batch", _batch(2, seed=99))  # same size, different pixels
    _touch_later(folder / "test_batch", before)
    again = load_cifar10(tmp_path / "src", val_size=0)
    assert not np.array_equal(again.x_test, first.x_test)


def test_cache_still_used_when_nothing_changed(tmp_path, monkeypatch):
    from jaxnet.data import cifar
    root = _tree(tmp_path / "src")
    first = load_cifar10(root, val_size=0)
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not part of the data, nor of the key
    monkeypatch.setattr(cifar, "load_image_folder", lambda *a, **k: pytest.fail("decoded again"))
    np.testing.assert_array_equal(load_cifar10(root, val_size=0).x_train, first.x_train)


# ---------------------------------------------------------------- hidden folders and junk files

def _add_hidden(root: Path) -> None:
    _png(root / "train" / ".ipynb_checkpoints" / "000-checkpoint.png", np.zeros((32, 32, 3), np.uint8))
    _png(root / "train" / "apple" / ".hidden.png", np.zeros((32, 32, 3), np.uint8))
    (root / "train" / "apple" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "train" / "mango" / ".DS_Store").write_bytes(b"junk")
    (root / "test" / "zebra" / "Thumbs.db").write_bytes(b"junk")
    (root / "test" / ".DS_Store").write_bytes(b"junk")


def test_hidden_folders_and_files_are_ignored(tmp_path):
    clean = load_image_folder(_tree(tmp_path / "clean"), "train")
    root = _tree(tmp_path / "dirty")
    _add_hidden(root)
    x, y, classes = load_image_folder(root, "train")
    assert classes == ("apple", "mango", "zebra") and y.tolist() == clean[1].tolist()
    np.testing.assert_array_equal(x, clean[0])
    ds = load_cifar10(root, val_size=0)
    assert ds.classes == ("apple", "mango", "zebra") and len(ds.x_train) == 6


def test_hidden_members_of_a_tarball_are_ignored(tmp_path):
    root = _tree(tmp_path / "tree")
    _add_hidden(root)
    got = load_image_tarball(_tar(root, tmp_path / "c.tar.gz"))
    assert got["train"][2] == ("apple", "mango", "zebra") and got["train"][1].tolist() == [0, 0, 1, 1, 2, 2]
    assert load_cifar10(tmp_path / "c.tar.gz", val_size=0).classes == ("apple", "mango", "zebra")
