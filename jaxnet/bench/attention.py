"""The ``attention`` benchmark suite (``jaxnet bench --only attention``): scaled dot-product
attention, forward + backward, and its compiled memory.

Loss = sum(out * ct) for a fixed cotangent ct; the timed call returns dq, dk, dv (one jitted
``jax.vjp``).  Candidates, timed side by side (interleaved blocks, medians;
:func:`jaxnet.bench.timing.time_candidates`):

- ``jaxnet manual (blockwise)``: :func:`jaxnet.manual.scaled_dot_product_attention`, the
  blockwise forward and the hand backward (default ``block_size``);
- ``jaxnet reference (autodiff)``: :func:`jaxnet.ops.scaled_dot_product_attention`, the plain
  formula differentiated by autodiff;
- ``jax.nn.dot_product_attention``: JAX's own (its XLA implementation on CPU), given its
  (B, T, N, H) layout directly, so no transposes are timed.

Rows (``--quick`` sizes in brackets):

1. time at T=1024, 8 heads of 64, batch 8 [T=128, 2 heads of 16, batch 2]; the ratio
   manual / jax.nn.dot_product_attention (the issue's target: <= 1.0);
2. memory at T=8192, one head of 64, batch 1 [T=1024, one head of 16]: each candidate's compiled
   program (``jax.jit(...).lower(...).compile().memory_analysis()``): temporaries and the peak
   (arguments + outputs + temporaries - aliased), with the ratio manual / reference (the issue's
   target: <= 1/8), and its forward+backward time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import manual, ops
from jaxnet.bench.timing import Candidate, time_candidates

FULL = {"batch": 8, "heads": 8, "t": 1024, "dh": 64, "mem_t": 8192, "mem_dh": 64}
QUICK = {"batch": 2, "heads": 2, "t": 128, "dh": 16, "mem_t": 1024, "mem_dh": 16}

MANUAL, REFERENCE, JAX_NN = "jaxnet manual (blockwise)", "jaxnet reference (autodiff)", "jax.nn.dot_product_attention"


def _ours(fn, **kw):
    """(q, k, v, ct) in (B, N, T, H) -> (dq, dk, dv), jitted."""
    return jax.jit(lambda q, k, v, ct: jax.vjp(lambda *a: fn(*a, **kw), q, k, v)[1](ct))


def _jax_nn():
    """(q, k, v, ct) in (B, T, N, H) -> (dq, dk, dv), jitted."""
    return jax.jit(lambda q, k, v, ct: jax.vjp(jax.nn.dot_product_attention, q, k, v)[1](ct))


def programs(block_size=None) -> dict:
    """Name -> (jitted forward+backward, whether it takes the (B, T, N, H) layout)."""
    kw = {} if block_size is None else {"block_size": block_size}
    return {MANUAL: (_ours(manual.scaled_dot_product_attention, **kw), False),
            REFERENCE: (_ours(ops.scaled_dot_product_attention), False),
            JAX_NN: (_jax_nn(), True)}


def inputs(batch, heads, t, dh, seed=0):
    """(q, k, v, ct) float32 in jaxnet's (B, N, T, H) layout and in jax.nn's (B, T, N, H)."""
    rng = np.random.default_rng(seed)
    ours = tuple(jnp.asarray(rng.standard_normal((batch, heads, t, dh)).astype(np.float32)) for _ in range(4))
    theirs = tuple(jnp.swapaxes(a, 1, 2) for a in ours)
    return ours, theirs


def candidates(cfg_t, batch, heads, dh, block_size=None) -> list[Candidate]:
    ours, theirs = inputs(batch, heads, cfg_t, dh)
    out = []
    for name, (fn, btnh) in programs(block_size).items():
        args = theirs if btnh else ours
        out.append(Candidate(name, lambda fn=fn, args=args: fn(*args), items=batch))
    return out


def memory(t, dh, block_size=None) -> dict:
    """Name -> the compiled forward+backward's memory at (batch 1, one head, t, dh), in bytes."""
    ours = jax.ShapeDtypeStruct((1, 1, t, dh), jnp.float32)
    theirs = jax.ShapeDtypeStruct((1, t, 1, dh), jnp.float32)
    out = {}
    for name, (fn, btnh) in programs(block_size).items():
        a = theirs if btnh else ours
        m = fn.lower(a, a, a, a).compile().memory_analysis()
        peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        out[name] = {"temp_bytes": int(m.temp_size_in_bytes), "peak_bytes": int(peak)}
    return out


def _per_sequence(res):
    for row in res.values():                              # one item is one sequence (all its heads)
        row["sequences_per_second"] = row.pop("images_per_second")
    return res


def bench_attention(*, blocks=5, reps=3, quick=False) -> list[dict]:
    """The time row at T=1024 and the memory row at T=8192 (``quick``: the small sizes)."""
    cfg = QUICK if quick else FULL
    b, h, t, dh = cfg["batch"], cfg["heads"], cfg["t"], cfg["dh"]
    res = _per_sequence(time_candidates(candidates(t, b, h, dh), blocks=blocks, reps=reps))
    time_row = {"name": f"attention: forward+backward T={t} heads={h}x{dh} batch={b}", "candidates": res,
                "ratios": {"manual / jax.nn.dot_product_attention (time)": res[MANUAL]["median_ms"]
                           / res[JAX_NN]["median_ms"],
                           "manual / reference (time)": res[MANUAL]["median_ms"] / res[REFERENCE]["median_ms"]}}

    mt, mdh = cfg["mem_t"], cfg["mem_dh"]
    mem = memory(mt, mdh)
    res = _per_sequence(time_candidates(candidates(mt, 1, 1, mdh), blocks=2, reps=2 if quick else 1))
    for name, row in res.items():
        row.update(mem[name])
        row["peak_mb"] = row["peak_bytes"] / 2 ** 20
    mem_row = {"name": f"attention: compiled memory of forward+backward T={mt} heads=1x{mdh} batch=1",
               "candidates": res,
               "ratios": {"peak memory manual / reference": mem[MANUAL]["peak_bytes"] / mem[REFERENCE]["peak_bytes"],
                          "temp memory manual / reference": mem[MANUAL]["temp_bytes"] / mem[REFERENCE]["temp_bytes"],
                          "peak memory manual / jax.nn.dot_product_attention":
                              mem[MANUAL]["peak_bytes"] / mem[JAX_NN]["peak_bytes"]}}
    return [time_row, mem_row]
