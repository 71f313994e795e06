"""Captioning data: vocabulary, digit strings (disjoint handwriting), CIFAR-10 mosaics (grammar, placement)."""
import numpy as np
import pytest
from sklearn import datasets

from jaxnet.data import Dataset, DataError
from jaxnet.data.captions import (DIGIT_WORDS, END, NULL, RELATIONS, SPECIAL_TOKENS, START, UNK, CaptionVocab,
                                  cifar_mosaics, digit_strings, mosaic_caption)

from cifar_copy import find_cifar10


@pytest.fixture(scope="module")
def digits():
    return digit_strings(300, 120, seed=3)


def test_special_tokens_come_first():
    v = CaptionVocab(["cat", "a", "<END>", "cat"])
    assert v.idx_to_word[:4] == SPECIAL_TOKENS == ("<NULL>", "<START>", "<END>", "<UNK>")
    assert (NULL, START, END, UNK) == (0, 1, 2, 3)
    assert v.idx_to_word[4:] == ("cat", "a")  # special tokens and duplicates dropped, order kept
    assert len(v) == 6


def test_vocab_round_trip_and_padding():
    caps = ["a cat left of a ship", "a dog", "a frog above a truck"]
    v = CaptionVocab.from_captions(caps)
    idx = v.encode(caps)
    assert idx.dtype == np.int32 and idx.shape == (3, 8)  # 6 words + <START> + <END>
    assert (idx[:, 0] == START).all()
    assert list(idx[1]) == [START, v.word_to_idx["a"], v.word_to_idx["dog"], END, NULL, NULL, NULL, NULL]
    assert v.decode(idx) == caps
    assert v.decode(v.encode(caps, length=12)) == caps
    assert v.decode(idx[0]) == caps[:1]


def test_vocab_unknown_words_and_errors():
    v = CaptionVocab(["a", "cat"])
    idx = v.encode(["a zebra"])
    assert list(idx[0]) == [START, v.word_to_idx["a"], UNK, END]
    assert v.decode(idx) == ["a <UNK>"]
    # decoding stops at the first <END> and drops <NULL>/<START> anywhere
    assert v.decode(np.array([[START, 4, NULL, 5, END, 4, 4]])) == ["a cat"]
    with pytest.raises(DataError, match="CaptionVocab.encode: a caption needs 4 tokens"):
        v.encode(["a cat"], length=3)
    with pytest.raises(DataError, match="without spaces"):
        CaptionVocab(["two words"])


def test_digit_split_keeps_handwriting_disjoint(digits):
    assert set(digits.pool_ids_train.tolist()).isdisjoint(digits.pool_ids_test.tolist())
    assert len(digits.pool_ids_train) + len(digits.pool_ids_test) == 1797
    raw = datasets.load_digits()
    x = (raw.images / 16.0).astype(np.float32)[..., None]
    for split, pool_ids in ((digits.train, digits.pool_ids_train), (digits.test, digits.pool_ids_test)):
        used = split.sources[split.sources >= 0]
        assert used.max() < len(pool_ids)
        # every placed slot holds exactly the pool's image, which is the global digit image
        for i in range(0, len(split), 17):
            for j in range(5):
                cell = split.images[i, :, 8 * j:8 * (j + 1)]
                s = split.sources[i, j]
                if s < 0:
                    assert (cell == 0).all()
                else:
                    np.testing.assert_array_equal(cell, x[pool_ids[s]])
                    assert split.labels[i, j] == raw.target[pool_ids[s]]


def test_digit_caption_matches_the_digits_placed(digits):
    for split in (digits.train, digits.test):
        assert split.images.shape[1:] == (8, 40, 1) and split.images.dtype == np.float32
        for lab, cap in zip(split.labels, split.captions):
            k = int((lab >= 0).sum())
            assert 2 <= k <= 5 and (lab[:k] >= 0).all() and (lab[k:] == -1).all()  # left-aligned
            assert cap == " ".join(DIGIT_WORDS[d] for d in lab[:k])
    lengths = {int((lab >= 0).sum()) for lab in digits.train.labels}
    assert lengths == {2, 3, 4, 5}
    assert digits.vocab.decode(digits.vocab.encode(digits.test.captions)) == list(digits.test.captions)


