"""Tests for jaxnet.optim: the course's update rules against optax and against a
NumPy transcription of the notes, the schedules against their formulas, and
the make_optimizer glue (weight-decay mask, clipping, readable learning rate).

Comparisons run in float64 (``jax.enable_x64`` around each test, so other test
modules keep the float32 default) with relative tolerance 1e-12.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet import optim
from jaxnet.optim import rules, schedules

STEPS = 50
RTOL = 1e-12
ATOL = 1e-13


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------ helpers


def _problem(seed=0):
    """An ill-conditioned quadratic 0.5 * sum(a * x**2) on a nested pytree,
    plus a fixed sequence of gradient noise (so gradients depend on the path)."""
    rng = np.random.default_rng(seed)
    shapes = {"fc": {"w": (3, 4), "b": (4,)}, "bn": {"gamma": (4,), "beta": (4,)}, "s": [(4,)]}
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    x0 = treedef.unflatten([rng.normal(size=s) for s in leaves])
    a = treedef.unflatten([rng.uniform(0.1, 10.0, size=s) for s in leaves])
    noise = treedef.unflatten([0.3 * rng.normal(size=(STEPS, *s)) for s in leaves])
    return x0, a, noise


def _grad(x, a, noise_t):
    return jax.tree.map(lambda x, a, n: a * x + n, x, a, noise_t)


def trajectory(opt: optax.GradientTransformation, seed=0, steps=STEPS):
    """Params after each of ``steps`` updates, as a list of stacked numpy leaves.

    Runs op by op (no jit): for 50 small steps that is faster than compiling a
    scan for each of the many optimizers compared here.
    """
    x0, a, noise = _problem(seed)
    x, a = jax.tree.map(jnp.asarray, (x0, a))
    state = opt.init(x)
    hist = []
    for t in range(steps):
        g = _grad(x, a, jax.tree.map(lambda n: n[t], noise))
        updates, state = opt.update(g, state, x)
        x = optax.apply_updates(x, updates)
        hist.append(jax.tree.leaves(x))
    return [np.stack([np.asarray(h[i]) for h in hist]) for i in range(len(hist[0]))]


def assert_same(t1, t2, rtol=RTOL, atol=ATOL):
    assert len(t1) == len(t2)
    for l1, l2 in zip(t1, t2):
        assert l1.dtype == np.float64 and l2.dtype == np.float64
        np.testing.assert_allclose(l1, l2, rtol=rtol, atol=atol)


def max_rel_diff(t1, t2):
    return max(
        float(np.max(np.abs(a - b) / (np.abs(a) + np.abs(b) + 1e-30))) for a, b in zip(t1, t2)
    )


def numpy_reference(rule, lr_fn, steps=STEPS, seed=0, **hp):
    """The notes' code, transcribed literally in NumPy (one leaf at a time)."""
    x0, a, noise = _problem(seed)
    xs, treedef = jax.tree.flatten(x0)
    As, Ns = jax.tree.leaves(a), jax.tree.leaves(noise)
    out = []
    for x, A, N in zip(xs, As, Ns):
        x = x.copy()
        v = np.zeros_like(x)
        m = np.zeros_like(x)
        cache = np.zeros_like(x)
        hist = []
        for t in range(steps):
            lr = lr_fn(t)
            dx = A * x + N[t]
            if rule == "sgd":
                x += -lr * dx
            elif rule == "velocity":
                v = hp["mu"] * v - lr * dx
                x += v
            elif rule == "lr_outside":
                v = hp["mu"] * v + dx
                x -= lr * v
            elif rule == "nesterov":
                v_prev = v
                v = hp["mu"] * v - lr * dx
                x += -hp["mu"] * v_prev + (1 + hp["mu"]) * v
            elif rule == "adagrad":
                cache += dx**2
                x += -lr * dx / (np.sqrt(cache) + hp["eps"])
            elif rule == "rmsprop":
                cache = hp["decay"] * cache + (1 - hp["decay"]) * dx**2
                x += -lr * dx / (np.sqrt(cache) + hp["eps"])
            elif rule == "adam":
                b1, b2 = hp["b1"], hp["b2"]
                m = b1 * m + (1 - b1) * dx
                v = b2 * v + (1 - b2) * dx**2
                if hp.get("bias_correction", True):
                    mt, vt = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
                else:
                    mt, vt = m, v
                x += -lr * mt / (np.sqrt(vt) + hp["eps"])
            hist.append(x.copy())
        out.append(np.stack(hist))
    return out


LR = 0.05
K = 0.05
SCHED = schedules.exponential_decay(0.08, k=K)  # changes every step; float64 under x64


def sched_np(t):
    return 0.08 * math.exp(-K * t)


# ------------------------------------------- the rules against the notes' code

