"""experiments.caption_transformer: the smoke run, cached decoding against the full forward, bad flags."""
import json

import jax
import numpy as np
import pytest

from experiments import caption_transformer as exp
from jaxnet.data.captions import END, NULL, START

pytestmark = pytest.mark.xdist_group("exp_caption_transformer")


def _check_smoke(tmp_path, res, models):
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["smoke"] is True and saved["n_train"] == 200 and saved["n_test"] == 60
    assert list(saved["models"]) == list(models)
    for name in models:
        for dec in ("greedy", "beam"):
            row = saved["models"][name][dec]
            assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["bleu4"] <= 100.0
        assert saved["models"][name]["train_time_s"] > 0
    assert saved["transformer"]["width"] == 32 and saved["transformer"]["depth"] == 1
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert np.isfinite(res["models"]["transformer"]["final_train_loss"])


def test_smoke_run_writes_the_transformer_captioner(tmp_path):
    # the LSTM captioner's training and decoders are experiments.captioning's (its smoke runs them)
    res = exp.main(["--smoke", "--out", str(tmp_path)])
    _check_smoke(tmp_path, res, ["transformer"])


@pytest.mark.slow
def test_smoke_run_writes_both_captioners(tmp_path, monkeypatch):
    monkeypatch.setattr(exp, "SMOKE_LSTM", True)
    res = exp.main(["--smoke", "--out", str(tmp_path)])
    _check_smoke(tmp_path, res, ["lstm", "transformer"])


def test_cached_greedy_decoding_equals_the_full_forward():
    model = exp.CaptionTransformer(vocab_size=9, n_slots=3, slot_dim=4, max_len=5, width=8, depth=2, heads=2,
                                   ff_hidden=16, dropout_rate=0.1)
    params = model.init(jax.random.key(0))
    feats = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    got = np.asarray(exp.decode_captions(model, params, feats, max_len=5))
    # greedy by hand: re-run the whole (uncached) decoder on the prefix at every step
    # the prefix padded with <NULL> to the 5 positions: one compiled program for every step (the
    # self-attention is causal, so position t does not see the padding; were it not, this would differ)
    tokens = np.full((2, 6), NULL, np.int32)
    tokens[:, 0] = START
    full_forward = jax.jit(lambda p, f, t: model.scores(p, f, t))    # eager, each small op compiles alone
    for t in range(5):
        scores = np.asarray(full_forward(params, feats, tokens[:, :5]))
        tokens[:, t + 1] = np.argmax(scores[:, t], -1)
    want = tokens[:, 1:]
    for row_got, row_want in zip(got, want):       # equal up to (and including) the first <END>
        ends = np.flatnonzero(row_want == END)
        n = ends[0] + 1 if len(ends) else len(row_want)
        np.testing.assert_array_equal(row_got[:n], row_want[:n])


def test_cross_attention_rows_sum_to_one_over_the_regions():
    model = exp.CaptionTransformer(vocab_size=9, n_slots=3, slot_dim=4, max_len=5, width=8, depth=1, heads=2,
                                   ff_hidden=16)
    params = model.init(jax.random.key(1))
    ones = np.ones((1, 12), np.float32)
    att = np.asarray(exp.cross_attention_map(model, params, ones, np.array([[START, 4, 5, 6, 7]], np.int32)))
    assert att.shape == (1, 5, 3)
    np.testing.assert_allclose(np.sum(att, -1), 1, rtol=1e-5)
    # causal: a word's map does not depend on the words after it (the figure pads captions)
    short = np.asarray(exp.cross_attention_map(model, params, ones, np.array([[START, 4, 5, NULL, NULL]], np.int32)))
    np.testing.assert_allclose(short[:, :3], att[:, :3], rtol=1e-6)


@pytest.mark.parametrize("flags", [["--width", "30", "--heads", "4"], ["--depth", "0"], ["--tf-lr", "0"]])
def test_bad_flags_exit_with_one_line(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        exp.main(["--smoke", "--out", str(tmp_path), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("experiments.caption_transformer: "), err
