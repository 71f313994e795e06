"""Normalization layers: reference forwards, manual ops, NumPy oracles, audit registrations.

Conventions (the course's assignment values are the defaults):
- batch statistics use the biased variance (divide by m);
- ``running = momentum * running + (1 - momentum) * batch`` with momentum 0.9;
- eps = 1e-5 inside the square root; gamma/beta per channel (last axis).

The manual ops share one core, :func:`_normalize`, for batch, spatial batch,
layer and group norm: they differ only in which axes the statistics run over.
With ``xhat = (x - mu) / sqrt(var + eps)`` over m values and
``dxhat = dy * gamma``, the simplified backward (the sums of the chain rule
through mu and var collapsed into two reductions) is

    dx     = (1/m) / sqrt(var + eps) * (m dxhat - sum(dxhat) - xhat sum(dxhat xhat))
    dgamma = sum(dy xhat),   dbeta = sum(dy)

Batch norm in eval mode normalises with the running statistics, which are
then inputs like any other and get gradients.  The batch statistics returned
in train mode are for running-state bookkeeping and carry no gradient.
Reverse mode only (``custom_vjp``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_number, check_positive_int, check_rank
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import onednn
from jaxnet.ops.activations import relu, relu_manual
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register


def check_affine_params(op, c, x, gamma, beta, names=("gamma", "beta")):
    for name, p in zip(names, (gamma, beta)):
        if tuple(p.shape) != (c,):
            raise ValueError(f"{op}: `{name}` must have shape ({c},) = the channels of x {tuple(x.shape)}, "
                             f"got {tuple(p.shape)}")


def check_batch_norm(op, x, gamma, beta, running_mean, running_var, momentum, eps, ranks=(2, 4)):
    """Validate a batch_norm call; returns (momentum, eps) as Python floats."""
    check_rank(op, "x", x, ranks, "(N, C) or (N, H, W, C)" if len(ranks) == 2 else "(N, H, W, C)")
    c = x.shape[-1]
    check_affine_params(op, c, x, gamma, beta)
    check_affine_params(op, c, x, running_mean, running_var, ("running_mean", "running_var"))
    return check_number(op, "momentum", momentum, low=0.0, high=1.0), check_eps(op, eps)


def check_eps(op, eps) -> float:
    """A finite number > 0 (Python or NumPy scalar), returned as a Python float."""
    return check_number(op, "eps", eps, low=0.0, low_open=True)


def check_group_norm(op, x, gamma, beta, groups, eps):
    """Validate a group_norm call; returns (groups, eps) as a Python int and float."""
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    groups = check_positive_int(op, "groups", groups)
    if x.shape[3] % groups:
        raise ValueError(f"{op}: groups={groups} must divide the channels of x {tuple(x.shape)}")
    check_affine_params(op, x.shape[3], x, gamma, beta)
    return groups, check_eps(op, eps)


def update_running(running_mean, running_var, mean, var, momentum):
    """The running-statistics update (outside any gradient): returns (mean, var)."""
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    return (momentum * running_mean + (1 - momentum) * mean.astype(running_mean.dtype),
            momentum * running_var + (1 - momentum) * var.astype(running_var.dtype))


# --------------------------------------------------------------------------------- reference forwards

def batch_norm(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Batch normalization over every axis but the last (channels).

    x: (N, D) or (N, H, W, C) (spatial batch norm: statistics over N, H, W).
    gamma, beta, running_mean, running_var: (C,).
    train=True: normalise with the batch statistics and return the updated
    running statistics; train=False: normalise with the running statistics
    and return them unchanged.  Returns ``(y, new_running_mean, new_running_var)``.
    """
    momentum, eps = check_batch_norm("batch_norm", x, gamma, beta, running_mean, running_var, momentum, eps)
    if not train:
        y = gamma * (x - running_mean) / jnp.sqrt(running_var + eps) + beta
        return y, running_mean, running_var
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean((x - mean) ** 2, axis=axes)
    y = gamma * (x - mean) / jnp.sqrt(var + eps) + beta
    return (y,) + update_running(running_mean, running_var, mean, var, momentum)


