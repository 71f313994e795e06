"""Side-by-side timing: candidates run in one process, interleaved in blocks.

Every candidate is warmed up (compiled) first; then ``blocks`` rounds each
time every candidate ``reps`` times in turn (the order rotates each round), so
a noisy neighbour slows all candidates alike.  Medians of the per-call times
are reported, and ratios are computed from those medians in the same run.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import jax


def _block(out):
    jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, out)
    return out


@dataclasses.dataclass
class Candidate:
    """A thing to time: ``fn()`` runs one call and returns something to block on."""
    name: str
    fn: Callable[[], object]
    items: int = 0            # images (or examples) per call, for images/s
    flops: float = 0.0        # floating-point operations per call, for GFLOP/s
    sync: Callable[[object], object] = _block


def time_candidates(candidates: list[Candidate], *, warmup: int = 2, blocks: int = 5, reps: int = 3) -> dict:
    """Median milliseconds per call of each candidate, measured interleaved."""
    for c in candidates:
        for _ in range(warmup):
            c.sync(c.fn())
    samples = {c.name: [] for c in candidates}
    for b in range(blocks):
        order = candidates[b % len(candidates):] + candidates[:b % len(candidates)]
        for c in order:
            for _ in range(reps):
                t0 = time.perf_counter()
                c.sync(c.fn())
                samples[c.name].append(time.perf_counter() - t0)
    out = {}
    for c in candidates:
        med = statistics.median(samples[c.name])
        row = {"median_ms": med * 1e3, "samples": len(samples[c.name]),
               "min_ms": min(samples[c.name]) * 1e3}
        if c.items:
            row["images_per_second"] = c.items / med
        if c.flops:
            row["gflops"] = c.flops / med / 1e9
        out[c.name] = row
    return out


def ratio(results: dict, a: str, b: str, key: str = "median_ms") -> float:
    """``results[a][key] / results[b][key]``."""
    return results[a][key] / results[b][key]
