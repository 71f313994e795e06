"""Transformer layers (jaxnet.nn.transformer): against flax and jax.nn, both impl paths, caches, masks, errors.

Float64 throughout (the conftest's x64 fixture); shapes are tiny so that every
check compiles in well under a second.
"""
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import nn
from jaxnet.nn.transformer import (FeedForward, LearnedPositions, MultiHeadAttention, SinusoidalPositions,
                                   TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                                   TransformerEncoderLayer, VisionTransformer, attention_rollout, causal_mask,
                                   sinusoidal_positions)

pytestmark = [pytest.mark.xdist_group("transformer"), pytest.mark.usefixtures("x64")]


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _init(model, shape, seed=0):
    """Params of the shapes ``model.init`` gives, drawn with NumPy: nothing to compile but the model itself
    (each eager ``jax.random`` draw of a new shape compiles its own kernel, ~1 s on this CPU).
    Weights N(0, 1/fan_in), gains 1 + N(0, 0.1^2), other vectors N(0, 0.1^2)."""
    abstract = jax.eval_shape(lambda k: model.init(k, shape)[0], jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, a):
        z = rng.standard_normal(a.shape)
        if len(a.shape) >= 2:
            return jnp.asarray(z / np.sqrt(a.shape[0]))
        return jnp.asarray((1.0 if "gamma" in jax.tree_util.keystr(path) else 0.0) + 0.1 * z)
    return jax.tree_util.tree_map_with_path(draw, abstract)


def test_init_shapes_and_starting_values():
    vit = VisionTransformer(5, patch=4, depth=2, features=8, num_heads=2, ff_hidden=16, pool="cls")
    p, state = vit.init(jax.random.key(0), (1, 8, 8, 3))
    assert state == {} and sorted(p) == ["cls", "embed", "encoder", "head", "pos"]
    assert p["embed"]["w"].shape == (48, 8) and p["pos"].shape == (5, 8) and p["head"]["w"].shape == (8, 5)
    assert sorted(p["encoder"]) == ["0", "1", "norm"]                  # pre-norm stacks end in a LayerNorm
    layer = p["encoder"]["0"]
    assert sorted(layer["attn"]) == ["key", "out", "query", "value"]
    np.testing.assert_array_equal(layer["norm_attn"]["gamma"], 1)
    np.testing.assert_array_equal(layer["attn"]["query"]["b"], 0)
    w = np.asarray(vit.init(jax.random.key(1), (1, 8, 8, 3))[0]["embed"]["w"])
    assert 0.5 < np.std(w) * np.sqrt(48) < 1.5                          # the course's Xavier: N(0, 1/fan_in)
    assert not np.array_equal(w, p["embed"]["w"])


