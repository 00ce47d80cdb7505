"""score_sde's noise-conditional CIFAR-10 classifier, for class-conditional sampling.

The released classifier is a WRN-28-10 (`models/classifiers.py`, `wideresnet_noise_conditional`)
conditioned on the VE marginal std: it takes 32x32x3 images in [0, 1], normalised with CIFAR-10's
per-channel mean and std, and its file holds the flax msgpack of its `params` only. It pairs with
the VE CIFAR-10 NCSN++ models, whose data space ([0, 1], data.centered=False) and sigma it
shares; this config is `ve/cifar10_ncsnpp_continuous.py` plus the `classifier` section.
"""
import ml_collections

from configs.ve.cifar10_ncsnpp_continuous import get_config as get_score_model_config


def get_config():
  config = get_score_model_config()

  config.classifier = classifier = ml_collections.ConfigDict()
  classifier.name = 'wideresnet_noise_conditional'
  classifier.blocks_per_group = 4      # WRN depth 6 * 4 + 4 = 28
  classifier.channel_multiplier = 10   # group widths 160, 320, 640
  classifier.num_classes = 10
  classifier.embedding_size = 128      # Gaussian Fourier features of log sigma
  classifier.fourier_scale = 16.
  # CIFAR-10 training-set statistics per channel (R, G, B) of images in [0, 1].
  classifier.image_mean = (0.49139968, 0.48215841, 0.44653091)
  classifier.image_std = (0.24703223, 0.24348513, 0.26158784)
  return config