def spatial_batch_norm(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Batch norm for conv features: x (N, H, W, C), one mean/variance per channel.

    Same contract as :func:`batch_norm`, restricted to rank-4 input.
    """
    momentum, eps = check_batch_norm("spatial_batch_norm", x, gamma, beta, running_mean, running_var,
                                     momentum, eps, ranks=(4,))
    return batch_norm(x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps)


def batch_norm_relu(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """``relu(batch_norm(x, ...))`` as one op: the conv - batch norm - ReLU of a convnet.

    Same contract as :func:`batch_norm` (x: (N, D) or (N, H, W, C); the others (C,); returns
    ``(y, new_running_mean, new_running_var)``), y passed through ReLU.  :class:`jaxnet.nn.Sequential`
    runs a ``BatchNorm`` followed by a ``ReLU`` (same ``impl``) as this op.
    """
    momentum, eps = check_batch_norm("batch_norm_relu", x, gamma, beta, running_mean, running_var, momentum, eps)
    y, rm, rv = batch_norm(x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps)
    return relu(y), rm, rv


def layer_norm(x, gamma, beta, *, eps=1e-5):
    """Normalise each example over its last axis (features); same at train and test.

    x: (..., D).  gamma, beta: (D,).  Returns (..., D).
    """
    check_rank("layer_norm", "x", x, range(1, 9))
    check_affine_params("layer_norm", x.shape[-1], x, gamma, beta)
    eps = check_eps("layer_norm", eps)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return gamma * (x - mean) / jnp.sqrt(var + eps) + beta


def group_norm(x, gamma, beta, *, groups, eps=1e-5):
    """Group normalization: per example, statistics over (H, W, channels of a group).

    x: (N, H, W, C) with C divisible by ``groups``.  gamma, beta: (C,).
    groups=1 is layer norm over (H, W, C); groups=C is instance norm.
    """
    groups, eps = check_group_norm("group_norm", x, gamma, beta, groups, eps)
    n, h, w, c = x.shape
    xg = jnp.reshape(x, (n, h, w, groups, c // groups))
    mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean((xg - mean) ** 2, axis=(1, 2, 4), keepdims=True)
    xhat = jnp.reshape((xg - mean) / jnp.sqrt(var + eps), x.shape)
    return gamma * xhat + beta


# ------------------------------------------------------------------------------ the manual core

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalize(x, gamma, beta, axes, eps):
    """Returns (gamma * xhat + beta, mean, var); mean/var keep dims. gamma broadcasts on x's trailing axes."""
    return _normalize_fwd(x, gamma, beta, axes, eps)[0]


def _normalize_fwd(x, gamma, beta, axes, eps):
    # Written with rsqrt (one multiply per element in the backward pass too), not the
    # reference's division.  x-hat is recomputed in the backward pass rather than stored:
    # one tensor less to write and read back, which is most of the cost of a norm layer.
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    inv_std = jax.lax.rsqrt(var + eps)
    return (gamma * ((x - mean) * inv_std) + beta, mean, var), (x, mean, inv_std, gamma)


def _normalize_bwd(axes, eps, res, cts):
    """dx = (1/m)·σ⁻¹·(m·dx̂ − Σdx̂ − x̂·Σ(dx̂·x̂)) with dx̂ = dy·γ, dγ = Σ dy·x̂, dβ = Σ dy.

    Residuals: the input x, its mean and 1/sqrt(var + eps) over ``axes``
    (keepdims: size 1 along ``axes``) and gamma (the trailing axes of x);
    x-hat is recomputed.  cts: (dy like x, and the cotangents of mean and var,
    ignored: they are bookkeeping outputs).  With m the number of values per
    statistic, returns dx like x, dgamma and dbeta like gamma (summed over
    the leading axes gamma broadcasts along).
    """
    x, mean, inv_std, gamma = res
    dy = cts[0]
    xhat = (x - mean) * inv_std
    lead = tuple(range(x.ndim - gamma.ndim))
    dbeta = jnp.sum(dy, axis=lead)
    dgamma = jnp.sum(dy * xhat, axis=lead)
    m = 1
    for a in axes:
        m *= x.shape[a]
    if tuple(axes) == lead:
        # batch norm: statistics run over the same axes as the parameter sums, so
        # sum(dxhat) = gamma * dbeta and sum(dxhat * xhat) = gamma * dgamma
        dx = (gamma * inv_std) * (dy - (dbeta + xhat * dgamma) / m)
    else:
        dxhat = dy * gamma
        dx = (inv_std / m) * (m * dxhat - jnp.sum(dxhat, axis=axes, keepdims=True)
                              - xhat * jnp.sum(dxhat * xhat, axis=axes, keepdims=True))
    return dx, dgamma, dbeta


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


# ------------------------------------------------------------------------------- batch norm, eval mode

@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _batch_norm_eval(x, gamma, beta, running_mean, running_var, eps):
    # rsqrt, as in the train-mode core, rather than the reference's division
    return gamma * (x - running_mean) * jax.lax.rsqrt(running_var + eps) + beta


def _batch_norm_eval_fwd(x, gamma, beta, running_mean, running_var, eps):
    return (_batch_norm_eval(x, gamma, beta, running_mean, running_var, eps),
            (x, gamma, running_mean, running_var))


def _batch_norm_eval_bwd(eps, res, dy):
    """Eval mode, s = (rv + eps)^-½: dx = dy·γ·s, dγ = Σ dy·(x − rm)·s, dβ = Σ dy, drm = −Σ dx, drv = −½·γ·s³·Σ dy·(x − rm).

    Residuals: the inputs x (N, C) or (N, H, W, C), gamma, running_mean (rm)
    and running_var (rv), each (C,).  dy: like x.  Returns dx like x and
    dgamma, dbeta, drunning_mean, drunning_var, each (C,) (sums over every
    axis but the last).
    """
    x, gamma, rm, rv = res
    inv_std = jax.lax.rsqrt(rv + eps)
    lead = tuple(range(x.ndim - 1))
    centered = x - rm
    dx = dy * gamma * inv_std
    dgamma = jnp.sum(dy * centered, axis=lead) * inv_std
    drm = -jnp.sum(dx, axis=lead)
    drv = jnp.sum(dy * centered, axis=lead) * gamma * (-0.5) * inv_std ** 3
    return dx, dgamma, jnp.sum(dy, axis=lead), drm, drv


_batch_norm_eval.defvjp(_batch_norm_eval_fwd, _batch_norm_eval_bwd)


# -------------------------------------------------------------------------------------- manual ops

def _batch_norm(x, gamma, beta, running_mean, running_var, train, momentum, eps):
    if not train:
        return (_batch_norm_eval(x, gamma, beta, running_mean, running_var, float(eps)),
                running_mean, running_var)
    y, mean, var = _normalize(x, gamma, beta, tuple(range(x.ndim - 1)), float(eps))
    c = x.shape[-1]
    return (y,) + update_running(running_mean, running_var, mean.reshape(c), var.reshape(c), momentum)


def batch_norm_manual(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Manual twin of :func:`batch_norm`. Returns (y, new_running_mean, new_running_var).

    x: (N, D) or (N, H, W, C); gamma, beta, running_mean, running_var: (C,).
    """
    momentum, eps = check_batch_norm("batch_norm", x, gamma, beta, running_mean, running_var, momentum, eps)
    return _batch_norm(x, gamma, beta, running_mean, running_var, train, momentum, eps)


def spatial_batch_norm_manual(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Manual twin of :func:`spatial_batch_norm`. x: (N, H, W, C)."""
    momentum, eps = check_batch_norm("spatial_batch_norm", x, gamma, beta, running_mean, running_var,
                                     momentum, eps, ranks=(4,))
    return _batch_norm(x, gamma, beta, running_mean, running_var, train, momentum, eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize_relu(x, gamma, beta, eps):
    """Train-mode batch norm then ReLU: returns (y, mean, var), statistics over every axis but the last."""
    return _normalize_relu_fwd(x, gamma, beta, eps)[0]


def _normalize_relu_fwd(x, gamma, beta, eps):
    # On the CPU with the oneDNN kernel: oneDNN's batch normalization with the ReLU fused in (one
    # pass for the statistics, one writing y and a 1-bit-per-value ReLU mask).  Otherwise XLA:
    # the statistics, then relu(gamma * xhat + beta); y itself is the residual that gives the mask.
    if onednn.usable(x, gamma, beta):
        y, mean, var, ws = onednn.bn_fwd(x, gamma, beta, eps, relu=True)
        return (y, mean, var), (x, mean, var, gamma, ws)
    lead = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=lead)
    var = jnp.mean(jnp.square(x - mean), axis=lead)
    inv_std = jax.lax.rsqrt(var + eps)
    y = relu(gamma * ((x - mean) * inv_std) + beta)
    return (y, mean, var), (x, mean, inv_std, gamma, y)


def _normalize_relu_bwd(eps, res, cts):
    """dz = dy·1[z > 0] (z = γx̂ + β), then batch norm's: dx = γσ⁻¹(dz − (Σdz + x̂·Σ(dz·x̂))/m), dγ = Σ dz·x̂, dβ = Σ dz.

    The ReLU's mask is y > 0 (XLA path) or oneDNN's workspace (oneDNN's backward runs).

    Residuals: x (N, D) or (N, H, W, C), mean (C,), 1/sqrt(var + eps) (C,) (oneDNN: var), gamma
    (C,) and y like x (oneDNN: its ReLU mask, uint8).  cts: (dy like x, and the cotangents of mean and
    var, ignored: bookkeeping outputs).  Returns dx like x, dgamma and dbeta (C,).
    """
    x, mean, scale, gamma, mask = res
    dy = cts[0]
    if mask.dtype == jnp.uint8:                   # the oneDNN forward ran: so does its backward
        return onednn.bn_bwd(x, mean, scale, gamma, dy, mask, eps, relu=True)
    dz = jnp.where(mask <= 0, 0, dy)              # as relu's backward (NaN passes dy)
    lead = tuple(range(x.ndim - 1))
    m = x.size // x.shape[-1]
    xhat = (x - mean) * scale
    dbeta = jnp.sum(dz, axis=lead)
    dgamma = jnp.sum(dz * xhat, axis=lead)
    dx = (gamma * scale) * (dz - (dbeta + xhat * dgamma) / m)
    return dx, dgamma, dbeta


_normalize_relu.defvjp(_normalize_relu_fwd, _normalize_relu_bwd)


def batch_norm_relu_manual(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Manual twin of :func:`batch_norm_relu`. x: (N, D) or (N, H, W, C); the others (C,)."""
    momentum, eps = check_batch_norm("batch_norm_relu", x, gamma, beta, running_mean, running_var, momentum, eps)
    if not train:
        return (relu_manual(_batch_norm_eval(x, gamma, beta, running_mean, running_var, float(eps))),
                running_mean, running_var)
    y, mean, var = _normalize_relu(x, gamma, beta, float(eps))
    return (y,) + update_running(running_mean, running_var, mean, var, momentum)


def layer_norm_manual(x, gamma, beta, *, eps=1e-5):
    """Manual twin of :func:`layer_norm`. x: (..., D); gamma, beta: (D,)."""
    check_rank("layer_norm", "x", x, range(1, 9))
    check_affine_params("layer_norm", x.shape[-1], x, gamma, beta)
    return _normalize(x, gamma, beta, (x.ndim - 1,), check_eps("layer_norm", eps))[0]


def group_norm_manual(x, gamma, beta, *, groups, eps=1e-5):
    """Manual twin of :func:`group_norm`. x: (N, H, W, C); gamma, beta: (C,)."""
    groups, eps = check_group_norm("group_norm", x, gamma, beta, groups, eps)
    n, h, w, c = x.shape
    shape = (n, h, w, groups, c // groups)
    y = _normalize(jnp.reshape(x, shape), jnp.reshape(gamma, shape[3:]), jnp.reshape(beta, shape[3:]),
                   (1, 2, 4), eps)[0]
    return jnp.reshape(y, x.shape)


# ---------------------------------------------------------------------------------- registrations

def _sample_with_running(key, d, dt):
    k = S.keys(key, 5)
    c = d["x"][-1]
    return (S.normal(k[0], d["x"], dt) * 2 + 0.5, 1 + 0.2 * S.normal(k[1], (c,), dt), S.normal(k[2], (c,), dt),
            0.1 * S.normal(k[3], (c,), dt), S.uniform(k[4], (c,), dt, 0.5, 1.5))


def _sample_affine_params(key, d, dt):
    return _sample_with_running(key, d, dt)[:3]


def _first(result):
    return result[0]


_BATCH_NORM_NOTE = ("running statistics are differentiated in both modes (in train mode y does not depend "
                    "on them: zero gradients); batches of 2 are avoided: there x-hat is +-1 and dx is O(eps), "
                    "below finite-difference round-off")


def _batch_norm_oracle(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """NumPy oracle of both batch norms: ``(y, new running mean, new running var)``, float64.

    Train: mean and biased variance over every axis but the last (x flattened to (m, C)),
    ``running = momentum * running + (1 - momentum) * batch``.  Eval: normalised by the running
    statistics, which are returned unchanged.  x: (..., C); the others: (C,).
    """
    if not train:
        return (gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta, running_mean, running_var)
    flat = x.reshape(-1, x.shape[-1])
    mu = flat.mean(axis=0)
    var = ((flat - mu) ** 2).mean(axis=0)            # biased, as in the course
    y = gamma * (x - mu) / np.sqrt(var + eps) + beta
    return (y, momentum * running_mean + (1 - momentum) * mu, momentum * running_var + (1 - momentum) * var)


def _oracle_norm_args(xs, running=True):
    """Fixed-input ``make``: x of shape ``xs`` (N(0.5, 2^2)), gamma near 1, beta, and (when ``running``)
    a running mean and a running variance in [0.5, 1.5), each of shape (C,)."""
    def make(r):
        c = xs[-1]
        args = (2 * r.standard_normal(xs) + 0.5, 1 + 0.2 * r.standard_normal(c), r.standard_normal(c))
        return args + ((0.1 * r.standard_normal(c), 0.5 + r.random(c)) if running else ())
    return make


def _batch_norm_oracle_cases():
    return O.drawn(
        "batch_norm",
        ("x=5x3 train", _oracle_norm_args((5, 3)), {"train": True}),
        ("x=4x2 train momentum=0.5 eps=1e-3", _oracle_norm_args((4, 2)), {"train": True, "momentum": 0.5, "eps": 1e-3}),
        ("x=2x3x3x2 train", _oracle_norm_args((2, 3, 3, 2)), {"train": True}),
        ("x=5x3 eval", _oracle_norm_args((5, 3)), {"train": False}))


register(OpSpec("batch_norm", batch_norm, batch_norm_manual, _sample_with_running, (
    case({"x": (6, 5)}, train=True), case({"x": (3, 4)}, train=True), case({"x": (6, 5)}, train=False),
    case({"x": (4, 3)}, train=True, momentum=0.5, eps=1e-3),
), backward=(_normalize_bwd, _batch_norm_eval_bwd), output=_first, note=_BATCH_NORM_NOTE,
   oracle=_batch_norm_oracle, oracle_cases=_batch_norm_oracle_cases))


def _spatial_batch_norm_oracle_cases():
    return O.drawn(
        "spatial_batch_norm",
        ("x=2x3x3x2 train", _oracle_norm_args((2, 3, 3, 2)), {"train": True}),
        ("x=1x2x3x3 train momentum=0.7", _oracle_norm_args((1, 2, 3, 3)), {"train": True, "momentum": 0.7}),
        ("x=2x2x2x3 eval eps=1e-3", _oracle_norm_args((2, 2, 2, 3)), {"train": False, "eps": 1e-3}))


register(OpSpec("spatial_batch_norm", spatial_batch_norm, spatial_batch_norm_manual, _sample_with_running, (
    case({"x": (2, 3, 3, 4)}, train=True), case({"x": (1, 3, 5, 2)}, train=True),
    case({"x": (2, 3, 3, 4)}, train=False),
), backward=(_normalize_bwd, _batch_norm_eval_bwd), output=_first, note=_BATCH_NORM_NOTE,
   oracle=_batch_norm_oracle, oracle_cases=_spatial_batch_norm_oracle_cases))


def _batch_norm_relu_oracle(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """NumPy oracle: :func:`_batch_norm_oracle` with ``max(y, 0)``, float64."""
    y, rm, rv = _batch_norm_oracle(x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps)
    return np.maximum(y, 0.0), rm, rv


def _batch_norm_relu_oracle_cases():
    return O.drawn(
        "batch_norm_relu",
        ("x=2x3x3x2 train", _oracle_norm_args((2, 3, 3, 2)), {"train": True}),
        ("x=5x3 train momentum=0.5 eps=1e-3", _oracle_norm_args((5, 3)), {"train": True, "momentum": 0.5, "eps": 1e-3}),
        ("x=2x2x2x3 eval", _oracle_norm_args((2, 2, 2, 3)), {"train": False}))


register(OpSpec("batch_norm_relu", batch_norm_relu, batch_norm_relu_manual, _sample_with_running, (
    case({"x": (2, 3, 3, 4)}, train=True), case({"x": (6, 5)}, train=True),
    case({"x": (2, 3, 3, 4)}, train=False), case({"x": (3, 2, 2, 3)}, train=True, momentum=0.5, eps=1e-3),
), backward=(_normalize_relu_bwd, _batch_norm_eval_bwd), output=_first, note=_BATCH_NORM_NOTE,
   oracle=_batch_norm_relu_oracle, oracle_cases=_batch_norm_relu_oracle_cases))


def _layer_norm_oracle(x, gamma, beta, *, eps=1e-5):
    """NumPy oracle: each example normalised over its last axis (biased variance), then ``gamma * xhat + beta``."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


register(OpSpec("layer_norm", layer_norm, layer_norm_manual, _sample_affine_params, (
    case({"x": (4, 6)}), case({"x": (1, 5)}), case({"x": (2, 3, 5)}, eps=1e-3),
), backward=_normalize_bwd, oracle=_layer_norm_oracle,
   oracle_cases=lambda: O.drawn("layer_norm", ("x=3x5", _oracle_norm_args((3, 5), running=False)),
                                ("x=2x2x4 eps=1e-3", _oracle_norm_args((2, 2, 4), running=False), {"eps": 1e-3}))))


def _group_norm_oracle(x, gamma, beta, *, groups, eps=1e-5):
    """NumPy oracle: a loop over examples and groups, each block of C / groups channels normalised over
    (H, W, its channels), then ``gamma * xhat + beta``. x: (N, H, W, C)."""
    n, h, w, c = x.shape
    cg = c // groups
    xhat = np.empty_like(x)
    for i in range(n):
        for g in range(groups):
            block = x[i, :, :, g * cg:(g + 1) * cg]
            xhat[i, :, :, g * cg:(g + 1) * cg] = (block - block.mean()) / np.sqrt(block.var() + eps)
    return gamma * xhat + beta


def _group_norm_oracle_cases():
    return O.drawn(
        "group_norm",
        ("x=2x2x3x4 groups=2", _oracle_norm_args((2, 2, 3, 4), running=False), {"groups": 2}),
        ("x=1x2x2x3 groups=1", _oracle_norm_args((1, 2, 2, 3), running=False), {"groups": 1}),
        ("x=1x2x2x4 groups=4 eps=1e-3", _oracle_norm_args((1, 2, 2, 4), running=False), {"groups": 4, "eps": 1e-3}))


register(OpSpec("group_norm", group_norm, group_norm_manual, _sample_affine_params, (
    case({"x": (2, 3, 3, 4)}, groups=2), case({"x": (1, 3, 3, 6)}, groups=1), case({"x": (2, 2, 3, 4)}, groups=4),
), backward=_normalize_bwd, oracle=_group_norm_oracle, oracle_cases=_group_norm_oracle_cases))


# ------------------------------------------------------------------------- local response normalization

def _check_lrn(op, x, size, alpha, beta, k):
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    size = check_positive_int(op, "size", size)
    alpha = check_number(op, "alpha", alpha, low=0.0)
    beta = check_number(op, "beta", beta, low=0.0)
    k = check_number(op, "k", k, low=0.0, low_open=True)
    return size, alpha, beta, k


def _channel_window_sum(a, before: int, after: int):
    """``s[..., c] = sum(a[..., c - before : c + after + 1])`` over the last axis, zeros outside."""
    c = a.shape[-1]
    padded = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(before, after)])
    return sum(padded[..., t:t + c] for t in range(before + after + 1))


def local_response_norm(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalization across channels (AlexNet's "NORM" layer).

    x (N, H, W, C) -> y (N, H, W, C)::

        d[c] = k + alpha / size * sum(x[c']^2 for c' in c - size//2 .. c + (size-1)//2)   (zeros outside)
        y[c] = x[c] / d[c]^beta

    PyTorch's ``LocalResponseNorm`` convention (alpha divided by the window size); Krizhevsky et
    al. write ``k + alpha * sum`` with k = 2, n = 5, alpha = 1e-4, beta = 0.75: pass
    ``alpha=5e-4, k=2.0`` for theirs.  Reference: the formula in ``jax.numpy``, autodiff backward.
    """
    size, alpha, beta, k = _check_lrn("local_response_norm", x, size, alpha, beta, k)
    d = k + alpha / size * _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    return x * d ** (-beta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn_core(x, size, alpha, beta, k):
    return _lrn_fwd(x, size, alpha, beta, k)[0]


def _lrn_fwd(x, size, alpha, beta, k):
    d = k + alpha / size * _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    p = d ** (-beta)
    return x * p, (x, d, p)


def _lrn_bwd(size, alpha, beta, k, res, dy):
    """dx = dy d^-beta - (2 alpha beta / size) x * window^T(dy x d^(-beta-1)), the transposed window.

    y[c] = x[c] d[c]^-beta with d[c] = k + alpha/size sum_{c' in W(c)} x[c']^2, so x[i] reaches
    y[i] directly and every d[c] whose window W(c) = [c - size//2, c + (size-1)//2] holds i:
    those c run over [i - (size-1)//2, i + size//2], the window with its two sides swapped.
    Residuals: x, d and d^-beta (N, H, W, C); returns dx like x.
    """
    x, d, p = res
    g = dy * x * p / d                                   # dy[c] x[c] d[c]^(-beta-1)
    back = _channel_window_sum(g, (size - 1) // 2, size // 2)
    return (dy * p - (2.0 * alpha * beta / size) * x * back,)


_lrn_core.defvjp(_lrn_fwd, _lrn_bwd)


def local_response_norm_manual(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Manual twin of :func:`local_response_norm` (hand backward :func:`_lrn_bwd`). x: (N, H, W, C)."""
    size, alpha, beta, k = _check_lrn("local_response_norm", x, size, alpha, beta, k)
    return _lrn_core(x, size, alpha, beta, k)


def _local_response_norm_oracle(x, *, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """NumPy oracle: a loop over channels, each window clipped to the existing channels."""
    c = x.shape[-1]
    y = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        s = (x[..., lo:hi + 1] ** 2).sum(axis=-1)
        y[..., ch] = x[..., ch] / (k + alpha / size * s) ** beta
    return y


def _sample_lrn(key, d, dt):
    return (S.normal(key, d["x"], dt),)


register(OpSpec("local_response_norm", local_response_norm, local_response_norm_manual, _sample_lrn, (
    case({"x": (2, 3, 3, 6)}), case({"x": (1, 2, 2, 7)}, size=4, alpha=0.5, beta=0.6, k=1.5),
    case({"x": (1, 2, 3, 3)}, size=5, alpha=2.0, beta=0.75, k=2.0),
), backward=_lrn_bwd, oracle=_local_response_norm_oracle,
   note="large alpha in the later cases, so that the normalising term is not ~k and its gradient is exercised",
   oracle_cases=lambda: O.drawn(
       "local_response_norm",
       ("x=2x2x2x6", lambda r: (2 * r.standard_normal((2, 2, 2, 6)),)),
       ("x=1x2x2x5 size=4 alpha=1 beta=0.5 k=2", lambda r: (r.standard_normal((1, 2, 2, 5)),),
        {"size": 4, "alpha": 1.0, "beta": 0.5, "k": 2.0}),
       ("x=1x1x2x3 size=7 alpha=3", lambda r: (r.standard_normal((1, 1, 2, 3)),), {"size": 7, "alpha": 3.0}))))
