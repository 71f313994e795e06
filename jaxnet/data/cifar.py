"""CIFAR-10 loaders (numpy, host side) with a decoded-array cache.

Sources understood by `load_cifar10`:
- the official python pickles (`cifar-10-batches-py/`, or the folder holding it);
- an image-folder root `<root>/{train,test}/<class>/*.jpg|*.jpeg|*.png`;
- a `.tar.gz` of that image-folder layout (e.g. `cifar10-jpeg.tar.gz`), decoded in one
  streaming pass (nothing is extracted to disk).

Names starting with a dot (`.ipynb_checkpoints/`, `.DS_Store`, `._x.jpg`) and `Thumbs.db` /
`desktop.ini` are ignored everywhere; any other non-image entry in a class folder is an
error. Images are opened with Pillow's JPEG and PNG decoders only, and their header
(size, colour mode) is checked before any pixel is decoded.

Every error is a `DataError` (a `ValueError`; `DataNotFoundError`, also a
`FileNotFoundError`, for missing paths) with a one-line message naming the file.

Decoded arrays are cached as an uncompressed `.npz` in `$JAXNET_CACHE_DIR` (default
`~/.cache/jaxnet`), keyed on every source file's (path, size, mtime); writes are atomic
(temporary file, then `os.replace`).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from jaxnet.data.errors import DataError, DataNotFoundError
from jaxnet.data.safe_pickle import load_numeric_pickle
from jaxnet.data.splits import Dataset, split_indices

__all__ = ["load_cifar10_python", "load_image_folder", "load_image_tarball", "load_cifar10", "cache_dir"]

ENV_DATA = "JAXNET_CIFAR10_DIR"
ENV_CACHE = "JAXNET_CACHE_DIR"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_FORMATS = ("JPEG", "PNG")  # the only Pillow decoders the loaders use
IMAGE_MODES = ("RGB", "L", "P")  # colour modes converted to RGB; others (RGBA, CMYK, I;16, ...) are refused
JUNK_FILES = ("thumbs.db", "desktop.ini")  # ignored, as are names starting with a dot
MAX_PIXELS = 2048 * 2048  # per image, when the loader is not told the expected size
MAX_FILE_BYTES = 32 << 20  # per image file inside an archive
CIFAR_SIZE = (32, 32)  # (H, W)
_ROW = 3 * 32 * 32
_CACHE_VERSION = 2


# ---------------------------------------------------------------- official pickles

def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    fn = "load_cifar10_python"
    d = load_numeric_pickle(path, fn)
    if b"data" not in d or b"labels" not in d:
        raise DataError(f"{fn}: {path} lacks b'data' or b'labels' (keys {sorted(map(repr, d))})")
    data, labels = d[b"data"], np.asarray(d[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise DataError(
            f"{fn}: {path} b'data' is {type(data).__name__} of shape {np.shape(data)} dtype "
            f"{getattr(data, 'dtype', None)}; expected uint8 (N, {_ROW}) rows of 3x32x32 CHW pixels"
        )
    n = len(data)
    if labels.shape != (n,):
        raise DataError(f"{fn}: {path} has {n} images (b'data' {data.shape}) but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{fn}: {path} labels have dtype {labels.dtype}; expected integers")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{fn}: {path} labels span [{labels.min()}, {labels.max()}], outside 0..{num_classes - 1}"
        )
    x = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), labels.astype(np.int32)


def _label_names(path: Path) -> tuple[str, ...]:
    fn = "load_cifar10_python"
    names = load_numeric_pickle(path, fn).get(b"label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{fn}: {path} lacks b'label_names', a non-empty list of class names")
    classes = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)
    if len(set(classes)) != len(classes):
        raise DataError(f"{fn}: {path} repeats a class name: {classes}")
    return classes


def _python_folder(root: Path) -> Path:
    sub = root / "cifar-10-batches-py"
    return sub if sub.is_dir() else root


def load_cifar10_python(root):
    """Read the official `cifar-10-batches-py` pickles; `root` is that folder or its parent.

    Returns (x_train uint8 (N, 32, 32, 3), y_train int32 (N,), x_test, y_test, classes tuple).
    Batch files may hold any number of rows. The pickles are read with a restricted
    unpickler (`jaxnet.data.safe_pickle`): a file that asks for any global beyond the
    numpy array reconstructors is refused before anything in it runs.
    """
    folder = _python_folder(Path(root))
    classes = _label_names(folder / "batches.meta")
    train = [_read_batch(folder / f"data_batch_{i}", len(classes)) for i in range(1, 6)]
    x_test, y_test = _read_batch(folder / "test_batch", len(classes))
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, classes


# ---------------------------------------------------------------- image folders

def _ignored(name: str) -> bool:
    """Hidden names (.ipynb_checkpoints, .DS_Store, ._x.jpg) and desktop junk files."""
    return name.startswith(".") or name.lower() in JUNK_FILES


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _not_image(fn: str, name: str) -> DataError:
    return DataError(
        f"{fn}: {name} is not a {'/'.join(IMAGE_SUFFIXES)} image file; class folders may hold only "
        "images (names starting with a dot are ignored)"
    )


def _open(src):
    return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src, formats=IMAGE_FORMATS)


def _check_header(fn: str, name: str, im, size, ref: str | None) -> None:
    """Refuse an image by its header (before decoding): size (H, W), pixel count, mode."""
    w, h = im.size
    if size is None and w * h > MAX_PIXELS:
        raise DataError(f"{fn}: {name} declares {w}x{h} pixels, more than the {MAX_PIXELS} allowed; not decoded")
    if size is not None and (h, w) != tuple(size):
        like = f"but {ref} has" if ref else "expected"
        raise DataError(f"{fn}: {name} has shape ({h}, {w}, 3), {like} ({size[0]}, {size[1]}, 3); not decoded")
    if im.mode not in IMAGE_MODES:
        raise DataError(f"{fn}: {name} has colour mode {im.mode!r}, expected one of {', '.join(IMAGE_MODES)}")


def _decode(fn: str, name: str, src, size, ref: str | None = None, *, header_only: bool = False):
    """One image file (a Path, or the bytes of an archive member) -> uint8 (H, W, 3).

    size: the expected (H, W), or None for any size up to MAX_PIXELS; it is checked on
    the header before any pixel is decoded. header_only: return (H, W) without decoding.
    """
    try:
        with _open(src) as im:
            _check_header(fn, name, im, size, ref)
            return (im.size[1], im.size[0]) if header_only else np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as e:  # UnidentifiedImageError, truncated data, ...
        raise DataError(f"{fn}: cannot read image {name}: {type(e).__name__}: {e}") from e


def _assemble(fn: str, where: str, groups: dict, workers: int | None, size):
    """groups: class name -> [(file name, Path or bytes)] -> (x, y, classes).

    size: the expected (H, W) of every image, or None for the size of the first one.
    """
    classes = tuple(sorted(groups))
    if not classes:
        raise DataError(f"{fn}: {where} has no class sub-folders")
    items, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(groups[name], key=lambda item: item[0])
        if not found:
            raise DataError(f"{fn}: class folder {where}/{name} has no {'/'.join(IMAGE_SUFFIXES)} images")
        items += found
        labels += [label] * len(found)
    ref = None
    if size is None:
        ref, size = items[0][0], _decode(fn, *items[0], None, header_only=True)
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda item: _decode(fn, *item, size, ref), items, chunksize=256))
    return np.stack(images), np.asarray(labels, np.int32), classes


def _class_files(fn: str, folder: Path) -> list:
    """[(file name, Path)] of the images in one class folder; any other visible entry is refused."""
    found = []
    for p in folder.iterdir():
        if _ignored(p.name):
            continue
        if not (p.is_file() and _is_image(p.name)):
            raise _not_image(fn, str(p))
        found.append((str(p), p))
    return found


def load_image_folder(root, split: str, *, workers: int | None = None, image_size=None):
    """Decode `<root>/<split>/<class>/*.jpg|*.jpeg|*.png` with Pillow (RGB, thread pool).

    Returns (x uint8 (N, H, W, 3), y int32 (N,), classes) with classes the sub-folder
    names sorted alphabetically and files sorted by name within a class. image_size:
    the (H, W) every image must have, or None for the size of the first image (at most
    MAX_PIXELS); a wrong size is refused from the file header, before decoding.
    Hidden names are ignored; any other non-image entry in a class folder is a DataError.
    """
    fn, folder = "load_image_folder", Path(root) / split
    if not folder.is_dir():
        raise DataNotFoundError(f"{fn}: no folder {folder}")
    groups = {d.name: _class_files(fn, d) for d in folder.iterdir() if d.is_dir() and not _ignored(d.name)}
    return _assemble(fn, str(folder), groups, workers, image_size)


def load_image_tarball(path, splits=("train", "test"), *, workers: int | None = None, image_size=None) -> dict:
    """Decode an image-folder archive (`[top/]<split>/<class>/<file>`, any tarfile
    compression) in one streaming pass, without extracting it.

    Returns {split: (x uint8 (N, H, W, 3), y int32 (N,), classes)} as `load_image_folder`
    (same rules for image_size, hidden names and non-image entries); image files above
    MAX_FILE_BYTES are refused unread.
    """
    fn, path = "load_image_tarball", Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{fn}: missing file {path}")
    groups: dict = {s: {} for s in splits}
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                parts = PurePosixPath(m.name).parts
                if any(_ignored(part) for part in parts):
                    continue
                if m.isdir() and len(parts) >= 2 and parts[-2] in groups:
                    groups[parts[-2]].setdefault(parts[-1], [])
                elif len(parts) >= 3 and parts[-3] in groups:  # an entry of a class folder
                    name = f"{path}:{m.name}"
                    if not (m.isfile() and _is_image(parts[-1])):
                        raise _not_image(fn, name)
                    if m.size > MAX_FILE_BYTES:
                        raise DataError(f"{fn}: {name} is {m.size} bytes, more than the {MAX_FILE_BYTES} allowed")
                    groups[parts[-3]].setdefault(parts[-2], []).append((name, tf.extractfile(m).read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{fn}: cannot read archive {path}: {type(e).__name__}: {e}") from e
    return {s: _assemble(fn, f"{path}:{s}", groups[s], workers, image_size) for s in splits}


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
    raise DataNotFoundError(
        f"load_cifar10: {origin}={str(path)!r} is not a CIFAR-10 copy: expected a folder with "
        "cifar-10-batches-py/ (or its data_batch_* files), an image-folder root with train/ and "
        "test/, a folder holding cifar10-jpeg.tar.gz, or such a .tar.gz file"
    )


def _stats(base: Path, folder: Path, depth: int):
    """'relative path|size|mtime_ns' of every visible file under folder, `depth` levels down."""
    for p in sorted(folder.iterdir()):
        if _ignored(p.name):
            continue
        if p.is_dir() and depth > 0:
            yield from _stats(base, p, depth - 1)
        elif p.is_file():
            st = p.stat()
            yield f"{p.relative_to(base)}|{st.st_size}|{st.st_mtime_ns}"


def _key(kind: str, path: Path) -> str:
    """A hash of the source: a tarball's own (size, mtime); for folders every file's
    (relative path, size, mtime), so a file rewritten, added or deleted is noticed."""
    h = hashlib.sha1(f"{_CACHE_VERSION}|{kind}|{path.resolve()}".encode())
    if kind == "tarball":
        st = path.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        roots = [path] if kind == "python" else [path / "train", path / "test"]
        for root in roots:
            for line in _stats(path, root, 0 if kind == "python" else 1):
                h.update(line.encode() + b"\n")
    return h.hexdigest()[:16]


def _decode_source(kind: str, path: Path):
    if kind == "python":
        return load_cifar10_python(path)
    if kind == "tarball":
        got = load_image_tarball(path, image_size=CIFAR_SIZE)
        (x_train, y_train, classes), (x_test, y_test, test_classes) = got["train"], got["test"]
    else:
        x_train, y_train, classes = load_image_folder(path, "train", image_size=CIFAR_SIZE)
        x_test, y_test, test_classes = load_image_folder(path, "test", image_size=CIFAR_SIZE)
    if test_classes != classes:
        raise DataError(f"load_cifar10: {path} train classes {classes} differ from test classes {test_classes}")
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
    and later loads read only that `.npz` (rebuilt when any source file changes).
    Every image must be 32x32. Bad input raises `DataError` naming the file.
    """
    origin = "data_dir"
    if data_dir is None:
        data_dir, origin = os.environ.get(ENV_DATA), ENV_DATA
    if not data_dir:
        raise DataNotFoundError(
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
        raise DataError(
            f"load_cifar10: {path} has {len(y_train)} training images, too few to hold out val_size={val_size}"
        )
    tr, va, _ = split_indices(y_train, val_fraction=int(val_size), test_fraction=0, seed=seed)
    return Dataset(
        x_train=x_train[tr], y_train=y_train[tr], x_val=x_train[va], y_val=y_train[va],
        x_test=x_test, y_test=y_test, classes=classes, name="cifar10",
    )
