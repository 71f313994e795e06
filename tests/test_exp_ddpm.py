"""experiments.ddpm on the embedded digits.

The default suite runs it once with ``--smoke`` (256 images, 20 steps of a one-level UNet, T = 10,
guidance 1 and 3: one sampler program) and checks its files, the loss curve, the samples' bookkeeping and the judge's
rows; the ``--quick`` run and its claims (the samples' Fréchet distance well below uniform
noise's, the loss falling) are marked slow (``make test-slow``).
"""

import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import ddpm as exp

pytestmark = pytest.mark.xdist_group("exp_ddpm")

JUDGE_KEYS = ("classifier_score", "confident_fraction", "class_coverage", "frechet")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_loss_and_scores(smoke):
    out, results = smoke
    for name in ("results.json", "ddpm_loss.png", "ddpm_samples.png", "ddpm_trajectory.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "ddpm" and saved["smoke"] is True and saved["data_source"] == "digits"
    assert saved["n_train"] == 256 and saved["image_shape"] == [8, 8, 1]
    assert saved["steps"] == 20 and saved["timesteps"] == 10 and saved["schedule"] == "cosine"
    curve = saved["loss_curve"]
    assert len(curve["mean_loss"]) == 20 and curve["step_end"][-1] == 20 and all(np.isfinite(curve["mean_loss"]))
    assert saved["claims"]["finite"] and saved["claims"]["loss_decreases"]          # it learns
    assert saved["loss_last_5pct"] < saved["loss_first_5pct"]
    assert saved["guidance"] == [1.0, 3.0] and set(saved["judge"]) == {"1", "3"}
    for w, sc in saved["judge"].items():
        assert set(JUDGE_KEYS) <= set(sc) and all(np.isfinite(sc[k]) for k in JUDGE_KEYS), w
    assert set(JUDGE_KEYS) <= set(saved["judge_reference"]) and set(JUDGE_KEYS) <= set(saved["judge_noise"])
    assert saved["claims"]["frechet_ratio_to_noise"]["1"] == pytest.approx(
        saved["judge"]["1"]["frechet"] / saved["judge_noise"]["frechet"])
    assert all(0.0 <= sc["label_agreement"] <= 1.0 for sc in saved["judge"].values())


def test_loss_curve_chunks():
    c = exp.loss_curve(np.arange(1.0, 11.0), chunks=4)
    assert c["step_end"] == [3, 6, 8, 10]
    np.testing.assert_allclose(c["mean_loss"], [2.0, 5.0, 7.5, 9.5])
    assert exp.loss_curve([3.0], chunks=50) == {"step_end": [1], "mean_loss": [3.0]}


@pytest.mark.slow
def test_quick_run_samples_beat_noise(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["loss_last_5pct"] < 0.5 * res["loss_first_5pct"]
    noise = res["judge_noise"]["frechet"]
    for w in ("0", "1", "3"):
        assert res["judge"][w]["frechet"] < 0.5 * noise, w
    # guidance: the judge's classifier agrees more often with the class asked for
    assert res["judge"]["3"]["label_agreement"] > res["judge"]["0"]["label_agreement"]


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps"),
    (["--guidance", "0,-1"], "--guidance"),
    (["--widths", "8,16,32,64,128"], "divisible"),
    (["--widths", "8,a"], "--widths"),
    (["--schedule", "quadratic"], "--schedule must be cosine or linear"),
    (["--ema", "1"], "--ema"),
    (["--cond-drop", "1.5"], "--cond-drop"),
    (["--lr", "0"], "--lr"),
    (["--batch-size", "1000"], "larger than the 256 training images"),
    (["--data", "cifar10"], "needs a CIFAR-10 copy"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
