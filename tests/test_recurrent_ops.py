"""Recurrent ops (rnn, lstm, gru and their steps): bad inputs, mask semantics, jit/vmap/grad on both
paths, steps against whole sequences, compile size independent of T, and PyTorch parity for the LSTM.

The float64 gradient checks against finite differences, the float32 extremes and the NumPy oracles
are the audit's (``tests/test_audit.py`` and friends pick the registered ops up).
"""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import manual, ops

PATHS = {"reference": ops, "manual": manual}
K = {"rnn": 1, "lstm": 4, "gru": 3}

# Inputs, masks, cotangents and references are NumPy arrays: eagerly, every jnp op on a new shape
# (a slice, a where, a reduction) compiles its own kernel (~60 ms on a 2-core CPU); the ops take them as they are.


def _params(rng, k, d, h, dtype=np.float64):
    dtype = np.dtype(dtype)
    return ((rng.standard_normal((d, k * h)) / np.sqrt(d)).astype(dtype),
            (rng.standard_normal((h, k * h)) / np.sqrt(h)).astype(dtype),
            (0.5 * rng.standard_normal(k * h)).astype(dtype))


def _inputs(op, n=2, t=5, d=3, h=4, dtype=np.float64, seed=0):
    """(x, states..., wx, wh, b) for a whole-sequence op, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    x = rng.standard_normal((n, t, d)).astype(dtype)
    states = ((0.5 * rng.standard_normal((n, h))).astype(dtype),)
    if op == "lstm":
        states += ((0.5 * rng.standard_normal((n, h))).astype(dtype),)
    return (x,) + states + _params(rng, K[op], d, h, dtype)


def _np(tree):
    """A result's arrays as NumPy arrays (indexing them then compiles nothing)."""
    return jax.tree.map(np.asarray, tree)


def _call(m, op, args, **kw):
    """Run ``op`` of namespace ``m``; returns a tuple of arrays (hs,) or (hs, c_last)."""
    out = getattr(m, op)(*args, **kw)
    return out if isinstance(out, tuple) else (out,)


# ------------------------------------------------------------------------------------------ bad input

def _bad_calls():
    x, h0, wx, wh, b = _inputs("rnn", dtype=jnp.float32)            # x (2, 5, 3), H = 4
    xl, hl, cl, wxl, whl, bl = _inputs("lstm", dtype=jnp.float32)
    def z(shape):
        return np.zeros(shape, np.float32)
    return {
        "rnn x rank 2": ("rnn", lambda m: m.rnn(x[:, 0], h0, wx, wh, b), "`x` must have rank 3"),
        "rnn D mismatch": ("rnn", lambda m: m.rnn(x, h0, z((4, 4)), wh, b), "(2, 5, 3)"),
        "rnn h0 H mismatch": ("rnn", lambda m: m.rnn(x, z((2, 5)), wx, wh, b), "`h0` must have shape (N, H) = (2, 4)"),
        "rnn h0 N mismatch": ("rnn", lambda m: m.rnn(x, z((3, 4)), wx, wh, b), "`h0` must have shape (N, H) = (2, 4)"),
        "rnn wh not square": ("rnn", lambda m: m.rnn(x, h0, wx, z((4, 5)), b), "`wh` must have shape (H, H)"),
        "rnn b shape": ("rnn", lambda m: m.rnn(x, h0, wx, wh, z((5,))), "`b` must have shape"),
        "rnn mask shape": ("rnn", lambda m: m.rnn(x, h0, wx, wh, b, mask=np.ones((2, 4), bool)),
                           "`mask` must have shape (N, T) = (2, 5)"),
        "rnn mask dtype": ("rnn", lambda m: m.rnn(x, h0, wx, wh, b, mask=np.full((2, 5), "a")), "`mask` must be"),
        "rnn int x": ("rnn", lambda m: m.rnn(x.astype(jnp.int32), h0, wx, wh, b), "floating-point"),
        "rnn T=0": ("rnn", lambda m: m.rnn(x[:, :0], h0, wx, wh, b), "at least one time step"),
        "lstm wx blocks": ("lstm", lambda m: m.lstm(xl, hl, cl, wxl[:, :12], whl, bl), "`wx` must have shape (D, 4H)"),
        "lstm wh blocks": ("lstm", lambda m: m.lstm(xl, hl, cl, wxl, whl[:, :12], bl), "`wh` must have shape (H, 4H)"),
        "lstm c0 shape": ("lstm", lambda m: m.lstm(xl, hl, z((2, 3)), wxl, whl, bl), "`c0` must have shape"),
        "lstm int x": ("lstm", lambda m: m.lstm(xl.astype(jnp.int32), hl, cl, wxl, whl, bl), "floating-point"),
        "gru wx blocks": ("gru", lambda m: m.gru(x, h0, wx, wh, b), "`wh` must have shape (H, 3H)"),
        "rnn_step x rank": ("rnn_step", lambda m: m.rnn_step(x, h0, wx, wh, b), "`x` must have rank 2"),
        "lstm_step c shape": ("lstm_step", lambda m: m.lstm_step(xl[:, 0], hl, cl[:1], wxl, whl, bl),
                              "`c` must have shape (N, H) = (2, 4)"),
        "gru_step h N": ("gru_step", lambda m: m.gru_step(x[:, 0], h0[:1], *_params(np.random.default_rng(1), 3, 3, 4,
                                                                                       np.float32)),
                         "`h` must have shape (N, H) = (2, 4)"),
    }


