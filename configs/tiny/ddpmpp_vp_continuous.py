"""Tiny DDPM++ (NCSN++ code with BigGAN blocks, no FIR, no pyramids, positional embedding),
continuous VP SDE, 16 px: the CPU stand-in for `vp/cifar10_ddpmpp_continuous.py`."""
from configs.tiny.common import set_ncsnpp_common, set_tiny_unet, tiny_default_configs


def get_config():
  config = tiny_default_configs()

  training = config.training
  training.sde = 'vpsde'
  training.continuous = True
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'euler_maruyama'
  sampling.corrector = 'none'

  config.data.centered = True

  model = config.model
  set_tiny_unet(model)
  set_ncsnpp_common(model)
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.fir = False
  model.progressive = 'none'
  model.progressive_input = 'none'
  model.embedding_type = 'positional'
  model.fourier_scale = 16
  return config
