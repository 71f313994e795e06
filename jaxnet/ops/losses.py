"""Losses and weight penalties, reference forwards.

Classification losses take ``scores`` (N, C) and integer ``labels`` (N,) and
return the mean over the batch of the per-example loss, as in the course.
Regression losses sum over the non-batch axes and average over the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet._checks import check_labels, check_min_rank, check_same_shape


def softmax_cross_entropy(scores, labels):
    """``mean_i [ -s_{i,y_i} + log sum_j exp(s_ij) ]``, numerically stable.

    scores: (N, C) float.  labels: (N,) int in [0, C).  Returns a scalar.
    """
    check_labels("softmax_cross_entropy", scores, labels)
    shifted = scores - jax.lax.stop_gradient(jnp.max(scores, axis=1, keepdims=True))
    log_z = jnp.log(jnp.sum(jnp.exp(shifted), axis=1))
    correct = jnp.take_along_axis(shifted, labels[:, None], axis=1)[:, 0]
    return jnp.mean(log_z - correct)


def check_margin(op, margin):
    if not isinstance(margin, (int, float)) or margin < 0:
        raise ValueError(f"{op}: `margin` must be a non-negative number, got {margin!r}")


def svm_hinge(scores, labels, *, margin=1.0):
    """Multiclass SVM loss ``mean_i sum_{j != y_i} max(0, s_ij - s_{i,y_i} + margin)``.

    scores: (N, C) float.  labels: (N,) int.  margin: the course's Delta (1.0).
    """
    check_labels("svm_hinge", scores, labels)
    check_margin("svm_hinge", margin)
    correct = jnp.take_along_axis(scores, labels[:, None], axis=1)
    margins = jnp.maximum(0, scores - correct + margin)
    margins = jnp.where(jax.nn.one_hot(labels, scores.shape[1], dtype=bool), 0, margins)
    return jnp.mean(jnp.sum(margins, axis=1))


def sigmoid_cross_entropy(logits, targets):
    """Binary / multi-label cross-entropy on logits, numerically stable.

    ``mean_i sum_j -[t log s(z) + (1 - t) log(1 - s(z))]`` with s the sigmoid.
    logits: (N, ...) float.  targets: same shape, in [0, 1].
    """
    check_min_rank("sigmoid_cross_entropy", "logits", logits, 1)
    check_same_shape("sigmoid_cross_entropy", "logits", logits, "targets", targets)
    per = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(per) / logits.shape[0]


def l2_loss(pred, target):
    """Squared L2 regression loss ``mean_i ||pred_i - target_i||^2``. pred, target: (N, ...)."""
    check_min_rank("l2_loss", "pred", pred, 1)
    check_same_shape("l2_loss", "pred", pred, "target", target)
    return jnp.sum((pred - target) ** 2) / pred.shape[0]


def l1_loss(pred, target):
    """L1 regression loss ``mean_i sum_j |pred_ij - target_ij|``. pred, target: (N, ...)."""
    check_min_rank("l1_loss", "pred", pred, 1)
    check_same_shape("l1_loss", "pred", pred, "target", target)
    return jnp.sum(jnp.abs(pred - target)) / pred.shape[0]


def l2_penalty(w):
    """``sum(w ** 2)``, the course's R(W); multiply by the strength lambda yourself. w: any shape."""
    return jnp.sum(w * w)


def l1_penalty(w):
    """``sum(|w|)``. w: any shape."""
    return jnp.sum(jnp.abs(w))