NOTES_CASES = [
    ("sgd", lambda lr: rules.sgd(lr), {}),
    ("velocity", lambda lr: rules.momentum(lr, mu=0.9), {"mu": 0.9}),
    ("lr_outside", lambda lr: rules.momentum(lr, mu=0.9, form="lr_outside"), {"mu": 0.9}),
    ("nesterov", lambda lr: rules.nesterov(lr, mu=0.9), {"mu": 0.9}),
    ("adagrad", lambda lr: rules.adagrad(lr, eps=1e-7), {"eps": 1e-7}),
    ("rmsprop", lambda lr: rules.rmsprop(lr, decay=0.99, eps=1e-7), {"decay": 0.99, "eps": 1e-7}),
    ("adam", lambda lr: rules.adam(lr), {"b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    (
        "adam",
        lambda lr: rules.adam(lr, bias_correction=False),
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "bias_correction": False},
    ),
]


@pytest.mark.parametrize("with_schedule", [False, True], ids=["const", "schedule"])
@pytest.mark.parametrize(
    "rule,make,hp", NOTES_CASES, ids=[c[0] + str(i) for i, c in enumerate(NOTES_CASES)]
)
def test_rules_match_course_notes_code(rule, make, hp, with_schedule):
    if with_schedule:
        ours, lr_fn = make(SCHED), sched_np
    else:
        ours, lr_fn = make(LR), lambda t: LR
    assert_same(trajectory(ours), numpy_reference(rule, lr_fn, **hp), rtol=1e-11, atol=1e-12)


# ------------------------------------------------------- the rules vs optax


@pytest.mark.parametrize("lr", [LR, SCHED], ids=["const", "schedule"])
def test_sgd_equals_optax(lr):
    assert_same(trajectory(rules.sgd(lr)), trajectory(optax.sgd(lr)))


# hyperparameter sweeps: one value (not the default, so a value ignored in favour of the default fails) in
# the default suite, the other values slow
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("lr", [LR, SCHED], ids=["const", "schedule"])
@pytest.mark.parametrize("mu", [0.5, pytest.param(0.9, marks=_SLOW), pytest.param(0.99, marks=_SLOW)])
def test_momentum_lr_outside_equals_optax(lr, mu):
    """``v = mu v + dx; x -= lr v`` is optax's trace: equal even under schedules."""
    assert_same(
        trajectory(rules.momentum(lr, mu=mu, form="lr_outside")),
        trajectory(optax.sgd(lr, momentum=mu)),
    )


@pytest.mark.parametrize("mu", [0.5, pytest.param(0.9, marks=_SLOW), pytest.param(0.99, marks=_SLOW)])
def test_momentum_velocity_equals_optax_for_constant_lr(mu):
    assert_same(trajectory(rules.momentum(LR, mu=mu)), trajectory(optax.sgd(LR, momentum=mu)))


def test_momentum_velocity_differs_from_optax_under_schedule():
    """v = mu v - lr_t dx keeps each gradient's own lr; optax rescales the
    whole trace by the current lr. The first step agrees, later ones don't."""
    ours = trajectory(rules.momentum(SCHED, mu=0.9))
    theirs = trajectory(optax.sgd(SCHED, momentum=0.9))
    first = [l[:1] for l in ours], [l[:1] for l in theirs]
    assert_same(*first)
    assert max_rel_diff(ours, theirs) > 1e-3


def test_nesterov_equals_optax_for_constant_lr():
    """The notes' ``x += -mu v_prev + (1+mu) v`` is optax's ``-lr (dx + mu v)``
    with ``v = -lr v_optax``: the same iterates for a constant lr."""
    for mu in (0.5, 0.9):
        assert_same(
            trajectory(rules.nesterov(LR, mu=mu)),
            trajectory(optax.sgd(LR, momentum=mu, nesterov=True)),
        )


def test_nesterov_differs_from_optax_under_schedule():
    ours = trajectory(rules.nesterov(SCHED, mu=0.9))
    theirs = trajectory(optax.sgd(SCHED, momentum=0.9, nesterov=True))
    assert_same([l[:1] for l in ours], [l[:1] for l in theirs])
    assert max_rel_diff(ours, theirs) > 1e-3


@pytest.mark.parametrize("lr", [LR, SCHED], ids=["const", "schedule"])
def test_adagrad_equals_optax_with_zero_accumulator_and_eps(lr):
    """With optax's ``initial_accumulator_value=0`` and eps = 0 on both sides
    the only remaining difference (eps inside vs outside the root) vanishes."""
    assert_same(
        trajectory(rules.adagrad(lr, eps=0.0)),
        trajectory(optax.adagrad(lr, initial_accumulator_value=0.0, eps=0.0)),
    )


