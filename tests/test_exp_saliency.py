"""experiments.saliency: one smoke run (digits net) for the files, the numbers and the claims;
the helpers (image choice, rescaling, the sanity summary); the bad flags."""
import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import saliency as exp

pytestmark = pytest.mark.xdist_group("exp_understand")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("saliency")
    res = run_quick_experiment(exp, out, "--smoke")
    return out, res, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_maps_sanity_curves_and_claims(smoke):
    out, res, saved = smoke
    assert saved["experiment"] == "saliency" and saved["source"] == "digits"
    assert set(saved["claims"]) == {"vanilla_gradient_changes", "grad_cam_changes", "guided_backprop_barely_changes"}
    assert all(isinstance(v, bool) for v in saved["claims"].values())
    assert len(saved["images"]) == 4 and saved["gradcam_layer"] == "block2"
    # the 4 images are correctly classified, one per class 0..3
    assert saved["labels"] == [0, 1, 2, 3]
    layers = saved["sanity"]["layers"]
    assert layers[0] == "fc" and layers[-1] == "stem/conv" and len(layers) == 11
    for name in exp.SANITY:
        s = saved["sanity"][name]
        rho = np.asarray(s["rank_correlation"], dtype=float)
        assert rho.shape == (11, 4)
        finite = rho[np.isfinite(rho)]
        assert finite.size and np.all(np.abs(finite) <= 1 + 1e-9)
        assert len(s["mean"]) == 11 and s["after_top"] == pytest.approx(s["mean"][0])
    for f in ("saliency.png", "sanity_curves.png", "sanity_maps.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    assert all(t["per_image_ms"] > 0 for t in saved["times"].values())


def test_pick_images_one_correct_image_per_class_in_turn():
    y_true = np.array([0, 0, 1, 2, 1, 0, 2])
    y_pred = np.array([1, 0, 1, 2, 1, 0, 0])      # index 0 and 6 are wrong
    assert exp.pick_images(y_true, y_pred, 3, 3).tolist() == [1, 2, 3]
    assert exp.pick_images(y_true, y_pred, 5, 3).tolist() == [1, 2, 3, 5, 4]
    with pytest.raises(ValueError, match="only 5 correctly classified"):
        exp.pick_images(y_true, y_pred, 6, 3)


def test_unit_scale_and_max_abs_channels():
    m = np.array([[[1.0, 3.0]], [[2.0, 2.0]]])
    assert exp.unit_scale(m).tolist() == [[[0.0, 1.0]], [[0.0, 0.0]]]    # a constant map -> 0
    g = np.array([[[[1.0, -4.0]]]])
    assert exp.max_abs_channels(g).tolist() == [[[4.0]]]


def test_summarize_sanity_leaves_constant_maps_out():
    rho = np.array([[0.9, 0.7], [0.2, np.nan]])
    s = exp.summarize_sanity(rho)
    assert s["mean"].tolist() == pytest.approx([0.8, 0.2])
    assert s["constant_maps"] == 1 and s["after_top"] == pytest.approx(0.8)
    assert s["after_all"] == pytest.approx(0.2) and s["lowest_mean"] == pytest.approx(0.2)
    assert s["steps_above_threshold"] == 1                       # 0.8 >= 0.5, then 0.2 < 0.5
    assert exp.summarize_sanity(np.array([[0.9], [0.6]]))["steps_above_threshold"] == 2


@pytest.mark.parametrize("flags, message", [
    (["--images", "0"], "--images must be >= 1"), (["--samples", "0"], "--samples must be >= 1"),
    (["--noise", "-1"], "--noise must be a finite number >= 0"), (["--stride", "0"], "--stride must be >= 1"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
