"""CIFAR-10 loaders (numpy, host side) with a decoded-array cache.

Sources understood by `load_cifar10`:
- the official python pickles (`cifar-10-batches-py/`, or the folder holding it);
- an image-folder root `<root>/{train,test}/<class>/*.jpg|*.jpeg|*.png`;
- a `.tar.gz` of that image-folder layout (e.g. `cifar10-jpeg.tar.gz`), decoded in one
  streaming pass (nothing is extracted to disk).

Decoded arrays are cached as an uncompressed `.npz` in `$JAXNET_CACHE_DIR` (default
`~/.cache/jaxnet`); writes are atomic (temporary file, then `os.replace`).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from jaxnet.data.splits import Dataset, split_indices

__all__ = ["load_cifar10_python", "load_image_folder", "load_image_tarball", "load_cifar10", "cache_dir"]

ENV_DATA = "JAXNET_CIFAR10_DIR"
ENV_CACHE = "JAXNET_CACHE_DIR"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_ROW = 3 * 32 * 32
_CACHE_VERSION = 1


# ---------------------------------------------------------------- official pickles

def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"load_cifar10_python: missing file {path}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")  # trusted files only: pickle can run code
    except Exception as e:  # truncated or corrupt: EOFError, UnpicklingError, ...
        raise ValueError(f"load_cifar10_python: cannot unpickle {path}: {type(e).__name__}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"load_cifar10_python: {path} holds a {type(d).__name__}, expected a dict")
    return d


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if b"data" not in d or b"labels" not in d:
        raise ValueError(f"load_cifar10_python: {path} lacks b'data' or b'labels' (keys {sorted(d)})")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.size % _ROW != 0 or (data.ndim == 2 and data.shape[1] != _ROW):
        raise ValueError(
            f"load_cifar10_python: {path} b'data' has shape {data.shape} dtype {data.dtype}; "
            f"expected uint8 (N, {_ROW}) rows of 3x32x32 CHW pixels"
        )
    n = data.size // _ROW
    if labels.shape != (n,):
        raise ValueError(
            f"load_cifar10_python: {path} has {n} images (b'data' {data.shape}) "
            f"but labels of shape {labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"load_cifar10_python: {path} labels span [{labels.min()}, {labels.max()}], "
            f"outside 0..{num_classes - 1}"
        )
    x = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), labels.astype(np.int32)


def _python_folder(root: Path) -> Path:
    sub = root / "cifar-10-batches-py"
    return sub if sub.is_dir() else root


def load_cifar10_python(root):
    """Read the official `cifar-10-batches-py` pickles; `root` is that folder or its parent.

    Returns (x_train uint8 (N, 32, 32, 3), y_train int32 (N,), x_test, y_test, classes tuple).
    Batch files may hold any number of rows. Pickles can run code: load trusted files only.
    """
    folder = _python_folder(Path(root))
    meta = _unpickle(folder / "batches.meta")
    if b"label_names" not in meta:
        raise ValueError(f"load_cifar10_python: {folder / 'batches.meta'} lacks b'label_names'")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"])
    train = [_read_batch(folder / f"data_batch_{i}", len(classes)) for i in range(1, 6)]
    x_test, y_test = _read_batch(folder / "test_batch", len(classes))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, classes


# ---------------------------------------------------------------- image folders

def _decode(fn: str, name: str, src) -> np.ndarray:
    """One image file (a Path, or the bytes of an archive member) -> uint8 (H, W, 3)."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # UnidentifiedImageError, truncated data, ...
        raise ValueError(f"{fn}: cannot read image {name}: {type(e).__name__}: {e}") from e


def _assemble(fn: str, where: str, groups: dict, workers: int | None):
    """groups: class name -> [(file name, Path or bytes)] -> (x, y, classes)."""
    classes = tuple(sorted(groups))
    if not classes:
        raise ValueError(f"{fn}: {where} has no class sub-folders")
    items, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(groups[name], key=lambda item: item[0])
        if not found:
            raise ValueError(f"{fn}: class folder {where}/{name} has no {'/'.join(IMAGE_SUFFIXES)} images")
        items += found
        labels += [label] * len(found)
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda item: _decode(fn, *item), items, chunksize=256))
    shape = images[0].shape
    for (name, _), im in zip(items, images):
        if im.shape != shape:
            raise ValueError(
                f"{fn}: {name} has shape {im.shape}, but {items[0][0]} has {shape}; "
                "all images must share one size"
            )
    return np.stack(images), np.asarray(labels, np.int32), classes


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def load_image_folder(root, split: str, *, workers: int | None = None):
    """Decode `<root>/<split>/<class>/*.jpg|*.jpeg|*.png` with Pillow (RGB, thread pool).

    Returns (x uint8 (N, H, W, 3), y int32 (N,), classes) with classes the sub-folder
    names sorted alphabetically and files sorted by name within a class. All images
    must share one size.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"load_image_folder: no folder {folder}")
    groups = {
        d.name: [(str(p), p) for p in d.iterdir() if p.is_file() and _is_image(p.name)]
        for d in folder.iterdir() if d.is_dir()
    }
    return _assemble("load_image_folder", str(folder), groups, workers)


def load_image_tarball(path, splits=("train", "test"), *, workers: int | None = None) -> dict:
    """Decode an image-folder archive (`[top/]<split>/<class>/<file>`, any tarfile
    compression) in one streaming pass, without extracting it.

    Returns {split: (x uint8 (N, H, W, 3), y int32 (N,), classes)} as `load_image_folder`.
    """
    fn, path = "load_image_tarball", Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fn}: missing file {path}")
    groups: dict = {s: {} for s in splits}
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                parts = PurePosixPath(m.name).parts
                if m.isdir() and len(parts) >= 2 and parts[-2] in groups:
                    groups[parts[-2]].setdefault(parts[-1], [])
                elif m.isfile() and len(parts) >= 3 and parts[-3] in groups and _is_image(parts[-1]):
                    data = tf.extractfile(m).read()
                    groups[parts[-3]].setdefault(parts[-2], []).append((f"{path}:{m.name}", data))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{fn}: cannot read archive {path}: {type(e).__name__}: {e}") from e
    return {s: _assemble(fn, f"{path}:{s}", groups[s], workers) for s in splits}


# ---------------------------------------------------------------- cache + discovery

def cache_dir() -> Path:
    """`$JAXNET_CACHE_DIR`, else `~/.cache/jaxnet` (not created here)."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "jaxnet")


