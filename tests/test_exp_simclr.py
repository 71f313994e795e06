"""experiments.simclr on the embedded digits (no CIFAR-10 needed).

The default suite runs it with ``--smoke`` (30 steps of batch 32, a one-block width-16 encoder) and checks
the files, the loss curve, the timing and both probes' bookkeeping; the ``--quick`` run is slow.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import simclr as exp

pytestmark = pytest.mark.xdist_group("exp_simclr")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("simclr_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_and_history(smoke):
    out, results = smoke
    for name in ("results.json", "simclr_loss.png", "simclr_pairs.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "simclr" and saved["data_source"] == "digits" and saved["smoke"] is True
    pre, h = saved["pretrain"], saved["history"]
    assert pre["steps"] == 30 and pre["stopped_by"] == "steps" and pre["batch_size"] == 32
    assert len(h["loss"]) == len(h["time_s"]) == len(h["lr"]) == 30
    assert all(np.isfinite(h["loss"])) and np.all(np.diff(h["time_s"]) > 0) and h["time_s"][0] > 0
    # NT-Xent of 64 views starts near log(63) (every other view equally similar) and goes down
    assert abs(h["loss"][0] - np.log(63)) < 1.0
    assert np.mean(h["loss"][-4:]) < h["loss"][0] and saved["claims"]["loss_went_down"] is True
    assert pre["wall_s"] > 0 and pre["cpu_s"] > 0 and pre["feature_dim"] == 16
    assert h["lr"][0] < h["lr"][5] and h["lr"][-1] < max(h["lr"])     # warm-up, then decay


def test_smoke_probes(smoke):
    _, results = smoke
    p = results["probe"]
    for name in ("simclr", "random_init"):
        assert 0.1 < p[name]["test_acc"] <= 1.0 and p[name]["C"] in exp.PROBE_CS
        assert set(p[name]["val_acc_by_C"]) == {str(c) for c in exp.PROBE_CS}
    assert results["gap"] == pytest.approx(p["simclr"]["test_acc"] - p["random_init"]["test_acc"])
    assert results["n_probe_test"] == 270 and results["claims"]["gap_at_least_10_points"] is None  # digits


def test_learning_rate_schedule():
    assert exp.learning_rate(1.0, 0, 0.0) == pytest.approx(1 / exp.WARMUP_STEPS)
    assert exp.learning_rate(1.0, exp.WARMUP_STEPS, 0.0) == pytest.approx(1.0)
    assert exp.learning_rate(1.0, 500, 0.5) == pytest.approx(np.cos(np.pi / 4))
    assert exp.learning_rate(1.0, 500, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert exp.learning_rate(1.0, 1, 0.0, warmup=2) == pytest.approx(1.0)
    assert exp.warmup_steps(SimpleNamespace(steps=12)) == 2 and exp.warmup_steps(SimpleNamespace(steps=None)) == 50


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    f = rng.standard_normal((120, 5)) + 4.0 * np.eye(5)[y]
    res = exp.linear_probe(f[::2], y[::2], f[1::2], y[1::2], num_classes=3)
    assert res["test_acc"] > 0.9 and res["C"] in exp.PROBE_CS
    noise = exp.linear_probe(rng.standard_normal((60, 5)), y[::2], rng.standard_normal((60, 5)), y[1::2], num_classes=3)
    assert noise["test_acc"] < res["test_acc"]


def test_fit_logistic_is_at_the_regularised_optimum():
    rng = np.random.default_rng(1)
    a, y, c = rng.standard_normal((90, 4)), rng.integers(0, 3, 90), 0.5
    w, b = exp.fit_logistic(a, y, c, 3)
    s = a @ w + b
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = p - np.eye(3)[y]
    # the gradient of C * sum CE + ||W||^2 / 2 vanishes (the bias is not penalised)
    np.testing.assert_allclose(c * a.T @ g + w, 0.0, atol=1e-4)
    np.testing.assert_allclose(g.sum(axis=0), 0.0, atol=1e-4)
    assert np.abs(w).max() > 1e-3                                        # not the zero start


@pytest.mark.slow
def test_quick_run_on_digits(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["pretrain"]["steps"] == 300 and res["claims"]["loss_went_down"]
    assert res["probe_simclr_test_acc"] > 0.8


@pytest.mark.parametrize("flags, message", [
    (["--minutes", "0"], "--minutes must be > 0"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--width", "3"], "--width must be an even int"),
    (["--batch-size", "1"], "--batch-size must be >= 2"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--proj-dim", "0"], "--proj-dim must be >= 1"),
    (["--probe-train", "10"], "--probe-train must be >= 50"),
    (["--data", "cifar10"], "CIFAR-10 not found"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
