"""Manual ops: the same signatures as :mod:`jaxnet.ops`, with the course's
hand-derived backward passes attached through ``jax.custom_vjp``.

They support reverse-mode differentiation (``grad``, ``vjp``) and ``jit`` /
``vmap``; forward-mode (``jvp``, ``jacfwd``) is not defined for custom_vjp.
"""
from jaxnet.manual.activations import elu, leaky_relu, maxout, prelu, relu, sigmoid, tanh
from jaxnet.manual.conv import conv2d, conv2d_transpose
from jaxnet.manual.dropout import dropout
from jaxnet.manual.linear import affine
from jaxnet.manual.losses import (l1_loss, l1_penalty, l2_loss, l2_penalty, sigmoid_cross_entropy,
                                  softmax_cross_entropy, svm_hinge)
from jaxnet.manual.norm import batch_norm, group_norm, layer_norm, spatial_batch_norm
from jaxnet.manual.pool import avg_pool2d, global_avg_pool, max_pool2d
