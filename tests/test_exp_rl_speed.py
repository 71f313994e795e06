"""experiments.rl_speed: the --smoke run (4 CartPole environments, a few steps, 2 repeats) and its
bookkeeping; bad flags. The speed ratio's size is the --quick run's claim (slow)."""

import json
import sys

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import rl_speed as exp

pytestmark = pytest.mark.xdist_group("rl_gymnax")   # one worker imports gymnax (~3 CPU-s)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl_speed_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_and_medians(smoke):
    out, results = smoke
    assert (out / "speed.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "rl_speed" and saved["smoke"] is True and saved["num_envs"] == 4
    m = saved["methods"]
    assert list(m) == ["python", "python_vmap", "jit_scan"]
    for r in m.values():
        assert len(r["steps_per_s"]) == 2 and all(v > 0 for v in r["steps_per_s"])
        assert r["median"] == pytest.approx(float(np.median(r["steps_per_s"])))
        assert r["ratio_vs_python"] == pytest.approx(r["median"] / m["python"]["median"])
    assert m["python"]["steps"] == 5 and m["jit_scan"]["steps"] == 50
    assert saved["claims"]["jit_scan_over_python"] == pytest.approx(m["jit_scan"]["ratio_vs_python"])


@pytest.mark.slow
def test_quick_jitted_loop_is_much_faster(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["claims"]["jit_scan_over_python"] > 10


@pytest.mark.parametrize("flags, message", [
    (["--num-envs", "0"], "--num-envs"),
    (["--steps", "0"], "--steps"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)


def test_without_gymnax_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnax", None)        # `import gymnax` raises ImportError
    assert_bad_flags_exit(exp, [], "needs gymnax", tmp_path, capsys)
