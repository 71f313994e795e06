"""Decoding (jaxnet.nn.decode): greedy, temperature sampling and beam search against brute force.

The "language model" is a fixed random table of logits indexed by the position and the
previous token (carry: the position), so different orderings of the same tokens score
differently and beam search has a unique answer to compare with enumeration.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.nn import decode
from conftest import normal


def _table(v, length, seed=0, scale=2.0):
    return scale * normal(jax.random.PRNGKey(seed), (length, v, v))


def _model(table):
    def step(tokens, t):
        return table[t, tokens], t + 1
    return step


def _carry(b):
    return jnp.zeros((b,), jnp.int32)


def _brute_force(table, start, end, length, alpha=0.0):
    """Every distinct output sequence (truncated after its first `end`, padded with -1), ranked
    by summed log-probability / ((5 + L) / 6) ** alpha: list of (score, tokens, L)."""
    logp = np.asarray(jax.nn.log_softmax(np.asarray(table, np.float64), axis=-1))
    v = table.shape[-1]
    seen = {}
    for seq in itertools.product(range(v), repeat=length):
        score, prev, out = 0.0, start, []
        for t, tok in enumerate(seq):
            score += logp[t, prev, tok]
            out.append(tok)
            prev = tok
            if end is not None and tok == end:
                break
        n = len(out)
        key = tuple(out + [-1] * (length - n))
        seen[key] = (score / ((5 + n) / 6) ** alpha, key, n)
    return sorted(seen.values(), key=lambda r: -r[0])


# without an end token, and with one and a length penalty, in the default suite (each compiles two
# beam searches); the other end tokens in the slow tier (make test-slow)
@pytest.mark.parametrize("v,length,end,alpha", [pytest.param(3, 4, 2, 0.0, marks=pytest.mark.slow),
                                                pytest.param(4, 3, 0, 0.0, marks=pytest.mark.slow),
                                                (3, 3, None, 0.0), (3, 4, 1, 1.0)])
def test_beam_search_equals_brute_force_enumeration(v, length, end, alpha):
    table = _table(v, length, seed=v + length)
    step = _model(table)
    starts = [0, v - 1]
    k = v ** length                                     # wide enough to keep every partial sequence
    toks, scores, lens = decode.beam_search(step, _carry(2), jnp.array(starts), end, length, k,
                                            length_penalty=alpha, pad=-1, return_all=True)
    assert toks.shape == (2, k, length) and scores.shape == (2, k)
    for b, s in enumerate(starts):
        want = _brute_force(table, s, end, length, alpha)
        n = len(want)
        np.testing.assert_array_equal(np.asarray(toks[b, :n]), [w[1] for w in want])
        np.testing.assert_allclose(scores[b, :n], [w[0] for w in want], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(lens[b, :n], [w[2] for w in want])
        assert np.all(np.isneginf(np.asarray(scores[b, n:])))          # slots no sequence filled
    best, best_score = decode.beam_search(step, _carry(2), jnp.array(starts), end, length, k,
                                          length_penalty=alpha, pad=-1)
    np.testing.assert_array_equal(best, toks[:, 0])
    np.testing.assert_allclose(best_score, scores[:, 0])


def test_a_narrow_beam_finds_at_most_the_best_and_beam_size_one_is_greedy():
    v, length = 5, 6
    table = _table(v, length, seed=3)
    step = _model(table)
    starts = jnp.arange(5)
    for end in (None, 4):
        greedy = decode.greedy(step, _carry(5), starts, length, end=end, pad=-1)
        beam1, _ = decode.beam_search(step, _carry(5), starts, end, length, 1, pad=-1)
        np.testing.assert_array_equal(beam1, greedy)
    _, narrow = decode.beam_search(step, _carry(5), starts, 4, length, 3)
    _, wide = decode.beam_search(step, _carry(5), starts, 4, length, 40)
    assert np.all(np.asarray(narrow) <= np.asarray(wide) + 1e-6)


def test_greedy_follows_the_argmax_and_pads_after_end():
    v, length = 4, 6
    table = _table(v, length, seed=5)
    step = _model(table)
    toks = np.asarray(decode.greedy(step, _carry(4), jnp.arange(4), length, end=3, pad=-7))
    t = np.asarray(table)
    for b in range(4):
        prev, done = b, False
        for i in range(length):
            if done:
                assert toks[b, i] == -7
                continue
            assert toks[b, i] == np.argmax(t[i, prev])
            prev = toks[b, i]
            done = prev == 3
    assert (toks == -7).any()                      # some sequence ended early with this table
    no_end = np.asarray(decode.greedy(step, _carry(4), jnp.arange(4), length))
    assert np.all(no_end >= 0)


def test_low_temperature_sampling_is_greedy():
    v, length = 6, 5
    table = _table(v, length, seed=7)
    step = _model(table)
    starts = jnp.arange(64) % v
    greedy = decode.greedy(step, _carry(64), starts, length, end=2)
    cold = decode.sample(step, _carry(64), starts, length, jax.random.PRNGKey(3), temperature=1e-3, end=2)
    np.testing.assert_array_equal(cold, greedy)
    warm = decode.sample(step, _carry(64), starts, length, jax.random.PRNGKey(3), temperature=1.0, end=2)
    assert np.any(np.asarray(warm) != np.asarray(greedy))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sample_frequencies_match_the_model(temperature):
    """Pairs of tokens drawn from B independent rows: Pearson's chi-square against the model's
    joint probabilities of the first two tokens (16 cells, 15 degrees of freedom; 37.7 is the
    0.1% critical value, for a fixed key)."""
    v, n = 4, 4000
    table = _table(v, 2, seed=11, scale=1.0)
    step = _model(table)
    toks = np.asarray(decode.sample(step, _carry(n), jnp.zeros((n,), jnp.int32), 2, jax.random.PRNGKey(0),
                                    temperature=temperature))
    p = np.asarray(jax.nn.softmax(np.asarray(table, np.float64) / temperature, axis=-1))
    expected = np.array([[p[0, 0, a] * p[1, a, b] for b in range(v)] for a in range(v)]) * n
    observed = np.zeros((v, v))
    np.add.at(observed, (toks[:, 0], toks[:, 1]), 1)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < 37.7, chi2
    # the statistic notices the wrong temperature
    q = np.asarray(jax.nn.softmax(np.asarray(table, np.float64) / (3 - temperature), axis=-1))
    wrong = np.array([[q[0, 0, a] * q[1, a, b] for b in range(v)] for a in range(v)]) * n
    assert float(np.sum((observed - wrong) ** 2 / wrong)) > 37.7


def test_loops_are_lax_loops_and_compile_once_per_max_len():
    table = _table(3, 8, seed=1)
    step = _model(table)
    for fn in (lambda c, s: decode.greedy(step, c, s, 5, end=1),
               lambda c, s: decode.sample(step, c, s, 5, jax.random.PRNGKey(0), end=1),
               lambda c, s: decode.beam_search(step, c, s, 1, 5, 2)):
        text = str(jax.make_jaxpr(fn)(_carry(2), jnp.array([0, 1])))
        assert "scan" in text or "while" in text
        assert text.count("dot_general") + text.count("gather") < 40    # not unrolled per token
    before = decode._greedy._cache_size()
    decode.greedy(step, _carry(2), jnp.array([0, 1]), 5)
    decode.greedy(step, _carry(2) + 1, jnp.array([2, 0]), 5)
    assert decode._greedy._cache_size() == before + 1
    decode.greedy(step, _carry(2), jnp.array([0, 1]), 6)
    assert decode._greedy._cache_size() == before + 2
    before = decode._sample._cache_size()
    for temperature in (0.5, 1.0, 3.0):
        decode.sample(step, _carry(2), jnp.array([0, 1]), 4, jax.random.PRNGKey(1), temperature)
    assert decode._sample._cache_size() == before + 1


def test_decoding_an_lstm_language_model_carry():
    """A pytree carry (an LSTM's (h, c)) from the layers: greedy == beam_size 1."""
    from jaxnet import nn
    emb, lstm, head = nn.Embedding(5, 3), nn.LSTM(4), nn.TemporalAffine(5)
    key = jax.random.PRNGKey(2)

    def fill(layer, shape, seed):           # the layer's params' shapes, drawn by NumPy (no compile per shape)
        like = jax.eval_shape(lambda: layer.init(key, shape)[0])
        leaves, tree = jax.tree.flatten(like)
        return jax.tree.unflatten(tree, [0.5 * np.asarray(normal(jax.random.PRNGKey(seed + i), a.shape))
                                         for i, a in enumerate(leaves)])

    pe, pl, ph = fill(emb, (1, 1), 0), fill(lstm, (1, 1, 3), 10), fill(head, (1, 1, 4), 20)
    ph = {"w": ph["w"] * 30.0, "b": ph["b"]}                   # peaked logits: no near-ties

    def step(tokens, carry):
        x, _ = emb.apply(pe, {}, tokens[:, None], train=False)
        h, carry = lstm.step(pl, x[:, 0], carry)
        return head.apply(ph, {}, h[:, None], train=False)[0][:, 0], carry

    carry = lstm.zero_state(3)
    g = decode.greedy(step, carry, jnp.array([0, 1, 2]), 6, end=4)
    b, _ = decode.beam_search(step, carry, jnp.array([0, 1, 2]), 4, 6, 1)
    np.testing.assert_array_equal(g, b)


ERRORS = [
    (lambda s: decode.beam_search(s, _carry(2), jnp.array([0, 1]), 1, 4, 0),
     r"beam_search: `beam_size` must be a positive int, got 0"),
    (lambda s: decode.greedy(s, _carry(2), jnp.array([0, 1]), 0), r"greedy: `max_len` must be a positive int, got 0"),
    (lambda s: decode.sample(s, _carry(2), jnp.array([0, 1]), 3, jax.random.PRNGKey(0), temperature=0.0),
     r"sample: `temperature` must be a positive number, got 0.0"),
    (lambda s: decode.sample(s, _carry(2), jnp.array([0, 1]), 3, jax.random.PRNGKey(0), temperature=-1),
     r"sample: `temperature` must be a positive number, got -1"),
    (lambda s: decode.greedy(s, _carry(2), jnp.array([0, 1]), 3, end=3),
     r"greedy: `end` must be a token id in \[0, 3\) for logits of shape \(2, 3\), got 3"),
    (lambda s: decode.greedy(s, _carry(2), jnp.array([0.0, 1.0]), 3),
     r"greedy: `start` must be an integer array of shape \(B,\), got shape \(2,\) and dtype float32"),
    (lambda s: decode.greedy(s, _carry(3), jnp.array([0, 1]), 3),
     r"greedy: every leaf of `carry` must have the batch B=2 \(from `start` \(2,\)\) on its leading axis, "
     r"got a leaf of shape \(3,\)"),
    (lambda s: decode.greedy(lambda t, c: (jnp.zeros((2,)), c), _carry(2), jnp.array([0, 1]), 3),
     r"greedy: `step` must return float logits of shape \(B, V\) with B=2, got \(2,\)"),
    (lambda s: decode.beam_search(s, _carry(2), jnp.array([0, 1]), 1, 4, 2, length_penalty=-1.0),
     r"beam_search: `length_penalty` must be a non-negative number, got -1.0"),
]


@pytest.mark.parametrize("call,message", ERRORS)
def test_bad_arguments_give_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call(_model(_table(3, 4)))
    assert "\n" not in str(info.value)
