"""Attention ops (scaled_dot_product_attention, patch_embed): both paths against each other, the
NumPy oracle, jax.nn.dot_product_attention and flax.linen; gradients with dropout; jit/vmap/grad;
rows with every key masked; block sizes; memory of the blockwise manual path; bad arguments.

The audit's float64 finite differences, the float32 extremes and the oracle check over the
registered cases are the registry-driven suites' (``tests/test_audit.py`` and friends).
"""
import re

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import manual, ops
from jaxnet.ops import attention as A

PATHS = {"reference": ops, "manual": manual}
SDPA = "scaled_dot_product_attention"


def _qkv(lead=(2, 3), tq=7, tk=9, dh=4, dv=5, seed=0, dtype=jnp.float64):
    r = np.random.default_rng(seed)
    return tuple(jnp.asarray(r.standard_normal(lead + s), dtype) for s in ((tq, dh), (tk, dh), (tk, dv)))


def _vjp_fn(fn, **kw):
    """A jitted ``(q, k, v, ct) -> (out, (dq, dk, dv))`` of ``fn(q, k, v, **kw)``."""
    @jax.jit
    def run(q, k, v, ct):
        out, pull = jax.vjp(lambda *a: fn(*a, **kw), q, k, v)
        return out, pull(ct)
    return run


def _vjp(fn, q, k, v, ct, **kw):
    """(out, (dq, dk, dv)) of ``fn(q, k, v, **kw)`` for the cotangent ct, jitted."""
    return _vjp_fn(fn, **kw)(q, k, v, ct)


def _ct(q, v, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(q.shape[:-1] + v.shape[-1:]), q.dtype)


def _close(a, b, tol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.max(np.abs(b)), 1e-300)
    assert np.max(np.abs(a - b)) <= tol * scale, np.max(np.abs(a - b)) / scale


