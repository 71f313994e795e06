"""Benchmarks (``jaxnet bench``, ``make bench``): candidates timed side by side in one
process, medians and ratios computed inside the run.  See :mod:`jaxnet.bench.suites`."""
from __future__ import annotations

import json
import sys

from jaxnet.bench.timing import Candidate, ratio, time_candidates

SUITES = ("ops", "train_step", "train_step_default_flags", "train_step_bn", "train_step_bn_default_flags", "compile",
          "knn", "rnn", "attention")


def _torch():
    try:
        import torch
    except ImportError:
        print("bench: torch is not installed: the PyTorch rows are skipped "
              "(`pip install torch==2.13.0`, or `pip install -e '.[bench]'`)", file=sys.stderr)
        return None
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    return torch


def run(suites=SUITES, *, quick=False) -> dict:
    from jaxnet.bench import suites as S
    blocks, reps = (2, 2) if quick else (5, 3)
    torch = _torch() if {"ops", "train_step", "train_step_bn", "rnn"} & set(suites) else None
    if torch is not None:
        torch.manual_seed(0)
    rows = []
    if "ops" in suites:
        rows += S.bench_ops(blocks=blocks, reps=reps, torch_mod=torch)
    for bn, suite in ((False, "train_step"), (True, "train_step_bn")):
        if suite in suites:
            rows.append(S.bench_train_step(blocks=blocks, reps=reps, torch_mod=torch, batchnorm=bn))
        if suite + "_default_flags" in suites:
            default = S.bench_train_step_default_flags(quick=quick, batchnorm=bn)
            flagged = next((r for r in rows if r["name"] == default["name"].split(" (default XLA flags")[0]), None)
            rows.append(default)
            if flagged:
                ours = flagged["candidates"]["jaxnet manual"]["images_per_second"]
                default["ratios"]["jaxnet manual (jaxnet flags) / flax.linen (default flags) (images/s)"] = (
                    ours / default["candidates"]["flax.linen"]["images_per_second"])
    if "compile" in suites:
        rows.append(S.bench_compile())
    if "knn" in suites:
        rows.append(S.bench_knn(blocks=blocks, reps=2, quick=quick))
    if "rnn" in suites:
        from jaxnet.bench.rnn import bench_rnn
        rows += bench_rnn(blocks=blocks, reps=reps, torch_mod=torch, quick=quick)
    if "attention" in suites:
        from jaxnet.bench.attention import bench_attention
        rows += bench_attention(blocks=blocks, reps=reps, quick=quick)
    return {"env": S.environment(), "benchmarks": rows}


def format_report(report: dict) -> str:
    from jaxnet.gradcheck.report import format_table
    lines = []
    for b in report["benchmarks"]:
        rows = []
        for name, c in b["candidates"].items():
            extra = (f"{c['images_per_second']:.0f} img/s" if "images_per_second" in c
                     else f"{c['sequences_per_second']:.0f} seq/s" if "sequences_per_second" in c
                     else f"{c['gflops']:.1f} GFLOP/s" if "gflops" in c else "")
            rows.append([name, f"{c['median_ms']:.2f}", extra])
        lines.append(f"## {b['name']}\n" + format_table(["candidate", "median ms", ""], rows))
        for k, v in b["ratios"].items():
            lines.append(f"  ratio {k}: {v:.3f}")
        lines.append("")
    env = report["env"]
    lines.append(f"jax {env['jax']}, torch {env.get('torch')}, {env['cpu_count']} cores, "
                 f"XLA_FLAGS={env['XLA_FLAGS']!r}")
    return "\n".join(lines)


def cli(args) -> int:
    suites = tuple(args.only) if args.only else SUITES
    for s in suites:
        if s not in SUITES:
            from jaxnet.errors import UsageError
            raise UsageError(f"unknown benchmark {s!r}; expected one of {', '.join(SUITES)}")
    report = run(suites, quick=args.quick)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


__all__ = ["Candidate", "ratio", "time_candidates", "run", "format_report", "SUITES"]