def test_adagrad_differs_from_optax_defaults():
    g = jnp.array([1e-3, 0.5, 3.0])
    ours, _ = rules.adagrad(1.0, eps=1e-7).update(g, rules.adagrad(1.0).init(g))
    opt = optax.adagrad(1.0, eps=1e-7, initial_accumulator_value=0.0)
    theirs, _ = opt.update(g, opt.init(g))
    np.testing.assert_allclose(ours, -g / (jnp.abs(g) + 1e-7), rtol=1e-14)  # eps outside
    np.testing.assert_allclose(theirs, -g / jnp.sqrt(g**2 + 1e-7), rtol=1e-14)  # eps inside
    assert not np.allclose(ours, theirs, rtol=1e-6)
    # optax's default accumulator starts at 0.1: the first step is far smaller.
    d = optax.adagrad(1.0)
    first, _ = d.update(g, d.init(g))
    np.testing.assert_allclose(first, -g / jnp.sqrt(g**2 + 0.1 + 1e-7), rtol=1e-14)


@pytest.mark.parametrize("lr", [LR, SCHED], ids=["const", "schedule"])
@pytest.mark.parametrize("decay", [0.9, pytest.param(0.99, marks=_SLOW)])
def test_rmsprop_equals_optax_with_eps_outside_sqrt(lr, decay):
    assert_same(
        trajectory(rules.rmsprop(lr, decay=decay, eps=1e-8)),
        trajectory(optax.rmsprop(lr, decay=decay, eps=1e-8, eps_in_sqrt=False)),
    )


def test_rmsprop_differs_from_optax_default_eps_in_sqrt():
    ours = trajectory(rules.rmsprop(LR, decay=0.9, eps=1e-3))
    theirs = trajectory(optax.rmsprop(LR, decay=0.9, eps=1e-3))  # eps_in_sqrt=True
    assert max_rel_diff(ours, theirs) > 1e-4


@pytest.mark.parametrize("lr", [LR, SCHED], ids=["const", "schedule"])
@pytest.mark.parametrize("b1,b2,eps", [pytest.param(0.9, 0.999, 1e-8, marks=_SLOW), (0.5, 0.9, 1e-3)])
def test_adam_equals_optax(lr, b1, b2, eps):
    assert_same(
        trajectory(rules.adam(lr, b1=b1, b2=b2, eps=eps)),
        trajectory(optax.adam(lr, b1=b1, b2=b2, eps=eps)),
    )


def test_adam_bias_correction_first_step():
    """With bias correction the first step is ~lr per coordinate; without it,
    ``(1-b1)/sqrt(1-b2) ~ 3.16`` times larger (the course's "very large step")."""
    g = jnp.array([1e-3, 0.5, -3.0])
    up, _ = rules.adam(1e-2).update(g, rules.adam(1e-2).init(g))
    np.testing.assert_allclose(up, -1e-2 * g / (jnp.abs(g) + 1e-8), rtol=1e-12)
    up0, _ = rules.adam(1e-2, bias_correction=False).update(g, rules.adam(1e-2).init(g))
    want = -1e-2 * 0.1 * g / (jnp.sqrt(0.001) * jnp.abs(g) + 1e-8)
    np.testing.assert_allclose(up0, want, rtol=1e-12)


# ------------------------------------------------- the scale_by_* pieces


def _piece_reference(piece, us, **hp):
    """A piece's equations in NumPy on one leaf: its outputs for inputs ``us``."""
    v = np.zeros_like(us[0])
    m = np.zeros_like(us[0])
    cache = np.zeros_like(us[0])
    outs = []
    for t, u in enumerate(us, start=1):
        if piece == "momentum":
            v = hp["mu"] * v + u
            out = v
        elif piece == "nesterov":
            v_prev = v
            v = hp["mu"] * v + u
            out = -hp["mu"] * v_prev + (1 + hp["mu"]) * v
        elif piece == "adagrad":
            cache = cache + u**2
            out = u / (np.sqrt(cache) + hp["eps"])
        elif piece == "rmsprop":
            cache = hp["decay"] * cache + (1 - hp["decay"]) * u**2
            out = u / (np.sqrt(cache) + hp["eps"])
        elif piece == "adam":
            b1, b2 = hp["b1"], hp["b2"]
            m = b1 * m + (1 - b1) * u
            v = b2 * v + (1 - b2) * u**2
            if hp.get("bias_correction", True):
                mt, vt = m / (1 - b1**t), v / (1 - b2**t)
            else:
                mt, vt = m, v
            out = mt / (np.sqrt(vt) + hp["eps"])
        outs.append(out)
    return np.stack(outs)


