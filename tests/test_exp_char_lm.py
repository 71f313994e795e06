"""experiments.char_lm: the count models on a corpus small enough to compute by hand, parameter
counts, the one-line exits for bad flags and a missing corpus, and the experiment run end to end
on a slice of the stdlib source.

The default suite runs ``--smoke`` (count models, the LSTM for half a second on 50 k
characters; the nets share the code path, the slow quick run trains all three) and checks the files, finite bpc for every model, the training histories, the samples
and that the bigram model beats the unigram one; the ``--quick`` run (all three nets, 2.5 s each)
and its checks are marked slow (``make test-slow``)."""
import json
import math

import jax
import numpy as np
import pytest

from conftest import run_quick_experiment
from experiments import char_lm as exp

# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its quick run (a module
# fixture) is built once; groups are handed out before single tests.
pytestmark = pytest.mark.xdist_group("exp_char_lm")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("char_lm_smoke")
    return run_quick_experiment(exp, out, "--smoke", "--no-progress"), out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("char_lm")
    return run_quick_experiment(exp, out, "--no-progress"), out


def test_smoke_run_writes_finite_bpc_for_every_model(smoke_run):
    results, out = smoke_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["smoke"] is True and saved["data"]["train_chars"] == 50_000
    assert set(saved["nets"]) == {"lstm"}
    _check_files_and_bpc(saved, out)
    # the bigram model beats the unigram model on the same text
    assert results["count_models"]["bigram"]["test_bpc"] < results["count_models"]["unigram"]["test_bpc"]


@pytest.mark.slow
def test_quick_run_writes_finite_bpc_for_every_model(quick_run):
    results, out = quick_run
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["nets"]) == set(exp.NETS)
    _check_files_and_bpc(saved, out)


def _check_files_and_bpc(saved, out):
    assert saved["experiment"] == "char_lm" and saved["quick"] is True
    assert set(saved["count_models"]) == {"unigram", "bigram"}
    for name, m in {**saved["count_models"], **saved["nets"]}.items():
        for key in ("val_bpc", "test_bpc"):
            assert m[key] is not None and math.isfinite(m[key]) and 0 < m[key] < 8, (name, key)
    for kind, r in saved["nets"].items():
        assert r["steps"] > 0 and r["stopped_by_budget"], kind
        assert r["history"]["step"][0] == 0 and r["history"]["step"][-1] == r["steps"]
    assert (out / "char_lm_val_bpc.png").stat().st_size > 0
    text = (out / "samples.txt").read_text()
    for kind in saved["nets"]:
        for temp in ("0.5", "1"):
            sample = saved["samples"][kind][temp]
            assert sample.startswith("def ") and len(sample) == 4 + 100
            assert f"{kind.upper()} (H=" in text and sample in text


@pytest.mark.slow
def test_quick_lstm_beats_the_unigram_model(quick_run):
    results, _ = quick_run
    assert results["nets"]["lstm"]["test_bpc"] < results["count_models"]["unigram"]["test_bpc"]
    # the bigram model beats the unigram model on the same text
    assert results["count_models"]["bigram"]["test_bpc"] < results["count_models"]["unigram"]["test_bpc"]


def test_count_models_by_hand():
    # train "abab" as ids [1, 2, 1, 2] over V = 3 (id 0 = <unk>); evaluated on [1, 2, 2]
    train, ev = np.array([1, 2, 1, 2]), np.array([1, 2, 2])
    uni = exp.ngram_counts(train, 3, 1)
    np.testing.assert_array_equal(uni, [0, 1, 2])  # counts of the predicted characters train[1:]
    # add-one: p = (c + 1) / (3 + 3) = [1/6, 2/6, 3/6]; targets [2, 2]
    assert exp.count_model_bpc(uni, ev, 1.0) == pytest.approx(-math.log2(3 / 6))
    bi = exp.ngram_counts(train, 3, 2)
    assert bi[1, 2] == 2 and bi[2, 1] == 1 and bi.sum() == 3
    # p(2|1) = (2 + 1) / (2 + 3), p(2|2) = (0 + 1) / (1 + 3)
    want = -(math.log2(3 / 5) + math.log2(1 / 4)) / 2
    assert exp.count_model_bpc(bi, ev, 1.0) == pytest.approx(want)
    # add-k with k = 0.5: p(2|1) = 2.5 / 3.5, p(2|2) = 0.5 / 2.5
    assert exp.count_model_bpc(bi, ev, 0.5) == pytest.approx(-(math.log2(2.5 / 3.5) + math.log2(0.5 / 2.5)) / 2)


