"""Generative models (issue 16): built on jaxnet's layers and the generative loss ops
(:mod:`jaxnet.ops.generative`).  See docs/generative.md.

* :mod:`~jaxnet.generative.diffusion`: DDPM noise schedules, forward noising, the training loss
  with classifier-free guidance, ancestral sampling (one ``lax.scan``).
* :mod:`~jaxnet.generative.unet`: a small UNet noise predictor with time and class embeddings.
* :mod:`~jaxnet.generative.vae`, :mod:`~jaxnet.generative.gan`, :mod:`~jaxnet.generative.pixelcnn`:
  VAEs, (DC)GANs and their training step, masked convolutions and PixelCNN.
* :mod:`~jaxnet.generative.augment`: SimCLR's jittable augmentations.
"""

from jaxnet.generative.diffusion import NULL_LABEL, Schedule, ddpm_loss, make_schedule, p_sample, q_sample, sample
from jaxnet.generative.unet import UNet, timestep_embedding

# VAE, GANs, PixelCNN, SimCLR augmentations (vae.py, gan.py, pixelcnn.py, augment.py).  The PixelCNN's
# sampler is exported as pixelcnn_sample (``sample`` here is the diffusion sampler); its builder stays
# pixelcnn.pixelcnn (a function named pixelcnn here would hide the module)
from jaxnet.generative import augment, gan, pixelcnn, vae
from jaxnet.generative.augment import (color_jitter, random_flip, random_grayscale, random_resized_crop,
                                       simclr_augment, two_views)
from jaxnet.generative.gan import (GANState, dcgan_discriminator, dcgan_generator, gan_train_step, init_gan_state,
                                   make_gan_train_step, mlp_discriminator, mlp_generator)
from jaxnet.generative.pixelcnn import MaskedConv2D, pixelcnn_nll
from jaxnet.generative.pixelcnn import sample as pixelcnn_sample
from jaxnet.generative.vae import VAE, bits_per_dim, conv_vae, elbo, mlp_vae, reparameterize, vae_loss
from jaxnet.generative import metrics
from jaxnet.generative.metrics import (class_coverage, classifier_score, confident_fraction, frechet_distance,
                                       gaussian_stats)

__all__ = ["Schedule", "NULL_LABEL", "make_schedule", "q_sample", "ddpm_loss", "p_sample", "sample",
           "UNet", "timestep_embedding",
           "vae", "gan", "pixelcnn", "augment",
           "reparameterize", "VAE", "mlp_vae", "conv_vae", "vae_loss", "elbo", "bits_per_dim",
           "dcgan_generator", "dcgan_discriminator", "mlp_generator", "mlp_discriminator", "GANState",
           "init_gan_state", "gan_train_step", "make_gan_train_step",
           "MaskedConv2D", "pixelcnn_nll", "pixelcnn_sample",
           "random_resized_crop", "random_flip", "color_jitter", "random_grayscale", "simclr_augment", "two_views",
           "metrics", "classifier_score", "confident_fraction", "class_coverage", "gaussian_stats", "frechet_distance"]