PIECE_CASES = [
    ("momentum", lambda: rules.scale_by_momentum(0.9), {"mu": 0.9}),
    ("nesterov", lambda: rules.scale_by_nesterov(0.8), {"mu": 0.8}),
    ("adagrad", lambda: rules.scale_by_adagrad(1e-7), {"eps": 1e-7}),
    ("rmsprop", lambda: rules.scale_by_rmsprop(0.9, 1e-3), {"decay": 0.9, "eps": 1e-3}),
    ("adam", lambda: rules.scale_by_adam(0.8, 0.99, 1e-6), {"b1": 0.8, "b2": 0.99, "eps": 1e-6}),
    (
        "adam",
        lambda: rules.scale_by_adam(bias_correction=False),
        {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "bias_correction": False},
    ),
]


@pytest.mark.parametrize(
    "piece,make,hp", PIECE_CASES, ids=[c[0] + str(i) for i, c in enumerate(PIECE_CASES)]
)
def test_pieces_match_their_equations(piece, make, hp):
    """Each piece alone (no learning rate, no sign) on a pytree of inputs,
    against its docstring's equations leaf by leaf."""
    rng = np.random.default_rng(3)
    shapes = {"w": (3, 2), "b": (2,)}
    steps = 12
    us = {k: rng.normal(size=(steps, *s)) for k, s in shapes.items()}
    tx = make()
    state = tx.init({k: jnp.zeros(s) for k, s in shapes.items()})
    outs = {k: [] for k in shapes}
    for t in range(steps):
        out, state = tx.update({k: jnp.asarray(u[t]) for k, u in us.items()}, state)
        for k in shapes:
            outs[k].append(np.asarray(out[k]))
    for k in shapes:
        np.testing.assert_allclose(
            np.stack(outs[k]), _piece_reference(piece, us[k], **hp), rtol=1e-12, atol=1e-14
        )


def test_pieces_first_output_has_the_gradient_direction():
    """No learning rate and no sign inside the pieces: the first output for a
    gradient g is a positive multiple of g (per coordinate)."""
    g = jnp.array([1e-3, 0.5, -3.0])
    first = lambda tx: tx.update(g, tx.init(g))[0]  # noqa: E731
    np.testing.assert_array_equal(first(rules.scale_by_momentum(0.9)), g)
    np.testing.assert_allclose(first(rules.scale_by_nesterov(0.9)), 1.9 * g, rtol=1e-15)
    np.testing.assert_allclose(first(rules.scale_by_adagrad(1e-8)), g / (jnp.abs(g) + 1e-8), rtol=1e-15)
    np.testing.assert_allclose(
        first(rules.scale_by_rmsprop(0.99, 1e-8)), g / (0.1 * jnp.abs(g) + 1e-8), rtol=1e-12
    )
    np.testing.assert_allclose(first(rules.scale_by_adam()), g / (jnp.abs(g) + 1e-8), rtol=1e-12)


@pytest.mark.parametrize("lr", [LR, SCHED], ids=["const", "schedule"])
def test_rules_are_chains_of_pieces(lr):
    """Each rule is its pieces chained with optax.scale_by_learning_rate."""
    sbl = optax.scale_by_learning_rate
    pairs = [
        (rules.sgd(lr), sbl(lr)),
        (rules.momentum(lr, mu=0.8), optax.chain(sbl(lr), rules.scale_by_momentum(0.8))),
        (rules.momentum(lr, mu=0.8, form="lr_outside"),
         optax.chain(rules.scale_by_momentum(0.8), sbl(lr))),
        (rules.nesterov(lr, mu=0.8), optax.chain(sbl(lr), rules.scale_by_nesterov(0.8))),
        (rules.adagrad(lr, eps=1e-7), optax.chain(rules.scale_by_adagrad(1e-7), sbl(lr))),
        (rules.rmsprop(lr, decay=0.9), optax.chain(rules.scale_by_rmsprop(0.9), sbl(lr))),
        (rules.adam(lr, b1=0.8), optax.chain(rules.scale_by_adam(b1=0.8), sbl(lr))),
    ]
    for rule, chain in pairs:
        t1, t2 = trajectory(rule, steps=10), trajectory(chain, steps=10)
        for l1, l2 in zip(t1, t2):
            np.testing.assert_array_equal(l1, l2)


def test_nesterov_lr_outside_order_equals_optax_under_schedule():
    """With the learning rate after the Nesterov piece the chain is optax's
    ``sgd(nesterov=True)``, schedules included."""
    for mu in (0.5, 0.9):
        assert_same(
            trajectory(optax.chain(rules.scale_by_nesterov(mu), optax.scale_by_learning_rate(SCHED))),
            trajectory(optax.sgd(SCHED, momentum=mu, nesterov=True)),
        )


