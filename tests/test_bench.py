"""The benchmark machinery (speed targets live in `make bench`, never in tests) and jaxnet's XLA flags."""
import json
import os
import subprocess
import sys
import time

import pytest

from jaxnet.bench import Candidate, format_report, ratio, time_candidates

# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker; groups are handed out
# before single tests, so its long items start early instead of ending the run on one worker.
pytestmark = pytest.mark.xdist_group("bench")


def test_time_candidates_reports_medians_and_ratios():
    slow = Candidate("slow", lambda: time.sleep(0.004), items=10, sync=lambda o: o)
    fast = Candidate("fast", lambda: time.sleep(0.001), items=10, flops=1e6, sync=lambda o: o)
    res = time_candidates([slow, fast], warmup=1, blocks=3, reps=2)
    assert res["slow"]["samples"] == res["fast"]["samples"] == 6
    assert res["slow"]["median_ms"] > res["fast"]["median_ms"] >= 1.0
    assert ratio(res, "slow", "fast") > 1.5
    assert res["fast"]["images_per_second"] == 10 / (res["fast"]["median_ms"] / 1e3)
    assert "gflops" in res["fast"] and "gflops" not in res["slow"]
    text = format_report({"env": {"jax": "x", "cpu_count": 2, "XLA_FLAGS": ""},
                          "benchmarks": [{"name": "demo", "candidates": res, "ratios": {"slow/fast": 4.0}}]})
    assert "## demo" in text and "ratio slow/fast: 4.000" in text


def _flags(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXNET_XLA_FLAGS")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", "import os, jaxnet; print(os.environ.get('XLA_FLAGS', ''))"],
                         capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip()


def test_jaxnet_sets_its_cpu_flag_and_respects_the_user():
    assert "ynn_fusion_type=-individual_convolution" in _flags({})
    assert _flags({"JAXNET_XLA_FLAGS": "0"}) == ""
    user = "--xla_cpu_experimental_ynn_fusion_type=all"
    assert _flags({"XLA_FLAGS": user}) == user              # never overrides the user's choice


def test_bench_cli_json_fields():
    out = subprocess.run([sys.executable, "-m", "jaxnet", "bench", "--only", "knn", "--quick", "--json"],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert {"jax", "XLA_FLAGS", "cpu_count"} <= set(report["env"])
    (row,) = report["benchmarks"]
    assert row["name"].startswith("kNN") and row["ratios"]
    for cand in row["candidates"].values():
        assert cand["median_ms"] > 0 and cand["gflops"] > 0
