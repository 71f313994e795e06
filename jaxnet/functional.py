"""Every op, dispatched to its reference or manual path.

``jaxnet.functional.conv2d(x, w, b, stride=2, impl="autodiff")`` calls the
reference (autodiff backward); ``impl="manual"`` the hand-written backward;
``impl=None`` (the default) follows :func:`jaxnet.use_impl`.  ``"auto"`` is an
alias of ``"autodiff"``.

One line per op, so that "go to definition" and type checkers see every name.
``tests/test_op_registry.py`` checks that these names are exactly
``jaxnet.ops.OP_NAMES`` and that each line pairs the op's registered reference
and manual functions.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from jaxnet._impl import resolve_impl
from jaxnet.ops import activations as _activations, conv as _conv, linear as _linear, losses as _losses
from jaxnet.ops import norm as _norm, pool as _pool, regularization as _regularization
from jaxnet.ops import recurrent as _recurrent, sequence as _sequence  # noqa: F401
from jaxnet.ops import attention as _attention
from jaxnet.ops import style as _style
from jaxnet.ops import generative as _generative
from jaxnet.ops import detection as _detection, upsample as _upsample

_IMPL_DOC = "\n\n    impl: 'autodiff' (alias 'auto') | 'manual' | None (the current default).\n"


def _dispatch(reference: Callable, manual: Callable) -> Callable[..., Any]:
    """An op taking ``impl=`` that calls ``manual`` or ``reference`` (same signature)."""
    @functools.wraps(reference)
    def op(*args, impl=None, **kwargs):
        return (manual if resolve_impl(impl) == "manual" else reference)(*args, **kwargs)

    sig = inspect.signature(reference)
    impl = inspect.Parameter("impl", inspect.Parameter.KEYWORD_ONLY, default=None)
    op.__signature__ = sig.replace(parameters=[*sig.parameters.values(), impl])
    op.__doc__ = (reference.__doc__ or "") + _IMPL_DOC
    op.reference, op.manual = reference, manual
    return op


# linear
affine = _dispatch(_linear.affine, _linear.affine_manual)

# activations
relu = _dispatch(_activations.relu, _activations.relu_manual)
leaky_relu = _dispatch(_activations.leaky_relu, _activations.leaky_relu_manual)
sigmoid = _dispatch(_activations.sigmoid, _activations.sigmoid_manual)
tanh = _dispatch(_activations.tanh, _activations.tanh_manual)
elu = _dispatch(_activations.elu, _activations.elu_manual)
prelu = _dispatch(_activations.prelu, _activations.prelu_manual)
maxout = _dispatch(_activations.maxout, _activations.maxout_manual)
softplus = _dispatch(_activations.softplus, _activations.softplus_manual)
gelu = _dispatch(_activations.gelu, _activations.gelu_manual)

# losses
softmax_cross_entropy = _dispatch(_losses.softmax_cross_entropy, _losses.softmax_cross_entropy_manual)
svm_hinge = _dispatch(_losses.svm_hinge, _losses.svm_hinge_manual)
sigmoid_cross_entropy = _dispatch(_losses.sigmoid_cross_entropy, _losses.sigmoid_cross_entropy_manual)
l2_loss = _dispatch(_losses.l2_loss, _losses.l2_loss_manual)
l1_loss = _dispatch(_losses.l1_loss, _losses.l1_loss_manual)
l2_penalty = _dispatch(_losses.l2_penalty, _losses.l2_penalty_manual)
l1_penalty = _dispatch(_losses.l1_penalty, _losses.l1_penalty_manual)

# conv
conv2d = _dispatch(_conv.conv2d, _conv.conv2d_manual)
conv2d_relu = _dispatch(_conv.conv2d_relu, _conv.conv2d_relu_manual)
conv2d_transpose = _dispatch(_conv.conv2d_transpose, _conv.conv2d_transpose_manual)

# pool
max_pool2d = _dispatch(_pool.max_pool2d, _pool.max_pool2d_manual)
avg_pool2d = _dispatch(_pool.avg_pool2d, _pool.avg_pool2d_manual)
global_avg_pool = _dispatch(_pool.global_avg_pool, _pool.global_avg_pool_manual)

# norm
batch_norm = _dispatch(_norm.batch_norm, _norm.batch_norm_manual)
spatial_batch_norm = _dispatch(_norm.spatial_batch_norm, _norm.spatial_batch_norm_manual)
batch_norm_relu = _dispatch(_norm.batch_norm_relu, _norm.batch_norm_relu_manual)
layer_norm = _dispatch(_norm.layer_norm, _norm.layer_norm_manual)
group_norm = _dispatch(_norm.group_norm, _norm.group_norm_manual)
local_response_norm = _dispatch(_norm.local_response_norm, _norm.local_response_norm_manual)

# regularization
dropout = _dispatch(_regularization.dropout, _regularization.dropout_manual)

# sequence
word_embedding = _dispatch(_sequence.word_embedding, _sequence.word_embedding_manual)
temporal_affine = _dispatch(_sequence.temporal_affine, _sequence.temporal_affine_manual)
temporal_softmax_cross_entropy = _dispatch(_sequence.temporal_softmax_cross_entropy,
                                          _sequence.temporal_softmax_cross_entropy_manual)

# recurrent
rnn_step = _dispatch(_recurrent.rnn_step, _recurrent.rnn_step_manual)
lstm_step = _dispatch(_recurrent.lstm_step, _recurrent.lstm_step_manual)
gru_step = _dispatch(_recurrent.gru_step, _recurrent.gru_step_manual)
rnn = _dispatch(_recurrent.rnn, _recurrent.rnn_manual)
lstm = _dispatch(_recurrent.lstm, _recurrent.lstm_manual)
gru = _dispatch(_recurrent.gru, _recurrent.gru_manual)

# attention
scaled_dot_product_attention = _dispatch(_attention.scaled_dot_product_attention,
                                         _attention.scaled_dot_product_attention_manual)
patch_embed = _dispatch(_attention.patch_embed, _attention.patch_embed_manual)

# style
gram_matrix = _dispatch(_style.gram_matrix, _style.gram_matrix_manual)

# generative
gan_discriminator_loss = _dispatch(_generative.gan_discriminator_loss, _generative.gan_discriminator_loss_manual)
gan_generator_loss = _dispatch(_generative.gan_generator_loss, _generative.gan_generator_loss_manual)
ls_discriminator_loss = _dispatch(_generative.ls_discriminator_loss, _generative.ls_discriminator_loss_manual)
ls_generator_loss = _dispatch(_generative.ls_generator_loss, _generative.ls_generator_loss_manual)
gaussian_kl = _dispatch(_generative.gaussian_kl, _generative.gaussian_kl_manual)
cosine_similarity_matrix = _dispatch(_generative.cosine_similarity_matrix,
                                     _generative.cosine_similarity_matrix_manual)
nt_xent_loss = _dispatch(_generative.nt_xent_loss, _generative.nt_xent_loss_manual)

# upsample
upsample_nearest = _dispatch(_upsample.upsample_nearest, _upsample.upsample_nearest_manual)
upsample_bilinear = _dispatch(_upsample.upsample_bilinear, _upsample.upsample_bilinear_manual)
max_unpool2d = _dispatch(_upsample.max_unpool2d, _upsample.max_unpool2d_manual)

# detection
roi_align = _dispatch(_detection.roi_align, _detection.roi_align_manual)
roi_pool = _dispatch(_detection.roi_pool, _detection.roi_pool_manual)
smooth_l1_loss = _dispatch(_detection.smooth_l1_loss, _detection.smooth_l1_loss_manual)
pixel_cross_entropy = _dispatch(_detection.pixel_cross_entropy, _detection.pixel_cross_entropy_manual)


__all__ = [
    "affine", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "prelu", "maxout", "softplus", "gelu",
    "softmax_cross_entropy", "svm_hinge", "sigmoid_cross_entropy", "l2_loss", "l1_loss", "l2_penalty",
    "l1_penalty", "conv2d", "conv2d_relu", "conv2d_transpose", "max_pool2d", "avg_pool2d", "global_avg_pool", "batch_norm",
    "spatial_batch_norm", "batch_norm_relu", "layer_norm", "group_norm", "local_response_norm", "dropout",
    # sequence
    "word_embedding", "temporal_affine", "temporal_softmax_cross_entropy",
    # recurrent
    "rnn_step", "lstm_step", "gru_step", "rnn", "lstm", "gru",
    # attention
    "scaled_dot_product_attention", "patch_embed",
    # style
    "gram_matrix",
    # generative
    "gan_discriminator_loss", "gan_generator_loss", "ls_discriminator_loss", "ls_generator_loss", "gaussian_kl",
    "cosine_similarity_matrix", "nt_xent_loss",
    # upsample
    "upsample_nearest", "upsample_bilinear", "max_unpool2d",
    # detection
    "roi_align", "roi_pool", "smooth_l1_loss", "pixel_cross_entropy",
]