@pytest.mark.parametrize("lr", [LR, SCHED], ids=["const", "schedule"])
def test_rmsprop_with_momentum_composes(lr):
    """chain(scale_by_rmsprop, scale_by_momentum, scale_by_learning_rate) is
    the two equations one after the other, written out here for 3 steps."""
    decay, eps, mu = 0.9, 1e-3, 0.7
    tx = optax.chain(
        rules.scale_by_rmsprop(decay, eps),
        rules.scale_by_momentum(mu),
        optax.scale_by_learning_rate(lr),
    )
    lr_fn = sched_np if callable(lr) else (lambda t: LR)
    steps = 3
    got = trajectory(tx, steps=steps)

    x0, a, noise = _problem()
    want = []
    for x, A, N in zip(jax.tree.leaves(x0), jax.tree.leaves(a), jax.tree.leaves(noise)):
        x = x.copy()
        cache = np.zeros_like(x)
        v = np.zeros_like(x)
        hist = []
        for t in range(steps):
            dx = A * x + N[t]
            cache = decay * cache + (1 - decay) * dx**2
            step = dx / (np.sqrt(cache) + eps)
            v = mu * v + step
            x = x - lr_fn(t) * v
            hist.append(x.copy())
        want.append(np.stack(hist))
    assert_same(got, want)
    # and it is neither plain RMSProp nor plain momentum
    assert max_rel_diff(got, trajectory(rules.rmsprop(lr, decay=decay, eps=eps), steps=steps)) > 1e-3
    assert max_rel_diff(got, trajectory(rules.momentum(lr, mu=mu, form="lr_outside"), steps=steps)) > 1e-3


def test_piece_validation():
    with pytest.raises(ValueError, match="mu"):
        rules.scale_by_momentum(1.0)
    with pytest.raises(ValueError, match="mu"):
        rules.scale_by_nesterov(-0.1)
    with pytest.raises(ValueError, match="eps"):
        rules.scale_by_adagrad(-1.0)
    with pytest.raises(ValueError, match="decay"):
        rules.scale_by_rmsprop(1.0)
    with pytest.raises(ValueError, match="b2"):
        rules.scale_by_adam(b2=1.0)


# ----------------------------------------------------- state, jit, dtypes

ALL_RULE_LR = {
    "sgd": 0.1,
    "momentum": 0.1,
    "momentum_lr_outside": 0.1,
    "nesterov": 0.1,
    "adagrad": 0.5,
    "rmsprop": 0.01,
    "adam": 0.05,
}
ALL_RULES = {
    "sgd": lambda lr=0.1: rules.sgd(lr),
    "momentum": lambda lr=0.1: rules.momentum(lr),
    "momentum_lr_outside": lambda lr=0.1: rules.momentum(lr, form="lr_outside"),
    "nesterov": lambda lr=0.1: rules.nesterov(lr),
    "adagrad": lambda lr=0.5: rules.adagrad(lr),
    "rmsprop": lambda lr=0.01: rules.rmsprop(lr),
    "adam": lambda lr=0.05: rules.adam(lr),
}


@pytest.mark.parametrize("lr_kind", ["const", "schedule"])
@pytest.mark.parametrize("name", list(ALL_RULES))
def test_rule_state_dtypes_and_descent(name, lr_kind):
    """States hold int32 scalar counts and float32 arrays that keep their types
    (a jitted step compiles once); updates keep float32; the rules decrease a
    quadratic (noise-free)."""
    if lr_kind == "schedule":
        lr0 = ALL_RULE_LR[name]
        opt = ALL_RULES[name](schedules.exponential_decay(lr0, k=1e-3))
    else:
        opt = ALL_RULES[name]()
    with jax.enable_x64(False):
        # strongly typed params, as create_train_state makes them (a weakly typed
        # leaf would turn strong after the first step and retrace, whatever the rule)
        params = {"layer": {"w": jnp.ones((2, 3)), "b": jnp.full((3,), -2.0, jnp.float32)},
                  "c": jnp.array(4.0, jnp.float32)}
        state = opt.init(params)
        state_types = [(l.shape, l.dtype, getattr(l, "weak_type", False)) for l in jax.tree.leaves(state)]
        for shape, dtype, weak in state_types:
            assert not weak
            assert dtype == jnp.float32 or (dtype == jnp.int32 and shape == ())
        loss = lambda p: sum(jnp.sum(l**2) for l in jax.tree.leaves(p))
        traces = []

        @jax.jit
        def step(p, s):
            traces.append(1)
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return optax.apply_updates(p, u), s

        p = params
        for _ in range(30):
            p, state = step(p, state)
        assert len(traces) == 1
        assert [(l.shape, l.dtype, getattr(l, "weak_type", False)) for l in jax.tree.leaves(state)] == state_types
        counts = [int(l) for l in jax.tree.leaves(state) if l.dtype == jnp.int32]
        assert counts == [30] * len(counts)
        assert len(counts) == (lr_kind == "schedule") + (name == "adam")
        assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(p))
        assert jax.tree.structure(p) == jax.tree.structure(params)
        assert float(loss(p)) < 0.5 * float(loss(params))


