"""Tiny DDPM (Ho et al.'s architecture), discrete VP SDE, ancestral sampling, 16 px, nf 32: the
CPU stand-in for `vp/ddpm/cifar10.py`."""
from configs.tiny.common import set_tiny_unet, tiny_default_configs


def get_config():
  config = tiny_default_configs()

  training = config.training
  training.sde = 'vpsde'
  training.continuous = False
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'ancestral_sampling'
  sampling.corrector = 'none'

  config.data.centered = True

  model = config.model
  set_tiny_unet(model)
  model.name = 'ddpm'
  model.nf = 32  # DDPM's last GroupNorm has 32 groups: nf must be a multiple of 32
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.resamp_with_conv = True
  model.conditional = True
  return config
