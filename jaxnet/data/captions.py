"""Captioning data sets built from real images, no COCO: digit strings and CIFAR-10 mosaics.

Vocabulary
    :class:`CaptionVocab`: ``<NULL>`` = 0, ``<START>`` = 1, ``<END>`` = 2, ``<UNK>`` = 3, then
    the words (sorted). ``encode`` turns word strings into int32 arrays (N, L):
    ``<START> w1 ... wk <END>`` padded with ``<NULL>``; ``decode`` turns index rows back
    into word strings (``<START>``/``<NULL>`` dropped, stopping at the first ``<END>``).

Digit strings (:func:`digit_strings`, runs everywhere)
    scikit-learn's 1,797 handwritten 8x8 digits, 2-5 of them side by side on a blank canvas
    (8, 8 * max_digits), left-aligned, pixels float32 in [0, 1]; caption: the digits'
    names, e.g. "three one four". The *digit images* are split first (stratified), so the
    held-out strings are drawn only from held-out handwriting; then ``n_train`` and
    ``n_test`` strings are drawn with a seeded generator.

CIFAR-10 mosaics (:func:`cifar_mosaics`, when a CIFAR-10 copy is given)
    A 2x2 grid (64, 64, 3) uint8 with 1-4 CIFAR-10 images in distinct cells, the other
    cells black (0). Cells are numbered in reading order: 0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right. Grammar (:func:`mosaic_caption`): the occupied cells
    in reading order, each named "a <class>", consecutive ones joined by the place of the
    earlier relative to the later::

        caption  := object (relation object)*
        object   := "a" CLASS
        relation := "left of"        (same row)
                  | "above"          (same column)
                  | "above left of"  (top-left before bottom-right)
                  | "above right of" (top-right before bottom-left)

    e.g. one image "a cat", "a cat left of a ship", "a dog above a truck",
    "a frog left of a ship above right of a horse". Training mosaics use only CIFAR-10
    training images, held-out mosaics only test images.

Each generator returns a :class:`CaptionData`: two :class:`CaptionSplit` (images,
captions, per-slot labels and source indices), the vocabulary, the single-image pools
the captions were drawn from (for training a per-image classifier on the training pool
only) and the class names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxnet.data.errors import DataError

__all__ = [
    "NULL", "START", "END", "UNK", "SPECIAL_TOKENS", "DIGIT_WORDS", "RELATIONS",
    "CaptionVocab", "CaptionSplit", "CaptionData",
    "digit_caption", "digit_strings", "mosaic_caption", "cifar_mosaics",
]

NULL, START, END, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: relation of cell a to a later cell b (both in 0..3, reading order) -> words
RELATIONS = {(0, 1): "left of", (2, 3): "left of", (0, 2): "above", (1, 3): "above",
             (0, 3): "above left of", (1, 2): "above right of"}


class CaptionVocab:
    """Word <-> index map with the four special tokens first (``<NULL>`` = 0).

    ``words``: the ordinary words (special tokens among them are ignored; duplicates
    kept once, order kept). ``idx_to_word``: tuple of all tokens; ``word_to_idx``: dict.
    """

    def __init__(self, words: Sequence[str]):
        seen = dict.fromkeys(w for w in words if w not in SPECIAL_TOKENS)
        for w in seen:
            if not isinstance(w, str) or not w or w.split() != [w]:
                raise DataError(f"CaptionVocab: words must be non-empty strings without spaces, got {w!r}")
        self.idx_to_word = SPECIAL_TOKENS + tuple(seen)
        self.word_to_idx = {w: i for i, w in enumerate(self.idx_to_word)}

    @classmethod
    def from_captions(cls, captions: Sequence[str]) -> "CaptionVocab":
        """The vocabulary of every word in ``captions`` (sorted)."""
        return cls(sorted({w for c in captions for w in c.split()}))

    def __len__(self) -> int:
        return len(self.idx_to_word)

    def __repr__(self) -> str:
        return f"CaptionVocab({len(self)} tokens)"

    def max_tokens(self, captions: Sequence[str]) -> int:
        """The encoded length that holds every caption: most words + 2 (``<START>``, ``<END>``)."""
        return max((len(c.split()) for c in captions), default=0) + 2

    def encode(self, captions: Sequence[str], length: int | None = None) -> np.ndarray:
        """int32 (N, length): ``<START> w1 .. wk <END>`` then ``<NULL>``; unknown words -> ``<UNK>``.

        ``length`` defaults to :meth:`max_tokens`; a caption that does not fit is a DataError.
        """
        captions = list(captions)
        need = self.max_tokens(captions)
        length = need if length is None else int(length)
        if length < need:
            raise DataError(f"CaptionVocab.encode: a caption needs {need} tokens with <START> and <END>, "
                            f"length is {length}")
        out = np.full((len(captions), length), NULL, np.int32)
        for i, c in enumerate(captions):
            ids = [START] + [self.word_to_idx.get(w, UNK) for w in c.split()] + [END]
            out[i, :len(ids)] = ids
        return out

    def decode(self, idx) -> list[str]:
        """Word strings of index rows (N, L) (or one row (L,)): ``<START>`` and ``<NULL>``
        dropped, each row ending at its first ``<END>``; out-of-range indices -> ``<UNK>``."""
        idx = np.asarray(idx)
        if idx.ndim == 1:
            return self.decode(idx[None])[:1]
        if idx.ndim != 2:
            raise DataError(f"CaptionVocab.decode: indices must be (N, L) or (L,), got {idx.shape}")
        out = []
        for row in idx.tolist():
            words = []
            for t in row:
                if t == END:
                    break
                if t in (NULL, START):
                    continue
                words.append(self.idx_to_word[t] if 0 <= t < len(self) else "<UNK>")
            out.append(" ".join(words))
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionSplit:
    """One split of a captioning set.

    images: (N, H, W, C) (float32 digits in [0, 1], uint8 mosaics);
    captions: N word strings; labels: int32 (N, S), the class in each slot (digit position
    or grid cell), -1 where empty; sources: int64 (N, S), the index of the placed image
    in the split's pool (``CaptionData.pool_x_<split>``), -1 where empty.
    """

    images: np.ndarray
    captions: tuple
    labels: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.captions)


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionData:
    """A captioning set: ``train`` and ``test`` splits, the ``vocab`` of every caption, the
    single-image pools (``pool_x_train``/``pool_y_train`` feed the training strings or
    mosaics only, ``pool_x_test``/``pool_y_test`` the held-out ones), the pools' global
    indices in the source data (``pool_ids_*``, disjoint), class names, slot shape
    ``slot_hw`` (H, W of one cell) and ``name``."""

    train: CaptionSplit
    test: CaptionSplit
    vocab: CaptionVocab
    pool_x_train: np.ndarray
    pool_y_train: np.ndarray
    pool_x_test: np.ndarray
    pool_y_test: np.ndarray
    pool_ids_train: np.ndarray
    pool_ids_test: np.ndarray
    classes: tuple
    slot_hw: tuple
    name: str


def _check_count(fn, name, v, lo=0):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
        raise DataError(f"{fn}: {name} must be an int >= {lo}, got {v!r}")


# ---------------------------------------------------------------------------------- digit strings

def digit_caption(labels) -> str:
    """The caption of the digits in ``labels`` (slots, -1 = empty, ignored): "three one four"."""
    return " ".join(DIGIT_WORDS[int(d)] for d in labels if d >= 0)


def _digit_split(rng, x, y, n, min_digits, max_digits):
    h, w = x.shape[1:3]
    images = np.zeros((n, h, w * max_digits, 1), np.float32)
    labels = np.full((n, max_digits), -1, np.int32)
    sources = np.full((n, max_digits), -1, np.int64)
    for i in range(n):
        k = int(rng.integers(min_digits, max_digits + 1))
        pick = rng.integers(0, len(y), size=k)
        for j, s in enumerate(pick):
            images[i, :, j * w:(j + 1) * w] = x[s]
            labels[i, j], sources[i, j] = y[s], s
    captions = tuple(digit_caption(row) for row in labels)
    return CaptionSplit(images, captions, labels, sources)


def digit_strings(n_train: int = 2000, n_test: int = 500, *, min_digits: int = 2, max_digits: int = 5,
                  test_fraction: float = 0.3, seed: int = 0) -> CaptionData:
    """Strings of ``min_digits``..``max_digits`` handwritten digits with their captions.

    images: float32 (N, 8, 8 * max_digits, 1) in [0, 1], digits left-aligned, empty slots 0.
    The 1,797 digit images are split first (``test_fraction`` held out, stratified by
    class, fixed by ``seed``); training strings use only training digits, test strings
    only held-out ones. ``labels``/``sources``: (N, max_digits), -1 past the string's end.
    The vocabulary holds the ten digit words (all of them, whatever was drawn).
    """
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    fn = "digit_strings"
    _check_count(fn, "n_train", n_train)
    _check_count(fn, "n_test", n_test)
    _check_count(fn, "min_digits", min_digits, 1)
    _check_count(fn, "max_digits", max_digits, 1)
    if min_digits > max_digits:
        raise DataError(f"{fn}: min_digits ({min_digits}) exceeds max_digits ({max_digits})")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"{fn}: test_fraction must be in (0, 1), got {test_fraction!r}")
    raw = datasets.load_digits()
    x = (raw.images / 16.0).astype(np.float32)[..., None]
    y = raw.target.astype(np.int32)
    ids_tr, ids_te = train_test_split(np.arange(len(y)), test_size=float(test_fraction), stratify=y,
                                      random_state=seed)
    ids_tr, ids_te = np.sort(ids_tr), np.sort(ids_te)
    rng = np.random.default_rng(seed)
    train = _digit_split(rng, x[ids_tr], y[ids_tr], n_train, min_digits, max_digits)
    test = _digit_split(rng, x[ids_te], y[ids_te], n_test, min_digits, max_digits)
    return CaptionData(train=train, test=test, vocab=CaptionVocab(DIGIT_WORDS),
                       pool_x_train=x[ids_tr], pool_y_train=y[ids_tr], pool_x_test=x[ids_te],
                       pool_y_test=y[ids_te], pool_ids_train=ids_tr, pool_ids_test=ids_te,
                       classes=DIGIT_WORDS, slot_hw=(8, 8), name="digit_strings")


# ---------------------------------------------------------------------------------- CIFAR mosaics

def mosaic_caption(labels, classes: Sequence[str]) -> str:
    """The caption of a 2x2 mosaic whose cells (reading order) hold ``labels`` (-1 = empty).

    See the module docstring for the grammar; e.g. labels (3, -1, -1, 8) with CIFAR-10's
    classes -> "a cat above left of a ship". An empty mosaic is a DataError.
    """
    cells = [c for c in range(4) if labels[c] >= 0]
    if not cells:
        raise DataError("mosaic_caption: the mosaic has no image")
    words = ["a", classes[int(labels[cells[0]])]]
    for a, b in zip(cells, cells[1:]):
        words += [RELATIONS[(a, b)], "a", classes[int(labels[b])]]
    return " ".join(words)


def _mosaic_split(rng, x, y, n, min_objects, max_objects, classes):
    h, w, c = x.shape[1:]
    images = np.zeros((n, 2 * h, 2 * w, c), x.dtype)
    labels = np.full((n, 4), -1, np.int32)
    sources = np.full((n, 4), -1, np.int64)
    for i in range(n):
        k = int(rng.integers(min_objects, max_objects + 1))
        cells = np.sort(rng.choice(4, size=k, replace=False))
        pick = rng.integers(0, len(y), size=k)
        for cell, s in zip(cells, pick):
            r, col = divmod(int(cell), 2)
            images[i, r * h:(r + 1) * h, col * w:(col + 1) * w] = x[s]
            labels[i, cell], sources[i, cell] = y[s], s
    captions = tuple(mosaic_caption(row, classes) for row in labels)
    return CaptionSplit(images, captions, labels, sources)


def cifar_mosaics(ds, n_train: int = 4000, n_test: int = 1000, *, min_objects: int = 1, max_objects: int = 4,
                  seed: int = 0) -> CaptionData:
    """2x2 mosaics (2H, 2W, C) of ``min_objects``..``max_objects`` images of ``ds`` with captions.

    ``ds``: a :class:`jaxnet.data.Dataset` (CIFAR-10 from ``load_cifar10``: uint8 (N, 32, 32, 3)).
    Training mosaics draw from ``ds.x_train`` only, held-out mosaics from ``ds.x_test``
    only (``ds.x_val`` is not used). Empty cells are 0. ``labels``/``sources``: (N, 4)
    per cell in reading order, -1 where empty. The vocabulary holds every class name,
    "a" and the relation words, whatever was drawn.
    """
    fn = "cifar_mosaics"
    _check_count(fn, "n_train", n_train)
    _check_count(fn, "n_test", n_test)
    _check_count(fn, "min_objects", min_objects, 1)
    _check_count(fn, "max_objects", max_objects, 1)
    if not min_objects <= max_objects <= 4:
        raise DataError(f"{fn}: need 1 <= min_objects <= max_objects <= 4, got {min_objects}, {max_objects}")
    classes = tuple(ds.classes)
    if any(len(c.split()) != 1 for c in classes):
        raise DataError(f"{fn}: class names must be single words, got {classes}")
    if len(ds.y_train) == 0 or len(ds.y_test) == 0:
        raise DataError(f"{fn}: {ds.name} needs training and test images, has {len(ds.y_train)} and "
                        f"{len(ds.y_test)}")
    rng = np.random.default_rng(seed)
    train = _mosaic_split(rng, ds.x_train, ds.y_train, n_train, min_objects, max_objects, classes)
    test = _mosaic_split(rng, ds.x_test, ds.y_test, n_test, min_objects, max_objects, classes)
    words = ["a", *classes, *sorted({w for r in RELATIONS.values() for w in r.split()})]
    n_tr = len(ds.y_train)
    return CaptionData(train=train, test=test, vocab=CaptionVocab(words),
                       pool_x_train=ds.x_train, pool_y_train=ds.y_train, pool_x_test=ds.x_test,
                       pool_y_test=ds.y_test, pool_ids_train=np.arange(n_tr),
                       pool_ids_test=n_tr + np.arange(len(ds.y_test)), classes=classes,
                       slot_hw=tuple(ds.x_train.shape[1:3]), name=f"{ds.name}_mosaics")
