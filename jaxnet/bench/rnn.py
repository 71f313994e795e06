"""The ``rnn`` benchmark suite (``jaxnet bench --only rnn``): an LSTM layer, forward + backward.

Loss = sum of the hidden states hs (N, T, H); gradients with respect to x, wx,
wh and b (h0 = c0 = zeros).  Candidates, timed side by side (interleaved
blocks, medians; :func:`jaxnet.bench.timing.time_candidates`):

- ``jaxnet manual BPTT``: :func:`jaxnet.manual.lstm`, backpropagation through
  time by hand (one ``custom_vjp`` over the sequence), jitted;
- ``jaxnet autodiff (scan)``: :func:`jaxnet.ops.lstm`, autodiff through the
  ``lax.scan`` of the step, jitted;
- ``torch nn.LSTM`` (when torch is installed): CPU, float32, eager
  ``forward`` + ``backward``, with as many threads as JAX's CPU client uses.

Shapes: N=64, D=H=256, T=50 and T=200 (``--quick``: N=8, D=H=32, T=10 and 40).
A last row times the jit compilation (lower + compile) of the manual lstm's
``value_and_grad`` at the two lengths: nothing is unrolled, so it must not
grow with T.
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import manual, ops
from jaxnet.bench.timing import Candidate, time_candidates

FULL = {"n": 64, "d": 256, "h": 256, "lengths": (50, 200)}
QUICK = {"n": 8, "d": 32, "h": 32, "lengths": (10, 40)}


def _weights(d, h, seed=0):
    rng = np.random.default_rng(seed)
    wx = (rng.standard_normal((d, 4 * h)) / np.sqrt(d)).astype(np.float32)
    wh = (rng.standard_normal((h, 4 * h)) / np.sqrt(h)).astype(np.float32)
    return wx, wh, np.zeros(4 * h, np.float32)


def _inputs(n, t, d, h, seed=0):
    x = np.random.default_rng(seed + 1).standard_normal((n, t, d)).astype(np.float32)
    return (x,) + _weights(d, h, seed)


def lstm_value_and_grad(fn, **scan_kw):
    """``(x, wx, wh, b) -> (sum of hs, (dx, dwx, dwh, db))`` for an lstm path ``fn``."""
    def loss(x, wx, wh, b):
        hs, _ = fn(x, None, None, wx, wh, b, **scan_kw)
        return jnp.sum(hs)
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))


def _jax_candidate(name, fn, args, n):
    step = jax.jit(lstm_value_and_grad(fn))
    arrays = tuple(jnp.asarray(a) for a in args)
    return Candidate(name, lambda: step(*arrays), items=n)


def _torch_candidate(torch, args, n):
    x, wx, wh, b = args
    d, h = wx.shape[0], wh.shape[0]
    layer = torch.nn.LSTM(d, h, batch_first=True)
    perm = np.concatenate([np.arange(0, 2 * h), np.arange(3 * h, 4 * h), np.arange(2 * h, 3 * h)])  # i f g o
    with torch.no_grad():
        layer.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(wx[:, perm].T)))
        layer.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(wh[:, perm].T)))
        layer.bias_ih_l0.copy_(torch.from_numpy(b[perm].copy()))
        layer.bias_hh_l0.zero_()
    xt = torch.from_numpy(x.copy()).requires_grad_(True)

    def run():
        for p in (xt, *layer.parameters()):
            p.grad = None
        hs, _ = layer(xt)
        hs.sum().backward()
        return None
    return Candidate("torch nn.LSTM", run, items=n, sync=lambda o: o)


def compile_seconds(t, n, d, h, repeats=3) -> float:
    """Median wall time of lowering and compiling the manual lstm's value_and_grad at length t."""
    args = tuple(jnp.asarray(a) for a in _inputs(n, t, d, h))
    times = []
    for _ in range(repeats):
        vg = lstm_value_and_grad(manual.lstm)
        fresh = jax.jit(lambda *a: vg(*a))           # a new function: nothing reused from a cache
        t0 = time.perf_counter()
        fresh.lower(*args).compile()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_rnn(*, blocks=5, reps=3, torch_mod=None, quick=False) -> list[dict]:
    """One row per sequence length (manual vs autodiff vs torch) and one compile-time row."""
    cfg = QUICK if quick else FULL
    n, d, h = cfg["n"], cfg["d"], cfg["h"]
    rows = []
    for t in cfg["lengths"]:
        args = _inputs(n, t, d, h)
        cands = [_jax_candidate("jaxnet manual BPTT", manual.lstm, args, n),
                 _jax_candidate("jaxnet autodiff (scan)", ops.lstm, args, n)]
        if torch_mod is not None:
            cands.append(_torch_candidate(torch_mod, args, n))
        res = time_candidates(cands, blocks=blocks, reps=reps)
        for row in res.values():                         # one item is one sequence here
            row["sequences_per_second"] = row.pop("images_per_second")
        ratios = {"manual / autodiff (time)": res["jaxnet manual BPTT"]["median_ms"]
                  / res["jaxnet autodiff (scan)"]["median_ms"]}
        if "torch nn.LSTM" in res:
            ratios["manual / torch nn.LSTM (sequences/s)"] = (res["jaxnet manual BPTT"]["sequences_per_second"]
                                                               / res["torch nn.LSTM"]["sequences_per_second"])
        rows.append({"name": f"rnn: lstm forward+backward T={t} N={n} D=H={d}", "candidates": res,
                     "ratios": ratios})
    short, long_ = cfg["lengths"]
    comp = {t: compile_seconds(t, n, d, h, repeats=1 if quick else 3) for t in (short, long_)}
    rows.append({"name": f"rnn: compile time of the manual lstm value_and_grad N={n} D=H={d}",
                 "candidates": {f"T={t}": {"median_ms": s * 1e3} for t, s in comp.items()},
                 "ratios": {f"compile T={long_} / T={short}": comp[long_] / comp[short]}})
    return rows
