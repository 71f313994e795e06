"""experiments.fooling: one smoke run (digits net, its adversarially fine-tuned copy) for the
files, the numbers and the claims; the helpers (eps parsing, targets, pixel units, the
normalising wrapper); the bad flags."""
import json
import types

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import fooling as exp

pytestmark = pytest.mark.xdist_group("exp_understand")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("fooling")
    res = run_quick_experiment(exp, out, "--smoke")
    return out, res, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_fooling_curves_and_claims(smoke):
    out, res, saved = smoke
    assert saved["experiment"] == "fooling" and saved["source"] == "digits"
    assert set(saved["claims"]) == {"every_image_fooled_under_100_steps", "pgd_at_most_fgsm_normal",
                                    "pgd_at_most_fgsm_adversarial", "adversarial_training_raises_robust_accuracy",
                                    "adversarial_training_costs_clean_accuracy"}
    f = saved["fooling"]
    assert f["n_images"] == 20 and 0 <= f["success_rate"] <= 1 and f["n_fooled"] == round(20 * f["success_rate"])
    its = np.asarray(f["iterations"])
    assert its.shape == (20,) and its.min() >= 1 and its.max() == f["max_iterations"] <= 100   # correct images: >= 1 step
    assert f["prediction_matches_target"] == f["success_rate"]
    if f["n_fooled"]:
        assert 0 < f["linf_255_mean"] <= f["linf_255_max"] <= 255 and 0 < f["l2_mean"] <= f["l2_max"]
    assert saved["eps_255"] == [0.0, 8.0]
    ev = saved["eval_images"]
    assert len(ev) == saved["n_eval"] == 100 and ev == sorted(set(ev))
    for net in ("normal", "adversarial"):
        for attack in ("fgsm", "pgd"):
            acc = saved["curves"][net][attack]
            assert len(acc) == 2 and all(0 <= a <= 1 for a in acc)
        assert saved["curves"][net]["fgsm"][0] == saved["curves"][net]["pgd"][0]   # eps 0: clean accuracy
    assert 0 <= saved["adversarial_training"]["test_accuracy"] <= 1 and 0 <= saved["control_fine_tuning"]["test_accuracy"] <= 1
    assert "clean" in saved["control_fine_tuning"]["checkpoint"] and "adv-pgd_linf-8" in saved["adversarial_training"]["checkpoint"]
    for name in ("fooling.png", "robustness.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_parse_eps_sorts_and_refuses_bad_values():
    assert exp.parse_eps("8,0,2,2") == [0.0, 2.0, 8.0]
    for bad in ("a", "-1", "300", "nan"):
        with pytest.raises(ValueError, match="--eps"):
            exp.parse_eps(bad)


def test_fooling_targets_never_the_own_class_by_default():
    y = np.array([0, 3, 9])
    assert exp.fooling_targets(y, -1, 10).tolist() == [1, 4, 0]
    assert exp.fooling_targets(y, 6, 10).tolist() == [6, 6, 6]


def test_perturbation_sizes_in_pixel_units():
    net = types.SimpleNamespace(mean=np.array([0.5], np.float32), std=np.array([0.25], np.float32))
    x = np.zeros((1, 2, 2, 1), np.float32)
    xf = x.copy()
    xf[0, 0, 0, 0], xf[0, 1, 1, 0] = 0.04, -0.04          # +-0.01 in [0, 1] pixels
    s = exp.perturbation_sizes(net, x, xf)
    assert s["linf_255"][0] == pytest.approx(2.55, rel=1e-5)
    assert s["l2"][0] == pytest.approx(0.01 * np.sqrt(2), rel=1e-5)


def test_pixel_model_equals_the_net_on_normalised_images():
    import jax

    from jaxnet.nn import Affine, Flatten, Sequential
    model = Sequential((Flatten(), Affine(3)), ("flat", "fc"))
    params, state = model.init(jax.random.key(0), (2, 2, 2, 2))
    net = types.SimpleNamespace(model=model, params=params, state=state, mean=np.array([0.4, 0.6], np.float32),
                                std=np.array([0.2, 0.3], np.float32))
    pm, pp, ps = exp.pixel_model(net)
    pix = np.random.default_rng(0).uniform(size=(2, 2, 2, 2)).astype(np.float32)
    a = pm.apply(pp, ps, pix, train=False)[0]
    b = model.apply(params, state, (pix - net.mean) / net.std, train=False)[0]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.to_pixels(net, (pix - net.mean) / net.std), pix, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--eps", "1,x"], "--eps must be comma-separated"), (["--n-fool", "0"], "--n-fool must be >= 1"),
    (["--lr", "0"], "--lr must be a finite number > 0"), (["--adv-eps", "0"], "--adv-eps must be a number in (0, 255]"),
    (["--target", "-2"], "--target must be -1"), (["--pgd-steps", "0"], "--pgd-steps must be >= 1"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
