"""experiments.detection (YOLO vs two-stage) and experiments.instance_segmentation (the mask head) on
digit scenes. The default suite runs each with ``--smoke`` (48 scenes of 32x32, width 4, 1 epoch) and
checks the files and the bookkeeping; the ``--quick`` runs and their claims are marked slow."""

import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import detection as det
from experiments import instance_segmentation as inst

pytestmark = pytest.mark.xdist_group("exp_detection")


@pytest.fixture(scope="module")
def det_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("det_smoke")
    return out, run_quick_experiment(det, out, "--smoke")


@pytest.fixture(scope="module")
def inst_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("inst_smoke")
    return out, run_quick_experiment(inst, out, "--smoke")


def _check_summary(s):
    assert 0 <= s["map"] <= s["map50"] <= 1
    pr = s["pr50"]
    assert len(pr["recall"]) == len(pr["precision"]) == 101
    p = np.asarray(pr["precision"])
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) <= 1e-12)      # interpolated: non-increasing


def test_detection_smoke_files_and_results(det_smoke):
    out, results = det_smoke
    for name in ("results.json", "detection_pr.png", "detection_examples.png", "detection_curves.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "detection" and saved["smoke"] is True
    assert saved["data"]["n_train"] == 48 and saved["data"]["size"] == 32 and saved["data"]["test_objects"] > 16
    assert set(saved["detectors"]) == {"yolo", "two_stage"}
    for r in saved["detectors"].values():
        _check_summary(r["test"])
        _check_summary(r["true_classes"])
        h = r["history"]
        assert len(h["train_loss"]) == 1 and np.isfinite(h["train_loss"][0]) and 0 <= h["val_map50"][0] <= 1
    assert set(saved["detectors"]["two_stage"]["history"]["parts"][0]) == {"rpn_cls", "rpn_box", "roi_cls", "roi_box"}
    assert set(saved["detectors"]["yolo"]["history"]["parts"][0]) == {"coord_xy", "coord_wh", "obj", "noobj", "class"}


def test_instance_segmentation_smoke_files_and_results(inst_smoke):
    out, results = inst_smoke
    for name in ("results.json", "instance_examples.png", "instance_pr.png", "instance_curves.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "instance_segmentation"
    r = saved["results"]
    assert set(r) == {"mask", "box", "mask_true_classes", "mask_true_boxes_and_classes"}
    for s in r.values():
        _check_summary(s)
    assert "mask" in saved["history"]["parts"][0]


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--n-test", "0"], "--n-test must be >= 1, got 0"),
    (["--width", "-2"], "--width must be >= 1, got -2"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
@pytest.mark.parametrize("module", [det, inst], ids=["detection", "instance_segmentation"])
def test_bad_flags_exit_with_one_line(module, flags, message, tmp_path, capsys):
    assert_bad_flags_exit(module, flags, message, tmp_path, capsys)


@pytest.mark.slow
def test_quick_detection_claims(tmp_path):
    """Both detectors learn: mAP@0.5 well above a guess; the class oracle does not lose."""
    r = run_quick_experiment(det, tmp_path)["detectors"]
    for name, floor in (("yolo", 0.3), ("two_stage", 0.3)):
        assert r[name]["test"]["map50"] > floor, (name, r[name]["test"]["map50"])
        assert r[name]["true_classes"]["map50"] >= r[name]["test"]["map50"] - 0.01


@pytest.mark.slow
def test_quick_instance_segmentation_claims(tmp_path):
    r = run_quick_experiment(inst, tmp_path)["results"]
    assert r["mask"]["map50"] > 0.2, r["mask"]["map50"]
    assert r["mask_true_boxes_and_classes"]["map50"] > r["mask"]["map50"]


def test_a_nan_loss_stops_training_with_the_epoch(tmp_path):
    """A loss that turns NaN stops the run after that epoch, naming the detector and the epoch."""
    from types import SimpleNamespace

    import jax.numpy as jnp

    from jaxnet.detection.scenes import make_scenes

    sc = make_scenes(4, split="val", size=32, max_objects=2)
    args = SimpleNamespace(lr=1e-3, seed=0, batch_size=2, epochs=3, quick=True, no_progress=True)
    calls = []

    def loss_fn(p, x, b, lab, v, m, key):
        loss = jnp.sum(p["w"] * x.mean()) / 0.0          # inf, then NaN after the update
        return loss, {"all": loss}

    def evaluate_val(p):
        calls.append(1)
        return 0.0

    with pytest.raises(FloatingPointError, match="yolo: the training loss is (nan|inf) in epoch 1"):
        det.train_detector("yolo", loss_fn, {"w": jnp.ones(2)}, sc, evaluate_val, args)
    assert calls == []                                  # stopped before evaluating or writing anything
