"""experiments.optimizers on the embedded digits (no CIFAR-10 needed): the same-lr comparison on
the ill-conditioned quadratic and Adam's first step with and without bias correction.

The default suite runs ``--smoke`` (the 2-D problems as in every run; the net trained by SGD,
Adam and Adam without bias correction for 1 epoch on 300 images) and checks the files, the
structure, the quadratic's claims and Adam's first step (on the quadratic and on the net: both
hold at any size). The ``--quick`` run (all seven rules on the net) and its checks are marked
slow (``make test-slow``)."""

import json
import math

import numpy as np
import pytest

from conftest import run_quick_experiment
from experiments import optimizers as exp


# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its quick run (a module
# fixture) is built once; groups are handed out before single tests.
pytestmark = pytest.mark.xdist_group("exp_optimizers")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimizers_smoke")
    results = run_quick_experiment(exp, out, "--smoke")
    return results, out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimizers")
    results = run_quick_experiment(exp, out)
    return results, out


def test_smoke_run_writes_files(smoke_run):
    results, out = smoke_run
    for name in ("results.json", "net_loss.png", "quadratic.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "optimizers" and saved["quick"] is True and saved["smoke"] is True
    net = saved["net"]
    assert net["data"] == "digits" and (net["n_train"], net["epochs"]) == (300, 1)
    assert set(net["optimizers"]) == set(exp.SMOKE_NET_RULES) == set(net["learning_rates"])
    assert set(saved["quadratic"]["optimizers"]) == set(saved["saddle"]["optimizers"]) == set(exp.RULES)
    for name, r in results["net"]["optimizers"].items():
        assert len(r["step_loss"]) == net["steps"] == 5 and np.all(np.isfinite(r["step_loss"])), name
        assert len(r["val_acc"]) == 1 and math.isfinite(r["final_train_loss"]), name


def test_smoke_quadratic_and_adam_first_step(smoke_run):
    """The 2-D problems are the same in every run, and Adam's first step on the net is one step:
    the quick run's claims hold at the smoke size."""
    _check_quadratic(smoke_run[0])
    _check_adam_first_step(smoke_run[0])
    for r in smoke_run[0]["quadratic"]["optimizers"].values():  # all start from the same point
        assert tuple(r["path"][0]) == exp.QUAD_START


def test_net_rules_option(tmp_path):
    with pytest.raises(SystemExit, match="--net-rules: unknown rule"):
        exp.main(["--smoke", "--out", str(tmp_path), "--net-rules", "sgd,lion"])


@pytest.mark.slow
def test_quick_run_writes_files(quick_run):
    results, out = quick_run
    for name in ("results.json", "net_loss.png", "quadratic.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "optimizers" and saved["quick"] is True
    assert saved["net"]["data"] == "digits"
    assert set(saved["net"]["optimizers"]) == {*exp.RULES, exp.ADAM_NO_BC}
    for name in exp.RULES:
        assert name in saved["quadratic"]["optimizers"]
        assert math.isfinite(saved["net"]["optimizers"][name]["final_train_loss"])
    # every rule trains the net below the chance loss log(10)
    for name, r in results["net"]["optimizers"].items():
        assert r["final_train_loss"] < math.log(10), name
        assert len(r["step_loss"]) == results["net"]["steps"]


@pytest.mark.slow
def test_quadratic_momentum_nesterov_adam_beat_sgd_at_same_lr(quick_run):
    _check_quadratic(quick_run[0])


def _check_quadratic(results):
    q = results["quadratic"]["optimizers"]
    sgd = q["sgd"]["final_loss"]
    for name in ("momentum", "nesterov", "adam"):
        assert q[name]["final_loss"] < sgd, (name, q[name]["final_loss"], sgd)
        assert q[name]["steps_to_target"] is not None
    assert q["sgd"]["steps_to_target"] is None  # SGD does not reach 1e-3 in 100 steps at lr 0.2


@pytest.mark.slow
def test_adam_first_step_bias_correction(quick_run):
    _check_adam_first_step(quick_run[0])


def _check_adam_first_step(results):
    first = results["adam_first_step"]["quadratic"]
    lr = first["lr"]
    ratio = (1 - 0.9) / math.sqrt(1 - 0.999)
    np.testing.assert_allclose(first["measured"]["bias_correction"], lr, rtol=1e-4)
    np.testing.assert_allclose(first["measured"]["no_bias_correction"], lr * ratio, rtol=1e-4)
    np.testing.assert_allclose(first["ratio_no_bc_over_bc"], ratio, rtol=1e-4)
    np.testing.assert_allclose(first["measured"]["no_bias_correction"], first["analytic"]["no_bias_correction"],
                               rtol=1e-4)
    net = results["adam_first_step"]["net"]
    assert net["bias_correction_median_over_lr"] == pytest.approx(1.0, rel=1e-2)
    assert net["no_bias_correction_median_over_lr"] == pytest.approx(ratio, rel=1e-2)
    assert net["ratio_no_bc_over_bc_median"] == pytest.approx(ratio, rel=1e-2)


def test_analytic_first_step():
    a = exp.adam_first_step_analytic(np.array([1e-3, 1.0, -5.0]), 0.01)
    np.testing.assert_allclose(a["bias_correction"], 0.01, rtol=1e-4)
    np.testing.assert_allclose(a["no_bias_correction"], 0.01 * 0.1 / math.sqrt(0.001), rtol=1e-3)
