"""Tiny NCSN++ (positional embedding, residual input pyramid), discrete VE SDE (SMLD), 16 px: the
CPU stand-in for `ve/cifar10_ncsnpp.py`."""
from configs.tiny.common import set_ncsnpp_common, set_tiny_unet, tiny_default_configs


def get_config():
  config = tiny_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = False

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'

  model = config.model
  set_tiny_unet(model)
  set_ncsnpp_common(model)
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.fir = True
  model.progressive = 'none'
  model.progressive_input = 'residual'
  model.embedding_type = 'positional'
  return config