def _find_source(path: Path, origin: str) -> tuple[str, Path]:
    """(kind, path) with kind in {"python", "folder", "tarball"}."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tarball", path
    if path.is_dir():
        if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir():
            return "python", _python_folder(path)
        if (path / "train").is_dir() and (path / "test").is_dir():
            return "folder", path
        if (path / "cifar10-jpeg.tar.gz").is_file():
            return "tarball", path / "cifar10-jpeg.tar.gz"
    raise FileNotFoundError(
        f"load_cifar10: {origin}={str(path)!r} is not a CIFAR-10 copy: expected a folder with "
        "cifar-10-batches-py/ (or its data_batch_* files), an image-folder root with train/ and "
        "test/, a folder holding cifar10-jpeg.tar.gz, or such a .tar.gz file"
    )


def _key(kind: str, path: Path) -> str:
    st = path.stat()
    text = f"{_CACHE_VERSION}|{kind}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _decode_source(kind: str, path: Path):
    if kind == "python":
        return load_cifar10_python(path)
    if kind == "tarball":
        got = load_image_tarball(path)
        (x_train, y_train, classes), (x_test, y_test, test_classes) = got["train"], got["test"]
    else:
        x_train, y_train, classes = load_image_folder(path, "train")
        x_test, y_test, test_classes = load_image_folder(path, "test")
    if test_classes != classes:
        raise ValueError(f"load_cifar10: {path} train classes {classes} differ from test classes {test_classes}")
    return x_train, y_train, x_test, y_test, classes


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return (z["x_train"], z["y_train"], z["x_test"], z["y_test"], tuple(str(c) for c in z["classes"]))
    except Exception:  # unreadable or stale-format cache: rebuild it
        return None


def load_cifar10(data_dir=None, *, cache: bool = True, val_size: int = 1000, seed: int = 0) -> Dataset:
    """CIFAR-10 as a `Dataset` of uint8 images (N, 32, 32, 3) and int32 labels.

    Convert with `jaxnet.data.preprocess.to_float` (-> float32 [0, 1]) or a Normalizer.
    The data come from `data_dir`, else `$JAXNET_CIFAR10_DIR` (see module docstring).
    val: `val_size` training images held out, stratified, fixed by `seed`; test: the
    official test set. With cache=True the decoded arrays are stored in `cache_dir()`
    and later loads read only that `.npz`.
    """
    origin = "data_dir"
    if data_dir is None:
        data_dir, origin = os.environ.get(ENV_DATA), ENV_DATA
    if not data_dir:
        raise FileNotFoundError(
            f"load_cifar10: no CIFAR-10 location: pass data_dir=... or set {ENV_DATA} to a folder "
            "with cifar-10-batches-py/, an image-folder root with train/ and test/, or a "
            "cifar10-jpeg.tar.gz file"
        )
    kind, path = _find_source(Path(data_dir).expanduser(), origin)
    npz = cache_dir() / f"cifar10-{kind}-{_key(kind, path)}.npz"
    arrays = _load_npz(npz) if cache and npz.is_file() else None
    if arrays is None:
        arrays = _decode_source(kind, path)
        if cache:
            x_tr, y_tr, x_te, y_te, classes = arrays
            _save_npz(npz, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, classes=np.array(classes))
    x_train, y_train, x_test, y_test, classes = arrays
    if not 0 <= val_size <= len(y_train):
        raise ValueError(f"load_cifar10: val_size={val_size} must be in [0, {len(y_train)}] (x_train {x_train.shape})")
    tr, va, _ = split_indices(y_train, val_fraction=int(val_size), test_fraction=0, seed=seed)
    return Dataset(
        x_train=x_train[tr], y_train=y_train[tr], x_val=x_train[va], y_val=y_train[va],
        x_test=x_test, y_test=y_test, classes=classes, name="cifar10",
    )