BAD = _bad_calls()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("label", list(BAD))
def test_bad_input_is_a_one_line_error_naming_op_and_shapes(label, path):
    op, call, fragment = BAD[label]
    with pytest.raises(ValueError) as err:
        call(PATHS[path])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{op}: "), msg
    assert fragment in msg, msg
    assert "got" in msg and ("(" in msg), msg       # the offending shape or dtype is named


# ------------------------------------------------------------------------------------------ mask

# Per-cell sweeps (padded sequences, steps vs sequence): every cell in the default suite once, the
# paths alternating between cells; the other (cell, path) pairs in the slow tier (make test-slow).
CELL_PATHS = [pytest.param(op, path, marks=() if (op, path) in {("rnn", "manual"), ("lstm", "manual"),
                                                                ("gru", "reference")} else pytest.mark.slow)
              for op in ("rnn", "lstm", "gru") for path in PATHS]
STEP_CELL_PATHS = [pytest.param(op, path, marks=() if (op, path) in {("rnn", "reference"), ("lstm", "manual"),
                                                                     ("gru", "manual")} else pytest.mark.slow)
                   for op in ("rnn", "lstm", "gru") for path in PATHS]


@pytest.mark.parametrize("op,path", CELL_PATHS, ids=[f"{o}-{p}" for o in ("rnn", "lstm", "gru") for p in PATHS])
def test_padded_sequences_match_the_unpadded_ones(op, path, x64):
    """Lengths (4, 1) padded to T=4 with junk: each sequence's valid outputs, final states and
    gradients equal those of the sequence run alone, unpadded; padding gets zero gradient."""
    m = PATHS[path]
    lengths = (4, 1)
    args = _inputs(op, n=2, t=4)
    mask = np.arange(4)[None, :] < np.array(lengths)[:, None]
    x = np.where(mask[..., None], args[0], 1e3)           # junk in the padding
    nstate = 2 if op == "lstm" else 1
    ct = np.random.default_rng(7).standard_normal((2, 4, 4))
    argnums = tuple(range(len(args)))

    def loss(x, *rest, mask=None, ct=ct):
        out = _call(m, op, (x,) + rest, mask=mask)
        valid = out[0] * ct if mask is None else jnp.where(mask[..., None], out[0] * ct, 0)
        return valid.sum() + out[0][:, -1].sum() + (out[1].sum() if op == "lstm" else 0), out

    full, grads = _np(jax.jit(lambda *a: jax.grad(lambda *b: loss(*b, mask=mask), argnums, has_aux=True)(*a)[::-1])(
        x, *args[1:]))
    assert float(np.max(np.abs(grads[0][~mask]))) == 0.0
    gw_sum = [np.zeros_like(g) for g in grads[1 + nstate:]]
    for n, length in enumerate(lengths):
        one = (x[n:n + 1, :length],) + tuple(s[n:n + 1] for s in args[1:1 + nstate]) + args[1 + nstate:]
        alone, g1 = _np(jax.jit(jax.grad(lambda *b: loss(*b, ct=ct[n:n + 1, :length]), argnums, has_aux=True))(
            *one)[::-1])
        np.testing.assert_allclose(full[0][n, :length], alone[0][0], rtol=1e-13, atol=1e-13)
        # after the last valid step the state is carried: every padded output is the last valid one
        np.testing.assert_array_equal(full[0][n, length:], np.broadcast_to(full[0][n, length - 1],
                                                                          (4 - length, 4)))
        if op == "lstm":
            np.testing.assert_allclose(full[1][n], alone[1][0], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(grads[0][n, :length], g1[0][0], rtol=1e-12, atol=1e-12)
        for s in range(nstate):
            np.testing.assert_allclose(grads[1 + s][n], g1[1 + s][0], rtol=1e-12, atol=1e-12)
        gw_sum = [a + b for a, b in zip(gw_sum, g1[1 + nstate:])]
    for a, b in zip(grads[1 + nstate:], gw_sum):          # weight gradients: the sum over sequences
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_mask_spellings_agree_and_all_valid_is_no_mask(path, x64):
    m = PATHS[path]
    args = _inputs("lstm", n=2, t=4)
    lengths = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    outs = [_np(_call(m, "lstm", args, mask=mk)) for mk in (lengths.astype(bool), lengths.astype(np.float64),
                                                           jnp.asarray(lengths, jnp.int32), tuple(map(tuple, lengths)))]
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):
            np.testing.assert_array_equal(a, b)
    full = _np(_call(m, "lstm", args, mask=np.ones((2, 4), bool)))
    none = _np(_call(m, "lstm", args))
    for a, b in zip(full, none):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)
    # and the mask really changes the result where it is 0
    assert not np.allclose(outs[0][0][:, -1], none[0][:, -1])


