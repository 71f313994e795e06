"""Losses with the course's hand-derived gradients (reverse mode only: ``custom_vjp``).

softmax: dL/ds = (p - onehot(y)) / N.  SVM: +1 for every violating class,
minus their count for the true class, over N.  sigmoid CE: (s(z) - t) / N.
L2: 2 (p - t) / N.  L1: sign(p - t) / N.  Penalties: 2w and sign(w).
Integer labels get no cotangent (``None``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnet._checks import check_labels, check_min_rank, check_same_shape
from jaxnet.ops.losses import check_margin


@jax.custom_vjp
def _softmax_ce(scores, labels):
    return _softmax_ce_fwd(scores, labels)[0]


def _softmax_ce_fwd(scores, labels):
    shifted = scores - jnp.max(scores, axis=1, keepdims=True)     # the course's stability shift
    exp = jnp.exp(shifted)
    z = jnp.sum(exp, axis=1, keepdims=True)
    correct = jnp.take_along_axis(shifted, labels[:, None], axis=1)[:, 0]
    loss = jnp.mean(jnp.log(z[:, 0]) - correct)
    return loss, (exp / z, labels)


def _softmax_ce_bwd(res, g):
    p, labels = res
    onehot = jax.nn.one_hot(labels, p.shape[1], dtype=p.dtype)
    return (g * (p - onehot) / p.shape[0], None)


_softmax_ce.defvjp(_softmax_ce_fwd, _softmax_ce_bwd)


def softmax_cross_entropy(scores, labels):
    """Manual twin of :func:`jaxnet.ops.softmax_cross_entropy`. scores (N, C); labels (N,) int."""
    check_labels("softmax_cross_entropy", scores, labels)
    return _softmax_ce(scores, labels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _svm(scores, labels, margin):
    return _svm_fwd(scores, labels, margin)[0]


def _svm_fwd(scores, labels, margin):
    is_true = jax.nn.one_hot(labels, scores.shape[1], dtype=bool)
    correct = jnp.take_along_axis(scores, labels[:, None], axis=1)
    margins = jnp.where(is_true, 0, jnp.maximum(0, scores - correct + margin))
    return jnp.mean(jnp.sum(margins, axis=1)), (margins > 0, is_true)


def _svm_bwd(margin, res, g):
    violated, is_true = res
    count = jnp.sum(violated, axis=1, keepdims=True)
    ds = jnp.where(is_true, -count, violated).astype(jnp.result_type(g))
    return (g * ds / ds.shape[0], None)


_svm.defvjp(_svm_fwd, _svm_bwd)


def svm_hinge(scores, labels, *, margin=1.0):
    """Manual twin of :func:`jaxnet.ops.svm_hinge`. scores (N, C); labels (N,) int."""
    check_labels("svm_hinge", scores, labels)
    check_margin("svm_hinge", margin)
    return _svm(scores, labels, float(margin))


@jax.custom_vjp
def _sigmoid_ce(logits, targets):
    per = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(per) / logits.shape[0]


def _sigmoid_ce_bwd(res, g):
    logits, targets = res
    n = logits.shape[0]
    return g * (jax.nn.sigmoid(logits) - targets) / n, -g * logits / n


_sigmoid_ce.defvjp(lambda z, t: (_sigmoid_ce(z, t), (z, t)), _sigmoid_ce_bwd)


def sigmoid_cross_entropy(logits, targets):
    """Manual twin of :func:`jaxnet.ops.sigmoid_cross_entropy`. logits, targets: (N, ...)."""
    check_min_rank("sigmoid_cross_entropy", "logits", logits, 1)
    check_same_shape("sigmoid_cross_entropy", "logits", logits, "targets", targets)
    return _sigmoid_ce(logits, targets)


@jax.custom_vjp
def _l2(pred, target):
    return jnp.sum((pred - target) ** 2) / pred.shape[0]


def _l2_bwd(diff, g):
    d = g * 2 * diff / diff.shape[0]
    return d, -d


_l2.defvjp(lambda p, t: (_l2(p, t), p - t), _l2_bwd)


def l2_loss(pred, target):
    """Manual twin of :func:`jaxnet.ops.l2_loss`. pred, target: (N, ...)."""
    check_min_rank("l2_loss", "pred", pred, 1)
    check_same_shape("l2_loss", "pred", pred, "target", target)
    return _l2(pred, target)


@jax.custom_vjp
def _l1(pred, target):
    return jnp.sum(jnp.abs(pred - target)) / pred.shape[0]


def _l1_bwd(diff, g):
    d = g * jnp.sign(diff) / diff.shape[0]
    return d, -d


_l1.defvjp(lambda p, t: (_l1(p, t), p - t), _l1_bwd)


def l1_loss(pred, target):
    """Manual twin of :func:`jaxnet.ops.l1_loss`. pred, target: (N, ...)."""
    check_min_rank("l1_loss", "pred", pred, 1)
    check_same_shape("l1_loss", "pred", pred, "target", target)
    return _l1(pred, target)


@jax.custom_vjp
def l2_penalty(w):
    """Manual twin of :func:`jaxnet.ops.l2_penalty`: ``sum(w ** 2)``, gradient ``2 w``."""
    return jnp.sum(w * w)


l2_penalty.defvjp(lambda w: (jnp.sum(w * w), w), lambda w, g: (2 * g * w,))


@jax.custom_vjp
def l1_penalty(w):
    """Manual twin of :func:`jaxnet.ops.l1_penalty`: ``sum(|w|)``, gradient ``sign(w)``."""
    return jnp.sum(jnp.abs(w))


l1_penalty.defvjp(lambda w: (jnp.sum(jnp.abs(w)), w), lambda w, g: (g * jnp.sign(w),))
