"""Attention at length: time and peak memory of forward+backward against the sequence length,
manual blockwise vs the reference formula vs ``jax.nn.dot_product_attention``.

    python -m experiments.attention_length [--quick] [--smoke] [--out DIR] [--lengths 256 512 ...]

One head of 64, batch 1, float32, lengths 256 .. 16384 (``--quick`` 256 .. 2048, ``--smoke``
64 and 128).  For each length and candidate (:mod:`jaxnet.bench.attention`'s programs: one
jitted ``jax.vjp`` returning dq, dk, dv for a fixed cotangent):

* the compiled program's memory (``jax.jit(...).lower(...).compile().memory_analysis()``):
  temporaries, and the peak = arguments + outputs + temporaries - aliased;
* the median wall time of forward+backward, candidates interleaved in blocks in one process
  (:func:`jaxnet.bench.timing.time_candidates`).

The reference materialises (T, T) scores and weights, so its memory grows as T^2 and at
16,384 one (T, T) float32 array is 1 GiB: a candidate whose compiled peak would pass
``--max-gib`` (default 6) is not run at that length (recorded as skipped, its memory still
reported from the compiled program, which allocates nothing).

Outputs in ``--out``: ``results.json`` (a row per length and candidate) and
``attention_length.png`` (peak memory and time against T, log-log).
"""
from __future__ import annotations

import os

import numpy as np

from experiments._common import figure, grid_legend, parse_args, print_table, save_figure, sized, write_results

NAME = "attention_length"
DESCRIPTION = "Attention at length: time and peak memory of forward+backward, blockwise vs reference vs jax.nn."
FULL = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK = (256, 512, 1024, 2048)
SMOKE = (64, 128)


def _extra(parser) -> None:
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 256 .. 16384)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--max-gib", type=float, default=6.0,
                        help="do not run a candidate whose compiled peak memory passes this many GiB")
    parser.add_argument("--blocks", type=int, default=3, help="interleaved timing blocks per length")


def measure(lengths, dh, max_gib, blocks) -> list[dict]:
    from jaxnet.bench import attention as A
    from jaxnet.bench.timing import time_candidates

    rows = []
    for t in lengths:
        mem = A.memory(t, dh)
        cands = [c for c in A.candidates(t, 1, 1, dh) if mem[c.name]["peak_bytes"] <= max_gib * 2 ** 30]
        res = time_candidates(cands, blocks=blocks, reps=1) if cands else {}
        for name, m in mem.items():
            r = res.get(name)
            rows.append({"t": t, "candidate": name, "peak_mib": m["peak_bytes"] / 2 ** 20,
                         "temp_mib": m["temp_bytes"] / 2 ** 20,
                         "median_ms": None if r is None else r["median_ms"], "skipped": r is None})
        print(f"T={t}: " + ", ".join(f"{r['candidate']}: {r['peak_mib']:.1f} MiB"
                                     + ("" if r["skipped"] else f" {r['median_ms']:.1f} ms")
                                     for r in rows if r["t"] == t), flush=True)
    return rows


def plot(rows, path) -> str:
    fig = figure((12, 4.6))
    ax_m, ax_t = fig.subplots(1, 2)
    for name in dict.fromkeys(r["candidate"] for r in rows):
        mine = [r for r in rows if r["candidate"] == name]
        ax_m.loglog([r["t"] for r in mine], [r["peak_mib"] for r in mine], "o-", ms=4, label=name)
        timed = [r for r in mine if not r["skipped"]]
        ax_t.loglog([r["t"] for r in timed], [r["median_ms"] for r in timed], "o-", ms=4, label=name)
    ax_m.set(xlabel="sequence length T", ylabel="peak memory of forward+backward (MiB)",
             title="compiled peak memory (one head of 64, batch 1)")
    ax_t.set(xlabel="sequence length T", ylabel="forward+backward time (ms, median)", title="time (2-core CPU)")
    grid_legend((ax_m, ax_t), which="both")
    return save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    os.makedirs(args.out, exist_ok=True)
    lengths = tuple(args.lengths or sized(args, FULL, QUICK, SMOKE))
    bad = [t for t in lengths if t < 1]
    if bad or args.head_dim < 1 or args.max_gib <= 0 or args.blocks < 1:
        raise SystemExit(f"experiments.{NAME}: lengths, --head-dim and --blocks must be positive and --max-gib > 0 "
                         f"(got lengths {list(lengths)}, head dim {args.head_dim}, max GiB {args.max_gib}, "
                         f"blocks {args.blocks})")
    rows = measure(lengths, args.head_dim, args.max_gib, args.blocks)
    from jaxnet.bench.attention import MANUAL, REFERENCE
    by = {(r["t"], r["candidate"]): r for r in rows}
    ratios = [{"t": t, "peak_manual_over_reference": by[t, MANUAL]["peak_mib"] / by[t, REFERENCE]["peak_mib"]}
              for t in lengths]
    fig = plot(rows, os.path.join(args.out, "attention_length.png"))
    print_table(["T", "candidate", "peak MiB", "temp MiB", "median ms"],
                [[r["t"], r["candidate"], r["peak_mib"], r["temp_mib"],
                  "skipped" if r["skipped"] else r["median_ms"]] for r in rows],
                title="\nforward+backward, one head of 64, batch 1, float32")
    results = {"head_dim": args.head_dim, "lengths": list(lengths), "rows": rows, "ratios": ratios,
               "figures": {"length": os.path.basename(fig)}}
    path = write_results(args.out, results, args)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
