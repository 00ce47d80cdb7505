"""Tiny NCSN++ with the FFHQ/LSUN architecture (BigGAN blocks, FIR, output/input skips, Fourier
features), continuous VE SDE, 16 px: the CPU stand-in for `ve/ffhq_ncsnpp_continuous.py`."""
from configs.tiny.common import set_ncsnpp_common, set_tiny_unet, tiny_default_configs


def get_config():
  config = tiny_default_configs()

  training = config.training
  training.sde = 'vesde'
  training.continuous = True

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
  model.progressive = 'output_skip'
  model.progressive_input = 'input_skip'
  model.embedding_type = 'fourier'
  model.fourier_scale = 16
  return config
