"""experiments.convnets and experiments.what_learned on the embedded digits (no CIFAR-10
needed), and the checkpoint hand-over between them.

The default suite runs both with ``--smoke`` (300 training and 200 test images; the course's
net for its one epoch, the best net for 3) and checks the files, the structure and the
bookkeeping (history, times, time to a threshold, the cosine's decay, the time budget, the
checkpoint read back); the ``--quick`` runs and their accuracy claims are marked slow
(``make test-slow``)."""

import json
import os

import numpy as np
import pytest

from conftest import run_quick_experiment
from experiments import convnets as exp
from experiments import what_learned as wl


# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its quick run (a module
# fixture) is built once; groups are handed out before single tests.
pytestmark = pytest.mark.xdist_group("exp_convnets")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("convnets_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("convnets")
    return out, run_quick_experiment(exp, out)


def test_smoke_files_and_course_part(smoke):
    out, results = smoke
    for name in ("results.json", "convnet_curves.png", "fast_convnet.ckpt"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "convnets" and saved["data_source"] == "digits" and saved["smoke"] is True
    assert (saved["n_train"], saved["n_test"]) == (300, 200)
    course = saved["course"]
    assert course["n_train"] == 300 and course["images_per_second"] > 0
    for key in ("train_acc_1000", "val_acc", "test_acc"):
        assert 0.0 <= course[key] <= 1.0, key


def test_smoke_best_part_history_and_times(smoke):
    _, results = smoke
    assert results["best"]["recipe"]["epochs"] == 3
    _check_best_history(results["best"])


def test_smoke_what_learned_reads_the_checkpoint(smoke, tmp_path):
    out, _ = smoke
    res = run_quick_experiment(wl, tmp_path, "--smoke", "--checkpoint", str(out / "fast_convnet.ckpt"))
    _check_what_learned(out, res, tmp_path)
    assert res["tsne"]["n"] == 60 and res["neighbours"]["n_queries_scored"] == 200
    for key in ("same_label_fraction_features", "same_label_fraction_pixels"):
        assert 0.0 <= res["neighbours"][key] <= 1.0
    assert 0.0 <= res["tsne"]["five_nn_same_label_in_map"] <= 1.0


@pytest.mark.slow
def test_files_and_course_part(run):
    out, results = run
    for name in ("results.json", "convnet_curves.png", "fast_convnet.ckpt"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "convnets" and saved["data_source"] == "digits"
    course = saved["course"]
    # one epoch of the course's three-layer net learns the digits far above chance (0.1)
    assert course["train_acc_1000"] > 0.6 and course["val_acc"] > 0.6
    assert course["images_per_second"] > 0


@pytest.mark.slow
def test_best_part_history_and_times(run):
    _, results = run
    b = results["best"]
    _check_best_history(b)
    assert b["final_test_acc"] > 0.8  # 8 epochs on the digits


def _check_best_history(b):
    h = b["history"]
    n = len(h["epoch"])
    assert n == b["recipe"]["epochs"] and not b["stopped_at_budget"]
    assert all(len(v) == n for v in h.values())
    assert np.all(np.diff(h["cum_train_time_s"]) > 0)
    np.testing.assert_allclose(np.cumsum(h["train_time_s"]), h["cum_train_time_s"], rtol=1e-9)
    assert b["final_test_acc"] == h["test_acc"][-1] and b["headline"] == "test_acc"  # digits: no mirror TTA
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["lr"][-1] < max(h["lr"])  # the cosine has decayed
    # time to a threshold = cumulative training time at the first epoch reaching it
    for th, t in b["time_to_s"].items():
        hits = [c for a, c in zip(h["test_acc"], h["cum_train_time_s"]) if a >= float(th)]
        assert t == (hits[0] if hits else None)


def test_time_budget_stops_training(tmp_path):
    results = run_quick_experiment(exp, tmp_path, "--smoke", "--part", "best", "--time-budget", "0")
    b = results["best"]
    assert b["stopped_at_budget"] and len(b["history"]["epoch"]) == 1


@pytest.mark.slow
def test_what_learned_reads_the_checkpoint(run, tmp_path):
    out, _ = run
    res = run_quick_experiment(wl, tmp_path, "--checkpoint", str(out / "fast_convnet.ckpt"))
    _check_what_learned(out, res, tmp_path)
    nb = res["neighbours"]
    # features learned for classification put same-class digits together
    assert nb["same_label_fraction_features"] > 0.8
    assert res["tsne"]["five_nn_same_label_in_map"] > 0.7
    assert res["first_layer"]["shape"] == [3, 3, 1, 16]


def _check_what_learned(out, res, tmp_path):
    model, params, state, config = wl.load_fast_convnet(str(out / "fast_convnet.ckpt"))
    assert config["widths"] == [32, 64] and params["stem"]["conv"]["w"].shape == (3, 3, 1, 16)
    assert res["model_from"].endswith("fast_convnet.ckpt")
    for name in ("filters.png", "neighbours.png", "tsne.png", "results.json"):
        assert os.path.getsize(tmp_path / name) > 0


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    q, base = rng.normal(size=(5, 7)), rng.normal(size=(40, 7))
    idx = wl.nearest(q, base, 3)
    d = ((q[:, None, :] - base[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx, np.argsort(d, 1)[:, :3])


def test_smoothed_cross_entropy_matches_definition():
    import jax

    # the definition in NumPy float64; the loss jitted (eager, each small op would compile alone)
    s = np.random.default_rng(1).normal(size=(6, 10)).astype(np.float32)
    y = np.arange(6) % 10
    e = 0.2
    z = s.astype(np.float64) - s.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    target = (1 - e) * np.eye(10)[y] + e / 10
    want = -np.mean(np.sum(target * logp, -1))
    loss = jax.jit(exp.smoothed_cross_entropy, static_argnames="smoothing")
    np.testing.assert_allclose(loss(s, y, smoothing=e), want, rtol=1e-5)
    np.testing.assert_allclose(loss(s, y, smoothing=0.0), -np.mean(logp[np.arange(6), y]), rtol=1e-5)
