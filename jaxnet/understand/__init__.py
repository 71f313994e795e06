"""Visualizing and understanding convnets: gradients with respect to the *input*.

Pure, jit-compatible functions over a jaxnet model (``model.apply(params, state, x,
train=False) -> (scores, state)``; models are hashable frozen dataclasses, so bind them
statically: ``jax.jit(saliency_map, static_argnums=0)``).  Images are NHWC float, labels int.
Randomness comes from explicit keys; nothing is stored between calls.

- :mod:`~jaxnet.understand.saliency`: ``saliency_map``, ``smoothgrad``, ``guided_backprop``
  (``with_guided_relu``: a ``custom_vjp`` ReLU), ``grad_cam``, ``occlusion_map`` (vmapped),
  ``cascading_randomization`` (Adebayo et al.'s sanity check) and ``rank_correlation``.
- :mod:`~jaxnet.understand.synthesis`: ``class_visualization``, ``feature_inversion``,
  ``deepdream``, ``gaussian_blur``, ``jitter``.
- :mod:`~jaxnet.understand.adversarial`: ``fooling_images``, ``fgsm``, ``pgd`` (L-inf / L2),
  ``Adversarial`` (adversarial training: ``jaxnet.train.fit(..., adversarial=...)``).
- :mod:`~jaxnet.understand.style`: ``content_loss``, ``style_loss`` (on the registered op
  ``gram_matrix``), ``tv_loss``, ``style_transfer`` (Adam or L-BFGS), ``load_image``.
- :mod:`~jaxnet.understand.patches`: ``max_activating_patches``, ``receptive_field``.

See docs/understand.md.
"""
from jaxnet.understand._common import GuidedReLU, guided_relu, layer_output, with_guided_relu
from jaxnet.understand.adversarial import (Adversarial, FoolingResult, fgsm, fooling_images, loss_gradient, pgd,
                                           project)
from jaxnet.understand.patches import ReceptiveField, TopPatches, max_activating_patches, receptive_field
from jaxnet.understand.saliency import (SanityCheck, cascading_randomization, grad_cam, guided_backprop,
                                        input_gradient, occlusion_map, occlusion_positions, param_groups,
                                        rank_correlation, saliency_map, smoothgrad)
from jaxnet.understand.style import (StyleTransferResult, content_loss, extract_features, load_image,
                                     style_loss, style_transfer, tv_loss)
from jaxnet.understand.synthesis import class_visualization, deepdream, feature_inversion, gaussian_blur, jitter

__all__ = [
    "GuidedReLU", "guided_relu", "layer_output", "with_guided_relu",
    "Adversarial", "FoolingResult", "fgsm", "fooling_images", "loss_gradient", "pgd", "project",
    "ReceptiveField", "TopPatches", "max_activating_patches", "receptive_field",
    "SanityCheck", "cascading_randomization", "grad_cam", "guided_backprop", "input_gradient", "occlusion_map",
    "occlusion_positions", "param_groups", "rank_correlation", "saliency_map", "smoothgrad",
    "StyleTransferResult", "content_loss", "extract_features", "load_image", "style_loss", "style_transfer",
    "tv_loss",
    "class_visualization", "deepdream", "feature_inversion", "gaussian_blur", "jitter",
]
