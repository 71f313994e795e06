"""The op registry: every op with its reference, manual twin, input sampler and
the configurations to sweep.  The gradient audit and the test suite both run
from it, so registering an op here adds all of its checks.

Samplers keep inputs away from points where the op is not differentiable
(ReLU-family kinks at 0, hinge/L1 kinks, max-pool and maxout ties), because
there a finite difference straddling the kink is wrong, not the gradient.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnet import manual, ops

KINK_GAP = 1e-3   # samplers keep every kink at least this far away (>> the 1e-5 step)


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: ``kwargs`` go to the op, ``dims`` to the sampler."""
    kwargs: dict
    dims: dict

    @property
    def label(self) -> str:
        parts = [f"{k}={_short(v)}" for k, v in self.dims.items() if k not in self.kwargs]
        parts += [f"{k}={_short(v)}" for k, v in self.kwargs.items()]
        return " ".join(parts)


def _short(v):
    if isinstance(v, tuple):
        return "x".join(str(i) for i in v) if all(isinstance(i, int) for i in v) else str(v).replace(" ", "")
    return str(v)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """A registered op.

    sample(key, dims, dtype) -> tuple of positional args.
    diff_argnums: which positional args are differentiated in the audit.
    output: picks the differentiable array from the op's result (default: itself).
    """
    name: str
    reference: Callable
    manual: Callable
    sample: Callable
    cases: tuple
    diff_argnums: tuple = (0,)
    output: Callable = None  # None: the result itself
    numeric_tol: float = 1e-6
    note: str = ""

    def call(self, impl: str, args, case: Case):
        """Run one path on ``args`` with the case's configuration."""
        fn = self.manual if impl == "manual" else self.reference
        return fn(*args, **case.kwargs)

    def differentiable_output(self, result):
        return result if self.output is None else self.output(result)


def _normal(key, shape, dtype):
    return jax.random.normal(key, shape, dtype)


def _away_from_zero(key, shape, dtype):
    """Normal draws pushed at least KINK_GAP * 10 away from 0 (for ReLU-family kinks)."""
    x = jax.random.normal(key, shape, dtype)
    return jnp.where(x >= 0, x + 10 * KINK_GAP, x - 10 * KINK_GAP)


def _distinct(key, shape, dtype):
    """A random permutation of evenly spaced values in [-2, 2]: no ties anywhere."""
    n = 1
    for s in shape:
        n *= s
    values = jnp.linspace(-2.0, 2.0, n, dtype=dtype)
    return jnp.reshape(jax.random.permutation(key, values), shape)


def _keys(key, n):
    return jax.random.split(key, n)


# --- samplers -------------------------------------------------------------------------------------------

def _s_unary(sampler):
    return lambda key, d, dt: (sampler(key, d["x"], dt),)


def _s_affine(key, d, dt):
    k = _keys(key, 3)
    x = _normal(k[0], d["x"], dt)
    dim = x.size // x.shape[0]
    args = (x, _normal(k[1], (dim, d["m"]), dt) / jnp.sqrt(dim))
    return args + ((_normal(k[2], (d["m"],), dt),) if d.get("bias", True) else (None,))


def _s_prelu(key, d, dt):
    k = _keys(key, 2)
    return _away_from_zero(k[0], d["x"], dt), 0.1 + 0.3 * jax.random.uniform(k[1], d["alpha"], dt)


def _s_labels(key, d, dt):
    k = _keys(key, 2)
    n, c = d["x"]
    return _normal(k[0], (n, c), dt), jax.random.randint(k[1], (n,), 0, c)


def _s_svm(key, d, dt, margin=1.0):
    for attempt in range(100):   # rejection sampling: every margin at least KINK_GAP from its hinge
        scores, labels = _s_labels(jax.random.fold_in(key, attempt), d, dt)
        correct = jnp.take_along_axis(scores, labels[:, None], axis=1)
        m = scores - correct + d.get("margin", margin)
        m = jnp.where(jax.nn.one_hot(labels, scores.shape[1], dtype=bool), 1.0, m)
        if float(jnp.min(jnp.abs(m))) > KINK_GAP:
            return scores, labels
    raise RuntimeError("svm_hinge sampler: could not avoid the hinge kinks")