def test_fit_count_model_tunes_k_on_validation():
    rng = np.random.default_rng(0)
    train = rng.integers(1, 6, size=500)
    val, test = rng.integers(1, 6, size=200), rng.integers(1, 6, size=200)
    m = exp.fit_count_model(train, val, test, 7, 2)
    assert m["val_bpc"] == pytest.approx(min(m["val_bpc_by_k"].values()))
    assert m["val_bpc"] <= m["val_bpc_by_k"]["1"]
    counts = exp.ngram_counts(train, 7, 2)
    assert m["test_bpc"] == pytest.approx(exp.count_model_bpc(counts, test, m["k"]))


def test_parameter_counts_match_the_parameters(smoke_run):
    for kind in exp.NETS:  # the shapes init_params builds (eval_shape: nothing compiled or drawn)
        params = jax.eval_shape(lambda: exp.init_params(kind, jax.random.PRNGKey(0), 97, 32, 50))
        n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        assert n == exp.param_count(kind, 97, 32, 50), kind
    target = exp.param_count("lstm", 97, 32, 192)
    for kind in ("rnn", "gru"):
        h = exp.matched_hidden(kind, target, 97, 32)
        assert abs(exp.param_count(kind, 97, 32, h) - target) / target < 0.01
    # at the smoke run's LSTM sizes: its eager init programs (QR, draws) are compiled already
    results, _ = smoke_run
    v, e, h = results["data"]["vocab_size"], results["nets"]["lstm"]["embed"], results["nets"]["lstm"]["hidden"]
    lstm = exp.init_params("lstm", jax.random.PRNGKey(0), v, e, h)
    np.testing.assert_array_equal(lstm["b"][h:2 * h], 1.0)  # forget gate [i, f, o, g]
    np.testing.assert_array_equal(lstm["b"][:h], 0.0)
    np.testing.assert_array_equal(lstm["b"][2 * h:], 0.0)


@pytest.mark.parametrize("flags, needle", [
    (["--nets", "rnn,transformer"], "--nets"),
    (["--time-budget", "-1"], "--time-budget"),
    (["--bptt", "0"], "--bptt"),
])
def test_bad_flags_exit_with_one_line(tmp_path, capsys, flags, needle):
    with pytest.raises(SystemExit) as e:
        exp.main(["--quick", "--out", str(tmp_path), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_missing_corpus_exits_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        exp.main(["--quick", "--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "none")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "not found" in err and err.count("\n") == 1


def test_committed_full_run_and_its_docs_table():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    full = json.loads((root / "docs" / "results" / "char_lm.json").read_text())
    assert full["quick"] is False and set(full["nets"]) == set(exp.NETS)
    nets, counts = full["nets"], full["count_models"]
    # the task's bar: the LSTM beats the bigram model and the vanilla RNN on the test files
    assert nets["lstm"]["test_bpc"] < counts["bigram"]["test_bpc"]
    assert nets["lstm"]["test_bpc"] < nets["rnn"]["test_bpc"]
    params = [r["params"] for r in nets.values()]
    assert (max(params) - min(params)) / max(params) < 0.01
    for r in nets.values():  # each trained within 10 minutes of CPU time
        assert r["stopped_by_budget"] and r["train_cpu_s"] <= 600 + 5
    page = (root / "docs" / "sequence-experiments.md").read_text()
    assert exp.results_table(full) in page
    assert (root / "docs" / "img" / "sequence" / "char_lm_val_bpc.png").is_file()