def test_float_mask_gets_no_gradient(x64):
    args = _inputs("gru", n=2, t=3)
    mask = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for m in PATHS.values():
        g = jax.jit(jax.grad(lambda mk: m.gru(*args, mask=mk).sum()))(mask)
        assert float(np.max(np.abs(np.asarray(g)))) == 0.0


# ------------------------------------------------------------------------------------- transforms

# float32 (what training runs) in the default suite; the float64 twin, at 1e-12, in the slow tier
# (the float64 gradient audit already holds both paths to 1e-9 on every configuration). One cell, the
# LSTM, in the default suite (test_transforms jits every cell and vmaps the rnn); rnn and gru in the slow tier.
@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.float64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("op", [pytest.param("rnn", marks=pytest.mark.slow), "lstm",
                                pytest.param("gru", marks=pytest.mark.slow)])
def test_jit_vmap_grad_both_paths(op, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        tol = 1e-12 if dtype == jnp.float64 else 2e-5
        args = _inputs(op, n=2, t=4, dtype=dtype)
        mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
        results = {}
        for path, m in PATHS.items():
            def loss(*a):
                out = _call(m, op, a, mask=mask)
                return sum(jnp.sum(jnp.sin(o)) for o in out)

            eager = _call(m, op, args, mask=mask)
            jitted = jax.jit(lambda *a: _call(m, op, a, mask=mask))(*args)
            assert all(o.dtype == dtype for o in eager)
            for a, b in zip(eager, jitted):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
            # vmap over an extra leading axis of x (two batches of sequences, shared weights)
            xs = np.stack([args[0], 0.5 * args[0]])
            vm = _np(jax.vmap(lambda xb: _call(m, op, (xb,) + args[1:], mask=mask))(xs))
            second = _call(m, op, (0.5 * args[0],) + args[1:], mask=mask)
            for a, b in zip(vm, second):
                np.testing.assert_allclose(a[1], b, rtol=tol, atol=tol)
            results[path] = _np(jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args))
            assert all(g.dtype == dtype and bool(np.all(np.isfinite(g))) for g in results[path])
        for a, b in zip(results["manual"], results["reference"]):
            np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol * 10)