# A key-padding mask (the last two keys of the second example are padding) and an arbitrary
# (Tq, Tk) mask where every query sees at least one key.
PAD = np.ones((2, 1, 1, 9), bool)
PAD[1, ..., 7:] = False
ROWS = np.random.default_rng(5).random((7, 9)) < 0.6
ROWS[:, 0] = True
CONFIGS = {
    "plain": {},
    "padding+causal": {"mask": PAD, "causal": True},
    "rows mask": {"mask": ROWS},
    "dropout+padding": {"mask": PAD, "dropout_rate": 0.25, "key": jax.random.key(3)},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_paths_agree_with_each_other_and_the_oracle_in_float64(name, x64):
    """Values and gradients (manual vs autodiff, block 4 with Tk = 9: 3 blocks, the last padded)."""
    kw = dict(CONFIGS[name], block_size=4)
    q, k, v = _qkv()
    ct = _ct(q, v)
    out_r, g_r = _vjp(ops.scaled_dot_product_attention, q, k, v, ct, **kw)
    out_m, g_m = _vjp(manual.scaled_dot_product_attention, q, k, v, ct, **kw)
    _close(out_m, out_r)
    for a, b in zip(g_m, g_r):
        _close(a, b)
    want = A._scaled_dot_product_attention_oracle(*(np.asarray(a) for a in (q, k, v)), **kw)
    _close(out_r, want)
    _close(out_m, want)


def _bthn(a):
    """(B, N, T, H) <-> (B, T, N, H): jaxnet's heads-first layout and jax.nn's / flax's."""
    return jnp.swapaxes(a, 1, 2)


@pytest.mark.parametrize("name", ["padding+causal"])
def test_against_jax_nn_and_flax_dot_product_attention(name, x64):
    kw = CONFIGS[name]
    q, k, v = _qkv(dv=4)
    ct = _ct(q, v)
    mask = None if "mask" not in kw else jnp.broadcast_to(kw["mask"], (2, 3, 7, 9))
    causal = kw.get("causal", False)
    full = mask
    if causal:
        tri = jnp.tril(jnp.ones((7, 9), bool))
        full = tri if full is None else full & tri

    def jax_nn(q, k, v):
        return _bthn(jax.nn.dot_product_attention(_bthn(q), _bthn(k), _bthn(v), mask=mask, is_causal=causal))

    def flax_math(q, k, v):
        return _bthn(fnn.dot_product_attention(_bthn(q), _bthn(k), _bthn(v), mask=full, deterministic=True))

    ours = {p: _vjp(m.scaled_dot_product_attention, q, k, v, ct, block_size=4, **kw) for p, m in PATHS.items()}
    # flax computes in the inputs' dtype (float64 here): agreement to round-off
    out_f, g_f = _vjp(flax_math, q, k, v, ct)
    # jax.nn.dot_product_attention casts the logits to float32 for its softmax, whatever the dtype
    out_j, g_j = _vjp(jax_nn, q, k, v, ct)
    for path, (out, g) in ours.items():
        _close(out, out_f, 1e-12)
        for a, b in zip(g, g_f):
            _close(a, b, 1e-11)
        _close(out, out_j, 1e-6)
        for a, b in zip(g, g_j):
            _close(a, b, 1e-5)


def test_multi_head_attention_against_flax_with_the_same_weights(x64):
    """flax.linen.MultiHeadDotProductAttention = projections + our op on heads as contiguous slices."""
    b, t, s, d, heads = 2, 5, 6, 8, 2
    r = np.random.default_rng(7)
    xq = jnp.asarray(r.standard_normal((b, t, d)))
    xkv = jnp.asarray(r.standard_normal((b, s, d)))
    mask = jnp.asarray(r.random((b, 1, t, s)) < 0.7).at[..., 0].set(True)
    mha = fnn.MultiHeadDotProductAttention(num_heads=heads, dtype=jnp.float64, param_dtype=jnp.float64,
                                           deterministic=True)
    params = jax.jit(lambda key: mha.init(key, xq, xkv, mask=mask))(jax.random.key(0))["params"]
    want = jax.jit(lambda p: mha.apply({"params": p}, xq, xkv, mask=mask))(params)

    def ours(m):
        def proj(x, p):                                     # kernel (D, N, H): heads are contiguous slices
            w = p["kernel"].reshape(d, -1)
            return jnp.swapaxes((x @ w + p["bias"].reshape(-1)).reshape(x.shape[:2] + (heads, -1)), 1, 2)
        o = m.scaled_dot_product_attention(proj(xq, params["query"]), proj(xkv, params["key"]),
                                           proj(xkv, params["value"]), mask=mask, block_size=4)
        o = jnp.swapaxes(o, 1, 2).reshape(b, t, -1)
        return o @ params["out"]["kernel"].reshape(-1, d) + params["out"]["bias"]

    for m in PATHS.values():
        _close(jax.jit(ours, static_argnums=0)(m), want, 1e-12)


def test_dropout_mask_is_shared_and_has_the_right_statistics(x64):
    """With v = I the output is the weight matrix itself: the paths drop the same entries (for
    every block size), kept ones are scaled by 1 / (1 - rate), and the keep rate is 1 - rate."""
    rate, tq, tk = 0.3, 48, 40
    q, k, _ = _qkv(lead=(4,), tq=tq, tk=tk)
    v = jnp.broadcast_to(jnp.eye(tk), (4, tk, tk))
    key = jax.random.key(11)

    def call(m, **kw):
        return jax.jit(lambda q, k, v, key: m.scaled_dot_product_attention(q, k, v, key=key, **kw))

    ref = call(ops, dropout_rate=rate)
    base = ref(q, k, v, key)
    plain = A._scaled_dot_product_attention_oracle(np.asarray(q), np.asarray(k), np.asarray(v))
    dropped = np.asarray(base) == 0
    for block in (7, 64):
        out = np.asarray(call(manual, dropout_rate=rate, block_size=block)(q, k, v, key))
        assert np.array_equal(out == 0, dropped), block
        _close(out, base, 1e-13)
    np.testing.assert_allclose(np.asarray(base)[~dropped], plain[~dropped] / (1 - rate), rtol=1e-13)
    n = dropped.size
    assert abs(dropped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    # not constant along rows or columns, neighbours uncorrelated, and a different key drops other entries
    assert 0 < dropped.mean(axis=-1).min() and dropped.mean(axis=-1).max() < 1
    flags = dropped.reshape(-1, tk).astype(float)
    for a, b in ((flags[:, :-1], flags[:, 1:]), (flags[:-1], flags[1:])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)
    other = np.asarray(ref(q, k, v, jax.random.key(12))) == 0
    assert not np.array_equal(other, dropped)
    # the same mask in float32 (the flags are drawn in float32 whatever the mode)
    with jax.enable_x64(False):
        out32 = call(manual, dropout_rate=rate)(*(a.astype(np.float32) for a in (q, k, v)), key)
    assert np.array_equal(np.asarray(out32) == 0, dropped)


def test_jit_vmap_and_grad_of_the_manual_path(x64):
    """The custom_vjp under jit, vmap (the leading axis mapped, the mask unmapped) and grad, and
    vmap of its grad; the reference is plain jax.numpy (the other tests run it under jit)."""
    q, k, v = _qkv(lead=(3, 2))
    kw = dict(mask=PAD[0], causal=True, block_size=4)
    f = lambda q, k, v: manual.scaled_dot_product_attention(q, k, v, **kw)
    full = jax.jit(f)(q, k, v)
    _close(jax.jit(jax.vmap(f))(q, k, v), full, 1e-14)
    loss = lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    want = _vjp(ops.scaled_dot_product_attention, q, k, v, jnp.cos(full), **kw)[1]
    for a, b in zip(g, want):
        _close(a, b)
    g_vmapped = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(q, k, v)     # per example = the whole
    for a, b in zip(g_vmapped, g):
        _close(a, b, 1e-14)
    # jaxnet.functional dispatches to the two paths
    assert F.scaled_dot_product_attention.manual is manual.scaled_dot_product_attention
    assert F.scaled_dot_product_attention.reference is ops.scaled_dot_product_attention


@pytest.mark.parametrize("path", list(PATHS))
def test_rows_with_every_key_masked_give_zero_and_zero_gradients(path, x64):
    m = PATHS[path]
    q, k, v = _qkv(lead=(2,), tq=5, tk=6)
    mask = np.ones((5, 6), bool)
    mask[1] = False                                         # query 1 sees nothing
    ct = _ct(q, v)
    run = _vjp_fn(m.scaled_dot_product_attention, mask=mask, block_size=4)
    out, (dq, dk, dv) = run(q, k, v, ct)
    assert np.all(np.asarray(out)[:, 1] == 0) and np.all(np.asarray(dq)[:, 1] == 0)
    for a in (out, dq, dk, dv):
        assert np.isfinite(np.asarray(a)).all()
    # the row's cotangent reaches nothing: dk, dv are those of the other rows alone
    _, (_, dk2, dv2) = run(q, k, v, ct.at[:, 1].set(0))
    assert np.array_equal(np.asarray(dk), np.asarray(dk2)) and np.array_equal(np.asarray(dv), np.asarray(dv2))
    # the other rows are those of the op on them alone
    keep = np.array([0, 2, 3, 4])
    alone = jax.jit(lambda q: m.scaled_dot_product_attention(q, k, v, mask=mask[keep]))(q[:, keep])
    _close(np.asarray(out)[:, keep], alone, 1e-14)
    # everything masked, also with dropout: zeros everywhere, no NaN
    none = np.zeros((5, 6), bool)
    out, grads = _vjp(m.scaled_dot_product_attention, q, k, v, ct, mask=none, dropout_rate=0.5,
                      key=jax.random.key(0), block_size=4)
    for a in (out,) + tuple(grads):
        assert np.all(np.asarray(a) == 0)


def test_blockwise_equals_one_block_for_several_block_sizes(x64):
    """Values and gradients, with a mask, causal and dropout (the flags do not depend on the block)."""
    q, k, v = _qkv(lead=(2,), tq=13, tk=29)
    ct = _ct(q, v)
    kw = dict(mask=np.random.default_rng(1).random((1, 13, 29)) < 0.8, causal=True, dropout_rate=0.3,
              key=jax.random.key(4))
    kw["mask"][..., 0] = True
    out1, g1 = _vjp(manual.scaled_dot_product_attention, q, k, v, ct, block_size=29, **kw)   # one block
    for block in (1, 4, 10):
        out, g = _vjp(manual.scaled_dot_product_attention, q, k, v, ct, block_size=block, **kw)
        _close(out, out1, 1e-13)
        for a, b in zip(g, g1):
            _close(a, b, 1e-13)


def test_saturated_logits_in_float32_stay_finite_and_close_to_float64():
    """Logits of 1e4 in float32 (left out of the float32 pass: see attention._attention_extremes):
    finite outputs and gradients, within 1e-5 of the float64 values relative to the natural scale
    of each quantity (|v| for out and dv, |dO| |v| |k| / sqrt(dh) for dq and dk)."""
    q, k, v = _qkv(lead=(2,), tq=6, tk=9, dtype=jnp.float32)
    c = float(np.sqrt(1e4 / np.max(np.abs(np.einsum("nqd,nkd->nqk", q, k) / 2))))
    q, k = q * c, k * c
    ct = _ct(q, v)
    kw = dict(causal=True, block_size=4)
    with jax.enable_x64(True):
        out64, g64 = jax.device_get(_vjp(ops.scaled_dot_product_attention, *(a.astype(jnp.float64) for a in (q, k, v)),
                                         ct.astype(jnp.float64), **kw))
    scale_qk = float(np.max(np.abs(ct)) * np.max(np.abs(v)) * max(np.max(np.abs(q)), np.max(np.abs(k))) / 2)
    for m in PATHS.values():
        out, (dq, dk, dv) = _vjp(m.scaled_dot_product_attention, q, k, v, ct, **kw)
        for a in (out, dq, dk, dv):
            assert np.isfinite(np.asarray(a)).all()
        assert np.max(np.abs(np.asarray(out) - out64)) <= 1e-5 * np.max(np.abs(v))
        assert np.max(np.abs(np.asarray(dv) - g64[2])) <= 1e-5 * np.max(np.abs(ct))
        for a, b in ((dq, g64[0]), (dk, g64[1])):
            assert np.max(np.abs(np.asarray(a) - b)) <= 1e-5 * scale_qk


T_MEM = 2048


def _fwd_bwd(fn, **kw):
    def loss(q, k, v, ct):
        return jnp.sum(fn(q, k, v, **kw) * ct)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def test_manual_memory_is_blockwise_and_far_below_the_reference():
    """Compiled forward+backward at T = 2048, dh = 16 (float32): the manual path's temporaries
    are several times smaller, and neither its jaxpr nor its compiled HLO holds a (T, T) array."""
    shape = jax.ShapeDtypeStruct((1, T_MEM, 16), jnp.float32)
    args = (shape, shape, shape, shape)
    temp = {}
    for path, m in PATHS.items():
        compiled = _fwd_bwd(m.scaled_dot_product_attention, block_size=128).lower(*args).compile()
        temp[path] = compiled.memory_analysis().temp_size_in_bytes
        if path == "manual":
            hlo = compiled.as_text()
    assert temp["reference"] >= T_MEM * T_MEM * 4                # it does hold the (T, T) scores
    assert temp["manual"] * 8 <= temp["reference"], temp
    sizes = [int(np.prod([int(d) for d in dims.split(",")])) for dims in re.findall(r"\[(\d+(?:,\d+)*)\]", hlo)]
    assert sizes and max(sizes) < T_MEM * T_MEM // 4, max(sizes)

    jaxpr = jax.make_jaxpr(_fwd_bwd(manual.scaled_dot_product_attention, block_size=128))(*args)

    def biggest(jx):
        out = 0
        for eqn in jx.eqns:
            for var in eqn.outvars:
                out = max(out, int(np.prod(getattr(var.aval, "shape", ()))))
            for sub in _subjaxprs(eqn):
                out = max(out, biggest(sub))
        return out
    assert biggest(jaxpr.jaxpr) <= T_MEM * 128                     # the largest: one (T, block) tile


def _subjaxprs(eqn):
    for p in eqn.params.values():
        for v in (p if isinstance(p, (list, tuple)) else [p]):
            if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr
            elif hasattr(v, "eqns"):
                yield v


# ------------------------------------------------------------------------------------------ patch_embed

def test_patch_embed_is_a_strided_conv(x64):
    r = np.random.default_rng(3)
    x = jnp.asarray(r.standard_normal((2, 6, 4, 3)))
    w = jnp.asarray(r.standard_normal((2 * 2 * 3, 5)))
    b = jnp.asarray(r.standard_normal(5))
    conv = lambda x, w, b: ops.conv2d(x, w.reshape(2, 2, 3, 5), b, stride=2).reshape(2, 6, 5)   # (2, 3, 2, 5)
    want, want_g = _grads(conv, x, w, b)
    for m in PATHS.values():
        got, g = _grads(lambda x, w, b: m.patch_embed(x, w, b, patch=2), x, w, b)
        assert got.shape == (2, 6, 5)
        _close(got, want, 1e-14)
        for a, c in zip(g, want_g):
            _close(a, c, 1e-13)


def _grads(f, *args):
    """(f(*args), gradients of sum(sin(f))), jitted."""
    return jax.jit(lambda *a: (f(*a), jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))(*a)))(*args)


