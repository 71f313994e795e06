"""Reference ops: plain ``jax.numpy`` forwards, differentiated by autodiff.

Their manual twins (same signatures, hand-written backward passes) live in
:mod:`jaxnet.manual`; :mod:`jaxnet.functional` picks one per call.
"""
from jaxnet.ops.activations import elu, leaky_relu, maxout, prelu, relu, sigmoid, tanh
from jaxnet.ops.conv import conv2d, conv2d_transpose
from jaxnet.ops.dropout import dropout
from jaxnet.ops.linear import affine
from jaxnet.ops.losses import (l1_loss, l1_penalty, l2_loss, l2_penalty, sigmoid_cross_entropy,
                               softmax_cross_entropy, svm_hinge)
from jaxnet.ops.norm import batch_norm, group_norm, layer_norm, spatial_batch_norm
from jaxnet.ops.pool import avg_pool2d, global_avg_pool, max_pool2d
from jaxnet.ops._geometry import conv_output_size

OP_NAMES = (
    "affine", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "prelu", "maxout",
    "softmax_cross_entropy", "svm_hinge", "sigmoid_cross_entropy", "l2_loss", "l1_loss",
    "l2_penalty", "l1_penalty",
    "conv2d", "conv2d_transpose", "max_pool2d", "avg_pool2d", "global_avg_pool",
    "batch_norm", "spatial_batch_norm", "layer_norm", "group_norm", "dropout",
)
