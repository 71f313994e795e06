"""Normalization layers with the course's hand-derived backward pass.

One core, :func:`_normalize`, serves batch, spatial batch, layer and group
norm: they differ only in which axes the statistics run over.  With
``xhat = (x - mu) / sqrt(var + eps)`` over m values and ``dxhat = dy * gamma``,
the simplified backward (``batchnorm_backward_alt`` in the course) is

    dx     = (1/m) / sqrt(var + eps) * (m dxhat - sum(dxhat) - xhat sum(dxhat xhat))
    dgamma = sum(dy xhat),   dbeta = sum(dy)

Reverse mode only (``custom_vjp``).  The batch statistics it returns are for
running-state bookkeeping and carry no gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnet.ops.norm import (check_batch_norm, check_affine_params, check_eps, check_group_norm,
                             update_running)
from jaxnet._checks import check_rank


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalize(x, gamma, beta, axes, eps):
    """Returns (gamma * xhat + beta, mean, var); mean/var keep dims. gamma broadcasts on x's trailing axes."""
    return _normalize_fwd(x, gamma, beta, axes, eps)[0]


def _normalize_fwd(x, gamma, beta, axes, eps):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    inv_std = jax.lax.rsqrt(var + eps)
    # x-hat is recomputed in the backward pass rather than stored: one tensor less to
    # write and read back, which is most of the cost of a norm layer on CPU
    return (gamma * ((x - mean) * inv_std) + beta, mean, var), (x, mean, inv_std, gamma)


def _normalize_bwd(axes, eps, res, cts):
    x, mean, inv_std, gamma = res
    dy = cts[0]                          # mean/var outputs are bookkeeping only
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _bn_eval(x, gamma, beta, running_mean, running_var, eps):
    return gamma * (x - running_mean) * jax.lax.rsqrt(running_var + eps) + beta


def _bn_eval_fwd(x, gamma, beta, running_mean, running_var, eps):
    return _bn_eval(x, gamma, beta, running_mean, running_var, eps), (x, gamma, running_mean, running_var)


def _bn_eval_bwd(eps, res, dy):
    x, gamma, rm, rv = res
    inv_std = jax.lax.rsqrt(rv + eps)
    lead = tuple(range(x.ndim - 1))
    centered = x - rm
    dx = dy * gamma * inv_std
    dgamma = jnp.sum(dy * centered, axis=lead) * inv_std
    drm = -jnp.sum(dx, axis=lead)
    drv = jnp.sum(dy * centered, axis=lead) * gamma * (-0.5) * inv_std ** 3
    return dx, dgamma, jnp.sum(dy, axis=lead), drm, drv


_bn_eval.defvjp(_bn_eval_fwd, _bn_eval_bwd)


def batch_norm(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Manual twin of :func:`jaxnet.ops.batch_norm`. Returns (y, new_running_mean, new_running_var).

    x: (N, D) or (N, H, W, C); gamma, beta, running_mean, running_var: (C,).
    """
    check_batch_norm("batch_norm", x, gamma, beta, running_mean, running_var, momentum, eps)
    return _batch_norm(x, gamma, beta, running_mean, running_var, train, momentum, eps)


def _batch_norm(x, gamma, beta, running_mean, running_var, train, momentum, eps):
    if not train:
        return _bn_eval(x, gamma, beta, running_mean, running_var, float(eps)), running_mean, running_var
    y, mean, var = _normalize(x, gamma, beta, tuple(range(x.ndim - 1)), float(eps))
    c = x.shape[-1]
    return (y,) + update_running(running_mean, running_var, mean.reshape(c), var.reshape(c), momentum)


def spatial_batch_norm(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    """Manual twin of :func:`jaxnet.ops.spatial_batch_norm`. x: (N, H, W, C)."""
    check_batch_norm("spatial_batch_norm", x, gamma, beta, running_mean, running_var, momentum, eps, ranks=(4,))
    return _batch_norm(x, gamma, beta, running_mean, running_var, train, momentum, eps)


def layer_norm(x, gamma, beta, *, eps=1e-5):
    """Manual twin of :func:`jaxnet.ops.layer_norm`. x: (..., D); gamma, beta: (D,)."""
    check_rank("layer_norm", "x", x, range(1, 9))
    check_affine_params("layer_norm", x.shape[-1], x, gamma, beta)
    check_eps("layer_norm", eps)
    return _normalize(x, gamma, beta, (x.ndim - 1,), float(eps))[0]


def group_norm(x, gamma, beta, *, groups, eps=1e-5):
    """Manual twin of :func:`jaxnet.ops.group_norm`. x: (N, H, W, C); gamma, beta: (C,)."""
    check_group_norm("group_norm", x, gamma, beta, groups, eps)
    n, h, w, c = x.shape
    shape = (n, h, w, groups, c // groups)
    y = _normalize(jnp.reshape(x, shape), jnp.reshape(gamma, shape[3:]), jnp.reshape(beta, shape[3:]),
                   (1, 2, 4), float(eps))[0]
    return jnp.reshape(y, x.shape)
