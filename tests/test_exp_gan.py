"""experiments.gan on the embedded digits.

The default suite runs it once with ``--smoke`` (128 images, 2 epochs, tiny nets, the minimax
and non-saturating variants) and checks its files, histories, the early gradient-norm bookkeeping and the judge's
rows; the helpers are checked on hand-made inputs; the ``--quick`` run and its claims (the
minimax generator's gradient is smaller than the non-saturating one's early in training) are
marked slow (``make test-slow``).
"""

import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import gan as exp

pytestmark = pytest.mark.xdist_group("exp_gan")

JUDGE_KEYS = ("classifier_score", "confident_fraction", "class_coverage", "frechet")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_histories_and_scores(smoke):
    out, results = smoke
    for name in ("results.json", "gan_grad_norm.png", "gan_losses.png", "gan_samples.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "gan" and saved["smoke"] is True and saved["data_source"] == "digits"
    assert list(saved["variants"]) == ["minimax", "nonsat"]                   # smoke: the two MLP GANs
    assert saved["n_train"] == 128 and saved["image_shape"] == [8, 8, 1]
    losses = {v: r["loss"] for v, r in saved["variants"].items()}
    assert losses == {"minimax": "minimax", "nonsat": "non_saturating"}
    for v, r in saved["variants"].items():
        assert r["total_steps"] == 2 * r["steps_per_epoch"] == 2 * (128 // 32), v
        for m in ("d_loss", "g_loss", "g_grad_norm", "d_real", "d_fake"):
            assert len(r["epoch_means"][m]) == 2 and all(np.isfinite(r["epoch_means"][m])), (v, m)
        assert len(r["early_steps"]["g_grad_norm"]) == r["total_steps"]     # smoke: the window is every step
        assert all(g > 0 for g in r["early_steps"]["g_grad_norm"])
        assert set(JUDGE_KEYS) <= set(r["judge"]) and all(np.isfinite(r["judge"][k]) for k in JUDGE_KEYS), v
    assert saved["claims"]["all_finite"] is True
    # the logistic variants' D outputs are probabilities; the MLP variants share their first step's D update
    for v in ("minimax", "nonsat"):
        assert all(0.0 < p < 1.0 for p in saved["variants"][v]["epoch_means"]["d_fake"]), v
    mm, ns = saved["variants"]["minimax"]["early_steps"], saved["variants"]["nonsat"]["early_steps"]
    assert mm["d_fake"][0] == pytest.approx(ns["d_fake"][0], rel=1e-5)        # same init, batch and z: same D step
    assert mm["d_loss"][0] == pytest.approx(ns["d_loss"][0], rel=1e-5)
    early = saved["early_grad_norm"]
    assert early["steps"] == 8 and early["ratio_nonsat_over_minimax"] == pytest.approx(
        early["nonsat"] / early["minimax"])
    assert saved["claims"]["minimax_grad_smaller_early"] == (early["ratio_nonsat_over_minimax"] > 1.0)
    assert set(JUDGE_KEYS) <= set(saved["judge_reference"]) and set(JUDGE_KEYS) <= set(saved["judge_noise"])
    assert saved["grid_epochs"] == [1, 2]


def test_helpers():
    imgs = np.arange(6 * 2 * 2 * 1, dtype=np.float32).reshape(6, 2, 2, 1)
    t = exp.tile(imgs, 2, 3, pad=1, value=-1.0)
    assert t.shape == (5, 8, 1)
    np.testing.assert_array_equal(t[3:5, 3:5, 0], imgs[4, :, :, 0])                # row 1, column 1
    assert np.all(t[2, :, 0] == -1.0)
    assert exp.grid_epochs(3, 8) == [0, 1, 2]
    assert exp.grid_epochs(60, 8)[0] == 0 and exp.grid_epochs(60, 8)[-1] == 59 and len(exp.grid_epochs(60, 8)) == 8
    assert exp.geometric_mean([1.0, 100.0]) == pytest.approx(10.0)
    np.testing.assert_allclose(exp.smooth([1.0, 1.0, 1.0], 5), 1.0)
    np.testing.assert_allclose(exp.to_unit(np.array([-2.0, -1.0, 0.0, 1.0])), [0.0, 0.0, 0.5, 1.0])
    rec = lambda g, f: {"steps": {"g_grad_norm": np.asarray(g), "g_fake": np.asarray(f)}}  # noqa: E731
    early = exp.early_grad_norm({"minimax": rec([0.01, 0.001, 5.0], [0.1, 0.1, 0.5]),
                                 "nonsat": rec([1.0, 0.1, 5.0], [0.1, 0.2, 0.5])}, 2)
    assert early["steps"] == 2 and early["ratio_nonsat_over_minimax"] == pytest.approx(100.0)
    assert early["fraction_of_steps_minimax_smaller"] == 1.0 and early["nonsat_d_of_fake"] == pytest.approx(0.15)
    assert exp.early_grad_norm({"nonsat": rec([1.0], [0.5])}, 2) is None


@pytest.mark.slow
def test_quick_run_minimax_saturates_early(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    early = res["early_grad_norm"]
    # after the discriminator's head start it rejects the fakes: at the first generator step (the same
    # point for both losses) minimax's gradient is smaller by about (1 - D)/D
    assert early["first_step_d_of_fake"] < 0.05
    assert early["first_step_ratio"] > 10.0
    assert early["first_step_ratio"] == pytest.approx(early["first_step_ratio_theory"], rel=0.25)
    assert early["ratio_nonsat_over_minimax"] > 3.0               # and over the first 10 generator steps
    assert res["claims"]["all_finite"]
    noise = res["judge_noise"]["frechet"]
    for v in ("nonsat", "lsgan"):                                 # the MLP generators beat noise already
        assert res["variants"][v]["judge"]["frechet"] < noise, v


@pytest.mark.parametrize("flags, message", [
    (["--variants", "minimax,wgan"], "--variants"),
    (["--variants", "nonsat,nonsat"], "--variants"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--dcgan-lr", "nan"], "--dcgan-lr"),
    (["--g-hidden", "64,x"], "--g-hidden"),
    (["--d-head-start", "-1"], "--d-head-start"),
    (["--judge-samples", "1"], "--judge-samples"),
    (["--batch-size", "1000"], "larger than the 128 training images"),
    (["--data", "mnist"], "--data must be digits or cifar10"),
    (["--data", "cifar10"], "needs a CIFAR-10 copy"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
