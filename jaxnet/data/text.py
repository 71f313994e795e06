"""Character-level text data: the Python standard library's own source as a corpus.

The corpus
----------
The ``.py`` files under the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), read as UTF-8 text (undecodable bytes become U+FFFD,
which the vocabulary maps to ``<unk>``). Left out: anything under a ``site-packages`` or
``dist-packages`` folder, the test suites (any path component named ``test``, ``tests`` or
``idle_test``, which covers ``test/``, ``tests/`` and ``idlelib/idle_test/``), and files over
``max_file_bytes`` (generated tables such as ``pydoc_data/topics.py``).

The split (by file, never by line)
----------------------------------
Each file goes to one split by a stable hash of its path relative to the stdlib root, written
with ``/`` separators: ``zlib.crc32(relpath.encode()) % 100`` below 90 is train, 90..94
validation, 95..99 test (:func:`split_of`). The hash depends on nothing but the relative path,
so the split is the same on every machine and every run, a file is in exactly one split, and
adding or removing other files never moves a file between splits.

Each split's text is its files concatenated in sorted relative-path order, whole files only
(a file's text always ends with a newline before the next one starts), cut at a byte budget
(``max_train_bytes``, ``max_eval_bytes``; ``None`` = no cap): files are taken while the text
stays within the cap, the first file that would exceed it is cut at the cap and the rest are
left out. The files used are recorded per split.

Vocabulary, encoding, batching
------------------------------
:class:`CharVocab`: index 0 is ``<unk>``, then the characters of the training text that are
printable ASCII (32..126), ``\\n`` or ``\\t``, in code-point order. Every other character
(``\\r``, form feed, non-ASCII, a character absent from training) encodes to 0.
:meth:`CharVocab.decode` writes ``<unk>`` as ``unk_char`` (default U+FFFD).

:func:`batchify` lays a stream of ids out as ``N`` contiguous rows (row ``i`` continues where
row ``i`` left off in the previous chunk), the layout truncated backpropagation through time
needs; :func:`bptt_chunks` cuts it into ``(inputs, targets)`` windows of ``K`` steps, the
targets being the inputs shifted by one character.
"""
from __future__ import annotations

import dataclasses
import os
import sysconfig
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxnet.data.errors import DataError, DataNotFoundError

__all__ = [
    "UNK", "EXCLUDED_DIRS", "CharVocab", "TextCorpus", "stdlib_root", "list_source_files",
    "split_of", "load_text_corpus", "batchify", "bptt_chunks",
]

UNK = "<unk>"
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
SPLITS = ("train", "val", "test")
_ALLOWED = frozenset([chr(c) for c in range(32, 127)] + ["\n", "\t"])


def stdlib_root() -> Path:
    """The running interpreter's standard-library folder (``sysconfig``'s ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relpath: str, val_pct: int = 5, test_pct: int = 5) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a path relative to the corpus root.

    ``zlib.crc32`` of the ``/``-separated relative path (UTF-8), modulo 100: below
    ``100 - val_pct - test_pct`` is train, the next ``val_pct`` values are validation, the last
    ``test_pct`` are test.
    """
    if not (0 <= val_pct and 0 <= test_pct and val_pct + test_pct < 100):
        raise DataError(f"split_of: val_pct={val_pct} and test_pct={test_pct} must be >= 0 with a sum below 100")
    key = relpath.replace(os.sep, "/")
    bucket = zlib.crc32(key.encode("utf-8")) % 100
    if bucket < 100 - val_pct - test_pct:
        return "train"
    if bucket < 100 - test_pct:
        return "val"
    return "test"


def list_source_files(root: str | os.PathLike, *, max_file_bytes: int | None = 200_000) -> list[str]:
    """The ``.py`` files under ``root`` as sorted ``/``-separated relative paths.

    Skips folders named in :data:`EXCLUDED_DIRS` (site-packages, the test suites, caches) and
    files over ``max_file_bytes`` (``None``: no limit). Raises :class:`DataNotFoundError` when
    ``root`` is not a folder and :class:`DataError` when it holds no such file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"load_text_corpus: source folder not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            try:
                if not path.is_file() or (max_file_bytes is not None and path.stat().st_size > max_file_bytes):
                    continue
            except OSError:
                continue
            found.append(path.relative_to(root).as_posix())
    if not found:
        raise DataError(f"load_text_corpus: no .py files under {root} (after excluding tests, "
                        f"site-packages and files over {max_file_bytes} bytes)")
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class CharVocab:
    """A character vocabulary; ``chars[0]`` is :data:`UNK`.

    ``encode(text) -> int32 (len(text),)``, ``decode(ids) -> str``; ``size`` = ``len(chars)``.
    """

    chars: tuple[str, ...]

    def __post_init__(self):
        if not self.chars or self.chars[0] != UNK:
            raise DataError(f"CharVocab: chars[0] must be {UNK!r}")
        if len(set(self.chars)) != len(self.chars):
            raise DataError("CharVocab: repeated characters")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars) if i > 0})
        lut = np.zeros(128, np.int32)
        for c, i in self._index.items():
            lut[ord(c)] = i
        object.__setattr__(self, "_lut", lut)

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        """``<unk>`` plus the allowed characters (printable ASCII, ``\\n``, ``\\t``) of ``text``."""
        return cls((UNK, *sorted(set(text) & _ALLOWED)))

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def unk_id(self) -> int:
        return 0

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of shape ``(len(text),)``; characters outside the vocabulary give 0."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.zeros(codes.shape, np.int32)
        ascii_ = codes < 128
        ids[ascii_] = self._lut[codes[ascii_]]
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, unk_char: str = "\ufffd") -> str:
        """The text of ``ids`` (any int array, flattened); ``<unk>`` is written as ``unk_char``."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise DataError(f"CharVocab.decode: ids must be in [0, {self.size}), got "
                            f"[{int(ids.min())}, {int(ids.max())}]")
        table = (unk_char, *self.chars[1:])
        return "".join(table[i] for i in ids.tolist())


