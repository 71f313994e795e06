"""experiments.optimizers: the --quick run on the embedded digits (no CIFAR-10 needed), the
same-lr comparison on the ill-conditioned quadratic and Adam's first step with and without
bias correction."""

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
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimizers")
    results = run_quick_experiment(exp, out)
    return results, out


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


def test_quadratic_momentum_nesterov_adam_beat_sgd_at_same_lr(quick_run):
    results, _ = quick_run
    q = results["quadratic"]["optimizers"]
    sgd = q["sgd"]["final_loss"]
    for name in ("momentum", "nesterov", "adam"):
        assert q[name]["final_loss"] < sgd, (name, q[name]["final_loss"], sgd)
        assert q[name]["steps_to_target"] is not None
    assert q["sgd"]["steps_to_target"] is None  # SGD does not reach 1e-3 in 100 steps at lr 0.2


def test_quadratic_comparison_directly():
    cmp = exp.compare_2d(0.2, rules=("sgd", "momentum", "nesterov", "adam"))["quadratic"]
    for name in ("momentum", "nesterov", "adam"):
        assert cmp[name]["final_loss"] < cmp["sgd"]["final_loss"]
    # all start from the same point
    starts = {tuple(r["path"][0]) for r in cmp.values()}
    assert starts == {exp.QUAD_START}


def test_adam_first_step_bias_correction(quick_run):
    results, _ = quick_run
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