def test_rule_validation():
    for bad in (0.0, -1e-3, 0, "0.1", None):
        with pytest.raises(ValueError, match="learning_rate"):
            rules.sgd(bad)
    with pytest.raises(ValueError, match="form"):
        rules.momentum(0.1, form="heavy_ball")
    with pytest.raises(ValueError, match="mu"):
        rules.nesterov(0.1, mu=1.0)
    with pytest.raises(ValueError, match="decay"):
        rules.rmsprop(0.1, decay=1.5)
    with pytest.raises(ValueError, match="eps"):
        rules.adam(0.1, eps=-1.0)
    rules.sgd(optax.linear_schedule(0.0, 1.0, 10))  # a schedule may start at 0


# -------------------------------------------------------------- schedules


def _at(s, t):
    return float(s(jnp.asarray(t, jnp.int32)))


def test_step_decay():
    s = schedules.step_decay(0.1, every=10, factor=0.5)
    for t in (0, 1, 9, 10, 19, 20, 35, 100):
        assert _at(s, t) == pytest.approx(0.1 * 0.5 ** (t // 10), rel=1e-12)


def test_exponential_decay():
    s = schedules.exponential_decay(0.1, k=0.03)
    for t in (0, 1, 7, 100, 1000):
        assert _at(s, t) == pytest.approx(0.1 * math.exp(-0.03 * t), rel=1e-12)


def test_inverse_time():
    s = schedules.inverse_time(0.1, k=0.5)
    for t in (0, 1, 7, 100):
        assert _at(s, t) == pytest.approx(0.1 / (1 + 0.5 * t), rel=1e-12)


def test_cosine():
    s = schedules.cosine(0.1, total_steps=100, final_lr=0.01)
    for t in (0, 10, 25, 50, 99, 100):
        want = 0.01 + (0.1 - 0.01) * 0.5 * (1 + math.cos(math.pi * t / 100))
        assert _at(s, t) == pytest.approx(want, rel=1e-12)
    assert _at(s, 150) == pytest.approx(0.01, rel=1e-12)
    assert _at(schedules.cosine(0.1, total_steps=10), 10) == pytest.approx(0.0, abs=1e-15)


def test_warmup():
    w = schedules.warmup(0.2, warmup_steps=10)
    for t, want in [(0, 0.0), (1, 0.02), (5, 0.1), (9, 0.18), (10, 0.2), (500, 0.2)]:
        assert _at(w, t) == pytest.approx(want, rel=1e-12, abs=1e-15)
    inner = schedules.exponential_decay(0.2, k=0.1)
    w = schedules.warmup(inner, warmup_steps=4)
    assert _at(w, 2) == pytest.approx(0.1, rel=1e-12)
    for t in (4, 5, 20):  # the wrapped schedule starts its clock at the end of warmup
        assert _at(w, t) == pytest.approx(0.2 * math.exp(-0.1 * (t - 4)), rel=1e-12)


def test_schedules_are_float64_under_x64():
    """optax's exponential/linear schedules give float32 from an int32 count
    even under x64; ours evaluate at a float count."""
    count = jnp.asarray(3, jnp.int32)
    assert optax.exponential_decay(0.1, 1, 0.9)(count).dtype == jnp.float32
    for name in schedules.SCHEDULE_NAMES[1:]:
        s = schedules.make_schedule(name, 0.1, total_steps=50)
        assert s(count).dtype == jnp.float64, name
        assert jax.jit(s)(count).dtype == jnp.float64, name
    with jax.enable_x64(False):
        s = schedules.make_schedule("warmup_cosine", 0.1, total_steps=50)
        assert s(jnp.asarray(3, jnp.int32)).dtype == jnp.float32


def test_make_schedule():
    T = 100
    c = schedules.make_schedule("constant", 0.1, total_steps=T)
    assert _at(c, 0) == _at(c, 10**6) == pytest.approx(0.1)
    st = schedules.make_schedule("step", 0.1, total_steps=T)
    assert [_at(st, t) for t in (0, 24, 25, 99)] == pytest.approx([0.1, 0.1, 0.05, 0.0125])
    ex = schedules.make_schedule("exponential", 0.1, total_steps=T)
    assert _at(ex, T) == pytest.approx(0.001, rel=1e-10)
    it = schedules.make_schedule("inverse_time", 0.1, total_steps=T)
    assert _at(it, T) == pytest.approx(0.01, rel=1e-10)
    co = schedules.make_schedule("cosine", 0.1, total_steps=T, final_lr=0.001)
    assert (_at(co, 0), _at(co, T)) == pytest.approx((0.1, 0.001))
    wc = schedules.make_schedule("warmup_cosine", 0.1, total_steps=T, warmup_steps=10)
    assert [_at(wc, t) for t in (0, 5, 10)] == pytest.approx([0.0, 0.05, 0.1])
    assert _at(wc, 55) == pytest.approx(0.05, rel=1e-12)  # half way through the cosine
    assert _at(wc, T) == pytest.approx(0.0, abs=1e-15)
    assert set(schedules.SCHEDULE_NAMES) == {
        "constant", "step", "exponential", "inverse_time", "cosine", "warmup_cosine"
    }
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.make_schedule("linear", 0.1, total_steps=T)
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.make_schedule("warmup_cosine", 0.1, total_steps=T, warmup_steps=T)
    with pytest.raises(ValueError, match="lr"):
        schedules.make_schedule("cosine", -0.1, total_steps=T)
    with pytest.raises(ValueError, match="total_steps"):
        schedules.make_schedule("cosine", 0.1, total_steps=0)


# ---------------------------------------------------------- make_optimizer


def _net_params():
    return {
        "conv1": {"w": jnp.full((3, 3, 1, 2), 2.0), "b": jnp.full((2,), 3.0)},
        "bn1": {"gamma": jnp.full((2,), 4.0), "beta": jnp.full((2,), 5.0)},
        "prelu": {"alpha": jnp.full((2,), 0.25)},
        "blocks": [{"fc": {"w": jnp.full((2, 2), -1.0), "b": jnp.zeros(2)}}],
    }


def test_decay_mask_selects_only_w():
    mask = optim.decay_mask(_net_params())
    assert mask == {
        "conv1": {"w": True, "b": False},
        "bn1": {"gamma": False, "beta": False},
        "prelu": {"alpha": False},
        "blocks": [{"fc": {"w": True, "b": False}}],
    }


def _zero_grad_update(opt, params):
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    return updates


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "optax_sgd"])
def test_weight_decay_is_l2_on_w_only(name):
    params = _net_params()
    lr, lam = 0.1, 0.01
    u = _zero_grad_update(optim.make_optimizer(name, lr, weight_decay=lam), params)
    mult = {"sgd": 1.0, "optax_sgd": 1.0, "momentum": 1.0, "nesterov": 1.9}[name]
    mask = optim.decay_mask(params)
    expected = jax.tree.map(
        lambda p, m: -lr * lam * mult * p if m else jnp.zeros_like(p), params, mask
    )
    assert_same(jax.tree.leaves(u), jax.tree.leaves(expected), rtol=1e-12, atol=0)


