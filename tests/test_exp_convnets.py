"""experiments.convnets and experiments.what_learned: the --quick runs on the embedded digits
(no CIFAR-10 needed), and the checkpoint hand-over between them."""

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
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("convnets")
    return out, run_quick_experiment(exp, out)


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


def test_best_part_history_and_times(run):
    _, results = run
    b = results["best"]
    h = b["history"]
    n = len(h["epoch"])
    assert n == b["recipe"]["epochs"] and not b["stopped_at_budget"]
    assert all(len(v) == n for v in h.values())
    assert np.all(np.diff(h["cum_train_time_s"]) > 0)
    np.testing.assert_allclose(np.cumsum(h["train_time_s"]), h["cum_train_time_s"], rtol=1e-9)
    assert b["final_test_acc"] == h["test_acc"][-1] and b["headline"] == "test_acc"  # digits: no mirror TTA
    assert b["final_test_acc"] > 0.8  # 8 epochs on the digits
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["lr"][-1] < max(h["lr"])  # the cosine has decayed
    # time to a threshold = cumulative training time at the first epoch reaching it
    for th, t in b["time_to_s"].items():
        hits = [c for a, c in zip(h["test_acc"], h["cum_train_time_s"]) if a >= float(th)]
        assert t == (hits[0] if hits else None)


def test_time_budget_stops_training(tmp_path):
    results = run_quick_experiment(exp, tmp_path, "--part", "best", "--time-budget", "0")
    b = results["best"]
    assert b["stopped_at_budget"] and len(b["history"]["epoch"]) == 1


def test_what_learned_reads_the_checkpoint(run, tmp_path):
    out, _ = run
    model, params, state, config = wl.load_fast_convnet(str(out / "fast_convnet.ckpt"))
    assert config["widths"] == [32, 64] and params["stem"]["conv"]["w"].shape == (3, 3, 1, 16)
    res = run_quick_experiment(wl, tmp_path, "--checkpoint", str(out / "fast_convnet.ckpt"))
    assert res["model_from"].endswith("fast_convnet.ckpt")
    for name in ("filters.png", "neighbours.png", "tsne.png", "results.json"):
        assert os.path.getsize(tmp_path / name) > 0
    nb = res["neighbours"]
    # features learned for classification put same-class digits together
    assert nb["same_label_fraction_features"] > 0.8
    assert res["tsne"]["five_nn_same_label_in_map"] > 0.7
    assert res["first_layer"]["shape"] == [3, 3, 1, 16]


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    q, base = rng.normal(size=(5, 7)), rng.normal(size=(40, 7))
    idx = wl.nearest(q, base, 3)
    d = ((q[:, None, :] - base[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx, np.argsort(d, 1)[:, :3])


def test_smoothed_cross_entropy_matches_definition():
    import jax
    import jax.numpy as jnp

    s = jnp.asarray(np.random.default_rng(1).normal(size=(6, 10)), jnp.float32)
    y = jnp.arange(6) % 10
    e = 0.2
    logp = jax.nn.log_softmax(s)
    target = (1 - e) * jax.nn.one_hot(y, 10) + e / 10
    want = -jnp.mean(jnp.sum(target * logp, -1))
    np.testing.assert_allclose(exp.smoothed_cross_entropy(s, y, smoothing=e), want, rtol=1e-5)
    np.testing.assert_allclose(exp.smoothed_cross_entropy(s, y, smoothing=0.0),
                               -jnp.mean(logp[jnp.arange(6), y]), rtol=1e-5)
