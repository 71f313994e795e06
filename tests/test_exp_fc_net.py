"""experiments.fc_net on the embedded digits (no CIFAR-10 needed): files written, one progress
line per epoch, the warmup + cosine schedule really applied, the net learns, the test accuracy
is the best-validation epoch's, resume reproduces the run.

The default suite runs ``--smoke`` (300 images, 12 epochs of 5 steps) and checks all of that
except the accuracy bars; the ``--quick`` run (1,257 images, 20 epochs) and its checks are marked
slow (``make test-slow``)."""

import contextlib
import io
import json
import math

import numpy as np
import pytest

from experiments import fc_net as exp


# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its quick run (a module
# fixture) is built once; groups are handed out before single tests.
pytestmark = pytest.mark.xdist_group("exp_fc_net")


def _run(argv):
    mp = pytest.MonkeyPatch()
    mp.delenv("JAXNET_CIFAR10_DIR", raising=False)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            results = exp.main(argv)
    finally:
        mp.undo()
    return results, buf.getvalue()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fc_net_smoke")
    results, printed = _run(["--smoke", "--out", str(out)])
    return results, out, printed


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fc_net")
    results, printed = _run(["--quick", "--out", str(out)])
    return results, out, printed


def test_smoke_run_writes_files(smoke_run):
    saved = _check_files(*smoke_run[:2])
    assert saved["smoke"] is True and saved["protocol"]["n_train"] == 300
    assert saved["protocol"]["epochs_run"] == saved["protocol"]["epochs"] == 12


def test_smoke_progress_schedule_and_bookkeeping(smoke_run):
    results, _, printed = smoke_run
    _check_progress_lines(results, printed)
    _check_warmup_cosine(results)
    _check_best_val_epoch(results)
    assert results["history"]["train_loss"][-1] < results["history"]["train_loss"][0]


def test_smoke_resume_reproduces_the_run(smoke_run):
    _check_resume(*smoke_run[:2], "--smoke")


@pytest.mark.slow
def test_quick_run_writes_files(quick_run):
    saved = _check_files(*quick_run[:2])
    assert saved["protocol"]["epochs_run"] == saved["protocol"]["epochs"] == len(saved["history"]["epoch"]) == 20


def _check_files(results, out):
    for name in ("results.json", "fc_net_curves.png", "metrics.jsonl", "checkpoint", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "fc_net" and saved["quick"] is True
    assert saved["data_source"] == "digits"
    p = saved["protocol"]
    assert p["norm"] == "batchnorm" and p["dropout"] == pytest.approx(0.3)
    assert p["augment"] == {"crop_padding": 1, "flip": False}
    assert p["epochs_run"] == p["epochs"] == len(saved["history"]["epoch"])
    # (256, 128) with batch norm (gamma, beta; the affine keeps its bias) on 8x8x1 inputs
    assert saved["n_params"] == (64 * 256 + 256 + 2 * 256) + (256 * 128 + 128 + 2 * 128) + (128 * 10 + 10)
    assert saved["n_params"] == _fc_params([64, 256, 128, 10])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == p["epochs"]
    assert saved["target_test_acc"] == exp.TARGET_TEST_ACC
    return saved


def _fc_params(dims):
    """Parameters of affine(+batch norm) layers by hand: w, b, and gamma, beta for each hidden layer."""
    total = 0
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        total += d_in * d_out + d_out + (2 * d_out if d_out != dims[-1] else 0)
    return total


def test_committed_cifar10_run_met_the_target():
    """docs/results/fc_net.json, the full CIFAR-10 run: its target flag follows its numbers."""
    from pathlib import Path

    saved = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results" / "fc_net.json").read_text())
    p = saved["protocol"]
    assert saved["data_source"] == "cifar10" and p["n_train"] == 49000 and p["n_test"] == 10000
    assert saved["target_test_acc"] == exp.TARGET_TEST_ACC
    assert saved["test_acc"] >= saved["target_test_acc"] and saved["target_met"] is True
    assert saved["n_params"] == _fc_params([32 * 32 * 3, *p["hidden"], 10])


@pytest.mark.slow
def test_one_progress_line_per_epoch(quick_run):
    results, _, printed = quick_run
    _check_progress_lines(results, printed)


def _check_progress_lines(results, printed):
    epochs = results["protocol"]["epochs"]
    lines = [ln for ln in printed.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == epochs
    assert lines[0].startswith(f"epoch   1/{epochs}") and lines[-1].startswith(f"epoch  {epochs}/{epochs}")
    assert all("val loss" in ln and "img/s" in ln for ln in lines)


@pytest.mark.slow
def test_warmup_cosine_schedule_applied(quick_run):
    _check_warmup_cosine(quick_run[0])


def _check_warmup_cosine(results):
    lr = np.asarray(results["history"]["lr"])
    peak = results["protocol"]["lr"]
    assert results["protocol"]["schedule"] == "warmup_cosine"
    assert results["protocol"]["warmup_steps"] == results["protocol"]["steps_per_epoch"]  # 1 epoch
    assert np.all(lr <= peak * (1 + 1e-6))
    i = int(np.argmax(lr))
    assert 0 <= i <= 2 and lr[i] > 0.9 * peak
    assert np.all(np.diff(lr[i:]) <= 1e-12)  # cosine decay after the warmup
    assert lr[-1] < 1e-3 * peak


@pytest.mark.slow
def test_learns_and_reports_best_val_epoch(quick_run):
    results, _, _ = quick_run
    h = results["history"]
    assert h["train_loss"][-1] < 0.6 * h["train_loss"][0]
    assert h["train_loss"][0] < math.log(10) + 0.2
    _check_best_val_epoch(results)
    assert results["best_val_acc"] > 0.8
    assert results["test_acc"] > 0.8 and results["last_epoch_test_acc"] > 0.8


def _check_best_val_epoch(results):
    h = results["history"]
    assert results["best_val_acc"] == pytest.approx(max(h["val_acc"]))
    assert h["val_acc"][results["best_epoch"] - 1] == pytest.approx(results["best_val_acc"])
    for key in ("test_acc", "test_loss", "last_epoch_test_acc", "images_per_sec_median"):
        assert results[key] is not None and math.isfinite(results[key]), key


@pytest.mark.slow
def test_resume_reproduces_the_run(quick_run):
    _check_resume(*quick_run[:2], "--quick")


def _check_resume(results, out, flag):
    again, printed = _run([flag, "--out", str(out), "--resume"])
    assert again["history"]["train_loss"] == results["history"]["train_loss"]
    assert again["best_epoch"] == results["best_epoch"]
    assert again["test_acc"] == pytest.approx(results["test_acc"], abs=1e-9)
    assert len([ln for ln in printed.splitlines() if ln.startswith("epoch ")]) == results["protocol"]["epochs"]


def test_format_epoch():
    row = {"epoch": 3, "train_loss": 1.5, "train_acc": 0.5, "val_loss": None, "val_acc": 0.25, "lr": 1e-3,
           "images_per_sec": 1234.0, "epoch_time": 2.5}
    line = exp.format_epoch(row, 30, 10.0)
    assert line.startswith("epoch   3/30") and "val loss    nan" in line and "1234 img/s" in line


def test_bad_options_are_one_line_errors(tmp_path):
    for argv, msg in ((["--dropout", "1.5"], "--dropout"), (["--hidden", "10,x"], "--hidden"),
                      (["--batch-size", "5000"], "larger than the training set"), (["--lr", "-1"], "--lr"),
                      (["--epochs", "0"], "--epochs")):
        with pytest.raises(SystemExit, match=msg):
            _run(["--quick", "--out", str(tmp_path), *argv])
