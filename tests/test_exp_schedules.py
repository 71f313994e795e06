"""experiments.schedules on the embedded digits (no CIFAR-10 needed): files written, the recorded
per-epoch lr follows each schedule's shape, every run's loss goes down.

The default suite runs ``--smoke`` (the step and warmup + cosine schedules, 4 epochs on 300
images) and checks the files, the structure, that fit's recorded lr is the schedule's, each
schedule's shape and that the loss goes down; every schedule's values are checked directly
(``test_schedule_values_directly``). The ``--quick`` run (all six schedules) and its checks
are marked slow (``make test-slow``)."""

import json
import math

import numpy as np
import pytest

from conftest import run_quick_experiment
from experiments import schedules as exp


# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its quick run (a module
# fixture) is built once; groups are handed out before single tests.
pytestmark = pytest.mark.xdist_group("exp_schedules")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("schedules_smoke")
    results = run_quick_experiment(exp, out, "--smoke")
    return results, out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("schedules")
    results = run_quick_experiment(exp, out)
    return results, out


def test_smoke_run_files_lr_history_and_loss(smoke_run):
    results, out = smoke_run
    for name in ("results.json", "schedules.png", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "schedules" and saved["quick"] is True and saved["smoke"] is True
    assert saved["data_source"] == "digits"
    p = saved["protocol"]
    assert (p["n_train"], p["epochs"], p["steps_per_epoch"]) == (300, 4, 3)
    assert list(saved["schedules"]) == list(saved["schedule_values"]) == list(exp.SMOKE_SCHEDULES)
    for name, r in saved["schedules"].items():
        assert len(r["history"]["lr"]) == p["epochs"], name
        for key in ("final_train_loss", "final_val_acc", "test_acc", "lr_start", "lr_middle", "lr_end"):
            assert r[key] is not None and math.isfinite(r[key]), (name, key)
        assert 0.0 <= r["test_acc"] <= 1.0
        assert len(saved["schedule_values"][name]) == p["total_steps"]
        loss = r["history"]["train_loss"]
        assert loss[-1] < loss[0], (name, loss)
    _check_lr_history(results)


def test_schedules_option(tmp_path):
    with pytest.raises(SystemExit, match="--schedules: unknown"):
        exp.main(["--smoke", "--out", str(tmp_path), "--schedules", "step,sawtooth"])


@pytest.mark.slow
def test_quick_run_writes_files(quick_run):
    results, out = quick_run
    for name in ("results.json", "schedules.png", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "schedules" and saved["quick"] is True
    assert saved["data_source"] == "digits"
    assert set(saved["schedules"]) == set(exp.SCHEDULES)
    epochs = saved["protocol"]["epochs"]
    for name, r in saved["schedules"].items():
        assert len(r["history"]["lr"]) == epochs, name
        for key in ("final_train_loss", "final_val_acc", "test_acc", "lr_start", "lr_middle", "lr_end"):
            assert r[key] is not None and math.isfinite(r[key]), (name, key)
        assert 0.0 <= r["test_acc"] <= 1.0
        assert len(saved["schedule_values"][name]) == saved["protocol"]["total_steps"]


@pytest.mark.slow
def test_lr_history_follows_schedule_shape(quick_run):
    results, _ = quick_run
    assert set(results["schedules"]) == set(exp.SCHEDULES)
    _check_lr_history(results)


def _check_lr_history(results):
    """fit's per-epoch lr is the schedule's, and each schedule run has its shape."""
    runs = results["schedules"]
    lr = results["protocol"]["lr"]
    spe = results["protocol"]["steps_per_epoch"]
    for name, r in runs.items():
        h = np.asarray(r["history"]["lr"])
        # the history holds the rate of each epoch's last update: s(e * spe - 1)
        vals = np.asarray(results["schedule_values"][name])
        np.testing.assert_allclose(h, vals[spe - 1::spe], rtol=1e-5, atol=1e-12, err_msg=name)
        # the final optimizer state carries the last update's rate
        assert r["lr_final_state"] == pytest.approx(r["lr_end"], rel=1e-5, abs=1e-12), name
    if "constant" in runs:
        assert np.allclose(runs["constant"]["history"]["lr"], lr)
        assert runs["constant"]["lr_start"] == runs["constant"]["lr_end"] == pytest.approx(lr)
    for name in ("step", "exponential", "inverse_time", "cosine"):
        if name not in runs:
            continue
        h = np.asarray(runs[name]["history"]["lr"])
        assert np.all(np.diff(h) <= 1e-12), (name, h)
        assert h[-1] < h[0], (name, h)
        r = runs[name]
        assert r["lr_start"] == pytest.approx(lr) and r["lr_start"] > r["lr_middle"] > r["lr_end"], name
    w = np.asarray(runs["warmup_cosine"]["history"]["lr"])
    assert w[1] > w[0], w  # still warming up
    assert int(np.argmax(w)) > 0 and w[-1] < w.max(), w
    r = runs["warmup_cosine"]
    assert r["lr_start"] == 0.0 and r["lr_max"] == pytest.approx(lr, rel=1e-5)
    assert r["lr_middle"] > r["lr_end"]


@pytest.mark.slow
def test_every_run_loss_decreases(quick_run):
    results, _ = quick_run
    for name, r in results["schedules"].items():
        loss = r["history"]["train_loss"]
        assert loss[-1] < loss[0], (name, loss)
        assert loss[-1] < math.log(10), (name, loss)
        assert r["final_val_acc"] > 0.5, name


def test_schedule_values_directly():
    total, warm = 40, 8
    v = {n: exp.schedule_values(exp.build_schedule(n, 0.1, total, warm), total) for n in exp.SCHEDULES}
    np.testing.assert_allclose(v["constant"], 0.1)
    assert v["step"][0] == pytest.approx(0.1) and v["step"][-1] == pytest.approx(0.1 / 8)
    assert v["exponential"][0] == pytest.approx(0.1)
    assert v["cosine"][0] == pytest.approx(0.1) and v["cosine"][-1] < 1e-3
    assert v["warmup_cosine"][0] == 0.0 and np.argmax(v["warmup_cosine"]) == warm