def test_digit_strings_are_seeded(digits):
    again = digit_strings(300, 120, seed=3)
    np.testing.assert_array_equal(again.train.images, digits.train.images)
    assert again.test.captions == digits.test.captions
    other = digit_strings(300, 120, seed=4)
    assert other.train.captions != digits.train.captions
    with pytest.raises(DataError, match="digit_strings: min_digits"):
        digit_strings(10, 10, min_digits=4, max_digits=3)
    with pytest.raises(DataError, match=r"digit_strings: test_fraction must be in \(0, 1\)"):
        digit_strings(10, 10, test_fraction=1.0)
    with pytest.raises(DataError, match="digit_strings: n_train must be an int >= 0"):
        digit_strings(-1, 10)


def test_mosaic_grammar():
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert mosaic_caption([3, -1, -1, -1], classes) == "a cat"
    assert mosaic_caption([-1, -1, 3, 8], classes) == "a cat left of a ship"
    assert mosaic_caption([-1, 5, -1, 9], classes) == "a dog above a truck"
    assert mosaic_caption([3, -1, -1, 8], classes) == "a cat above left of a ship"
    assert mosaic_caption([-1, 6, 7, -1], classes) == "a frog above right of a horse"
    assert mosaic_caption([6, 8, 7, 0], classes) == ("a frog left of a ship above right of a horse "
                                                     "left of a airplane")
    with pytest.raises(DataError, match="no image"):
        mosaic_caption([-1, -1, -1, -1], classes)


def _fake_cifar(seed=0):
    rng = np.random.default_rng(seed)
    mk = lambda n: rng.integers(1, 256, size=(n, 32, 32, 3)).astype(np.uint8)  # noqa: E731 - nonzero pixels
    return Dataset(x_train=mk(60), y_train=rng.integers(0, 10, 60).astype(np.int32), x_val=mk(0),
                   y_val=np.zeros(0, np.int32), x_test=mk(30), y_test=rng.integers(0, 10, 30).astype(np.int32),
                   classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"), name="fake")


def _check_mosaics(data, ds):
    for split, pool_x, pool_y in ((data.train, ds.x_train, ds.y_train), (data.test, ds.x_test, ds.y_test)):
        assert split.images.shape[1:] == (64, 64, 3) and split.images.dtype == np.uint8
        for i in range(len(split)):
            lab, src = split.labels[i], split.sources[i]
            assert 1 <= (lab >= 0).sum() <= 4 and ((lab >= 0) == (src >= 0)).all()
            for cell in range(4):
                r, c = divmod(cell, 2)
                img = split.images[i, 32 * r:32 * (r + 1), 32 * c:32 * (c + 1)]
                if src[cell] < 0:
                    assert (img == 0).all()
                else:
                    np.testing.assert_array_equal(img, pool_x[src[cell]])
                    assert lab[cell] == pool_y[src[cell]]
            # the caption names the placed classes in reading order with the relation of each pair
            cells = [c for c in range(4) if lab[c] >= 0]
            words = split.captions[i].split()
            assert words[:2] == ["a", data.classes[lab[cells[0]]]]
            rest = " ".join(words[2:])
            expect = " ".join(f"{RELATIONS[(a, b)]} a {data.classes[lab[b]]}" for a, b in zip(cells, cells[1:]))
            assert rest == expect
    assert data.vocab.decode(data.vocab.encode(data.test.captions)) == list(data.test.captions)


def test_mosaics_match_placed_labels_and_positions():
    ds = _fake_cifar()
    data = cifar_mosaics(ds, 200, 80, seed=1)
    _check_mosaics(data, ds)
    counts = {int((lab >= 0).sum()) for lab in data.train.labels}
    assert counts == {1, 2, 3, 4}
    assert set(data.pool_ids_train.tolist()).isdisjoint(data.pool_ids_test.tolist())
    with pytest.raises(DataError, match="cifar_mosaics: need 1 <= min_objects"):
        cifar_mosaics(ds, 4, 4, max_objects=5)
    with pytest.raises(DataError, match="cifar_mosaics: fake needs training and test images, has 60 and 0"):
        cifar_mosaics(ds.replace(x_test=ds.x_test[:0], y_test=ds.y_test[:0]), 4, 4)


# the mosaics' logic is checked on the fake CIFAR-10 above (default suite); this one reads the real
# 180 MB copy (decoding it when the cache is cold: ~20 s): the slow tier
@pytest.mark.slow
def test_mosaics_of_real_cifar10():
    path = find_cifar10()
    if path is None:
        from cifar_copy import cifar10_or_skip
        cifar10_or_skip()
    from jaxnet.data import load_cifar10
    ds = load_cifar10(path, val_size=0)
    data = cifar_mosaics(ds, 40, 40, seed=0)
    _check_mosaics(data, ds)
    assert data.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck")
