"""experiments.localization on the embedded digits (no CIFAR-10 needed).

The default suite runs it with ``--smoke`` (192 training and 64 test one-digit scenes, 2 epochs)
and checks the files, the history, the bounds' bookkeeping and the box decoding; the ``--quick``
run and its claims are marked slow (``make test-slow``)."""

import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import localization as exp

pytestmark = pytest.mark.xdist_group("exp_localization")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("localization_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_history_and_bounds(smoke):
    out, results = smoke
    for name in ("results.json", "localization_examples.png", "localization_curves.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "localization" and saved["smoke"] is True and saved["data_source"] == "digits"
    assert saved["n_train"] == 192 and saved["n_test"] == 64 and saved["epochs"] == 2
    h = saved["history"]
    assert len(h["train_loss"]) == 2 and h["train_loss"][1] < h["train_loss"][0]          # it learns
    np.testing.assert_allclose(np.add(h["train_ce"], h["train_box"]), h["train_loss"], rtol=1e-5)
    t = saved["test"]
    for k in ("accuracy", "mean_iou", "mean_iou_true_class", "localized", "localized_true_class"):
        assert 0.0 <= t[k] <= 1.0, k
    assert t["localized"] <= min(t["accuracy"], t["iou_ge_0.5"])
    assert t["mean_iou"] == h["test_mean_iou"][-1] and saved["upper_bound_true_class"]["accuracy"] == 1.0
    assert 0.0 < saved["baseline_mean_box"]["mean_iou"] < 0.6


def test_encode_decode_against_the_canvas_round_trips():
    import jax

    from jaxnet.detection.boxes import decode_boxes, encode_boxes

    boxes = np.array([[10.0, 20, 30, 50], [0, 0, 64, 64], [40, 5, 60, 21]], np.float32)
    a = exp.canvas_anchor(64)
    f = jax.jit(lambda b: decode_boxes(encode_boxes(b, a, exp.BOX_WEIGHTS), a, exp.BOX_WEIGHTS))
    np.testing.assert_allclose(np.asarray(f(boxes)), boxes, atol=1e-4)
    # the paired IoU the evaluation uses, by hand: [10,20,30,50] vs [20,20,40,50]: 300 / 900
    iou = exp._paired_iou(boxes[:1], np.array([[20.0, 20, 40, 50]]))
    assert iou[0] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_quick_run_localizes_the_digits(tmp_path):
    res = run_quick_experiment(exp, tmp_path)               # seed 0 measured: accuracy 0.857, box IoU 0.575
    t = res["test"]
    assert t["accuracy"] > 0.75 and t["mean_iou"] > 0.5
    assert t["mean_iou"] > res["baseline_mean_box"]["mean_iou"] + 0.2
    assert t["mean_iou_true_class"] >= t["mean_iou"] - 1e-9


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs"),
    (["--n-train", "0"], "--n-train"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--box-weight", "-0.5"], "--box-weight"),
    (["--seed", "-3"], "--seed must be >= 0"),
    (["--data-dir", "/nonexistent/cifar10-jpeg.tar.gz"], "/nonexistent/cifar10-jpeg.tar.gz"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
