"""experiments.captioning: the quick digits run, the decoders against a step-by-step loop, the BLEU wrapper."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import captioning as cap
from jaxnet.data.captions import END, START

# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so the quick run (a module
# fixture) is built once.
pytestmark = pytest.mark.xdist_group("exp_captioning")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("captioning")
    cap.main(["--quick", "--out", str(out)])
    with open(out / "results.json") as f:
        return json.load(f), out


def test_quick_run_writes_every_number(quick):
    res, out = quick
    assert res["data"] == "digits" and res["quick"] is True
    assert res["command"].startswith("python -m experiments.captioning")
    for cell in ("rnn", "lstm"):
        row = res["models"][cell]
        for dec in ("greedy", "beam"):
            assert 0.0 <= row[dec]["accuracy"] <= 1.0 and 0.0 <= row[dec]["bleu4"] <= 100.0
            assert 0.0 <= row[dec]["agreement_with_oracle"] <= 1.0
        assert res["train_time_s"][cell] > 0
        assert np.isfinite(row["final_train_loss"])
    assert 0.0 <= res["oracle"]["accuracy"] <= 1.0
    for png in ("loss.png", "captions.png", "examples.png"):
        assert os.path.getsize(out / png) > 1000


def test_quick_lstm_reads_held_out_strings(quick):
    res, _ = quick
    # chance of a whole caption (2-5 digits, ten words each) is below 1e-2; the quick run measures 0.44
    # (BLEU-4 39)
    for dec in ("greedy", "beam"):
        assert res["models"]["lstm"][dec]["accuracy"] > 0.25
        assert res["models"]["lstm"][dec]["bleu4"] > 25.0
    # the per-digit classifiers are good, so the oracle built from their labels is mostly right
    # (the quick run measures 0.963 per held-out digit and 0.89 per string)
    assert res["oracle"]["accuracy"] > 0.8
    assert res["classifier"]["test_pool_accuracy"] > 0.93


def test_quick_overfit_50_captions(quick):
    res, _ = quick
    for cell in ("rnn", "lstm"):
        ov = res["overfit50"][cell]
        assert ov["initial_loss"] > 5.0  # about (words + 1) * ln(14) at the start
        assert ov["final_loss"] < 0.05


def test_bleu_wrapper():
    refs = ["three one four one five", "two seven one eight", "nine nine nine"]
    assert cap.bleu4(refs, refs) == pytest.approx(100.0)
    wrong = ["three one four one six", "two seven one", "nine"]
    assert cap.bleu4(wrong, refs) < 100.0
    assert cap.bleu4(["five six seven eight"] * 3, refs) < cap.bleu4(wrong, refs)
    # n-grams are pooled over the corpus: a corpus without a single 4-gram scores 0 even when right
    assert cap.bleu4(["one two", "three"], ["one two", "three"]) == 0.0
    assert cap.exact_match(wrong, refs) == 0.0
    assert cap.exact_match(refs[:2] + wrong[2:], refs) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="bleu4: 2 hypotheses but 3 references"):
        cap.bleu4(refs[:2], refs)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_decoders_match_a_step_by_step_loop(cell):
    vocab, feat = 9, 6
    params = cap.init_captioner(jax.random.PRNGKey(1), cell, feat, vocab, wordvec=5, hidden=7)
    params = {k: v * 3.0 for k, v in params.items()}  # sharper scores, so that <END> shows up early
    f = jax.random.normal(jax.random.PRNGKey(2), (4, feat))
    max_len = 6
    got = np.asarray(cap.decode_greedy(params, f, cell=cell, max_len=max_len))
    step = cap.make_step(params, cell)
    h0 = f @ params["w_proj"] + params["b_proj"]
    carry = h0 if cell == "rnn" else (h0, jnp.zeros_like(h0))
    tok = jnp.full((4,), START, jnp.int32)
    want = np.zeros((4, max_len), np.int32)
    done = np.zeros(4, bool)
    for t in range(max_len):
        logits, carry = step(tok, carry)
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
        want[:, t] = np.where(done, 0, np.asarray(tok))
        done |= np.asarray(tok) == END
        tok = jnp.where(jnp.asarray(done), END, tok)
    np.testing.assert_array_equal(got, want)
    # a beam of one is greedy decoding
    np.testing.assert_array_equal(np.asarray(cap.decode_beam(params, f, cell=cell, max_len=max_len, beam_size=1)),
                                  want)


def test_cifar_without_a_copy_exits_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cap.main(["--data", "cifar", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("experiments.captioning: CIFAR-10 not found") and "\n" not in err
