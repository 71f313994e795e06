"""Initialization and activation statistics (``experiments.init_stats``).

Runs the ``--quick`` version in-process (10 layers x 200 units, 300 random inputs: a few
seconds) and checks the course's claims and the output files."""

import json

import numpy as np
import pytest

from experiments import init_stats


# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its quick run (a module
# fixture) is built once; groups are handed out before single tests.
pytestmark = pytest.mark.xdist_group("exp_init")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("init_stats")
    results = init_stats.main(["--quick", "--out", str(out)])
    return out, results


def test_files_written(quick_run):
    out, results = quick_run
    for name in ("results.json", "histograms.png", "stats.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved["experiment"] == "init_stats" and saved["quick"] is True
    assert set(saved["stats"]) == set(init_stats.SETTINGS)
    layers = saved["protocol"]["layers"]
    for s in saved["stats"].values():
        for key in ("mean", "std", "grad_w_norm", "dh_std", "hist_counts"):
            assert len(s[key]) == layers, key
        assert all(len(c) == init_stats.BINS for c in s["hist_counts"])


def test_every_course_claim_holds(quick_run):
    _, results = quick_run
    failed = {k: c for k, c in results["checks"].items() if not c["ok"]}
    assert not failed, failed
    assert set(results["checks"]) == set(init_stats.SETTINGS)
    assert results["all_checks_ok"]


def test_tanh_small_weights_collapse_and_gradients_vanish(quick_run):
    _, r = quick_run
    std = np.asarray(r["stats"]["tanh_0.01"]["std"])
    assert np.all(np.diff(std) < 0)                     # shrinks layer by layer
    assert std[-1] < 1e-6 * std[0]                      # 10 layers of 200 units: ~0.14 per layer
    assert r["summary"]["tanh_0.01"]["grad_vs_reference"] < 1e-3


def test_tanh_large_weights_saturate(quick_run):
    _, r = quick_run
    s = r["stats"]["tanh_1.0"]
    assert min(s["sat_frac_099"]) > 0.8 and min(s["sat_frac_095"]) > 0.85
    assert max(s["local_grad_mean"]) < 0.1              # d tanh / dz ~ 0 almost everywhere


def test_xavier_tanh_and_he_relu_stay_stable_xavier_relu_decays(quick_run):
    _, r = quick_run
    sm = r["summary"]
    assert 0.25 <= sm["tanh_xavier"]["last_over_first_std"] <= 4
    assert 0.5 <= sm["relu_he"]["last_over_first_std"] <= 2
    assert sm["relu_xavier"]["last_over_first_std"] < 0.1
    assert 0.6 <= sm["relu_xavier"]["std_ratio_per_layer"] <= 0.8   # ~ 1 / sqrt(2)
    # Xavier with ReLU: weight gradients far below He's (both factors shrink).
    assert sm["relu_xavier"]["grad_vs_reference"] < 0.2
    # ReLU kills about half of the units in every layer.
    assert all(0.4 < d < 0.6 for d in r["stats"]["relu_he"]["dead_frac"])
