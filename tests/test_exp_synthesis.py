"""experiments.synthesis: one smoke run (digits; class visualisations, feature inversion from two
depths, DeepDream), its files and structural facts, the bad flags, and the helpers."""
import json
import math

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import synthesis as exp

pytestmark = pytest.mark.xdist_group("exp_understand")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthesis")
    res = run_quick_experiment(exp, out, "--smoke")
    return out, res, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_numbers_claims_and_figures(smoke):
    out, res, saved = smoke
    assert saved["source"] == "digits" and saved["smoke"]
    rows = saved["class_visualization"]["rows"]
    assert len(rows) == 10 and len({r["class"] for r in rows}) == 10
    for r in rows:
        assert math.isfinite(r["score_before"]) and math.isfinite(r["score_after"])
        assert 0.0 <= r["probability"] <= 1.0
    inv = saved["feature_inversion"]
    assert inv["layers"] == ["block1", "block2"]
    for layer in inv["layers"]:
        r = inv["per_layer"][layer]
        assert len(r["pixel_rmse"]) == len(r["relative_feature_error"]) == 2
        assert all(0.0 <= e <= 1.0 for e in r["pixel_rmse"]) and all(e >= 0 for e in r["relative_feature_error"])
        assert r["loss_last"] < r["loss_first"]                       # Adam lowered the inversion loss
    d = saved["deepdream"]
    assert d["layer"] == "block2" and d["norm_before"] > 0 and math.isfinite(d["norm_after"])
    assert set(saved["claims"]) == {"class_visualizations_classified_as_their_class",
                                    "early_layer_inversion_closer_to_image_than_late",
                                    "deepdream_raises_layer_activation_norm"}
    assert all(isinstance(v, bool) for v in saved["claims"].values())
    for name in ("class_visualizations.png", "feature_inversion.png", "deepdream.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert res["class_visualization"]["iterations"] == 20 and res["sizes"]["inversion_iterations"] == 30


def test_course_numbers_scaled_to_the_image():
    hp = exp.course_scaled((224, 224, 3))
    assert hp["learning_rate"] == pytest.approx(25.0) and hp["max_jitter"] == 16
    hp = exp.course_scaled((32, 32, 3))
    assert hp["learning_rate"] == pytest.approx(25.0 * math.sqrt(3072 / 150528)) and hp["max_jitter"] == 2
    assert exp.course_scaled((8, 8, 1))["max_jitter"] == 1


def test_errors_per_image():
    a = np.zeros((2, 2, 2, 1))
    b = np.stack([np.zeros((2, 2, 1)), np.full((2, 2, 1), 0.5)])
    np.testing.assert_allclose(exp.pixel_rmse(a, b), [0.0, 0.5])
    f0 = np.array([[3.0, 4.0], [1.0, 0.0]])
    np.testing.assert_allclose(exp.relative_feature_error(f0 * 0.9, f0), [0.01, 0.01])


@pytest.mark.parametrize("flags, message", [
    (["--iterations", "0"], "--iterations must be >= 1"),
    (["--inversion-images", "17"], "--inversion-images must be at most 16"),
    (["--inversion-tv", "-1"], "--inversion-tv must be a finite number >= 0"),
    (["--dream-layer", "conv9"], "--dream-layer 'conv9' is not a layer of the net"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
