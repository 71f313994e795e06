"""Losses and weight penalties: reference forwards, manual ops, NumPy oracles, audit registrations.

Classification losses take ``scores`` (N, C) and integer ``labels`` (N,) and
return the mean over the batch of the per-example loss, as in the course.
Regression losses sum over the non-batch axes and average over the batch.

Hand gradients: softmax dL/ds = (p - onehot(y)) / N; SVM +1 for every
violating class, minus their count for the true class, over N; sigmoid CE
(s(z) - t) / N; L2 2 (p - t) / N; L1 sign(p - t) / N; penalties 2w and
sign(w).  Integer labels get no cotangent (``None``).

Kinks: both paths take the same subgradient, written into the reference's
formula so that autodiff produces it: |x| has slope 0 at x = 0 (L1 loss and
penalty), and a hinge exactly at its margin (s_j - s_y + margin = 0) counts as
not violated (slope 0).

Labels out of range: a label outside [0, C) (negative ones included) makes
its example's loss NaN, so the batch loss is NaN, and its row of dscores NaN,
on both paths, eagerly and under jit; the other rows' gradients are
unaffected.  A jitted function cannot raise on a value; for an error instead,
run the loss under :func:`checked` (``jax.experimental.checkify``), which
reports the first bad label.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxnet._checks import check_labels, check_min_rank, check_number, check_same_shape, labels_in_range
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register


def _sample_labels(key, d, dt):
    k = S.keys(key, 2)
    n, c = d["x"]
    return S.normal(k[0], (n, c), dt), S.randint(k[1], (n,), 0, c)


# ------------------------------------------------------------------------------------- label checks

_LABEL_CHECKS = contextvars.ContextVar("jaxnet_label_checks", default=False)


@contextlib.contextmanager
def label_checks(enabled: bool = True):
    """Within this block, tracing a classification loss adds a ``checkify.check`` that
    every label is in [0, C).

    The setting is read when a loss is traced, so a function already jitted
    without it keeps its trace.  The checks must be functionalized by
    ``checkify.checkify`` (``checked`` does both); an unfunctionalized check
    under jit is an error.
    """
    token = _LABEL_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _LABEL_CHECKS.reset(token)


def checked(fn):
    """``checkify.checkify(fn)`` with the losses' label checks on.

    ``err, out = jax.jit(checked(loss_fn))(...)``; ``err.throw()`` raises
    ``JaxRuntimeError`` naming the loss, the first out-of-range label and its
    row; ``err.get()`` is None when every label is in range.
    """
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with label_checks():
            return fn(*args, **kwargs)
    return checkify.checkify(run)


def _check_classification(op, scores, labels):
    """Shapes and dtype now; label values as a checkify check under :func:`label_checks`.
    Returns the bool (N,) mask of labels in [0, C)."""
    check_labels(op, scores, labels)
    c = scores.shape[1]
    valid = labels_in_range(labels, c)
    if _LABEL_CHECKS.get():
        row = jnp.argmin(valid)         # the first False
        checkify.check(jnp.all(valid), f"{op}: label {{label}} at row {{row}} is outside [0, {c}) "
                                       f"for scores of shape {tuple(scores.shape)}",
                       label=labels[row], row=row)
    return valid


def _poison_rows(scores, valid):
    """``scores`` with every row whose label is out of range multiplied by NaN: its loss and
    its row of the autodiff gradient are NaN (a select would leave a finite gradient)."""
    return scores * jnp.where(valid, 1, jnp.nan).astype(scores.dtype)[:, None]


def _safe_labels(labels, valid):
    """Labels with the out-of-range ones replaced by 0, for gathers (the row is masked anyway)."""
    return jnp.where(valid, labels, 0)


# ------------------------------------------------------------------------------ softmax cross-entropy

def softmax_cross_entropy(scores, labels):
    """``mean_i [ -s_{i,y_i} + log sum_j exp(s_ij) ]``, numerically stable.

    scores: (N, C) float.  labels: (N,) int in [0, C).  Returns a scalar: the
    mean over the batch (PyTorch's ``cross_entropy`` with reduction="mean").
    A label outside [0, C) gives a NaN loss and a NaN row of dscores, eagerly
    and under jit (see :func:`checked` for an error instead).
    """
    valid = _check_classification("softmax_cross_entropy", scores, labels)
    scores = _poison_rows(scores, valid)
    shifted = scores - jax.lax.stop_gradient(jnp.max(scores, axis=1, keepdims=True))
    log_z = jnp.log(jnp.sum(jnp.exp(shifted), axis=1))
    correct = jnp.take_along_axis(shifted, _safe_labels(labels, valid)[:, None], axis=1)[:, 0]
    return jnp.mean(log_z - correct)


@jax.custom_vjp
def _softmax_cross_entropy(scores, labels):
    return _softmax_cross_entropy_fwd(scores, labels)[0]


def _softmax_cross_entropy_fwd(scores, labels):
    # The reference's computation, keeping exp and its sum: the backward pass needs the
    # probabilities exp / z, which the reference never forms.  Rows with an out-of-range
    # label get a NaN loss by a select rather than the reference's NaN factor.
    valid = labels_in_range(labels, scores.shape[1])
    shifted = scores - jnp.max(scores, axis=1, keepdims=True)     # the course's stability shift
    exp = jnp.exp(shifted)
    z = jnp.sum(exp, axis=1, keepdims=True)
    correct = jnp.take_along_axis(shifted, _safe_labels(labels, valid)[:, None], axis=1)[:, 0]
    loss = jnp.mean(jnp.where(valid, jnp.log(z[:, 0]) - correct, jnp.nan))
    return loss, (exp / z, labels)


def _softmax_cross_entropy_bwd(res, g):
    """dscores = g · (p - onehot(y)) / N.

    Residuals: the softmax probabilities p (N, C) and the labels (N,) int.
    g: the scalar cotangent.  Returns dscores (N, C), NaN in the rows whose
    label is outside [0, C), and None for the labels.
    """
    p, labels = res
    onehot = jax.nn.one_hot(labels, p.shape[1], dtype=p.dtype)
    valid = labels_in_range(labels, p.shape[1])
    return (jnp.where(valid[:, None], g * (p - onehot) / p.shape[0], jnp.nan), None)


_softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)


def softmax_cross_entropy_manual(scores, labels):
    """Manual twin of :func:`softmax_cross_entropy`. scores (N, C); labels (N,) int."""
    _check_classification("softmax_cross_entropy", scores, labels)
    return _softmax_cross_entropy(scores, labels)


def _oracle_labels(n, c):
    """Fixed-input ``make``: scores (n, c) standard normal, labels (n,) uniform in [0, c)."""
    return lambda r: (r.standard_normal((n, c)), r.integers(0, c, n))


def _softmax_cross_entropy_oracle(scores, labels):
    """NumPy oracle: the mean over examples of ``-s_y + log sum_j exp(s_j)`` (shifted by max s), a loop."""
    losses = []
    for s, y in zip(scores, labels):
        s = s - s.max()
        losses.append(-s[y] + np.log(np.sum(np.exp(s))))
    return np.mean(losses)


register(OpSpec("softmax_cross_entropy", softmax_cross_entropy, softmax_cross_entropy_manual, _sample_labels,
                (case({"x": (5, 10)}), case({"x": (1, 3)}), case({"x": (7, 2)})),
                backward=_softmax_cross_entropy_bwd, oracle=_softmax_cross_entropy_oracle,
                oracle_cases=lambda: O.drawn("softmax_cross_entropy", ("x=4x5", _oracle_labels(4, 5)),
                                             ("x=1x3", _oracle_labels(1, 3)))))


# ------------------------------------------------------------------------------------------ svm hinge

def check_margin(op, margin) -> float:
    """A finite number >= 0 (Python or NumPy scalar), returned as a Python float."""
    return check_number(op, "margin", margin, low=0.0)


def _svm_margins(scores, labels, valid, margin):
    """(margins (N, C), true-class mask (N, C) bool).

    margins = s_ij - s_{i,y_i} + margin where that is > 0 and j != y_i, else 0:
    written as a select so that a hinge exactly at 0 has slope 0 under autodiff
    (``jnp.maximum`` would split it, 1/2); NaN passes through.
    """
    is_true = jax.nn.one_hot(labels, scores.shape[1], dtype=bool)    # all False for an out-of-range label
    correct = jnp.take_along_axis(scores, _safe_labels(labels, valid)[:, None], axis=1)
    m = scores - correct + margin
    return jnp.where(is_true | (m <= 0), 0, m), is_true


def svm_hinge(scores, labels, *, margin=1.0):
    """Multiclass SVM loss ``mean_i sum_{j != y_i} max(0, s_ij - s_{i,y_i} + margin)``.

    scores: (N, C) float.  labels: (N,) int.  margin: the course's Delta (1.0).
    Summed over the classes, averaged over the batch: C times PyTorch's
    ``multi_margin_loss`` (which also divides by C).  A hinge exactly at 0 has
    slope 0.  A label outside [0, C) gives a NaN loss and a NaN row of dscores,
    eagerly and under jit (see :func:`checked` for an error instead).
    """
    valid = _check_classification("svm_hinge", scores, labels)
    margin = check_margin("svm_hinge", margin)
    margins, _ = _svm_margins(_poison_rows(scores, valid), labels, valid, margin)
    return jnp.mean(jnp.sum(margins, axis=1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _svm_hinge(scores, labels, margin):
    return _svm_hinge_fwd(scores, labels, margin)[0]


def _svm_hinge_fwd(scores, labels, margin):
    # The reference's margins; rows with an out-of-range label get a NaN loss by a select
    # rather than the reference's NaN factor.
    valid = labels_in_range(labels, scores.shape[1])
    margins, is_true = _svm_margins(scores, labels, valid, margin)
    loss = jnp.mean(jnp.where(valid, jnp.sum(margins, axis=1), jnp.nan))
    return loss, (margins > 0, is_true, valid)


def _svm_hinge_bwd(margin, res, g):
    """dscores = g / N · (+1 per violating class, minus their count on the true class).

    Residuals: the violation mask margins > 0 (N, C) bool (a hinge exactly at 0
    is not violated), the true-class mask (N, C) bool and the in-range labels
    mask (N,) bool.  g: the scalar cotangent.  Returns dscores (N, C), NaN in
    the rows whose label is outside [0, C), and None for the labels.
    """
    violated, is_true, valid = res
    count = jnp.sum(violated, axis=1, keepdims=True)
    ds = jnp.where(is_true, -count, violated).astype(jnp.result_type(g))
    return (jnp.where(valid[:, None], g * ds / ds.shape[0], jnp.nan), None)


_svm_hinge.defvjp(_svm_hinge_fwd, _svm_hinge_bwd)


def svm_hinge_manual(scores, labels, *, margin=1.0):
    """Manual twin of :func:`svm_hinge`. scores (N, C); labels (N,) int."""
    _check_classification("svm_hinge", scores, labels)
    return _svm_hinge(scores, labels, check_margin("svm_hinge", margin))


def _sample_svm(key, d, dt, margin=1.0):
    for attempt in range(100):   # rejection sampling: every margin at least KINK_GAP from its hinge
        scores, labels = _sample_labels(jax.random.fold_in(key, attempt), d, dt)
        correct = np.take_along_axis(scores, labels[:, None], axis=1)
        m = scores - correct + d.get("margin", margin)
        m = np.where(np.arange(scores.shape[1]) == labels[:, None], 1.0, m)
        if float(np.min(np.abs(m))) > S.KINK_GAP:
            return scores, labels
    raise RuntimeError("svm_hinge sampler: could not avoid the hinge kinks")


def _svm_hinge_oracle(scores, labels, *, margin=1.0):
    """NumPy oracle: ``sum over examples and j != y of max(0, s_j - s_y + margin)``, over N; the course's
    double loop."""
    total = 0.0
    for s, y in zip(scores, labels):
        for j in range(len(s)):
            if j != y:
                total += max(0.0, s[j] - s[y] + margin)
    return total / len(scores)


register(OpSpec("svm_hinge", svm_hinge, svm_hinge_manual, _sample_svm,
                (case({"x": (5, 10)}), case({"x": (1, 3)}), case({"x": (6, 4), "margin": 0.5}, margin=0.5)),
                backward=_svm_hinge_bwd,
                note="scores resampled until every margin is 1e-3 away from its hinge; "
                     "the hinge itself: tests/test_op_kinks.py",
                oracle=_svm_hinge_oracle,
                oracle_cases=lambda: O.drawn("svm_hinge", ("x=4x5", _oracle_labels(4, 5)),
                                             ("x=3x3 margin=0.5", _oracle_labels(3, 3), {"margin": 0.5}))))


# ------------------------------------------------------------------------------ sigmoid cross-entropy

def sigmoid_cross_entropy(logits, targets):
    """Binary / multi-label cross-entropy on logits, numerically stable.

    ``mean_i sum_j -[t log s(z) + (1 - t) log(1 - s(z))]`` with s the sigmoid,
    computed as ``softplus(z) - z t`` with ``softplus(z) = logaddexp(z, 0)``:
    autodiff then gives ``sigmoid(z) - t`` everywhere, ``1/2 - t`` at z = 0
    exactly (the form ``max(z, 0) - z t + log1p(exp(-|z|))`` has two kinks at 0
    whose autodiff slopes cancel to ``-t``).  Summed over the non-batch axes,
    averaged over the batch: PyTorch's ``binary_cross_entropy_with_logits``
    with reduction="sum" divided by N.
    logits: (N, ...) float.  targets: same shape, in [0, 1].
    """
    check_min_rank("sigmoid_cross_entropy", "logits", logits, 1)
    check_same_shape("sigmoid_cross_entropy", "logits", logits, "targets", targets)
    per = jnp.logaddexp(logits, 0) - logits * targets
    return jnp.sum(per) / logits.shape[0]


@jax.custom_vjp
def _sigmoid_cross_entropy(logits, targets):
    return sigmoid_cross_entropy(logits, targets)


def _sigmoid_cross_entropy_fwd(logits, targets):
    return sigmoid_cross_entropy(logits, targets), (logits, targets)


def _sigmoid_cross_entropy_bwd(res, g):
    """dlogits = g · (sigmoid(z) - t) / N, dtargets = -g · z / N.

    Residuals: the inputs logits z and targets t, both (N, ...).  g: the scalar
    cotangent.  Returns dlogits and dtargets, both (N, ...).
    """
    logits, targets = res
    n = logits.shape[0]
    return g * (jax.nn.sigmoid(logits) - targets) / n, -g * logits / n


_sigmoid_cross_entropy.defvjp(_sigmoid_cross_entropy_fwd, _sigmoid_cross_entropy_bwd)


def sigmoid_cross_entropy_manual(logits, targets):
    """Manual twin of :func:`sigmoid_cross_entropy`. logits, targets: (N, ...)."""
    check_min_rank("sigmoid_cross_entropy", "logits", logits, 1)
    check_same_shape("sigmoid_cross_entropy", "logits", logits, "targets", targets)
    return _sigmoid_cross_entropy(logits, targets)


def _sample_sigmoid_cross_entropy(key, d, dt):
    k = S.keys(key, 2)
    return S.normal(k[0], d["x"], dt), S.uniform(k[1], d["x"], dt)


def _sigmoid_cross_entropy_oracle(logits, targets):
    """NumPy oracle: ``-sum(t log p + (1 - t) log(1 - p)) / N`` with ``p = 1 / (1 + exp(-z))``, float64."""
    p = 1.0 / (1.0 + np.exp(-logits))
    return np.sum(-(targets * np.log(p) + (1 - targets) * np.log(1 - p))) / logits.shape[0]


def _sigmoid_cross_entropy_oracle_cases():
    return O.drawn("sigmoid_cross_entropy",
                   ("x=3x4", lambda r: (r.standard_normal((3, 4)), r.random((3, 4)))),
                   ("x=2x2x2 hard targets",
                    lambda r: (r.standard_normal((2, 2, 2)), r.integers(0, 2, (2, 2, 2)).astype(np.float64))))


register(OpSpec("sigmoid_cross_entropy", sigmoid_cross_entropy, sigmoid_cross_entropy_manual,
                _sample_sigmoid_cross_entropy,
                (case({"x": (4, 3)}), case({"x": (1, 5)}), case({"x": (2, 3, 2)})),
                backward=_sigmoid_cross_entropy_bwd, oracle=_sigmoid_cross_entropy_oracle,
                oracle_cases=_sigmoid_cross_entropy_oracle_cases))


# ------------------------------------------------------------------------------------ regression losses

def l2_loss(pred, target):
    """Squared L2 regression loss ``mean_i ||pred_i - target_i||^2``. pred, target: (N, ...).

    Summed over the non-batch axes, averaged over the batch: PyTorch's ``mse_loss``
    with reduction="sum" divided by N (no factor 1/2).
    """
    check_min_rank("l2_loss", "pred", pred, 1)
    check_same_shape("l2_loss", "pred", pred, "target", target)
    return jnp.sum((pred - target) ** 2) / pred.shape[0]


@jax.custom_vjp
def _l2_loss(pred, target):
    return l2_loss(pred, target)


def _l2_loss_fwd(pred, target):
    return l2_loss(pred, target), pred - target


def _l2_loss_bwd(diff, g):
    """dpred = g · 2 (pred - target) / N = -dtarget.

    Residual: diff = pred - target, (N, ...).  g: the scalar cotangent.
    Returns dpred and dtarget, both (N, ...).
    """
    d = g * 2 * diff / diff.shape[0]
    return d, -d


_l2_loss.defvjp(_l2_loss_fwd, _l2_loss_bwd)


def l2_loss_manual(pred, target):
    """Manual twin of :func:`l2_loss`. pred, target: (N, ...)."""
    check_min_rank("l2_loss", "pred", pred, 1)
    check_same_shape("l2_loss", "pred", pred, "target", target)
    return _l2_loss(pred, target)


def _sample_pair(key, d, dt):
    k = S.keys(key, 2)
    return S.normal(k[0], d["x"], dt), S.normal(k[1], d["x"], dt)


def _oracle_pair(shape):
    """Fixed-input ``make``: two standard normal arrays of ``shape`` (prediction, target)."""
    return lambda r: (r.standard_normal(shape), r.standard_normal(shape))


def _l2_loss_oracle(pred, target):
    """NumPy oracle: ``sum((pred - target)^2) / N``, float64."""
    return np.sum((pred - target) ** 2) / pred.shape[0]


register(OpSpec("l2_loss", l2_loss, l2_loss_manual, _sample_pair,
                (case({"x": (4, 3)}), case({"x": (1, 2, 2)})), backward=_l2_loss_bwd, oracle=_l2_loss_oracle,
                oracle_cases=lambda: O.drawn("l2_loss", ("x=3x4", _oracle_pair((3, 4))),
                                             ("x=1x2x2", _oracle_pair((1, 2, 2))))))


def _abs(x):
    """``|x|`` with autodiff slope sign(x): 0 at x = 0 (``jnp.abs`` differentiates to +1 there)."""
    return jnp.where(x == 0, 0, jnp.abs(x))


def l1_loss(pred, target):
    """L1 regression loss ``mean_i sum_j |pred_ij - target_ij|``. pred, target: (N, ...).

    Summed over the non-batch axes, averaged over the batch: PyTorch's ``l1_loss``
    with reduction="sum" divided by N.  Slope 0 where pred == target.
    """
    check_min_rank("l1_loss", "pred", pred, 1)
    check_same_shape("l1_loss", "pred", pred, "target", target)
    return jnp.sum(_abs(pred - target)) / pred.shape[0]


@jax.custom_vjp
def _l1_loss(pred, target):
    return l1_loss(pred, target)


def _l1_loss_fwd(pred, target):
    return l1_loss(pred, target), pred - target


def _l1_loss_bwd(diff, g):
    """dpred = g · sign(pred - target) / N = -dtarget.

    Residual: diff = pred - target, (N, ...).  g: the scalar cotangent.
    Returns dpred and dtarget, both (N, ...).
    """
    d = g * jnp.sign(diff) / diff.shape[0]
    return d, -d


_l1_loss.defvjp(_l1_loss_fwd, _l1_loss_bwd)


def l1_loss_manual(pred, target):
    """Manual twin of :func:`l1_loss`. pred, target: (N, ...)."""
    check_min_rank("l1_loss", "pred", pred, 1)
    check_same_shape("l1_loss", "pred", pred, "target", target)
    return _l1_loss(pred, target)


def _sample_pair_apart(key, d, dt):
    k = S.keys(key, 2)
    t = S.normal(k[1], d["x"], dt)
    return t + S.away_from_zero(k[0], d["x"], dt), t


def _l1_loss_oracle(pred, target):
    """NumPy oracle: ``sum(|pred - target|) / N``, float64."""
    return np.sum(np.abs(pred - target)) / pred.shape[0]


register(OpSpec("l1_loss", l1_loss, l1_loss_manual, _sample_pair_apart,
                (case({"x": (4, 3)}), case({"x": (1, 2, 2)})), backward=_l1_loss_bwd,
                note="pred - target kept away from 0; 0 itself: tests/test_op_kinks.py", oracle=_l1_loss_oracle,
                oracle_cases=lambda: O.drawn("l1_loss", ("x=3x4", _oracle_pair((3, 4))),
                                             ("x=1x2x2", _oracle_pair((1, 2, 2))))))


# ------------------------------------------------------------------------------------------ penalties

def l2_penalty(w):
    """``sum(w ** 2)``, the course's R(W); multiply by the strength lambda yourself. w: any shape."""
    return jnp.sum(w * w)


@jax.custom_vjp
def l2_penalty_manual(w):
    """Manual twin of :func:`l2_penalty`: ``sum(w ** 2)``, gradient ``2 w``."""
    return l2_penalty(w)


def _l2_penalty_fwd(w):
    return l2_penalty(w), w


def _l2_penalty_bwd(w, g):
    """dw = 2 g · w.

    Residual: the input w (any shape).  g: the scalar cotangent.  dw: the shape of w.
    """
    return (2 * g * w,)


l2_penalty_manual.defvjp(_l2_penalty_fwd, _l2_penalty_bwd)


def _l2_penalty_oracle(w):
    """NumPy oracle: ``sum(w^2)``, float64."""
    return np.sum(w ** 2)


register(OpSpec("l2_penalty", l2_penalty, l2_penalty_manual, S.unary(S.normal),
                (case({"x": (5, 3)}), case({"x": (3, 3, 2, 4)})), backward=_l2_penalty_bwd,
                oracle=_l2_penalty_oracle,
                oracle_cases=lambda: O.drawn("l2_penalty", ("w=4x3", O.normal(4, 3)),
                                             ("w=2x2x2x3", O.normal(2, 2, 2, 3)))))


def l1_penalty(w):
    """``sum(|w|)``. w: any shape.  Slope 0 at w = 0."""
    return jnp.sum(_abs(w))


@jax.custom_vjp
def l1_penalty_manual(w):
    """Manual twin of :func:`l1_penalty`: ``sum(|w|)``, gradient ``sign(w)``."""
    return l1_penalty(w)


def _l1_penalty_fwd(w):
    return l1_penalty(w), w


def _l1_penalty_bwd(w, g):
    """dw = g · sign(w).

    Residual: the input w (any shape).  g: the scalar cotangent.  dw: the shape of w.
    """
    return (g * jnp.sign(w),)


l1_penalty_manual.defvjp(_l1_penalty_fwd, _l1_penalty_bwd)


def _l1_penalty_oracle(w):
    """NumPy oracle: ``sum(|w|)``, float64."""
    return np.sum(np.abs(w))


register(OpSpec("l1_penalty", l1_penalty, l1_penalty_manual, S.unary(S.away_from_zero),
                (case({"x": (5, 3)}), case({"x": (3, 3, 2, 4)})), backward=_l1_penalty_bwd,
                note="weights kept away from 0; 0 itself: tests/test_op_kinks.py", oracle=_l1_penalty_oracle,
                oracle_cases=lambda: O.drawn("l1_penalty", ("w=4x3", O.normal(4, 3)),
                                             ("w=2x2x2x3", O.normal(2, 2, 2, 3)))))
