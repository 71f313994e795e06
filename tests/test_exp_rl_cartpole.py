"""experiments.rl_cartpole: the --smoke run (2 seeds, ~200 env steps, tiny networks) of PPO (each
algorithm's vmapped program compiles in ~6 CPU-s, so the default suite runs one of the four here:
DQN's jitted, vmapped loop is tested in test_rl_agents.py, REINFORCE's loss and the returns/GAE
there too; all four run in the slow --quick test), its bookkeeping, the solved-threshold rule, bad
flags."""

import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import rl_cartpole as exp

pytestmark = pytest.mark.xdist_group("rl_gymnax")   # one worker imports gymnax (~3 CPU-s)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl_cartpole_smoke")
    return out, run_quick_experiment(exp, out, "--smoke", "--algos", "ppo")


def test_smoke_files_and_bookkeeping(smoke):
    out, results = smoke
    assert (out / "returns.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "rl_cartpole" and saved["smoke"] is True and saved["seeds"] == 2
    assert list(saved["algos"]) == ["ppo"]
    ppo = saved["algos"]["ppo"]
    # PPO: 6 iterations of 2 envs x 16 steps
    assert np.asarray(ppo["steps"]).tolist() == [[32 * (k + 1) for k in range(6)]] * 2
    assert ppo["config"]["epochs"] == 2 and ppo["config"]["minibatches"] == 2
    for r in (ppo,):
        eps = np.asarray(r["episodes"])
        assert np.all(np.diff(eps, axis=1) >= 0) and eps[:, -1].min() >= 1
        ret = np.asarray([[np.nan if v is None else v for v in row] for row in r["return"]], float)
        assert np.all((ret[:, -1] >= 1) & (ret[:, -1] <= 500))        # CartPole-v1 returns lie in [1, 500]
        # 100 episodes averaging >= 475 need >= 47,500 steps: impossible in 200
        assert r["solved"] == 0 and r["solve_steps"] == [None, None]
        assert r["env_steps_total"] == 2 * r["steps"][0][-1] and r["env_steps_per_s"] > 0
    assert saved["claims"] == {"ppo_solved_seeds": 0}


def test_solved_at_needs_100_episodes_and_the_threshold():
    returns = np.array([[np.nan, 480.0, 490.0, 470.0], [100.0, 200.0, 300.0, 400.0], [476.0, 475.0, 500.0, 500.0]])
    episodes = np.array([[0, 50, 120, 200], [100, 200, 300, 400], [150, 160, 170, 180]])
    np.testing.assert_array_equal(exp.solved_at(returns, episodes, 475.0), [2, -1, 0])


@pytest.mark.slow
def test_quick_run_ppo_learns(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    a = res["algos"]
    assert list(a) == ["dqn", "reinforce", "a2c", "ppo"] and all(r["seeds"] == 16 for r in a.values())
    assert a["ppo"]["final_return_mean"] > 150 and a["a2c"]["final_return_mean"] > 100
    assert a["dqn"]["final_return_mean"] > 50 and a["reinforce"]["final_return_mean"] > 50


@pytest.mark.parametrize("flags, message", [
    (["--algos", "ppo,sarsa"], "--algos must be distinct names"),
    (["--algos", "ppo,ppo"], "--algos must be distinct names"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--steps", "100"], "--steps must be >= 1280"),
    (["--reinforce-episodes", "2"], "--reinforce-episodes"),
    (["--threshold", "nan"], "--threshold must be finite"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
