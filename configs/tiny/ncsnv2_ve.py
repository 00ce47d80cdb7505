"""Tiny NCSNv2 (`ncsnv2_64` at 32 px, as CIFAR-10's), discrete VE SDE, annealed Langevin dynamics:
the CPU stand-in for `ve/ncsnv2/cifar10.py`. NCSNv2 has no channel multipliers or attention, so
only `nf` (8) and the number of noise scales shrink."""
from configs.tiny.common import tiny_default_configs


def get_config():
  config = tiny_default_configs(image_size=32)

  training = config.training
  training.sde = 'vesde'
  training.continuous = False

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'none'
  sampling.corrector = 'ald'
  sampling.n_steps_each = 2
  sampling.snr = 0.176

  model = config.model
  model.name = 'ncsnv2_64'
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = 'InstanceNorm++'
  model.nonlinearity = 'elu'
  model.interpolation = 'bilinear'

  optim = config.optim
  optim.lr = 1e-4
  optim.amsgrad = False
  optim.warmup = 0
  optim.grad_clip = -1.  # no gradient clipping
  return config
