"""Layers, combinators and models: frozen dataclasses with ``init`` / ``apply``.

>>> model = nn.small_convnet(num_classes=10, impl="manual")
>>> params, state = model.init(jax.random.key(0), (128, 8, 8, 1))
>>> logits, state = model.apply(params, state, x, train=True, key=jax.random.key(1))

See :mod:`jaxnet.nn.layers` for the protocol and the batch-norm / dropout conventions;
:mod:`jaxnet.nn.inspect` for every layer's output (:func:`intermediates`) and activation statistics,
built on the combinators' output hook (:func:`apply_tapped`).
"""
from jaxnet.nn import init
from jaxnet.nn.combinators import Parallel, Residual, Sequential, apply_tapped
from jaxnet.nn.init import fans, get_initializer
from jaxnet.nn.inspect import activation_stats, forward_with_intermediates, intermediates
from jaxnet.nn.layers import (ELU, Affine, AvgPool2D, BatchNorm, Conv2D, ConvTranspose2D, Dropout, Flatten,
                              GlobalAvgPool, GlobalMaxPool, GroupNorm, Layer, LocalResponseNorm, Reshape, StochasticDepth, LayerNorm, LeakyReLU, Maxout, MaxPool2D, PReLU,
                              ReLU, Sigmoid, Tanh, with_impl)
from jaxnet.nn.models import (MODELS, fast_convnet, fully_connected_net, get_model, small_convnet, three_layer_convnet,
                              two_layer_net)
from jaxnet.nn.summary import Summary, SummaryRow, count_params, summary
from jaxnet.nn.recurrent import (GRU, LSTM, RNN, Bidirectional, Embedding, StackedRNN, TemporalAffine,
                                 reverse_within_length)
from jaxnet.nn.transformer import (FeedForward, LearnedPositions, MultiHeadAttention, SinusoidalPositions,
                                   TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                                   TransformerEncoderLayer, VisionTransformer, causal_mask, sinusoidal_positions)
from jaxnet.nn import decode

__all__ = [
    "Layer", "with_impl",
    "Affine", "Conv2D", "ConvTranspose2D",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "ELU", "PReLU", "Maxout",
    "MaxPool2D", "AvgPool2D", "GlobalAvgPool", "GlobalMaxPool", "Flatten",
    "BatchNorm", "LayerNorm", "GroupNorm", "LocalResponseNorm", "Dropout", "Reshape", "StochasticDepth",
    "Sequential", "Residual", "Parallel", "apply_tapped",
    "init", "fans", "get_initializer",
    "two_layer_net", "fully_connected_net", "three_layer_convnet", "small_convnet", "fast_convnet", "get_model",
    "MODELS",
    "summary", "Summary", "SummaryRow", "count_params",
    "intermediates", "forward_with_intermediates", "activation_stats",
    "Embedding", "TemporalAffine", "RNN", "LSTM", "GRU", "StackedRNN", "Bidirectional", "reverse_within_length",
    "MultiHeadAttention", "FeedForward", "SinusoidalPositions", "LearnedPositions", "TransformerEncoderLayer",
    "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder", "VisionTransformer", "causal_mask",
    "sinusoidal_positions",
    "decode",
]