def _flax_params(p, heads):
    """jaxnet's MHA params in flax.linen.MultiHeadDotProductAttention's layout (heads as contiguous slices)."""
    def proj(e):
        d_in, d = e["w"].shape
        return {"kernel": e["w"].reshape(d_in, heads, d // heads), "bias": e["b"].reshape(heads, d // heads)}
    d = p["out"]["w"].shape[0]
    return {"params": {"query": proj(p["query"]), "key": proj(p["key"]), "value": proj(p["value"]),
                       "out": {"kernel": p["out"]["w"].reshape(heads, d // heads, d), "bias": p["out"]["b"]}}}


@pytest.mark.parametrize("impl", ["autodiff", "manual"])
def test_mha_matches_flax_self_and_cross_with_masks(impl):
    x, ctx = _x((2, 5, 8)), _x((2, 7, 6), 1)
    mask = jnp.asarray(np.random.default_rng(2).random((2, 1, 5, 7)) > 0.3)
    for context, cf, m in ((None, None, None), (ctx, 6, mask)):
        mha = MultiHeadAttention(2, context_features=cf, impl=impl)
        p = _init(mha, x.shape, 0)
        # each side as one program (op by op, every small op would compile alone)
        y = jax.jit(lambda p, x, c, m: mha.apply(p, {}, x, train=False, context=c, mask=m)[0])(p, x, context, m)
        ref = fnn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=8, dtype=jnp.float64,
                                               param_dtype=jnp.float64)
        c = x if context is None else context
        yf = jax.jit(lambda fp, x, c, m: ref.apply(fp, x, c, mask=m))(_flax_params(p, 2), x, c, m)
        if m is not None:       # flax gives a fully masked row the mean of v; jaxnet gives 0: compare the others
            seen = np.asarray(jnp.any(m, axis=-1))[:, 0, :, None]
            y, yf = jnp.where(seen, y, 0), jnp.where(seen, yf, 0)
        np.testing.assert_allclose(y, yf, rtol=1e-12, atol=1e-12)


def test_mha_heads_match_jax_nn_dot_product_attention():
    x = _x((2, 6, 12))
    mha = MultiHeadAttention(3, causal=True)
    p = _init(mha, x.shape, 1)

    @jax.jit                # one program (eager, every small op compiles its own kernel)
    def both(p, x):
        y, _ = mha.apply(p, {}, x, train=False)
        proj = lambda e: (x @ e["w"] + e["b"]).reshape(2, 6, 3, 4)      # (N, T, heads, dh): jax.nn's layout
        o = jax.nn.dot_product_attention(proj(p["query"]), proj(p["key"]), proj(p["value"]), is_causal=True)
        return y, o.reshape(2, 6, 12) @ p["out"]["w"] + p["out"]["b"]

    y, want = both(p, x)
    # jax.nn.dot_product_attention casts the logits to float32 for its softmax whatever the dtype: 1e-6
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


def test_key_padding_mask_hides_padding_keys():
    x = _x((2, 6, 8))
    mha = MultiHeadAttention(2)
    p = _init(mha, x.shape, 2)
    kpm = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    run = jax.jit(lambda x, m: mha.apply(p, {}, x, train=False, key_padding_mask=m)[0])
    y = run(x, kpm)
    garbage = np.array(x)
    garbage[0, 4:] = 1e3                                                 # what sits in the padding is never read
    y2 = run(garbage, kpm)
    np.testing.assert_allclose(y[0, :4], y2[0, :4], rtol=1e-12)
    assert not np.allclose(y[0, :4], run(x, None)[0, :4])


def _tree_close(a, b, rtol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-10)


# slow: two float64 gradient programs of an encoder-decoder (~16 s); the default suite keeps both
# paths' gradients on the (pre-norm) encoder in test_vit_class_token_both_paths
@pytest.mark.slow
def test_encoder_decoder_manual_and_autodiff_agree_in_train_mode():
    """Post-norm encoder-decoder with every dropout on (the pre-norm form: the ViT test below)."""
    x = _x((2, 5, 8))
    enc = TransformerEncoder(1, 2, 16, dropout_rate=0.1, attention_dropout_rate=0.1)
    dec = TransformerDecoder(1, 2, 16, dropout_rate=0.1)
    pe = _init(enc, x.shape, 3)
    pd = _init(dec, x.shape, 4)

    def loss(model, params, key):
        e = nn.with_impl(enc, model).apply(params[0], {}, x, train=True, key=key)[0]
        d = nn.with_impl(dec, model).apply(params[1], {}, x, train=True, key=key, memory=e)[0]
        return jnp.sum(jnp.sin(d))

    key = jax.random.key(5)
    va, ga = jax.jit(jax.value_and_grad(lambda p: loss("autodiff", p, key)))((pe, pd))
    vm, gm = jax.jit(jax.value_and_grad(lambda p: loss("manual", p, key)))((pe, pd))
    np.testing.assert_allclose(va, vm, rtol=1e-11)
    _tree_close(ga, gm, 1e-9)
    assert float(jnp.linalg.norm(ga[1]["0"]["cross_attn"]["key"]["w"])) > 0       # the memory is really used


def test_post_norm_ends_in_layer_norm_pre_norm_does_not():
    x = 5.0 + 3.0 * _x((2, 5, 8))
    for norm_first in (False, True):
        layer = TransformerEncoderLayer(2, 16, norm_first=norm_first)
        p = _init(layer, x.shape, 6)
        y, _ = jax.jit(lambda p, x: layer.apply(p, {}, x, train=False))(p, x)
        y = (np.asarray(y) - np.asarray(p["norm_ff"]["beta"])) / np.asarray(p["norm_ff"]["gamma"])   # undo the last LayerNorm's affine part
        normalised = np.allclose(np.mean(y, -1), 0, atol=1e-9) and np.allclose(np.std(y, -1), 1, atol=1e-3)
        assert normalised == (not norm_first)


def test_kv_cache_decoding_equals_the_causal_forward():
    x, mem = _x((2, 6, 8)), _x((2, 3, 8), 7)
    dec = TransformerDecoder(2, 2, 16, norm_first=True)
    p = _init(dec, x.shape, 8)
    forward = jax.jit(lambda p, x, mem: dec.apply(p, {}, x, train=False, memory=mem)[0])   # one program, used twice
    full = forward(p, x, mem)

    @jax.jit
    def run(p, x, mem):
        def step(cache, t):
            y, cache = dec.apply_cached(p, jax.lax.dynamic_slice_in_dim(x, t, 1, axis=1), cache, t, memory=mem)
            return cache, y[:, 0]
        _, ys = jax.lax.scan(step, dec.init_cache(2, 6, 8, x.dtype), jnp.arange(6))
        return jnp.swapaxes(ys, 0, 1)

    np.testing.assert_allclose(run(p, x, mem), full, rtol=1e-11, atol=1e-12)
    # and the causal mask is real: the last position changes, the first does not, when the future changes
    x2 = np.array(x)
    x2[:, -1] += np.asarray(_x((2, 8), 9))                      # not a constant: LN ignores shifts
    full2 = forward(p, x2, mem)
    np.testing.assert_allclose(full2[:, 0], full[:, 0], rtol=1e-12)
    assert not np.allclose(full2[:, -1], full[:, -1])


def test_sinusoidal_positions_are_the_course_formula():
    pe = np.asarray(sinusoidal_positions(7, 6))
    for t in range(7):
        for i in range(3):
            assert pe[t, 2 * i] == pytest.approx(np.sin(t / 10000 ** (2 * i / 6)), abs=1e-15)
            assert pe[t, 2 * i + 1] == pytest.approx(np.cos(t / 10000 ** (2 * i / 6)), abs=1e-15)
    x = _x((2, 5, 6))
    y, _ = SinusoidalPositions(max_len=7).apply({}, {}, x, train=False, offset=2)
    np.testing.assert_allclose(y - x, np.broadcast_to(pe[2:7], (2, 5, 6)), atol=1e-15)
    lp = LearnedPositions(max_len=9)
    p = _init(lp, x.shape, 0)
    assert p["w"].shape == (9, 6)
    np.testing.assert_allclose(lp.apply(p, {}, x, train=False)[0] - x, np.broadcast_to(p["w"][:5], x.shape))


def test_vit_class_token_both_paths():
    img = _x((3, 8, 8, 3))
    vit = VisionTransformer(5, patch=4, depth=1, features=8, num_heads=2, ff_hidden=16, pool="cls")
    p = _init(vit, img.shape, 9)
    assert vit.tokens(img.shape) == 5 and p["pos"].shape == (5, 8) and p["cls"].shape == (8,)
    assert vit.output_shape(img.shape) == (3, 5)

    def loss(v, p):
        return jnp.sum(jax.nn.log_softmax(v.apply(p, {}, img, train=False)[0])[:, 0])

    va, ga = jax.jit(jax.value_and_grad(lambda p: loss(nn.with_impl(vit, "autodiff"), p)))(p)
    vm, gm = jax.jit(jax.value_and_grad(lambda p: loss(nn.with_impl(vit, "manual"), p)))(p)
    np.testing.assert_allclose(va, vm, rtol=1e-11)
    _tree_close(ga, gm, 1e-9)
    assert float(jnp.linalg.norm(ga["cls"])) > 0


def test_vit_mean_pool_is_the_mean_of_the_encoded_tokens():
    img = _x((2, 8, 8, 1))
    vit = VisionTransformer(3, patch=2, depth=1, features=4, num_heads=1, ff_hidden=8)
    p = _init(vit, img.shape, 10)
    assert vit.tokens(img.shape) == 16 and "cls" not in p
    logits = jax.jit(lambda p, x: vit.apply(p, {}, x, train=False)[0])(p, img)
    tokens = np.asarray(jax.jit(vit.encode)(p, img))
    np.testing.assert_allclose(logits, np.mean(tokens, 1) @ np.asarray(p["head"]["w"]) + np.asarray(p["head"]["b"]),
                               rtol=1e-12)


def test_feed_forward_activations():
    x = _x((2, 3, 4))
    for act, fn in (("relu", jax.nn.relu), ("gelu", lambda h: jax.nn.gelu(h, approximate=False)),
                    ("gelu_tanh", lambda h: jax.nn.gelu(h, approximate=True))):
        ff = FeedForward(6, activation=act)
        p = _init(ff, x.shape, 0)
        got, want = jax.jit(lambda p, x: (ff.apply(p, {}, x, train=False)[0],       # one program, not eager ops
                                          fn(x @ p["fc1"]["w"] + p["fc1"]["b"]) @ p["fc2"]["w"] + p["fc2"]["b"]))(p, x)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_causal_mask_helper():
    np.testing.assert_array_equal(causal_mask(3, 4), [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])


@pytest.mark.parametrize("make, match", [
    (lambda: MultiHeadAttention(0), "num_heads"),
    (lambda: MultiHeadAttention(2, dropout_rate=1.0), "rate"),
    (lambda: MultiHeadAttention(3).init(jax.random.key(0), (1, 4, 8)), "divisible by num_heads=3"),
    (lambda: MultiHeadAttention(2).init(jax.random.key(0), (4, 8)), r"must be \(N, T, D\)"),
    (lambda: MultiHeadAttention(2, dropout_rate=0.1).apply({}, {}, jnp.zeros((1, 4, 8)), train=True), "PRNG key"),
    (lambda: FeedForward(8, activation="swish"), "activation"),
    (lambda: SinusoidalPositions(max_len=4).output_shape((1, 5, 8)), "exceeds max_len=4"),
    (lambda: TransformerEncoder(0, 2, 8), "depth"),
    (lambda: TransformerDecoderLayer(2, 8).apply({}, {}, jnp.zeros((1, 3, 8)), train=False), "memory"),
    (lambda: VisionTransformer(10, patch=3).init(jax.random.key(0), (1, 8, 8, 3)), "patch=3 must divide"),
    (lambda: VisionTransformer(10, pool="max"), "pool"),
    (lambda: VisionTransformer(10, features=10, num_heads=4).init(jax.random.key(0), (1, 8, 8, 3)),
     "divisible by num_heads"),
])
def test_bad_configurations_name_the_layer(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_masks_and_context_are_one_line_errors():
    mha = MultiHeadAttention(2)
    x = jnp.zeros((2, 4, 8))
    p = _init(mha, x.shape, 0)
    with pytest.raises(ValueError, match=r"key_padding_mask.*\(2, 4\)"):
        mha.apply(p, {}, x, train=False, key_padding_mask=jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="context.*batch 3"):
        mha.apply(p, {}, x, train=False, context=jnp.zeros((3, 4, 8)))
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        mha.apply(p, {}, x, train=False, mask=jnp.ones((3, 3), bool))


def test_attention_weights_are_the_ones_apply_uses():
    x = _x((2, 5, 8))
    mha = MultiHeadAttention(2, causal=True)
    p = _init(mha, x.shape, 11)
    w, y = jax.jit(lambda p, x: (mha.attention_weights(p, x), mha.apply(p, {}, x, train=False)[0]))(p, x)
    w, p, x = np.asarray(w), jax.tree.map(np.asarray, p), np.asarray(x)       # the by-hand part in NumPy
    assert w.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(np.sum(w, -1), 1, rtol=1e-12)
    np.testing.assert_array_equal(w[..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]], 0)
    v = (x @ p["value"]["w"] + p["value"]["b"]).reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)
    o = (w @ v).transpose(0, 2, 1, 3).reshape(2, 5, 8) @ p["out"]["w"] + p["out"]["b"]
    np.testing.assert_allclose(o, y, rtol=1e-11)


def test_attention_rollout():
    rng = np.random.default_rng(12)
    ws = [jnp.asarray(rng.dirichlet(np.ones(4), size=(1, 2, 4))) for _ in range(2)]   # rows sum to 1
    r = attention_rollout(ws)
    np.testing.assert_allclose(np.sum(np.asarray(r), -1), 1, rtol=1e-12)
    a = [0.5 * np.eye(4) + 0.5 * np.mean(np.asarray(w), 1) for w in ws]
    np.testing.assert_allclose(r, a[1] @ a[0], rtol=1e-12)
    np.testing.assert_allclose(attention_rollout(ws, residual=1.0)[0], np.eye(4))
    img = _x((1, 8, 8, 1))
    vit = VisionTransformer(3, patch=4, depth=2, features=4, num_heads=2, ff_hidden=8)
    maps = jax.jit(vit.attention_weights)(_init(vit, img.shape, 13), img)   # one program, not op by op
    assert len(maps) == 2 and maps[0].shape == (1, 2, 4, 4)


def test_decoder_cross_attention_weights_read_the_memory():
    x, mem = _x((2, 4, 8)), _x((2, 3, 8), 14)
    for norm_first in (False, True):
        dec = TransformerDecoder(2, 2, 16, norm_first=norm_first)
        p = _init(dec, x.shape, 15)

        @jax.jit                                            # one program, not op by op
        def both(p, x, mem, dec=dec, norm_first=norm_first):
            ws = dec.cross_attention_weights(p, x, memory=mem, memory_padding_mask=jnp.array([[1, 1, 0], [1, 1, 1]]))
            # the first layer's weights are those of its cross-attention on its own input
            layer = dec.layer
            h = layer._residual(p["0"], "self_attn", x, lambda h, k: layer._attention(causal=True).apply(
                p["0"]["self_attn"], {}, h, train=False)[0], None, False)
            q = h if not norm_first else (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-5) \
                * p["0"]["norm_cross_attn"]["gamma"] + p["0"]["norm_cross_attn"]["beta"]
            return ws, layer._attention().attention_weights(p["0"]["cross_attn"], q, context=mem,
                                                            key_padding_mask=jnp.array([[1, 1, 0], [1, 1, 1]]))

        ws, want = both(p, x, mem)
        assert len(ws) == 2 and ws[0].shape == (2, 2, 4, 3)
        np.testing.assert_allclose(np.sum(np.asarray(ws[1]), -1), 1, rtol=1e-12)
        np.testing.assert_array_equal(ws[0][0, :, :, 2], 0)              # the padded memory slot is never read
        np.testing.assert_allclose(ws[0], want, rtol=1e-10)
