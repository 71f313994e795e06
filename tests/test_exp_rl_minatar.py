"""experiments.rl_minatar: the --smoke run (PPO, 2 seeds x 4 Breakout-MinAtar environments x 4
rollouts of 8 steps, a tiny network) and its bookkeeping; bad flags. The --quick run's claim (PPO
beats the random policy) is slow."""

import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import rl_minatar as exp

pytestmark = pytest.mark.xdist_group("rl_gymnax")   # one worker imports gymnax (~3 CPU-s)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl_minatar_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_and_bookkeeping(smoke):
    out, results = smoke
    assert (out / "returns.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "rl_minatar" and saved["env"] == "Breakout-MinAtar" and saved["seeds"] == 2
    assert np.asarray(saved["steps"]).tolist() == [[32, 64, 96, 128]] * 2      # 4 envs x 8 steps a rollout
    assert saved["env_steps_per_seed"] == 128 and saved["env_steps_per_s"] > 0
    assert saved["random_policy_episodes"] >= 0 and saved["random_policy_return"] >= 0   # Breakout: rewards >= 0
    assert isinstance(saved["claims"]["ppo_beats_random"], bool)


@pytest.mark.slow
def test_quick_ppo_beats_random(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["claims"]["ppo_beats_random"]


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0"], "--seeds and --num-envs"),
    (["--num-envs", "0"], "--seeds and --num-envs"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