def test_vmap_of_grad_per_example(x64):
    """Per-sequence weight gradients with vmap(grad(...)) agree between the paths."""
    x, h0, wx, wh, b = _inputs("rnn", n=3, t=4)
    out = {}
    for path, m in PATHS.items():
        def loss(wh, x1, h1):
            return m.rnn(x1[None], h1[None], wx, wh, b).sum()
        out[path] = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(wh, x, h0)   # one program
        assert out[path].shape == (3,) + wh.shape
    np.testing.assert_allclose(out["manual"], out["reference"], rtol=1e-12, atol=1e-12)


def test_functional_dispatches_both_paths(x64):
    args = _inputs("lstm", n=2, t=3)
    for impl, m in (("autodiff", ops), ("manual", manual)):
        assert F.lstm.reference is ops.lstm and F.lstm.manual is manual.lstm
        a, b = F.lstm(*args, impl=impl), m.lstm(*args)
        np.testing.assert_array_equal(a[0], b[0])


# ----------------------------------------------------------------------------- steps vs sequences

@pytest.mark.parametrize("op,path", STEP_CELL_PATHS, ids=[f"{o}-{p}" for o in ("rnn", "lstm", "gru") for p in PATHS])
def test_step_loop_matches_sequence_op(op, path, x64):
    m = PATHS[path]
    args = _inputs(op, n=2, t=4, d=3, h=5)
    x, rest = args[0], args[1:]
    nstate = 2 if op == "lstm" else 1
    weights = rest[nstate:]

    def by_steps(x, *rest):
        states, hs = list(rest[:nstate]), []
        for t in range(x.shape[1]):
            out = getattr(m, op + "_step")(x[:, t], *states, *rest[nstate:])
            states = list(out) if isinstance(out, tuple) else [out]
            hs.append(states[0])
        return (jnp.stack(hs, axis=1),) + ((states[1],) if op == "lstm" else ())

    def loss(fn):
        return lambda *a: sum(jnp.sum(jnp.cos(o) * (1 + i)) for i, o in enumerate(fn(*a)))

    seq = _call(m, op, args)
    steps = jax.jit(by_steps)(*args)
    for a, b in zip(seq, steps):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    g_seq = jax.jit(jax.grad(loss(lambda *a: _call(m, op, a)), argnums=tuple(range(len(args)))))(*args)
    g_steps = jax.jit(jax.grad(loss(by_steps), argnums=tuple(range(len(args)))))(*args)
    for a, b in zip(g_seq, g_steps):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert len(weights) == 3


@pytest.mark.parametrize("op", ["rnn", "lstm", "gru"])
def test_none_initial_state_is_zeros(op, x64):
    args = _inputs(op, n=2, t=3)
    nstate = 2 if op == "lstm" else 1
    zeros = (args[0],) + tuple(np.zeros_like(s) for s in args[1:1 + nstate]) + args[1 + nstate:]
    nones = (args[0],) + (None,) * nstate + args[1 + nstate:]
    for m in PATHS.values():
        for a, b in zip(_call(m, op, zeros), _call(m, op, nones)):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------- compile size

