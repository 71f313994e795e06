"""experiments.rl_gridworld: the --smoke run (3,000 Q-learning steps) and its closed-form checks;
the --quick run's Q-learning claim is slow."""

import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import rl_gridworld as exp

pytestmark = pytest.mark.xdist_group("exp_rl_gridworld")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl_gridworld_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_and_closed_forms(smoke):
    out, results = smoke
    assert (out / "values.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "rl_gridworld" and saved["smoke"] is True
    c = saved["claims"]
    assert c["bellman_residual_le_1e-10"] and c["V_star_equals_minus_shortest_path"]
    assert c["policy_iteration_equals_value_iteration"]
    assert saved["value_iteration"]["bellman_residual"] <= 1e-10
    # the random policy is far worse than the optimal one from a random start
    assert saved["random_policy"]["mean_return_random_start"] < 10 * saved["optimal_mean_return_random_start"] < 0
    q = saved["q_learning"]
    assert q["steps"] == 3000 and q["episodes"] > 10 and 0 <= q["greedy_optimal_states"] <= q["live_states"] == 33


@pytest.mark.slow
def test_quick_q_learning_finds_the_optimal_policy(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["claims"]["q_learning_greedy_policy_optimal"]


@pytest.mark.parametrize("flags, message", [
    (["--gamma", "0"], "--gamma"),
    (["--gamma", "1.5"], "--gamma"),
    (["--q-steps", "0"], "--q-steps"),
    (["--alpha", "0"], "--alpha"),
    (["--epsilon", "2"], "--epsilon"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
