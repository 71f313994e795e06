"""Normalization layers, reference forwards.

Conventions (the course's assignment values are the defaults):
- batch statistics use the biased variance (divide by m);
- ``running = momentum * running + (1 - momentum) * batch`` with momentum 0.9;
- eps = 1e-5 inside the square root; gamma/beta per channel (last axis).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet._checks import check_positive_int, check_rank


def check_affine_params(op, c, x, gamma, beta, names=("gamma", "beta")):
    for name, p in zip(names, (gamma, beta)):
        if tuple(p.shape) != (c,):
            raise ValueError(f"{op}: `{name}` must have shape ({c},) = the channels of x {tuple(x.shape)}, "
                             f"got {tuple(p.shape)}")


def check_batch_norm(op, x, gamma, beta, running_mean, running_var, momentum, eps, ranks=(2, 4)):
    check_rank(op, "x", x, ranks, "(N, C) or (N, H, W, C)" if len(ranks) == 2 else "(N, H, W, C)")
    c = x.shape[-1]
    check_affine_params(op, c, x, gamma, beta)
    check_affine_params(op, c, x, running_mean, running_var, ("running_mean", "running_var"))
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{op}: `momentum` must be in [0, 1], got {momentum!r}")
    check_eps(op, eps)


def check_eps(op, eps):
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"{op}: `eps` must be a positive number, got {eps!r}")


def update_running(running_mean, running_var, mean, var, momentum):
    """The running-statistics update (outside any gradient): returns (mean, var)."""
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    return (momentum * running_mean + (1 - momentum) * mean.astype(running_mean.dtype),
            momentum * running_var + (1 - momentum) * var.astype(running_var.dtype))


def batch_norm(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Batch normalization over every axis but the last (channels).

    x: (N, D) or (N, H, W, C) (spatial batch norm: statistics over N, H, W).
    gamma, beta, running_mean, running_var: (C,).
    train=True: normalise with the batch statistics and return the updated
    running statistics; train=False: normalise with the running statistics
    and return them unchanged.  Returns ``(y, new_running_mean, new_running_var)``.
    """
    check_batch_norm("batch_norm", x, gamma, beta, running_mean, running_var, momentum, eps)
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
    check_batch_norm("spatial_batch_norm", x, gamma, beta, running_mean, running_var, momentum, eps, ranks=(4,))
    return batch_norm(x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps)


def layer_norm(x, gamma, beta, *, eps=1e-5):
    """Normalise each example over its last axis (features); same at train and test.

    x: (..., D).  gamma, beta: (D,).  Returns (..., D).
    """
    check_rank("layer_norm", "x", x, range(1, 9))
    check_affine_params("layer_norm", x.shape[-1], x, gamma, beta)
    check_eps("layer_norm", eps)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return gamma * (x - mean) / jnp.sqrt(var + eps) + beta


def check_group_norm(op, x, gamma, beta, groups, eps):
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    check_positive_int(op, "groups", groups)
    if x.shape[3] % groups:
        raise ValueError(f"{op}: groups={groups} must divide the channels of x {tuple(x.shape)}")
    check_affine_params(op, x.shape[3], x, gamma, beta)
    check_eps(op, eps)


def group_norm(x, gamma, beta, *, groups, eps=1e-5):
    """Group normalization: per example, statistics over (H, W, channels of a group).

    x: (N, H, W, C) with C divisible by ``groups``.  gamma, beta: (C,).
    groups=1 is layer norm over (H, W, C); groups=C is instance norm.
    """
    check_group_norm("group_norm", x, gamma, beta, groups, eps)
    n, h, w, c = x.shape
    xg = jnp.reshape(x, (n, h, w, groups, c // groups))
    mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean((xg - mean) ** 2, axis=(1, 2, 4), keepdims=True)
    xhat = jnp.reshape((xg - mean) / jnp.sqrt(var + eps), x.shape)
    return gamma * xhat + beta