# ------------------------------------------------------------------------------------------ bad inputs

def _z(*shape):
    """NumPy zeros in float32 (jnp's default): each jnp.zeros of a new shape compiles a kernel."""
    return np.zeros(shape, np.float32)


_Q, _K, _V = _z(2, 5, 4), _z(2, 6, 4), _z(2, 6, 3)
BAD_CALLS = {
    "q rank": (lambda m: m.scaled_dot_product_attention(_z(4), _K, _V), r"`q` must have rank >= 2"),
    "k rank": (lambda m: m.scaled_dot_product_attention(_Q, _z(6, 4), _V), r"same rank"),
    "leading axes": (lambda m: m.scaled_dot_product_attention(_Q, _z(3, 6, 4), _z(3, 6, 3)),
                     r"same leading"),
    "head size": (lambda m: m.scaled_dot_product_attention(_Q, _z(2, 6, 5), _V), r"same head size"),
    "keys": (lambda m: m.scaled_dot_product_attention(_Q, _K, _z(2, 7, 3)), r"same number of keys"),
    "no keys": (lambda m: m.scaled_dot_product_attention(_Q, _z(2, 0, 4), _z(2, 0, 3)),
                r"at least one key"),
    "int q": (lambda m: m.scaled_dot_product_attention(np.zeros((2, 5, 4), int), _K, _V), r"`q` must be floating"),
    "mixed dtypes": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V.astype(jnp.bfloat16)), r"one dtype"),
    "mask shape": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, mask=np.ones((5, 5), bool)),
                   r"`mask` of shape \(5, 5\) does not broadcast to \(\.\.\., Tq, Tk\) = \(2, 5, 6\)"),
    "mask rank": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, mask=np.ones((1, 2, 5, 6), bool)),
                  r"`mask` of shape"),
    "mask dtype": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, mask=np.ones((5, 6), np.float32)),
                   r"`mask` must be bool"),
    "mask floats": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, mask=[[0.5] * 6] * 5), r"bools or 0/1"),
    "causal": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, causal="yes"), r"`causal` must be True or False"),
    "rate nan": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, dropout_rate=float("nan"), key=jax.random.key(0)),
                 r"`dropout_rate` is the probability of DROPPING .* \(not a finite number\)"),
    "rate 1": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, dropout_rate=1.0, key=jax.random.key(0)),
               r"`dropout_rate`.*in \[0, 1\)"),
    "no key": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, dropout_rate=0.1),
               r"`dropout_rate`=0.1 needs an explicit PRNG `key` \(q \(2, 5, 4\)\)"),
    "bad key": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, dropout_rate=0.1, key=_z(3)),
                r"`key` must be a jax.random key"),
    "block 0": (lambda m: m.scaled_dot_product_attention(_Q, _K, _V, block_size=0), r"`block_size` must be a positive"),
    "patch divides": (lambda m: m.patch_embed(_z(1, 6, 4, 2), _z(18, 3), None, patch=3),
                      r"patch_embed: `patch`=3 must divide H and W of `x` \(1, 6, 4, 2\)"),
    "patch w": (lambda m: m.patch_embed(_z(1, 4, 4, 2), _z(9, 3), None, patch=2),
                r"`w` must have shape \(patch\*patch\*C, D\) = \(8, D\)"),
    "patch x rank": (lambda m: m.patch_embed(_z(4, 4, 2), _z(8, 3), None, patch=2),
                     r"`x` must have rank 4"),
    "patch b": (lambda m: m.patch_embed(_z(1, 4, 4, 2), _z(8, 3), _z(4), patch=2),
                r"`b` must have shape \(3,\)"),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_bad_arguments_get_one_line_errors_naming_the_op(path):
    for name, (call, pattern) in BAD_CALLS.items():
        with pytest.raises(ValueError) as e:
            call(PATHS[path])
        msg = str(e.value)
        assert "\n" not in msg, (name, msg)
        assert msg.startswith(("scaled_dot_product_attention: ", "patch_embed: ")), (name, msg)
        assert re.search(pattern, msg), (name, msg)
    # a key given with dropout_rate = 0 is ignored; 0/1 tuples are a mask
    out = jax.eval_shape(lambda q: PATHS[path].scaled_dot_product_attention(q, _K, _V, key=jax.random.key(0),
                                                                            mask=(1, 1, 0, 1, 1, 1)), _Q)
    assert out.shape == (2, 5, 3)