def _eqn_count(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _eqn_count(sub)
    return n


@pytest.mark.parametrize("path", PATHS)
def test_compiled_program_size_does_not_grow_with_T(path):
    """Nothing unrolled in Python: value_and_grad of the lstm has the same jaxpr equation count
    and the same number of HLO lines at T=5 and T=60."""
    m = PATHS[path]
    sizes = []
    for t in (5, 60):
        args = _inputs("lstm", n=2, t=t, d=3, h=4, dtype=jnp.float32)

        def loss(*a):
            hs, c = m.lstm(*a)
            return hs.sum() + c.sum()

        vg = jax.value_and_grad(loss, argnums=(0, 3, 4, 5))
        eqns = _eqn_count(jax.make_jaxpr(vg)(*args).jaxpr)
        hlo = jax.jit(vg).lower(*args).as_text()
        sizes.append((eqns, len(hlo.splitlines())))
    assert sizes[0] == sizes[1], sizes
    assert sizes[0][0] > 10


# ---------------------------------------------------------------------------------- PyTorch parity

def test_lstm_matches_torch_nn_lstm(x64):
    torch = pytest.importorskip("torch")
    n, t, d, h = 3, 6, 4, 5
    x, h0, c0, wx, wh, b = (np.array(a) for a in _inputs("lstm", n=n, t=t, d=d, h=h, seed=3))
    ours_to_torch = np.concatenate([np.arange(0, 2 * h), np.arange(3 * h, 4 * h), np.arange(2 * h, 3 * h)])
    lstm_t = torch.nn.LSTM(d, h, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        lstm_t.weight_ih_l0.copy_(torch.from_numpy(wx[:, ours_to_torch].T.copy()))
        lstm_t.weight_hh_l0.copy_(torch.from_numpy(wh[:, ours_to_torch].T.copy()))
        lstm_t.bias_ih_l0.copy_(torch.from_numpy(b[ours_to_torch].copy()))
        lstm_t.bias_hh_l0.zero_()
    xt = torch.from_numpy(x).requires_grad_(True)
    ht0 = torch.from_numpy(h0[None]).requires_grad_(True)
    ct0 = torch.from_numpy(c0[None]).requires_grad_(True)
    hs_t, (_, cn_t) = lstm_t(xt, (ht0, ct0))
    ct = np.cos(np.arange(n * t * h)).reshape(n, t, h)
    (torch.sum(hs_t * torch.from_numpy(ct)) + 2 * cn_t.sum()).backward()
    torch_to_ours = np.argsort(ours_to_torch)
    for m in PATHS.values():
        hs, c_last = m.lstm(x, h0, c0, wx, wh, b)
        np.testing.assert_allclose(hs, hs_t.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c_last, cn_t.detach().numpy()[0], rtol=1e-12, atol=1e-12)

        def loss(x, h0, c0, wx, wh, b):
            hs, c = m.lstm(x, h0, c0, wx, wh, b)
            return jnp.sum(hs * ct) + 2 * c.sum()

        g = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5)))(x, h0, c0, wx, wh, b)
        np.testing.assert_allclose(g[0], xt.grad.numpy(), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(g[1], ht0.grad.numpy()[0], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(g[2], ct0.grad.numpy()[0], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(g[3], lstm_t.weight_ih_l0.grad.numpy().T[:, torch_to_ours], rtol=1e-11,
                                   atol=1e-12)
        np.testing.assert_allclose(g[4], lstm_t.weight_hh_l0.grad.numpy().T[:, torch_to_ours], rtol=1e-11,
                                   atol=1e-12)
        np.testing.assert_allclose(g[5], lstm_t.bias_ih_l0.grad.numpy()[torch_to_ours], rtol=1e-11, atol=1e-12)


def test_gru_is_cho_form_not_torch_form(x64):
    """The reset gate multiplies h before the matmul (Cho et al.), which PyTorch's form does not:
    with Un != 0 and r != 1 the two differ; both paths follow the Cho form."""
    x, h0, wx, wh, b = _inputs("gru", n=2, t=1, d=3, h=4)
    hd = 4
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    a_x = x[:, 0] @ wx + b
    z = sigmoid(a_x[:, :hd] + h0 @ wh[:, :hd])
    r = sigmoid(a_x[:, hd:2 * hd] + h0 @ wh[:, hd:2 * hd])
    cho = (1 - z) * np.tanh(a_x[:, 2 * hd:] + (r * h0) @ wh[:, 2 * hd:]) + z * h0
    torch_form = (1 - z) * np.tanh(a_x[:, 2 * hd:] + r * (h0 @ wh[:, 2 * hd:])) + z * h0
    for m in PATHS.values():
        got = np.asarray(m.gru_step(x[:, 0], h0, wx, wh, b))
        np.testing.assert_allclose(got, cho, rtol=1e-14, atol=1e-14)
        assert float(np.max(np.abs(got - torch_form))) > 1e-3