def test_weight_decay_custom_mask():
    params = _net_params()
    all_true = lambda p: jax.tree.map(lambda _: True, p)  # noqa: E731
    u = _zero_grad_update(optim.make_optimizer("sgd", 1.0, weight_decay=0.5, mask=all_true), params)
    assert_same(jax.tree.leaves(u), [-0.5 * np.asarray(p) for p in jax.tree.leaves(params)], atol=0)
    only_bn = jax.tree.map(lambda _: False, params)
    only_bn["bn1"] = {"gamma": True, "beta": True}
    u = _zero_grad_update(optim.make_optimizer("sgd", 1.0, weight_decay=0.5, mask=only_bn), params)
    assert float(jnp.abs(u["conv1"]["w"]).max()) == 0.0
    np.testing.assert_allclose(u["bn1"]["gamma"], -2.0)


def test_weight_decay_adaptive_rules_and_adamw():
    params = _net_params()
    # coupled L2 through Adam: the decayed gradient is normalised, the rest stay 0
    u = _zero_grad_update(optim.make_optimizer("adam", 1e-3, weight_decay=0.1), params)
    np.testing.assert_allclose(u["conv1"]["w"], -1e-3 * np.sign(2.0), rtol=1e-6)
    assert float(jnp.abs(u["bn1"]["gamma"]).max()) == 0.0
    # decoupled (adamw): -lr * lam * w on w only
    u = _zero_grad_update(optim.make_optimizer("adamw", 1e-3, weight_decay=0.1), params)
    np.testing.assert_allclose(u["conv1"]["w"], -1e-3 * 0.1 * 2.0, rtol=1e-12)
    np.testing.assert_allclose(u["blocks"][0]["fc"]["w"], -1e-3 * 0.1 * -1.0, rtol=1e-12)
    for k in ("b",):
        assert float(jnp.abs(u["conv1"][k]).max()) == 0.0
    assert float(jnp.abs(u["prelu"]["alpha"]).max()) == 0.0


