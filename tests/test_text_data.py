"""jaxnet.data.text: the stdlib corpus split by file (deterministic, disjoint), the character
vocabulary (round trip, <unk>), the byte caps, batching for TBPTT and the DataError cases.
Most tests build a small temporary folder of fake .py files."""
import zlib

import numpy as np
import pytest

from jaxnet.data import DataError, batchify, bptt_chunks, load_text_corpus, split_of
from jaxnet.data.errors import DataNotFoundError
from jaxnet.data.text import UNK, CharVocab, list_source_files


def _write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def tree(tmp_path):
    """60 small modules spread over packages, plus files that must be left out."""
    for i in range(60):
        pkg = ("", "pkg/", "pkg/sub/", "other/")[i % 4]
        _write(tmp_path, f"{pkg}mod{i:02d}.py", f"# module {i}\ndef f{i}(x):\n\treturn x + {i}\n")
    _write(tmp_path, "test/test_x.py", "assert True\n")
    _write(tmp_path, "pkg/tests/test_y.py", "assert True\n")
    _write(tmp_path, "idlelib/idle_test/test_z.py", "assert True\n")
    _write(tmp_path, "site-packages/thirdparty.py", "import os\n")
    _write(tmp_path, "big.py", "x = 1\n" * 1000)
    _write(tmp_path, "notes.txt", "not python\n")
    return tmp_path


def test_split_of_is_the_documented_crc32_rule():
    for rel in ("os.py", "json/decoder.py", "email/mime/text.py", "a/b/c/d.py"):
        bucket = zlib.crc32(rel.encode()) % 100
        want = "train" if bucket < 90 else "val" if bucket < 95 else "test"
        assert split_of(rel) == want, rel
    with pytest.raises(DataError, match="val_pct"):
        split_of("x.py", val_pct=60, test_pct=40)


def test_listing_excludes_tests_site_packages_and_big_files(tree):
    files = list_source_files(tree, max_file_bytes=1000)
    assert len(files) == 60 and files == sorted(files)
    for bad in ("test/", "tests/", "idle_test/", "site-packages/", "big.py", "notes.txt"):
        assert not any(bad in f for f in files), bad
    assert "big.py" in list_source_files(tree, max_file_bytes=None)


def test_split_is_by_file_deterministic_and_disjoint(tree):
    c1 = load_text_corpus(tree, max_file_bytes=1000)
    c2 = load_text_corpus(tree, max_file_bytes=1000)
    assert c1.files == c2.files and c1.texts == c2.texts
    sets = {s: set(c1.files[s]) for s in ("train", "val", "test")}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(list_source_files(tree, max_file_bytes=1000))
    for split, files in c1.files.items():
        assert all(split_of(f) == split for f in files)
        # whole files, concatenated in sorted order: every line of the split comes from one of its files
        assert c1.texts[split] == "".join((tree / f).read_text() for f in sorted(files))


def test_split_does_not_move_when_other_files_change(tree):
    before = load_text_corpus(tree, max_file_bytes=1000).files
    for i in range(0, 60, 3):
        (tree / ("", "pkg/", "pkg/sub/", "other/")[i % 4] / f"mod{i:02d}.py").unlink()
    after = load_text_corpus(tree, max_file_bytes=1000).files
    for split in after:
        assert set(after[split]) <= set(before[split])


def test_train_cap_takes_sorted_files_and_cuts_at_the_cap(tree):
    full = load_text_corpus(tree, max_file_bytes=1000)
    capped = load_text_corpus(tree, max_file_bytes=1000, max_train_bytes=100, max_eval_bytes=30)
    assert capped.texts["train"] == full.texts["train"][:100]
    assert capped.files["train"] == full.files["train"][: len(capped.files["train"])]
    assert capped.texts["val"] == full.texts["val"][:30] and capped.texts["test"] == full.texts["test"][:30]
    with pytest.raises(DataError, match="max_train_bytes"):
        load_text_corpus(tree, max_train_bytes=0)


def test_vocab_round_trip_and_unknown_characters():
    v = CharVocab.from_text("def f(x):\n\treturn x\n")
    assert v.chars[0] == UNK and v.unk_id == 0
    assert set(v.chars[1:]) == set("def f(x):\n\treturn x\n")
    text = "return f(x)\n\t"
    ids = v.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),) and (ids > 0).all()
    assert v.decode(ids) == text
    # characters never seen in training, non-ASCII and control characters all map to <unk>
    ids = v.encode("qé\rz€")
    assert ids.tolist() == [0] * 5
    assert v.decode(v.encode("f?x"), unk_char="#") == "f#x"
    with pytest.raises(DataError, match="decode"):
        v.decode([v.size])


def test_vocab_leaves_out_non_printable_characters():
    v = CharVocab.from_text("a\rb\x0cc\u00e9\n\t")
    assert set(v.chars[1:]) == set("abc\n\t")


def test_corpus_vocab_comes_from_train_only(tree):
    c = load_text_corpus(tree, max_file_bytes=1000)
    assert c.vocab == CharVocab.from_text(c.texts["train"])
    assert c.ids("val").shape == (len(c.texts["val"]),)


def test_batchify_and_chunks_shapes_and_continuity():
    ids = np.arange(103, dtype=np.int32)
    s = batchify(ids, 4)
    assert s.shape == (4, 25)
    np.testing.assert_array_equal(s[1], np.arange(25, 50))  # contiguous rows
    chunks = list(bptt_chunks(s, 6))
    assert len(chunks) == (25 - 1) // 6 == 4
    for c, (x, y) in enumerate(chunks):
        assert x.shape == y.shape == (4, 6)
        np.testing.assert_array_equal(y, x + 1)  # targets: the next character
        np.testing.assert_array_equal(x[:, 0], s[:, 6 * c])  # chunk c continues chunk c - 1
    with pytest.raises(DataError, match="batchify"):
        batchify(ids, 60)
    with pytest.raises(DataError, match="bptt_chunks"):
        list(bptt_chunks(s, 25))
    with pytest.raises(DataError, match="n_rows"):
        batchify(ids, 0)


def test_missing_or_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="not found"):
        load_text_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    _write(tmp_path, "empty/test/test_only.py", "x = 1\n")
    with pytest.raises(DataError, match="no .py files"):
        load_text_corpus(tmp_path / "empty")


def test_a_split_left_empty_is_a_data_error(tmp_path):
    _write(tmp_path, "only.py", "x = 1\n")
    with pytest.raises(DataError, match="split .* is empty"):
        load_text_corpus(tmp_path)


def test_real_stdlib_split_is_stable():
    c = load_text_corpus(max_train_bytes=20_000, max_eval_bytes=5_000)
    assert all(split_of(f) == s for s, fs in c.files.items() for f in fs)
    assert not any(part in ("test", "tests", "site-packages") for fs in c.files.values() for f in fs
                   for part in f.split("/"))
    assert len(c.texts["train"]) == 20_000