def _s_pair(key, d, dt):
    k = _keys(key, 2)
    return _normal(k[0], d["x"], dt), _normal(k[1], d["x"], dt)


def _s_pair_apart(key, d, dt):
    k = _keys(key, 2)
    t = _normal(k[1], d["x"], dt)
    return t + _away_from_zero(k[0], d["x"], dt), t


def _s_sigmoid_ce(key, d, dt):
    k = _keys(key, 2)
    return _normal(k[0], d["x"], dt), jax.random.uniform(k[1], d["x"], dt)


def _s_conv(key, d, dt):
    k = _keys(key, 3)
    x = _normal(k[0], d["x"], dt)
    w = _normal(k[1], d["w"], dt)
    return x, w, (_normal(k[2], (d["w"][-1],), dt) if d.get("bias", True) else None)


def _s_norm_running(key, d, dt):
    k = _keys(key, 5)
    c = d["x"][-1]
    return (_normal(k[0], d["x"], dt) * 2 + 0.5, 1 + 0.2 * _normal(k[1], (c,), dt), _normal(k[2], (c,), dt),
            0.1 * _normal(k[3], (c,), dt), 0.5 + jax.random.uniform(k[4], (c,), dt))


def _s_norm(key, d, dt):
    return _s_norm_running(key, d, dt)[:3]


def _s_dropout(key, d, dt):
    k = _keys(key, 2)
    return _normal(k[0], d["x"], dt), k[1]


def _first(result):
    return result[0]


def _C(dims, **kwargs):
    return Case(kwargs=kwargs, dims=dims)


_ACT_SHAPES = ({"x": (4, 5)}, {"x": (1, 3, 3, 2)})
_RUNNING = ("running statistics are state, not differentiated in train mode; batches of 2 are avoided: "
            "there x-hat is +-1 and dx is O(eps), below finite-difference round-off")

