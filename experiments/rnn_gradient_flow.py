"""Gradient flow through time: vanishing and exploding gradients in RNNs, the LSTM's cell path,
and gradient clipping.

    python -m experiments.rnn_gradient_flow [--quick] [--out DIR] [--steps T] [--hidden H]

The course's claims (CS231n, RNN lecture): backpropagating from ``h_t`` to ``h_{t-1}``
multiplies by ``W_hh^T`` (and the tanh's derivative), so the gradient reaching ``h_0`` holds
many factors of ``W``: largest singular value > 1 gives exploding gradients, < 1 vanishing
ones. Exploding gradients are controlled by gradient clipping (scale the gradient if its norm
is too big), vanishing ones by a different architecture: in the LSTM, backpropagation from
``c_t`` to ``c_{t-1}`` is only an elementwise multiplication by the forget gate ``f``, no
matrix multiply by ``W``.

What is measured (float64, one fixed draw of inputs and weights, ``--seed``):

1. **vanilla RNN**, ``h_t = tanh(x_t W_x + h_{t-1} W_h + b)``, ``T`` steps, batch ``N``,
   hidden ``H``, with ``W_h = r Q`` (``Q`` a random orthogonal matrix, so every singular value
   and the spectral radius are exactly ``r``) for ``r`` in 0.9 / 1.0 / 1.1 / 1.5; the same for the
   *linear* RNN (no tanh), whose gradient is exactly ``(W_h^T)^{T-t} dL/dh_T``, so its norm
   is exactly ``r^{T-t} ||dL/dh_T||``. The loss depends on the last state only:
   ``L = sum(h_T * v)`` with a fixed random ``v (N, H)``.
   ``dL/dh_t`` is the gradient w.r.t. an additive perturbation ``e_t`` (zero) of each state:
   the forward computes ``h_t = cell(x_t, h_{t-1}) + e_t`` and ``jax.grad`` w.r.t. ``e`` at 0.
   Reported: ``||dL/dh_t||`` (Frobenius over the batch) for every ``t``, the fitted per-step
   factor ``exp(slope of log ||dL/dh_t|| in t)`` and the ratio ``||dL/dh_0|| / ||dL/dh_T||``.
2. **LSTM** with the same inputs, each gate's block of ``W_h`` ``= r Q_gate`` (r = 0.9) and
   the forget gate's bias ``b_f`` in ``--forget-biases`` (1, 3, 5): ``||dL/dh_t||`` and
   ``||dL/dc_t||`` (perturbing ``c_t`` the same way), and the mean forget gate ``f``, whose
   product bounds the cell path.
3. **gradient clipping** on the exploding case (tanh and linear RNN, r = 1.1): the gradient of
   ``L`` w.r.t. ``W_h`` for sequence lengths 5 .. T, its norm, the norm of the update that
   ``optax.chain(optax.clip_by_global_norm(c), optax.sgd(1))`` makes (capped at ``c``) and
   its cosine with ``-grad`` (1: the direction is kept), beside ``optax.clip(c)`` (clipping
   each element at ``c``), which changes the direction.

The cells are ``jaxnet.functional``'s ``rnn_step`` / ``lstm_step`` when present (both the
``autodiff`` and the ``manual`` path: the gradients of the two are compared), else plain
``jax.numpy`` forms with the same formulas; ``results.json["ops"]`` says which.

Output: ``results.json`` and ``rnn_gradient_flow.png`` (4 panels). ``--quick``: T = 40,
H = 32 (seconds).
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np

from experiments._common import fail, figure, grid_legend, parse_args, print_table, save_figure, write_results

NAME = "rnn_gradient_flow"
DESCRIPTION = "Gradient flow through time: vanishing/exploding gradients in RNNs, the LSTM cell path, clipping."
RADII = (0.9, 1.0, 1.1, 1.5)
COLORS = {0.9: "tab:blue", 1.0: "tab:green", 1.1: "tab:red", 1.5: "tab:purple"}


def _extra(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="sequence length T (default 80; quick 40)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size H (default 64; quick 32)")
    parser.add_argument("--batch", type=int, default=8, help="batch size N (default 8)")
    parser.add_argument("--input-dim", type=int, default=16, help="input size D (default 16)")
    parser.add_argument("--input-scale", type=float, default=0.5,
                        help="inputs x ~ N(0, s^2); W_x ~ N(0, 1/D) (default 0.5)")
    parser.add_argument("--forget-biases", default="1,3,5", help="LSTM forget-gate biases (default 1,3,5)")
    parser.add_argument("--clip-norm", type=float, default=1.0, help="clipping threshold c (default 1.0)")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def cells(impl: str | None = None):
    """``(rnn_step, lstm_step, source)``: ``jaxnet.functional``'s steps (with ``impl``) when
    present, else the same formulas in ``jax.numpy``."""
    import jax
    import jax.numpy as jnp

    import jaxnet.functional as F

    if hasattr(F, "rnn_step") and hasattr(F, "lstm_step"):
        return (lambda x, h, wx, wh, b: F.rnn_step(x, h, wx, wh, b, impl=impl),
                lambda x, h, c, wx, wh, b: F.lstm_step(x, h, c, wx, wh, b, impl=impl),
                "jaxnet.functional")

    def rnn_step(x, h, wx, wh, b):
        return jnp.tanh(x @ wx + h @ wh + b)

    def lstm_step(x, h, c, wx, wh, b):
        i, f, o, g = jnp.split(x @ wx + h @ wh + b, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    return rnn_step, lstm_step, "jax.numpy (jaxnet.functional has no rnn_step/lstm_step)"


def orthogonal(key, n: int):
    """A random ``(n, n)`` orthogonal matrix (QR of a Gaussian, signs fixed), float64."""
    import jax
    import jax.numpy as jnp

    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), jnp.float64))
    return q * jnp.sign(jnp.diag(r))[None, :]


def state_grads(step, xs, h0, wx, wh, b, v):
    """See :func:`state_grads_fn`: ``state_grads_fn(step)(xs, h0, wx, wh, b, v)``."""
    return np.asarray(state_grads_fn(step)(xs, h0, wx, wh, b, v))


_FNS: dict = {}


def _cached(kind, step, build):
    """One jitted function per (kind, step function), so equal shapes compile once."""
    key = (kind, step)
    if key not in _FNS:
        _FNS[key] = build()
    return _FNS[key]


def state_grads_fn(step):
    """``||dL/dh_t||`` for t = 0..T (``h_0`` the initial state, ``h_T`` the last), ``L = sum(h_T v)``.

    ``step(x, h) -> h`` is applied as ``h_t = step(x_t, h_{t-1}) + e_t``; the gradient w.r.t.
    the zero perturbations ``e (T + 1, N, H)`` is ``dL/dh_t``. Returns float64 ``(T + 1,)``."""
    import jax
    import jax.numpy as jnp

    def fn(xs, h0, wx, wh, b, v):
        def loss(e):
            def body(h, inp):
                x, et = inp
                h = step(x, h, wx, wh, b) + et
                return h, None

            h, _ = jax.lax.scan(body, h0 + e[0], (xs, e[1:]))
            return jnp.sum(h * v)

        g = jax.grad(loss)(jnp.zeros((xs.shape[0] + 1, *h0.shape), h0.dtype))
        return jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2)))

    return _cached("state", step, lambda: jax.jit(fn))


def lstm_state_grads(lstm_step, xs, h0, c0, wx, wh, b, v):
    """``(||dL/dh_t||, ||dL/dc_t||, mean forget gate per step)`` for t = 0..T, ``L = sum(h_T v)``,
    perturbing ``h_t`` and ``c_t`` additively. float64 ``(T + 1,)`` each (the forget gate ``(T,)``)."""
    import jax

    out = _cached("lstm", lstm_step, lambda: jax.jit(lambda *a: _lstm_grads(lstm_step, *a)))(
        xs, h0, c0, wx, wh, b, v)
    return tuple(np.asarray(o) for o in out)


def _lstm_grads(lstm_step, xs, h0, c0, wx, wh, b, v):
    import jax
    import jax.numpy as jnp

    hd = h0.shape[-1]

    def loss(eh, ec):
        def body(hc, inp):
            x, a, bb = inp
            h, c = lstm_step(x, hc[0], hc[1], wx, wh, b)
            return (h + a, c + bb), None

        (h, _), _ = jax.lax.scan(body, (h0 + eh[0], c0 + ec[0]), (xs, eh[1:], ec[1:]))
        return jnp.sum(h * v)

    z = jnp.zeros((xs.shape[0] + 1, *h0.shape), h0.dtype)
    gh, gc = jax.grad(loss, argnums=(0, 1))(z, z)

    def fgate(hc, x):
        f = jax.nn.sigmoid((x @ wx + hc[0] @ wh + b)[:, hd:2 * hd])
        h, c = lstm_step(x, hc[0], hc[1], wx, wh, b)
        return (h, c), jnp.mean(f)

    _, fs = jax.lax.scan(fgate, (h0, c0), xs)
    norm = lambda g: jnp.sqrt(jnp.sum(g ** 2, axis=(1, 2)))  # noqa: E731
    return norm(gh), norm(gc), fs


def decay_factor(norms: np.ndarray) -> float:
    """``exp`` of the least-squares slope of ``log norms[t]`` against ``T - t`` (steps back from
    the end): the per-step factor by which the gradient shrinks (< 1) or grows (> 1)."""
    norms = np.asarray(norms, np.float64)
    k = np.arange(len(norms))[::-1]  # steps back from T
    ok = norms > 0
    slope = np.polyfit(k[ok], np.log(norms[ok]), 1)[0]
    return float(math.exp(slope))


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    q = args.quick
    T = args.steps or (40 if q else 80)
    H = args.hidden or (32 if q else 64)
    N, D = args.batch, args.input_dim
    try:
        biases = tuple(float(s) for s in args.forget_biases.split(",") if s.strip())
    except ValueError:
        biases = ()
    if not biases:
        _fail(f"--forget-biases must be a comma-separated list of numbers, got {args.forget_biases!r}")
    for name, v in (("steps", T), ("hidden", H), ("batch", N), ("input-dim", D)):
        if v <= 0:
            _fail(f"--{name} must be positive, got {v}")
    for name, v in (("input-scale", args.input_scale), ("clip-norm", args.clip_norm)):
        if not (math.isfinite(v) and v > 0):
            _fail(f"--{name} must be a positive finite number, got {v}")

    import jax

    with jax.enable_x64(True):
        return _run(args, T, H, N, D, biases)


def _run(args, T, H, N, D, biases) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    key = jax.random.PRNGKey(args.seed)
    k = jax.random.split(key, 8)
    xs = args.input_scale * jax.random.normal(k[0], (T, N, D), jnp.float64)
    wx = jax.random.normal(k[1], (D, H), jnp.float64) / math.sqrt(D)
    q = orthogonal(k[2], H)
    v = jax.random.normal(k[3], (N, H), jnp.float64)
    h0 = jnp.zeros((N, H), jnp.float64)
    b = jnp.zeros((H,), jnp.float64)
    rnn_step, lstm_step, source = cells()
    linear = lambda x, h, wx, wh, b: x @ wx + h @ wh + b  # noqa: E731
    t_axis = np.arange(T + 1)

    # ---- 1. vanilla and linear RNN
    rnn = {}
    for r in RADII:
        wh = r * q
        tanh_n = state_grads(rnn_step, xs, h0, wx, wh, b, v)
        lin_n = state_grads(linear, xs, h0, wx, wh, b, v)
        exact = np.linalg.norm(np.asarray(v)) * r ** (T - t_axis.astype(np.float64))
        rnn[f"{r:g}"] = {
            "radius": r, "tanh_norms": tanh_n, "linear_norms": lin_n, "linear_exact": exact,
            "linear_max_rel_err": float(np.max(np.abs(lin_n - exact) / exact)),
            "tanh_factor": decay_factor(tanh_n), "linear_factor": decay_factor(lin_n),
            "tanh_ratio_h0_hT": float(tanh_n[0] / tanh_n[-1]), "linear_ratio_h0_hT": float(lin_n[0] / lin_n[-1]),
            "spectral_radius": float(np.max(np.abs(np.linalg.eigvals(np.asarray(wh))))),
            "largest_singular_value": float(np.linalg.norm(np.asarray(wh), 2)),
        }

    # ---- cross-check: the manual path's gradients (when the library ops are there)
    check = None
    if source == "jaxnet.functional":
        rs_m, ls_m, _ = cells("manual")
        rs_a, ls_a, _ = cells("autodiff")
        a = state_grads(rs_a, xs, h0, wx, 0.9 * q, b, v)
        m = state_grads(rs_m, xs, h0, wx, 0.9 * q, b, v)
        check = {"rnn_max_rel_diff_manual_vs_autodiff": float(np.max(np.abs(a - m) / np.abs(a)))}

    # ---- 2. LSTM, r = 0.9, forget biases
    wh4 = jnp.concatenate([0.9 * orthogonal(kk, H) for kk in jax.random.split(k[4], 4)], axis=1)
    wx4 = jax.random.normal(k[5], (D, 4 * H), jnp.float64) / math.sqrt(D)
    lstm = {}
    for bf in biases:
        b4 = jnp.zeros((4 * H,), jnp.float64).at[H:2 * H].set(bf)
        gh, gc, fs = lstm_state_grads(lstm_step, xs, h0, jnp.zeros_like(h0), wx4, wh4, b4, v)
        lstm[f"{bf:g}"] = {
            "forget_bias": bf, "h_norms": gh, "c_norms": gc, "mean_forget_gate": float(np.mean(fs)),
            "h_factor": decay_factor(gh[:-1]), "c_factor": decay_factor(gc[:-1]),
            "ratio_h0_hT": float(gh[0] / gh[-1]),
        }
        if check is not None:
            gh_m, gc_m, _ = lstm_state_grads(ls_m, xs, h0, jnp.zeros_like(h0), wx4, wh4, b4, v)
            check[f"lstm_b{bf:g}_max_rel_diff_manual_vs_autodiff"] = float(
                max(np.max(np.abs(gh - gh_m) / np.abs(gh)), np.max(np.abs(gc[:-1] - gc_m[:-1]) / np.abs(gc[:-1]))))

    # ---- 3. clipping on the exploding case
    lengths = sorted(set(int(x) for x in np.linspace(5, T, 8)))
    c = args.clip_norm
    by_norm = optax.chain(optax.clip_by_global_norm(c), optax.sgd(1.0))
    by_value = optax.chain(optax.clip(c), optax.sgd(1.0))
    clipping = {}
    for kind, step in (("tanh", rnn_step), ("linear", linear)):
        @jax.jit
        def grad_wh(wh, length, step=step):
            def loss(wh):  # the first `length` steps: later steps leave h unchanged
                def body(h, inp):
                    t, x = inp
                    return jnp.where(t < length, step(x, h, wx, wh, b), h), None

                h, _ = jax.lax.scan(body, h0, (jnp.arange(T), xs))
                return jnp.sum(h * v)

            return jax.grad(loss)(wh)

        rows = []
        for L in lengths:
            g = grad_wh(1.1 * q, L)
            gn = float(jnp.linalg.norm(g))
            row = {"T": L, "grad_norm": gn}
            for name, opt in (("norm", by_norm), ("value", by_value)):
                u, _ = opt.update(g, opt.init(g), g)
                row[f"update_norm_{name}"] = float(jnp.linalg.norm(u))
                row[f"cosine_{name}"] = float(jnp.sum(-u * g) / (jnp.linalg.norm(u) * gn))
            rows.append(row)
        clipping[kind] = rows

    # ---- report
    print_table(["cell", "r / b_f", "factor per step", "||dL/dh_0|| / ||dL/dh_T||"],
                [["tanh RNN", r["radius"], r["tanh_factor"], r["tanh_ratio_h0_hT"]] for r in rnn.values()]
                + [["linear RNN", r["radius"], r["linear_factor"], r["linear_ratio_h0_hT"]] for r in rnn.values()]
                + [["LSTM h (r=0.9)", l_["forget_bias"], l_["h_factor"], l_["ratio_h0_hT"]] for l_ in lstm.values()]
                + [["LSTM c (r=0.9)", l_["forget_bias"], l_["c_factor"], float("nan")] for l_ in lstm.values()],
                title=f"gradient flow, T = {T}, H = {H}")
    for kind, rows in clipping.items():
        print_table(["T", "||grad||", "clip_by_global_norm", "cos", "clip (value)", "cos"],
                    [[r["T"], r["grad_norm"], r["update_norm_norm"], r["cosine_norm"], r["update_norm_value"],
                      r["cosine_value"]] for r in rows],
                    title=f"clipping at c = {c:g}, {kind} RNN, r = 1.1")

    os.makedirs(args.out, exist_ok=True)
    fig_path = plot(rnn, lstm, clipping, T, c, os.path.join(args.out, "rnn_gradient_flow.png"))
    results = {
        "protocol": {"T": T, "H": H, "N": N, "D": D, "input_scale": args.input_scale, "radii": list(RADII),
                     "forget_biases": list(biases), "clip_norm": c, "loss": "sum(h_T * v), v ~ N(0, 1)",
                     "W_h": "r * Q, Q random orthogonal (all singular values r)", "dtype": "float64"},
        "ops": source, "manual_vs_autodiff": check,
        "rnn": rnn, "lstm": lstm, "clipping": clipping, "figure": os.path.basename(fig_path),
    }
    write_results(args.out, results, args)
    return results


def plot(rnn, lstm, clipping, T, c, path):
    fig = figure((13, 9))
    (ax1, ax2), (ax3, ax4) = fig.subplots(2, 2)
    t = np.arange(T + 1)
    for key, r in rnn.items():
        col = COLORS[r["radius"]]
        ax1.semilogy(t, r["tanh_norms"], color=col, lw=2, label=f"tanh RNN, r = {key}")
        ax1.semilogy(t, r["linear_norms"], color=col, lw=1, ls="--", label=f"linear RNN, r = {key}")
        ax1.semilogy(t, r["linear_exact"], color="k", lw=0.6, ls=":")
    ax1.set(xlabel="t", ylabel="||dL/dh_t||", title="vanilla RNN (dotted: r^(T-t) ||dL/dh_T||)")
    r09 = rnn["0.9"]
    ax2.semilogy(t, r09["tanh_norms"], color="tab:blue", lw=2, label="tanh RNN, r = 0.9")
    for i, (key, l_) in enumerate(lstm.items()):
        col = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")[i % 5]
        ax2.semilogy(t, l_["h_norms"], color=col, lw=2, label=f"LSTM ||dL/dh_t||, b_f = {key}")
        ax2.semilogy(t[:-1], l_["c_norms"][:-1], color=col, lw=1, ls="--", label=f"LSTM ||dL/dc_t||, b_f = {key}")
    ax2.set(xlabel="t", ylabel="gradient norm", title="LSTM (W_h blocks r = 0.9) vs tanh RNN")
    for kind, ls in (("tanh", "-"), ("linear", "--")):
        rows = clipping[kind]
        Ls = [r["T"] for r in rows]
        ax3.semilogy(Ls, [r["grad_norm"] for r in rows], color="tab:red", ls=ls, marker="o", ms=3,
                     label=f"||grad W_h||, {kind}")
        ax3.semilogy(Ls, [r["update_norm_norm"] for r in rows], color="tab:green", ls=ls, marker="o", ms=3,
                     label=f"clip_by_global_norm, {kind}")
        ax3.semilogy(Ls, [r["update_norm_value"] for r in rows], color="tab:gray", ls=ls, marker="o", ms=3,
                     label=f"clip by value, {kind}")
        ax4.plot(Ls, [r["cosine_norm"] for r in rows], color="tab:green", ls=ls, marker="o", ms=3,
                 label=f"clip_by_global_norm, {kind}")
        ax4.plot(Ls, [r["cosine_value"] for r in rows], color="tab:gray", ls=ls, marker="o", ms=3,
                 label=f"clip by value, {kind}")
    ax3.axhline(c, color="k", lw=0.6, ls=":")
    ax3.set(xlabel="sequence length T", ylabel="norm", title=f"r = 1.1: gradient and clipped update (c = {c:g})")
    ax4.set(xlabel="sequence length T", ylabel="cos(update, -grad)", title="direction kept?")
    grid_legend((ax1, ax2, ax3, ax4), fontsize=7)
    return save_figure(fig, path, f"gradient flow through time (T = {T})")


if __name__ == "__main__":
    main()
