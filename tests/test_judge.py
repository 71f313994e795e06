"""experiments._judge: the generative experiments' sample judge, on the digits with the smoke recipe
(trained once for the module into a temporary folder), and on CIFAR-10 (slow; skips without a copy)."""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from experiments import _judge

pytestmark = pytest.mark.xdist_group("judge")

SCORE_KEYS = {"classifier_score", "confident_fraction", "class_coverage", "frechet"}


def _args(judge_dir, **kw):
    base = dict(seed=0, smoke=True, quick=True, data_dir=None, judge_dir=str(judge_dir), name="test_judge")
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture(scope="module")
def digits():
    from jaxnet.data import load_digits
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    args = _args(folder)
    return _judge.load_judge("digits", args), args


def test_trains_once_and_learns_the_digits(trained):
    judge, _ = trained
    assert judge.trained_now and os.path.isfile(judge.path)
    assert os.path.basename(judge.path).startswith("digits-smoke-seed0-")
    assert judge.input_shape == (8, 8, 1) and judge.num_classes == 10
    assert judge.test_accuracy > 0.8                  # 10 classes: chance is 0.1


def test_probs_and_features_shapes(trained, digits):
    judge, _ = trained
    x = digits.x_test[:37]
    p, f = judge.probs(x), judge.features(x)
    assert p.shape == (37, 10) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert f.shape == (37, judge.feature_dim) and f.dtype == np.float64 and np.all(np.isfinite(f))
    # the accuracy the judge reports is its probs' accuracy on the test split
    acc = np.mean(np.argmax(judge.probs(digits.x_test), axis=1) == digits.y_test)
    assert acc == pytest.approx(judge.test_accuracy, abs=1e-9)


def test_real_images_score_better_than_noise(trained, digits):
    judge, _ = trained
    n = len(digits.x_test)
    real = judge.score(digits.x_test)
    held = judge.real_score(n)
    noise = judge.score(np.random.default_rng(0).uniform(0, 1, (n, 8, 8, 1)).astype(np.float32))
    for s in (real, held, noise, judge.reference):
        assert set(s) == SCORE_KEYS and all(np.isfinite(v) for v in s.values())
        assert 1.0 <= s["classifier_score"] <= 10.0 and 0.0 <= s["class_coverage"] <= 1.0
    assert judge.reference == held                          # the reference row: all 270 held-out images
    for s in (real, held):
        assert s["frechet"] < noise["frechet"] / 5, (s, noise)
        assert s["confident_fraction"] > noise["confident_fraction"] + 0.3, (s, noise)
        assert s["classifier_score"] > noise["classifier_score"]
    assert real["frechet"] < held["frechet"]                # the test split is the Fréchet reference itself


def test_second_load_reads_the_cache(trained, digits, monkeypatch):
    judge, args = trained
    stamp = os.stat(judge.path).st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("load_judge trained again instead of reading the cache")

    monkeypatch.setattr(_judge, "_train", no_training)
    again = _judge.load_judge("digits", args)
    assert not again.trained_now and again.path == judge.path
    assert os.stat(judge.path).st_mtime_ns == stamp
    assert again.test_accuracy == judge.test_accuracy and again.reference == judge.reference
    np.testing.assert_array_equal(again.probs(digits.x_test[:50]), judge.probs(digits.x_test[:50]))
    # another seed or recipe is another file
    assert _judge.cache_path("digits", _args(args.judge_dir, seed=1)) != judge.path
    assert _judge.cache_path("digits", _args(args.judge_dir, smoke=False)) != judge.path


def test_corrupt_cache_is_trained_again_identically(trained, digits, tmp_path, capsys):
    judge, args = trained
    args2 = _args(tmp_path)
    path = _judge.cache_path("digits", args2)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"not a checkpoint")
    again = _judge.load_judge("digits", args2)
    err = capsys.readouterr().err
    assert "unreadable" in err and "training it again" in err
    assert again.trained_now
    # deterministic for a seed: the same classifier as the module's
    assert again.test_accuracy == judge.test_accuracy
    np.testing.assert_allclose(again.probs(digits.x_test[:50]), judge.probs(digits.x_test[:50]), atol=1e-6)


def test_bad_source_and_bad_images(trained, tmp_path):
    judge, _ = trained
    with pytest.raises(ValueError, match=r"^load_judge: source must be one of \('digits', 'cifar10'\), got 'mnist'$"):
        _judge.load_judge("mnist", _args(tmp_path))
    with pytest.raises(ValueError,
                       match=r"judge.probs: images must have shape \(N, 8, 8, 1\).*got shape \(2, 32, 32, 3\)"):
        judge.probs(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"judge.score: images must be in \[0, 1\], got values in \[-1"):
        judge.score(np.full((4, 8, 8, 1), -1.0, np.float32))
    with pytest.raises(ValueError, match=r"judge.features: images must be floats"):
        judge.features(np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"judge.probs: images must be finite"):
        judge.probs(np.full((4, 8, 8, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"judge.real_score: n must be an int in \[2, 270\]"):
        judge.real_score(1000)


@pytest.mark.slow
def test_cifar_judge_smoke_recipe(tmp_path):
    from cifar_copy import cifar10_or_skip

    args = _args(tmp_path, data_dir=cifar10_or_skip())
    judge = _judge.load_judge("cifar10", args)
    assert judge.input_shape == (32, 32, 3) and judge.test_accuracy > 0.2
    noise = judge.score(np.random.default_rng(0).uniform(0, 1, (500, 32, 32, 3)).astype(np.float32))
    real = judge.real_score(500)
    assert real["frechet"] < noise["frechet"]