SPECS: tuple[OpSpec, ...] = (
    OpSpec("affine", ops.affine, manual.affine, _s_affine, (
        _C({"x": (4, 5), "m": 3}), _C({"x": (2, 3, 4, 2), "m": 7}), _C({"x": (1, 6), "m": 2}),
        _C({"x": (3, 5), "m": 4, "bias": False})), diff_argnums=(0, 1, 2)),
    OpSpec("relu", ops.relu, manual.relu, _s_unary(_away_from_zero),
           tuple(_C(d) for d in _ACT_SHAPES), note="inputs kept away from the kink at 0"),
    OpSpec("leaky_relu", ops.leaky_relu, manual.leaky_relu, _s_unary(_away_from_zero),
           tuple(_C(d, slope=s) for d in _ACT_SHAPES for s in (0.01, 0.2)), note="inputs kept away from 0"),
    OpSpec("sigmoid", ops.sigmoid, manual.sigmoid, _s_unary(lambda k, s, dt: 3 * _normal(k, s, dt)),
           tuple(_C(d) for d in _ACT_SHAPES)),
    OpSpec("tanh", ops.tanh, manual.tanh, _s_unary(lambda k, s, dt: 2 * _normal(k, s, dt)),
           tuple(_C(d) for d in _ACT_SHAPES)),
    OpSpec("elu", ops.elu, manual.elu, _s_unary(_away_from_zero),
           tuple(_C(d, alpha=a) for d in _ACT_SHAPES for a in (1.0, 0.5)), note="inputs kept away from 0"),
    OpSpec("prelu", ops.prelu, manual.prelu, _s_prelu, (
        _C({"x": (4, 5), "alpha": (5,)}), _C({"x": (2, 3, 3, 4), "alpha": (4,)}),
        _C({"x": (3, 4), "alpha": ()})), diff_argnums=(0, 1), note="inputs kept away from 0"),
    OpSpec("maxout", ops.maxout, manual.maxout, _s_unary(_distinct), (
        _C({"x": (4, 6)}, pieces=2), _C({"x": (2, 3, 9)}, pieces=3), _C({"x": (1, 4)}, pieces=4)),
        note="inputs are distinct (no ties between pieces)"),
    OpSpec("softmax_cross_entropy", ops.softmax_cross_entropy, manual.softmax_cross_entropy, _s_labels, (
        _C({"x": (5, 10)}), _C({"x": (1, 3)}), _C({"x": (7, 2)}))),
    OpSpec("svm_hinge", ops.svm_hinge, manual.svm_hinge, _s_svm, (
        _C({"x": (5, 10)}), _C({"x": (1, 3)}), _C({"x": (6, 4), "margin": 0.5}, margin=0.5)),
        note="scores resampled until every margin is 1e-3 away from its hinge"),
    OpSpec("sigmoid_cross_entropy", ops.sigmoid_cross_entropy, manual.sigmoid_cross_entropy, _s_sigmoid_ce, (
        _C({"x": (4, 3)}), _C({"x": (1, 5)}), _C({"x": (2, 3, 2)})), diff_argnums=(0, 1)),
    OpSpec("l2_loss", ops.l2_loss, manual.l2_loss, _s_pair, (
        _C({"x": (4, 3)}), _C({"x": (1, 2, 2)})), diff_argnums=(0, 1)),
    OpSpec("l1_loss", ops.l1_loss, manual.l1_loss, _s_pair_apart, (
        _C({"x": (4, 3)}), _C({"x": (1, 2, 2)})), diff_argnums=(0, 1), note="pred - target kept away from 0"),
    OpSpec("l2_penalty", ops.l2_penalty, manual.l2_penalty, _s_unary(_normal), (
        _C({"x": (5, 3)}), _C({"x": (3, 3, 2, 4)}))),
    OpSpec("l1_penalty", ops.l1_penalty, manual.l1_penalty, _s_unary(_away_from_zero), (
        _C({"x": (5, 3)}), _C({"x": (3, 3, 2, 4)})), note="weights kept away from 0"),
    OpSpec("conv2d", ops.conv2d, manual.conv2d, _s_conv, (
        _C({"x": (2, 7, 7, 3), "w": (3, 3, 3, 4)}, stride=1, padding=0),
        _C({"x": (2, 7, 7, 3), "w": (3, 3, 3, 4)}, stride=2, padding=0),
        _C({"x": (2, 7, 7, 3), "w": (3, 3, 3, 4)}, stride=1, padding=1),
        _C({"x": (1, 8, 9, 3), "w": (3, 3, 3, 2)}, stride=2, padding="SAME"),
        _C({"x": (2, 9, 9, 2), "w": (3, 3, 2, 3)}, stride=1, padding="VALID", dilation=2),
        _C({"x": (2, 6, 6, 4), "w": (3, 3, 2, 6)}, stride=1, padding=1, groups=2),
        _C({"x": (1, 5, 5, 3), "w": (3, 3, 1, 3)}, stride=1, padding="SAME", groups=3),
        _C({"x": (3, 4, 4, 5), "w": (1, 1, 5, 2)}, stride=1, padding=0),
        _C({"x": (2, 5, 7, 2), "w": (2, 3, 2, 3), "bias": False}, stride=(1, 2), padding=(1, 0)),
        _C({"x": (1, 7, 7, 3), "w": (5, 5, 3, 2)}, stride=2, padding=2, dilation=1),
    ), diff_argnums=(0, 1, 2)),
    OpSpec("conv2d_transpose", ops.conv2d_transpose, manual.conv2d_transpose, _s_conv, (
        _C({"x": (2, 4, 4, 3), "w": (3, 3, 3, 2)}, stride=1, padding=0),
        _C({"x": (2, 4, 4, 3), "w": (3, 3, 3, 2)}, stride=2, padding=1),
        _C({"x": (1, 3, 5, 2), "w": (2, 3, 2, 4), "bias": False}, stride=(2, 1), padding=0),
        _C({"x": (2, 3, 3, 2), "w": (4, 4, 2, 2)}, stride=2, padding=1),
    ), diff_argnums=(0, 1, 2)),
    OpSpec("max_pool2d", ops.max_pool2d, manual.max_pool2d, _s_unary(_distinct), (
        _C({"x": (2, 8, 8, 3)}, window=2),
        _C({"x": (2, 9, 9, 2)}, window=3, stride=2, padding=1),
        _C({"x": (1, 7, 7, 2)}, window=3, stride=1),
        _C({"x": (2, 6, 9, 2)}, window=(2, 3), stride=(2, 3)),
        _C({"x": (1, 7, 7, 3)}, window=2, stride=2, padding="SAME"),
    ), note="inputs are distinct values, so no window has a tie"),
    OpSpec("avg_pool2d", ops.avg_pool2d, manual.avg_pool2d, _s_unary(_normal), (
        _C({"x": (2, 8, 8, 3)}, window=2),
        _C({"x": (2, 9, 9, 2)}, window=3, stride=2, padding=1),
        _C({"x": (1, 7, 7, 2)}, window=3, stride=1),
        _C({"x": (2, 6, 9, 2)}, window=(2, 3), stride=(2, 3)),
        _C({"x": (1, 7, 7, 3)}, window=2, stride=2, padding="SAME"),
    )),
    OpSpec("global_avg_pool", ops.global_avg_pool, manual.global_avg_pool, _s_unary(_normal), (
        _C({"x": (2, 4, 4, 3)}), _C({"x": (1, 3, 5, 2)}))),
    OpSpec("batch_norm", ops.batch_norm, manual.batch_norm, _s_norm_running, (
        _C({"x": (6, 5)}, train=True), _C({"x": (3, 4)}, train=True), _C({"x": (6, 5)}, train=False),
        _C({"x": (4, 3)}, train=True, momentum=0.5, eps=1e-3),
    ), diff_argnums=(0, 1, 2), output=_first, note=_RUNNING),
    OpSpec("spatial_batch_norm", ops.spatial_batch_norm, manual.spatial_batch_norm, _s_norm_running, (
        _C({"x": (2, 3, 3, 4)}, train=True), _C({"x": (1, 3, 5, 2)}, train=True),
        _C({"x": (2, 3, 3, 4)}, train=False),
    ), diff_argnums=(0, 1, 2), output=_first, note=_RUNNING),
    OpSpec("layer_norm", ops.layer_norm, manual.layer_norm, _s_norm, (
        _C({"x": (4, 6)}), _C({"x": (1, 5)}), _C({"x": (2, 3, 5)}, eps=1e-3),
    ), diff_argnums=(0, 1, 2)),
    OpSpec("group_norm", ops.group_norm, manual.group_norm, _s_norm, (
        _C({"x": (2, 3, 3, 4)}, groups=2), _C({"x": (1, 3, 3, 6)}, groups=1),
        _C({"x": (2, 2, 3, 4)}, groups=4),
    ), diff_argnums=(0, 1, 2)),
    OpSpec("dropout", ops.dropout, manual.dropout, _s_dropout, (
        _C({"x": (4, 6)}, rate=0.5), _C({"x": (2, 3, 3, 2)}, rate=0.1), _C({"x": (5, 4)}, rate=0.5, train=False),
    ), note="the key is an input: the same key gives the same mask in both paths"),
)

REGISTRY: dict[str, OpSpec] = {s.name: s for s in SPECS}


def get(name: str) -> OpSpec:
    """The spec of a registered op; a clear error lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered ops: {', '.join(REGISTRY)}") from None


def all_cases(names=None):
    """Yield (spec, case) for every registered op (or the given names) and configuration."""
    for name in (names or REGISTRY):
        spec = get(name)
        for case in spec.cases:
            yield spec, case