def test_clipping_bounds_global_norm():
    params = _net_params()
    opt = optim.make_optimizer("sgd", 1.0, clip_norm=2.0)
    update = jax.jit(opt.update)
    big = jax.tree.map(lambda p: jnp.full_like(p, 10.0), params)
    u, _ = update(big, opt.init(params), params)
    u_np = [np.asarray(l) for l in jax.tree.leaves(u)]
    big_np = [np.asarray(l) for l in jax.tree.leaves(big)]
    assert math.sqrt(sum(np.sum(l**2) for l in u_np)) == pytest.approx(2.0, rel=1e-12)
    # directions are kept
    norm = math.sqrt(sum(np.sum(l**2) for l in big_np))
    assert_same(u_np, [-g * 2.0 / norm for g in big_np])
    small = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    u, _ = update(small, opt.init(params), params)
    assert_same(jax.tree.leaves(u), jax.tree.leaves(jax.tree.map(lambda g: -g, small)), atol=0)
    # clipping acts on the raw gradient; the decay term is added after it
    opt = optim.make_optimizer("sgd", 1.0, clip_norm=1e-6, weight_decay=1.0)
    u = _zero_grad_update(opt, params)
    np.testing.assert_allclose(u["conv1"]["w"], -2.0)


def test_current_learning_rate_follows_schedule():
    sched = schedules.make_schedule("warmup_cosine", 0.1, total_steps=20, warmup_steps=5)
    params = _net_params()
    for name in ("nesterov", "adamw"):
        opt = optim.make_optimizer(name, sched, weight_decay=1e-4, clip_norm=1.0)
        state = opt.init(params)
        assert float(optim.current_learning_rate(state)) == pytest.approx(float(sched(0)))
        traces = []

        @jax.jit
        def step(g, s, p):
            traces.append(1)
            return opt.update(g, s, p)[1]

        grads = jax.tree.map(jnp.ones_like, params)
        for n in range(1, 25):
            state = step(grads, state, params)
            lr = jax.jit(optim.current_learning_rate)(state)
            assert float(lr) == pytest.approx(float(sched(n - 1)), rel=1e-12, abs=1e-15), (name, n)
        assert len(traces) == 1  # the schedule does not retrace the step
    opt = optim.make_optimizer("sgd", 0.3)
    assert float(optim.current_learning_rate(opt.init(params))) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.current_learning_rate(optax.sgd(0.1).init(params))


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"])
def test_current_learning_rate_with_schedule_for_every_rule(name):
    """The injected rate is the schedule's, whichever side of the chain the
    rule puts scale_by_learning_rate, and it is the rate the update applied."""
    sched = schedules.make_schedule("step", 0.2, total_steps=8)  # halves every 2 steps
    params = {"fc": {"w": jnp.full((2, 2), 1.5), "b": jnp.zeros(2)}}
    opt = optim.make_optimizer(name, sched)
    bare = {"sgd": rules.sgd, "momentum": rules.momentum, "nesterov": rules.nesterov,
            "adagrad": rules.adagrad, "rmsprop": rules.rmsprop, "adam": rules.adam}[name](sched)
    state, bare_state = opt.init(params), bare.init(params)
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.2, rel=1e-12)
    update = jax.jit(opt.update)
    grads = jax.tree.map(jnp.ones_like, params)
    for n in range(1, 9):
        u, state = update(grads, state, params)
        bu, bare_state = bare.update(grads, bare_state, params)
        assert_same(jax.tree.leaves(u), jax.tree.leaves(bu))
        assert float(optim.current_learning_rate(state)) == pytest.approx(
            float(sched(n - 1)), rel=1e-12
        ), n


def test_make_optimizer_numerics_unchanged_by_wrapping():
    """inject_hyperparams does not change the numbers: make_optimizer's rules
    reproduce the bare rules, and its optax names reproduce optax."""
    lr = SCHED
    assert_same(trajectory(optim.make_optimizer("momentum", lr, mu=0.5, form="lr_outside")),
                trajectory(optax.sgd(lr, momentum=0.5)))
    assert_same(trajectory(optim.make_optimizer("adam", lr)), trajectory(rules.adam(lr)))
    assert_same(trajectory(optim.make_optimizer("optax_adam", lr)), trajectory(optax.adam(lr)))
    assert_same(trajectory(optim.make_optimizer("rmsprop", lr, decay=0.9)),
                trajectory(rules.rmsprop(lr, decay=0.9)))


def test_make_optimizer_errors():
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'.*sgd"):
        optim.make_optimizer("adamax", 0.1)
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError, match="learning_rate"):
            optim.make_optimizer("sgd", bad)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.make_optimizer("sgd", 0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        optim.make_optimizer("sgd", 0.1, clip_norm=0.0)
    with pytest.raises(ValueError, match="bad hyperparameters"):
        optim.make_optimizer("adam", 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="form"):
        optim.make_optimizer("momentum", 0.1, form="nope")
    assert set(optim.OPTIMIZER_NAMES) == {
        "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam",
        "optax_adam", "optax_sgd", "adamw",
    }