@dataclasses.dataclass(frozen=True)
class TextCorpus:
    """The three splits' texts, the files each was built from and the vocabulary.

    ``texts[split]`` is a ``str``; ``files[split]`` the relative paths used (in order);
    ``bytes_total[split]`` the size of all the split's files before the cap; ``root`` the
    corpus folder.
    """

    texts: dict
    files: dict
    bytes_total: dict
    vocab: CharVocab
    root: str

    def ids(self, split: str) -> np.ndarray:
        """``vocab.encode(texts[split])``: int32 ``(len,)``."""
        return self.vocab.encode(self.texts[split])

    def summary(self) -> dict:
        return {
            "root": self.root,
            "vocab_size": self.vocab.size,
            **{f"{s}_chars": len(self.texts[s]) for s in SPLITS},
            **{f"{s}_files": len(self.files[s]) for s in SPLITS},
            **{f"{s}_bytes_all_files": self.bytes_total[s] for s in SPLITS},
        }


def _read(path: Path) -> str:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return text if text.endswith("\n") or not text else text + "\n"


def load_text_corpus(
    root: str | os.PathLike | None = None,
    *,
    max_train_bytes: int | None = None,
    max_eval_bytes: int | None = None,
    max_file_bytes: int | None = 200_000,
    val_pct: int = 5,
    test_pct: int = 5,
) -> TextCorpus:
    """The corpus of the ``.py`` files under ``root`` (default :func:`stdlib_root`), split by file.

    ``max_train_bytes`` caps the training text, ``max_eval_bytes`` each of validation and test
    (characters, counted after decoding; ``None``: no cap). See the module docstring for the
    split, the exclusions and the vocabulary. Raises :class:`DataNotFoundError` /
    :class:`DataError` when the folder is missing or holds no usable file, or a split is empty.
    """
    for name, v in (("max_train_bytes", max_train_bytes), ("max_eval_bytes", max_eval_bytes),
                    ("max_file_bytes", max_file_bytes)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
            raise DataError(f"load_text_corpus: {name} must be a positive int or None, got {v!r}")
    root = Path(root) if root is not None else stdlib_root()
    files = list_source_files(root, max_file_bytes=max_file_bytes)
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for rel in files:
        by_split[split_of(rel, val_pct, test_pct)].append(rel)
    texts, used, totals = {}, {}, {}
    for split in SPLITS:
        cap = max_train_bytes if split == "train" else max_eval_bytes
        parts, n, taken = [], 0, []
        totals[split] = int(sum((root / rel).stat().st_size for rel in by_split[split]))
        for rel in by_split[split]:
            if cap is not None and n >= cap:
                break
            text = _read(root / rel)
            if cap is not None and n + len(text) > cap:
                text = text[: cap - n]
            parts.append(text)
            taken.append(rel)
            n += len(text)
        texts[split] = "".join(parts)
        used[split] = taken
        if not texts[split]:
            raise DataError(f"load_text_corpus: the {split} split of {root} is empty "
                            f"({len(files)} files in all); use a larger corpus")
    return TextCorpus(texts=texts, files=used, bytes_total=totals,
                      vocab=CharVocab.from_text(texts["train"]), root=str(root))


def batchify(ids: np.ndarray, n_rows: int) -> np.ndarray:
    """A 1-D id stream as ``(n_rows, L)`` contiguous rows, ``L = len(ids) // n_rows``.

    Row ``i`` is ``ids[i * L : (i + 1) * L]``; the last ``len(ids) % n_rows`` ids are dropped.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise DataError(f"batchify: ids must be 1-D, got shape {ids.shape}")
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows <= 0:
        raise DataError(f"batchify: n_rows must be a positive int, got {n_rows!r}")
    length = len(ids) // n_rows
    if length < 2:
        raise DataError(f"batchify: a stream of {len(ids)} ids is too short for {n_rows} rows "
                        f"(each row needs at least 2 ids)")
    return ids[: n_rows * length].reshape(n_rows, length)


def bptt_chunks(stream: np.ndarray, k: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(inputs, targets)`` windows of ``(N, K)`` over a ``(N, L)`` stream, in order.

    Chunk ``c`` has ``inputs = stream[:, c*K : (c+1)*K]`` and ``targets`` the same window
    shifted by one step; only full windows are produced (``(L - 1) // K`` of them), so the
    final state of chunk ``c`` is the right initial state of chunk ``c + 1``.
    """
    stream = np.asarray(stream)
    if stream.ndim != 2:
        raise DataError(f"bptt_chunks: stream must be (N, L), got shape {stream.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise DataError(f"bptt_chunks: k must be a positive int, got {k!r}")
    n_chunks = (stream.shape[1] - 1) // k
    if n_chunks == 0:
        raise DataError(f"bptt_chunks: a stream of length {stream.shape[1]} has no window of k={k} steps "
                        f"(needs at least k + 1)")
    for c in range(n_chunks):
        s = c * k
        yield stream[:, s: s + k], stream[:, s + 1: s + k + 1]
