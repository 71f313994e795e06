"""The course's linear classifier (jaxnet.classic): hand gradients, sanity values, SGD,
hyperparameter search, templates, and the two experiments (on the embedded digits always, on
CIFAR-10 when a copy exists): their --smoke runs in the default suite, --quick marked slow."""
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import manual, ops
from jaxnet.classic.linear import (
    accuracy, add_bias_column, class_templates, linear_features, plot_loss_curve, plot_templates, predict,
    softmax_loss_naive, softmax_loss_vectorized, svm_loss_naive, svm_loss_vectorized, train_linear,
)
from jaxnet.classic.search import (
    Trial, coarse_to_fine, plot_search, random_search, results_table, sample_params,
)
from jaxnet.data import Dataset
from jaxnet.gradcheck import numerical_gradient, rel_error
from cifar_copy import cifar10_or_skip
from conftest import run_quick_experiment

PAIRS = {
    "svm": (svm_loss_naive, svm_loss_vectorized, ops.svm_hinge, manual.svm_hinge),
    "softmax": (softmax_loss_naive, softmax_loss_vectorized, ops.softmax_cross_entropy,
                manual.softmax_cross_entropy),
}


def _problem(n=16, d=13, c=5, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    X = add_bias_column(rng.standard_normal((n, d - 1)))
    return scale * rng.standard_normal((d, c)), X, rng.integers(0, c, n)


# ---------------------------------------------------------------- losses and hand gradients

@pytest.mark.parametrize("name", ["svm", "softmax"])
@pytest.mark.parametrize("reg", [0.0, 0.3])
def test_naive_equals_vectorized(x64, name, reg):
    naive, vec, _, _ = PAIRS[name]
    W, X, y = _problem()
    ln, gn = naive(W, X, y, reg)
    lv, gv = vec(W, X, y, reg)
    assert isinstance(ln, float) and gn.shape == W.shape == gv.shape
    assert rel_error(ln, lv) < 1e-12
    assert rel_error(gn, gv) < 1e-12


@pytest.mark.parametrize("name", ["svm", "softmax"])
def test_hand_gradient_matches_autodiff_and_finite_differences(x64, name):
    naive, vec, ref, hand = PAIRS[name]
    W, X, y = _problem(seed=1)
    reg = 0.25
    loss, dW = vec(W, X, y, reg)

    def objective(op):
        return lambda w: op(jnp.asarray(X) @ w, jnp.asarray(y)) + reg * ops.l2_penalty(w)

    # the same number as the library ops, and the hand dW equals autodiff of the reference op ... (jitted:
    # one program each instead of a kernel per eager op)
    ref_loss, ref_grad = jax.jit(jax.value_and_grad(objective(ref)))(jnp.asarray(W))
    assert rel_error(loss, ref_loss) < 1e-12
    assert rel_error(dW, ref_grad) < 1e-10
    # ... and the manual (custom_vjp) twin's gradient
    assert rel_error(dW, jax.jit(jax.grad(objective(hand)))(jnp.asarray(W))) < 1e-10
    # ... and centred finite differences (the SVM has kinks: a few rows make straddling unlikely)
    num = numerical_gradient(lambda w: vec(w, X, y, reg)[0], (jnp.asarray(W),))
    assert rel_error(dW, num) < (1e-6 if name == "svm" else 1e-7)
    # the regularisation part alone: gradient 2 reg W
    _, d0 = vec(W, X, y, 0.0)
    np.testing.assert_allclose(np.asarray(dW - d0), 2 * reg * W, rtol=1e-10, atol=1e-12)


def test_svm_delta_and_kink_free_margin(x64):
    W, X, y = _problem(seed=2)
    for delta in (0.5, 2.0):
        l, g = svm_loss_vectorized(W, X, y, 0.1, delta=delta)
        ln, gn = svm_loss_naive(W, X, y, 0.1, delta=delta)
        assert rel_error(l, ln) < 1e-12 and rel_error(g, gn) < 1e-12
        assert rel_error(l, ops.svm_hinge(jnp.asarray(X @ W), jnp.asarray(y), margin=delta)
                         + 0.1 * np.sum(W * W)) < 1e-12


@pytest.mark.parametrize("c", [3, 10])
def test_loss_at_zero_weights(x64, c):
    _, X, y = _problem(n=40, d=30, c=c, seed=3)
    W0 = np.zeros((30, c))
    for delta in (1.0, 0.5):
        assert float(svm_loss_vectorized(W0, X, y, 0.0, delta=delta)[0]) == pytest.approx((c - 1) * delta)
        assert svm_loss_naive(W0, X, y, 0.0, delta=delta)[0] == pytest.approx((c - 1) * delta)
    assert float(softmax_loss_vectorized(W0, X, y, 0.0)[0]) == pytest.approx(math.log(c), rel=1e-12)
    assert softmax_loss_naive(W0, X, y, 0.0)[0] == pytest.approx(math.log(c), rel=1e-12)
    # tiny W: still at chance; regularisation raises the loss (course sanity check)
    Wt = 1e-7 * np.random.default_rng(0).standard_normal((30, c))
    assert float(svm_loss_vectorized(Wt, X, y, 0.0)[0]) == pytest.approx(c - 1, abs=1e-4)
    assert float(softmax_loss_vectorized(Wt, X, y, 0.0)[0]) == pytest.approx(math.log(c), abs=1e-5)
    W = np.ones((30, c))
    assert float(softmax_loss_vectorized(W, X, y, 1.0)[0]) > float(softmax_loss_vectorized(W, X, y, 0.0)[0])


def test_softmax_stable_for_large_scores(x64):
    W, X, y = _problem(seed=4, scale=1e3)
    l, g = softmax_loss_vectorized(W, X, y, 0.0)
    ln, gn = softmax_loss_naive(W, X, y, 0.0)
    assert np.isfinite(float(l)) and np.all(np.isfinite(np.asarray(g)))
    assert rel_error(l, ln) < 1e-10


def test_shape_errors():
    W, X, y = _problem()
    with pytest.raises(ValueError, match="shapes disagree"):
        svm_loss_vectorized(W[:-1], X, y, 0.0)
    with pytest.raises(ValueError, match="loss must be"):
        train_linear(X, y, loss="hinge", learning_rate=0.1, reg=0.0, num_iters=1)
    with pytest.raises(ValueError, match="bias row"):
        class_templates(np.zeros((100, 10)), (32, 32, 3))


# ---------------------------------------------------------------- training

def _blobs(n_per=60, c=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = 6.0 * np.stack([np.cos(2 * np.pi * np.arange(c) / c), np.sin(2 * np.pi * np.arange(c) / c)], 1)
    X = np.concatenate([centres[k] + rng.standard_normal((n_per, 2)) * 0.6 for k in range(c)])
    y = np.repeat(np.arange(c), n_per)
    return add_bias_column(X.astype(np.float32)), y.astype(np.int32)


@pytest.mark.parametrize("loss", ["svm", "softmax"])
def test_train_linear_separates_toy_problem(loss):
    X, y = _blobs()
    W, hist = train_linear(X, y, loss=loss, learning_rate=0.05, reg=1e-4, num_iters=300, batch_size=32, seed=0)
    assert W.shape == (3, 4) and hist.shape == (300,)
    assert np.all(np.isfinite(hist)) and hist[-20:].mean() < hist[0]
    assert accuracy(W, X, y) == 1.0
    assert predict(W, X).shape == (len(y),)
    # deterministic in the seed; a different seed gives a different path
    W2, hist2 = train_linear(X, y, loss=loss, learning_rate=0.05, reg=1e-4, num_iters=300, batch_size=32, seed=0)
    np.testing.assert_array_equal(np.asarray(W), np.asarray(W2))
    _, hist3 = train_linear(X, y, loss=loss, learning_rate=0.05, reg=1e-4, num_iters=300, batch_size=32, seed=1)
    assert not np.array_equal(hist, hist3)


def test_train_linear_step_is_hand_sgd():
    """One row only: every minibatch repeats it, so one step is exactly W0 - lr * dW(W0)."""
    X, y = _blobs(n_per=5, c=3)
    W0 = np.full((3, 3), 0.01, np.float32)
    for loss, fn in (("svm", svm_loss_vectorized), ("softmax", softmax_loss_vectorized)):
        W1, hist = train_linear(X[:1], y[:1], loss=loss, learning_rate=0.1, reg=0.5, num_iters=1, batch_size=4,
                                W0=W0)
        l0, d0 = fn(W0, X[:1], y[:1], 0.5)
        np.testing.assert_allclose(np.asarray(W1), W0 - 0.1 * np.asarray(d0), rtol=1e-6)
        assert hist[0] == pytest.approx(float(l0), rel=1e-6)
    # lr_decay multiplies the rate after every epoch (here 1 row / batch 1 = one step per epoch)
    W2, _ = train_linear(X[:1], y[:1], loss="softmax", learning_rate=0.1, reg=0.5, num_iters=2, batch_size=1,
                         W0=W0, lr_decay=0.5)
    W1 = W0 - 0.1 * np.asarray(softmax_loss_vectorized(W0, X[:1], y[:1], 0.5)[1])
    want = W1 - 0.05 * np.asarray(softmax_loss_vectorized(W1, X[:1], y[:1], 0.5)[1])
    np.testing.assert_allclose(np.asarray(W2), want, rtol=1e-5)


def test_linear_features_train_statistics_only():
    rng = np.random.default_rng(0)
    mk = lambda n: rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)  # noqa: E731
    ds = Dataset(mk(20), rng.integers(0, 2, 20).astype(np.int32), mk(5), np.zeros(5, np.int32),
                 mk(6), np.zeros(6, np.int32), classes=("a", "b"))
    Xtr, Xva, Xte, info = linear_features(ds)
    assert Xtr.shape == (20, 49) and Xva.shape == (5, 49) and Xte.shape == (6, 49) and info["dim"] == 49
    np.testing.assert_allclose(Xtr[:, :-1].mean(0), 0, atol=1e-3)       # mean image of train removed
    np.testing.assert_array_equal(Xtr[:, -1], 1)                          # bias column
    mu = ds.x_train.reshape(20, -1).astype(np.float64).mean(0)
    np.testing.assert_allclose(Xva[:, :-1], ds.x_val.reshape(5, -1) - mu, atol=1e-3)
    Xc, _, _, _ = linear_features(ds, normalize="channel", bias=False)
    assert Xc.shape == (20, 48)
    np.testing.assert_allclose(Xc.reshape(20, 4, 4, 3).std(axis=(0, 1, 2)), 1, atol=1e-4)


# ---------------------------------------------------------------- templates and plots

def test_templates_shape_range_and_png(tmp_path):
    W = np.random.default_rng(0).standard_normal((32 * 32 * 3 + 1, 10))
    t = class_templates(W, (32, 32, 3))
    assert t.shape == (10, 32, 32, 3)
    assert t.min() == pytest.approx(0) and t.max() == pytest.approx(255)
    # column j is template j, unflattened in NHWC order; the bias row is dropped
    np.testing.assert_allclose(t[3].ravel(), 255 * (W[:-1, 3] - W[:-1].min()) / (W[:-1].max() - W[:-1].min()))
    assert class_templates(W[:-1]).shape == (10, 32, 32, 3)
    p = plot_templates(W, [f"c{i}" for i in range(10)], tmp_path / "t.png")
    assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = plot_loss_curve(np.linspace(3, 1, 200), tmp_path / "loss.png")
    assert Path(p).stat().st_size > 1000


# ---------------------------------------------------------------- search

SPACE = {"learning_rate": (1e-7, 1e-3, "log"), "reg": (10.0, 1e4, "log"), "momentum": (0.5, 0.99, "linear")}


def test_samples_stay_in_range_and_are_log_uniform():
    draws = sample_params(SPACE, 4000, np.random.default_rng(0))
    lr = np.array([d["learning_rate"] for d in draws])
    mom = np.array([d["momentum"] for d in draws])
    assert lr.min() >= 1e-7 and lr.max() <= 1e-3 and mom.min() >= 0.5 and mom.max() <= 0.99
    # log-uniform: each decade gets about a quarter of the draws
    counts = np.histogram(np.log10(lr), bins=4, range=(-7, -3))[0]
    assert counts.min() > 850 and counts.max() < 1150
    with pytest.raises(ValueError, match="low must be > 0"):
        sample_params({"lr": (0.0, 1.0, "log")}, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="'log' or 'linear'"):
        sample_params({"lr": (1.0, 2.0, "exp")}, 3, np.random.default_rng(0))


def _bowl(params):
    """A synthetic accuracy peaked at lr = 1e-5, reg = 1e2 (log scale)."""
    d = (math.log10(params["learning_rate"]) + 5) ** 2 + (math.log10(params["reg"]) - 2) ** 2
    return 0.5 - 0.05 * d, 0.6 - 0.04 * d


def test_random_search_sorted_and_reproducible(tmp_path):
    res = random_search(_bowl, SPACE, 15, seed=3)
    assert len(res) == 15 and all(isinstance(t, Trial) for t in res)
    vals = [t.val_acc for t in res]
    assert vals == sorted(vals, reverse=True)
    params, val, train = res[0]
    assert set(params) == set(SPACE) and val == max(vals)
    assert [t.params for t in random_search(_bowl, SPACE, 15, seed=3)] == [t.params for t in res]
    # NaN (a diverged run) sorts last
    res_nan = random_search(lambda p: (float("nan"), 0.1) if p["reg"] > 1e3 else _bowl(p), SPACE, 15, seed=3)
    finite = [t.val_acc for t in res_nan if t.val_acc == t.val_acc]
    assert [t.val_acc for t in res_nan[:len(finite)]] == finite
    table = results_table(res, top=5)
    assert table.count("\n") == 6 and "val_acc" in table
    p = plot_search(res, tmp_path / "search.png")
    assert Path(p).read_bytes()[:4] == b"\x89PNG"


def test_coarse_to_fine_narrows_around_best():
    space = {"learning_rate": (1e-8, 1e-2, "log"), "reg": (1e-1, 1e5, "log")}
    res, stages = coarse_to_fine(_bowl, space, stages=3, trials_per_stage=12, seed=0, return_stages=True)
    assert len(res) == 36 and [s["stage"] for s in stages] == [1, 2, 3]
    widths = [math.log10(s["space"]["learning_rate"][1] / s["space"]["learning_rate"][0]) for s in stages]
    assert widths[1] < widths[0] and widths[2] < widths[1]
    best = res[0].params
    assert abs(math.log10(best["learning_rate"]) + 5) < 0.7 and abs(math.log10(best["reg"]) - 2) < 0.7
    # the later stages do at least as well as the coarse one
    assert max(t.val_acc for t in stages[-1]["trials"]) >= max(t.val_acc for t in stages[0]["trials"]) - 1e-9
    with pytest.raises(ValueError):
        coarse_to_fine(_bowl, space, stages=2, trials_per_stage=[3])


# ---------------------------------------------------------------- experiments on the embedded digits
# The default suite runs each experiment's --smoke (400 training images, 2 search trials, checks on
# 100 rows) and checks the files, the structure and what holds at any size (the initial losses,
# naive = vectorised in float64, the loss going down); the --quick runs and their accuracy bars
# are marked slow (`make test-slow`).

# test accuracy of the --quick run with seed 0, measured: SVM 0.948, softmax 0.970 (seeds 1, 2:
# 0.981 / 0.967 and 0.974 / 0.978); chance is 0.1
DIGITS_MIN_TEST_ACC = {"linear_svm": 0.90, "softmax": 0.92}


def _digits_run(tmp_path, name, *flags):
    import importlib
    module = importlib.import_module(f"experiments.{name}")
    out = run_quick_experiment(module, tmp_path, *flags)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["data_source"] == "digits" and saved["experiment"] == name and saved["quick"] is True
    assert saved["preprocessing"]["dim"] == 8 * 8 * 1 + 1
    init = saved["initial_loss"]
    if name == "linear_svm":
        assert init["value_W_1e-7"] == pytest.approx(9.0, abs=0.01)
    else:
        assert init["value_W_1e-7"] == pytest.approx(math.log(10), abs=1e-3)
    assert saved["naive_vs_vectorized"]["grad_rel_error"] < 1e-12      # float64: observed ~1e-15
    # the digits' own ranges were searched (65 columns: larger steps than CIFAR-10's)
    assert saved["search"]["space"]["learning_rate"][0] >= 1e-6
    assert all(saved["search"]["space"]["learning_rate"][0] <= t["learning_rate"]
               <= saved["search"]["space"]["learning_rate"][1] for t in saved["search"]["trials"])
    final = saved["final"]
    assert final["final_minibatch_loss_mean_last_100"] < final["initial_minibatch_loss"]
    for fig in ("templates", "search", "loss_curve"):
        assert Path(saved["figures"][fig]).read_bytes()[:4] == b"\x89PNG"
    assert out["final"]["test_acc"] == final["test_acc"]
    return saved


@pytest.mark.parametrize("name", ["linear_svm", "softmax"])
def test_experiment_smoke_on_digits(tmp_path, name):
    saved = _digits_run(tmp_path, name, "--smoke")
    assert saved["smoke"] is True and saved["data"] == {"name": "digits", "train": 400, "val": 270, "test": 270}
    assert saved["initial_loss"]["rows"] == 100 and saved["search"]["n_trials"] == 2
    for key in ("train_acc", "val_acc", "test_acc"):
        assert 0.0 <= saved["final"][key] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_svm", "softmax"])
def test_experiment_quick_on_digits(tmp_path, name):
    saved = _digits_run(tmp_path, name)
    assert saved["data"] == {"name": "digits", "train": 1257, "val": 270, "test": 270}
    final = saved["final"]
    assert final["test_acc"] >= DIGITS_MIN_TEST_ACC[name] and final["val_acc"] >= DIGITS_MIN_TEST_ACC[name]


# ---------------------------------------------------------------- experiments (real CIFAR-10 copy)

def _cifar_copy():
    return cifar10_or_skip()


def _cifar_run(tmp_path, name, capsys, flag):
    import importlib
    data = _cifar_copy()
    module = importlib.import_module(f"experiments.{name}")
    out = module.main(["--data-dir", data, flag, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["quick"] is True and saved["experiment"] == name
    init = saved["initial_loss"]
    if name == "linear_svm":
        assert init["value_W_1e-7"] == pytest.approx(9.0, abs=0.01) and 7.5 < init["value"] < 10.5
    else:
        assert init["value_W_1e-7"] == pytest.approx(math.log(10), abs=1e-3)
        assert init["value"] == pytest.approx(math.log(10), abs=0.1)
    assert saved["naive_vs_vectorized"]["grad_rel_error"] < 1e-8
    final = saved["final"]
    assert saved["search"]["n_trials"] >= 1 and saved["best"]["learning_rate"] > 0
    for fig in ("templates", "search", "loss_curve"):
        assert Path(saved["figures"][fig]).is_file()
    assert out["final"]["test_acc"] == final["test_acc"]
    assert "test acc" in capsys.readouterr().out
    return saved


# the same runs on the embedded digits are in the default suite; on CIFAR-10 they are slow
@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_svm", "softmax"])
def test_experiment_smoke(tmp_path, name, capsys):
    saved = _cifar_run(tmp_path, name, capsys, "--smoke")
    assert saved["smoke"] is True and saved["data"]["train"] == 400 and saved["preprocessing"]["dim"] == 3073
    for key in ("train_acc", "val_acc", "test_acc"):
        assert 0.0 <= saved["final"][key] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_svm", "softmax"])
def test_experiment_quick(tmp_path, name, capsys):
    saved = _cifar_run(tmp_path, name, capsys, "--quick")
    assert saved["speed"]["speedup"] > 1
    final = saved["final"]
    assert final["test_acc"] > 0.2 and final["val_acc"] > 0.2           # chance is 0.1
